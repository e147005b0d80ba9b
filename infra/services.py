"""Run the pipeline's own services (stream workers, the sink) as background processes.

`python -m infra pipeline up|down|status` and the demo use this, so a user can explore a
running pipeline with `producers` and `consumers query`. Services are started by their
command line, never imported: infra stays below them in the layer order.

State lives under `<run_dir>/services/`: one pid file and one log per service. `down`
signals only pids it recorded, and only while their command line still names our
run directory (a recycled pid belongs to someone else).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

WEB_PORT_BASE = 6066
RUN_MARK_ENV = "PIPELINE_SERVICE_RUN_DIR"


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def pipeline_specs(workers: int = 2, sinks: int = 1, web_port_base: int = WEB_PORT_BASE) -> list[ServiceSpec]:
    py = sys.executable
    specs = [
        ServiceSpec(f"worker-{i}", [py, "-m", "stream_app", "worker", "--web-port", str(web_port_base + i)])
        for i in range(1, workers + 1)
    ]
    specs += [ServiceSpec(f"sink-{i}", [py, "-m", "consumers", "sink"]) for i in range(1, sinks + 1)]
    return specs


@dataclass
class ServiceState:
    name: str
    state: str  # "up" | "down"
    pid: int | None
    log: str


class Services:
    """Start, signal and inspect service processes recorded under one run directory."""

    def __init__(self, run_dir: Path | str, env: dict[str, str] | None = None) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.dir = self.run_dir / "services"
        self.env = dict(env or {})

    # -- files ---------------------------------------------------------------
    def _pid_file(self, name: str) -> Path:
        return self.dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    def _spec_file(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def names(self) -> list[str]:
        if not self.dir.exists():
            return []
        return sorted(p.stem for p in self.dir.glob("*.json"))

    def pid(self, name: str) -> int | None:
        """The recorded pid if that process is alive and still ours, else None."""
        try:
            pid = int(self._pid_file(name).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _is_ours(pid, self.run_dir) else None

    # -- lifecycle -----------------------------------------------------------
    def start(self, spec: ServiceSpec) -> int:
        running = self.pid(spec.name)
        if running is not None:
            log.info("%s already running (pid %d)", spec.name, running)
            return running
        self.dir.mkdir(parents=True, exist_ok=True)
        self._spec_file(spec.name).write_text(json.dumps(asdict(spec)))
        env = {**os.environ, **self.env, **spec.env, RUN_MARK_ENV: str(self.run_dir)}
        logf = open(self.log_file(spec.name), "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                spec.argv,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # a Ctrl-C in the caller's terminal is not theirs
            )
        finally:
            logf.close()
        self._pid_file(spec.name).write_text(str(proc.pid))
        log.info("started %s (pid %d): %s", spec.name, proc.pid, " ".join(spec.argv[1:]))
        return proc.pid

    def restart(self, name: str) -> int:
        spec = ServiceSpec(**json.loads(self._spec_file(name).read_text()))
        return self.start(spec)

    def signal(self, name: str, sig: signal.Signals) -> bool:
        pid = self.pid(name)
        if pid is None:
            return False
        os.kill(pid, sig)
        return True

    def kill(self, name: str) -> bool:
        """SIGKILL, for fault tests: no drain, no commit."""
        ok = self.signal(name, signal.SIGKILL)
        if ok:
            self._wait_gone(name, 10.0)
        return ok

    def stop(self, name: str, timeout_s: float = 30.0) -> None:
        """SIGTERM (services drain and commit), then SIGKILL after the deadline."""
        if not self.signal(name, signal.SIGTERM):
            return
        if not self._wait_gone(name, timeout_s):
            log.warning("%s did not stop within %.0fs; sending SIGKILL", name, timeout_s)
            self.signal(name, signal.SIGKILL)
            self._wait_gone(name, 10.0)

    def stop_all(self, timeout_s: float = 30.0) -> None:
        names = [n for n in self.names() if self.pid(n) is not None]
        for n in names:  # signal all first: they drain in parallel
            self.signal(n, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for n in names:
            if not self._wait_gone(n, max(0.0, deadline - time.monotonic())):
                log.warning("%s did not stop in time; sending SIGKILL", n)
                self.signal(n, signal.SIGKILL)
                self._wait_gone(n, 10.0)

    def _wait_gone(self, name: str, timeout_s: float) -> bool:
        pid_path = self._pid_file(name)
        try:
            pid = int(pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            _reap(pid)
            if not _alive(pid):
                return True
            time.sleep(0.1)
        _reap(pid)
        return not _alive(pid)

    def status(self) -> list[ServiceState]:
        return [
            ServiceState(n, "up" if (p := self.pid(n)) else "down", p, str(self.log_file(n)))
            for n in self.names()
        ]

    def tail(self, name: str, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file(name).read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _reap(pid: int) -> None:
    """Collect our own exited children so they do not linger as zombies."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _is_ours(pid: int, run_dir: Path) -> bool:
    if not _alive(pid):
        return False
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{RUN_MARK_ENV}={run_dir}".encode() in environ.split(b"\0")
