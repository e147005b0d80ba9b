"""A local Prometheus for the pipeline: `python -m orchestration monitor up|down|status|targets`.

Prometheus (the Debian package; infra/setup-system.sh installs it) runs as a process on
127.0.0.1 at a free port, with its state under `<run_dir>/monitor/`: the config, the
scrape targets, the TSDB, its log, and `prometheus.json` (pid, port, URL). It loads the
alert rules of orchestration/monitoring/alerts.yml and finds its targets by file-based
service discovery: the `targets.json` that orchestration/targets.py writes from the
recorded service specs.

`down` signals only the pid it recorded, and only while that process's command line
still names this run directory's config (a recycled pid belongs to someone else).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from infra.local.errors import InfraError
from orchestration.targets import HOST, scrape_targets, targets_file, write_scrape_targets

log = logging.getLogger(__name__)

MONITORING_DIR = Path(__file__).resolve().parent / "monitoring"
ALERT_RULES = MONITORING_DIR / "alerts.yml"


def prometheus_config(targets: Path, rules: Path, scrape_interval_s: float) -> dict[str, Any]:
    """Prometheus' config (JSON is YAML): one file-SD job; the job label comes from the file."""
    interval = f"{max(1, round(scrape_interval_s * 1000))}ms"
    return {
        "global": {
            "scrape_interval": interval,
            "evaluation_interval": interval,
            "scrape_timeout": interval if scrape_interval_s < 10 else "10s",
        },
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                # The targets file sets each target's job (stream_worker|sink), over this name.
                "job_name": "pipeline",
                "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "5s"}],
            }
        ],
    }


@dataclass
class MonitorState:
    pid: int
    port: int
    url: str
    config: str


def _free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _http_get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback URL
        return bytes(resp.read())


class Monitor:
    """Start, stop and query the Prometheus of one run directory."""

    def __init__(self, run_dir: Path | str, binary: str | None = None) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.dir = self.run_dir / "monitor"
        self.binary = binary or shutil.which("prometheus") or "prometheus"

    @property
    def state_file(self) -> Path:
        return self.dir / "prometheus.json"

    @property
    def config_file(self) -> Path:
        return self.dir / "prometheus.yml"

    @property
    def log_file(self) -> Path:
        return self.dir / "prometheus.log"

    def state(self) -> MonitorState | None:
        """The recorded Prometheus if it is alive and still ours, else None."""
        try:
            st = MonitorState(**json.loads(self.state_file.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None
        try:
            cmdline = Path(f"/proc/{st.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        return st if f"--config.file={self.config_file}".encode() in cmdline else None

    def up(
        self, *, scrape_interval_s: float = 15.0, timeout_s: float = 60.0, rules: Path = ALERT_RULES
    ) -> MonitorState:
        """Start Prometheus unless it runs; (re)write the targets either way; wait until ready."""
        write_scrape_targets(self.run_dir)
        running = self.state()
        if running is not None:
            return running
        if shutil.which(self.binary) is None:
            raise InfraError(
                f"{self.binary!r} not found: install the Debian package "
                "'prometheus' (bash infra/setup-system.sh)"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            json.dumps(
                prometheus_config(targets_file(self.run_dir), rules, scrape_interval_s), indent=2
            )
            + "\n"
        )
        port = _free_port()
        argv = [
            self.binary,
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address={HOST}:{port}",
            "--storage.tsdb.retention.time=2d",
        ]
        with open(self.log_file, "ab") as logf:
            proc = subprocess.Popen(
                argv,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        st = MonitorState(proc.pid, port, f"http://{HOST}:{port}", str(self.config_file))
        self.state_file.write_text(json.dumps(asdict(st)))
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise InfraError(
                    f"prometheus exited with {proc.returncode}; "
                    f"its log ({self.log_file}) ends:\n{self._log_tail()}"
                )
            try:
                if _http_get(f"{st.url}/-/ready", timeout=1.0):
                    break
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() >= deadline:
                self.down()
                raise InfraError(
                    f"prometheus not ready after {timeout_s:.0f}s; log:\n{self._log_tail()}"
                )
            time.sleep(0.2)
        log.info("prometheus up at %s (pid %d)", st.url, st.pid)
        return st

    def down(self, timeout_s: float = 20.0) -> bool:
        """SIGTERM the recorded Prometheus (SIGKILL after the deadline); False if none ran."""
        st = self.state()
        if st is None:
            return False
        os.kill(st.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._alive(st.pid):
            time.sleep(0.1)
        if self._alive(st.pid):
            log.warning("prometheus (pid %d) ignored SIGTERM for %.0fs; SIGKILL", st.pid, timeout_s)
            os.kill(st.pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        return True

    @staticmethod
    def _alive(pid: int) -> bool:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap our own child
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(")")[-1].split()[0] != "Z"
        except OSError:
            return False

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    # -- HTTP API --------------------------------------------------------------------
    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns `data`, raises InfraError on an error answer."""
        st = self.state()
        if st is None:
            raise InfraError("prometheus is not running (python -m orchestration monitor up)")
        url = f"{st.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            body = json.loads(_http_get(url, timeout=10.0))
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise InfraError(f"prometheus {path}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector result."""
        return list(self.api("query", query=expr)["result"])

    def target_health(self) -> list[dict[str, Any]]:
        return [
            {
                "job": t["labels"].get("job"),
                "service": t["labels"].get("service"),
                "address": t["labels"].get("instance"),
                "health": t["health"],
                "last_error": t.get("lastError", ""),
            }
            for t in self.api("targets")["activeTargets"]
        ]

    def status(self) -> dict[str, Any]:
        st = self.state()
        out: dict[str, Any] = {"state": "up" if st else "down", "run_dir": str(self.run_dir)}
        if st is None:
            return out
        out.update(pid=st.pid, url=st.url)
        try:
            out["targets"] = self.target_health()
            out["alerts"] = [
                {"name": a["labels"].get("alertname"), "state": a["state"]}
                for a in self.api("alerts")["alerts"]
            ]
        except (InfraError, OSError, ValueError) as exc:
            out["error"] = str(exc)
        return out


# -- `python -m orchestration monitor ...` -----------------------------------------------------
def add_parser(sub: Any) -> None:
    p = sub.add_parser("monitor", help="a local Prometheus scraping the pipeline's services")
    ms = p.add_subparsers(dest="monitor_command", required=True, metavar="ACTION")
    up = ms.add_parser("up", help="start Prometheus (127.0.0.1, a free port), write targets")
    up.add_argument("--scrape-interval", type=float, default=15.0, metavar="SECONDS")
    up.add_argument("--timeout", type=float, default=60.0)
    ms.add_parser("down", help="stop the Prometheus this run dir recorded")
    st = ms.add_parser("status", help="state, targets and their health, alerts")
    st.add_argument("--json", action="store_true")
    ms.add_parser("targets", help="rewrite the scrape targets from the recorded services")


def run_cli(args: Any, run_dir: Path) -> int:
    mon = Monitor(run_dir)
    action = args.monitor_command
    if action == "up":
        st = mon.up(scrape_interval_s=args.scrape_interval, timeout_s=args.timeout)
        n = len(scrape_targets(run_dir))
        print(
            f"prometheus up at {st.url} (pid {st.pid}), {n} target(s) in "
            f"{targets_file(run_dir)}; rules {ALERT_RULES}"
        )
    elif action == "down":
        print("prometheus down" if mon.down() else "prometheus was not running")
    elif action == "targets":
        path = write_scrape_targets(run_dir)
        print(f"{len(scrape_targets(run_dir))} target(s) written to {path}")
    elif action == "status":
        status = mon.status()
        if args.json:
            print(json.dumps(status))
            return 0
        print(
            f"prometheus {status['state']}"
            + (f" at {status['url']} (pid {status['pid']})" if status["state"] == "up" else "")
        )
        for t in status.get("targets", []):
            err = f"  {t['last_error']}" if t["last_error"] else ""
            print(
                f"  {t['job']:<14} {t['service'] or '-':<18} {t['address']:<22} {t['health']}{err}"
            )
        for a in status.get("alerts", []):
            print(f"  alert {a['name']}: {a['state']}")
        if "error" in status:
            print(f"  error: {status['error']}")
    return 0
