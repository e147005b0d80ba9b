"""Run the pipeline's own services (stream workers, the sink) as background processes.

`python -m orchestration pipeline up|down|status`, the demo, the bench and the e2e tests
use this, so a user can explore a running pipeline with `producers` and `consumers query`.
Services are started by their command line, never imported: the module names, the first
web port and the metrics variable come from their settings (orchestration/service_facts.py).

State lives under `<run_dir>/services/`: one pid file and one log per service. `down`
signals only pids it recorded, and only while their environment still names our
run directory (a recycled pid belongs to someone else).

Every pipeline service runs under a supervisor (`infra.supervisor`): the stream workers
as `python -m stream_app workers -n N`, each sink as `python -m infra.supervisor -- python
-m consumers sink`. (The supervisor stays in infra: `stream_app` runs its workers with
it, and a service never imports orchestration.) The recorded pid is the supervisor's;
`children(name)` finds the processes it runs (fault tests kill those), and `stop`
signals the supervisor first and kills whatever of its children is left after the grace
period.
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

from infra import supervisor
from orchestration.service_facts import (
    CONSUMERS_MODULE,
    SINK_METRICS_PORT_ENV,
    STREAM_MODULE,
    WORKER_WEB_PORT_DEFAULT,
)

log = logging.getLogger(__name__)

WEB_PORT_BASE = WORKER_WEB_PORT_DEFAULT
RUN_MARK_ENV = "PIPELINE_SERVICE_RUN_DIR"


WORKERS_SERVICE = "stream-workers"


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # Health endpoints of the processes it runs (the stream workers' web ports).
    web_ports: list[int] = field(default_factory=list)


def pipeline_specs(
    workers: int = 2, sinks: int = 1, web_port_base: int = WEB_PORT_BASE
) -> list[ServiceSpec]:
    """The stream workers (one supervisor, ports base..base+N-1) and each sink under its
    own supervisor: whatever kills a process, something starts it again. Sink i serves
    its metrics on base+N+i-1, so two pipelines with different bases never clash."""
    py = sys.executable
    specs = []
    if workers:
        specs.append(
            ServiceSpec(
                WORKERS_SERVICE,
                [
                    py,
                    "-m",
                    STREAM_MODULE,
                    "workers",
                    "-n",
                    str(workers),
                    "--web-port",
                    str(web_port_base),
                ],
                web_ports=[web_port_base + i for i in range(workers)],
            )
        )
    specs += [
        ServiceSpec(f"sink-{i}", [py, "-m", supervisor.__name__, "--name", f"sink-{i}", "--",
                                  py, "-m", CONSUMERS_MODULE, "sink"],
                    env={SINK_METRICS_PORT_ENV: str(web_port_base + workers + i - 1)})
        for i in range(1, sinks + 1)
    ]  # fmt: skip
    return specs


@dataclass
class ServiceState:
    name: str
    state: str  # "up" | "down"
    pid: int | None
    log: str
    children: list[int] = field(default_factory=list)
    web_ports: list[int] = field(default_factory=list)


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

    def spec(self, name: str) -> ServiceSpec:
        return ServiceSpec(**json.loads(self._spec_file(name).read_text()))

    def forget(self, name: str) -> None:
        """Drop a stopped service's records (e.g. one an older `pipeline up` started)."""
        if self.pid(name) is None:
            for path in (self._spec_file(name), self._pid_file(name)):
                path.unlink(missing_ok=True)

    def children(self, name: str) -> list[int]:
        """Pids of the processes the service's supervisor runs now (oldest first)."""
        pid = self.pid(name)
        return [] if pid is None else [c for c in _children_of(pid) if _is_ours(c, self.run_dir)]

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
        # Until exec, /proc/<pid>/environ is still ours without the run mark, and `pid()`
        # would call the new service foreign: wait for the exec (or an early exit).
        deadline = time.monotonic() + 5.0
        while (
            proc.poll() is None
            and not _is_ours(proc.pid, self.run_dir)
            and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        self._pid_file(spec.name).write_text(str(proc.pid))
        log.info("started %s (pid %d): %s", spec.name, proc.pid, " ".join(spec.argv[1:]))
        return proc.pid

    def restart(self, name: str) -> int:
        return self.start(self.spec(name))

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

    def kill_child(self, name: str, index: int = 0) -> int:
        """SIGKILL one process a supervisor runs (a worker, the sink); returns its pid.
        The supervisor restarts it: `wait_child_replaced` waits for that."""
        kids = self.children(name)
        if len(kids) <= index:
            raise LookupError(f"{name} runs {len(kids)} child process(es), no child {index}")
        os.kill(kids[index], signal.SIGKILL)
        _wait_pid_gone(kids[index], 10.0)
        return kids[index]

    def wait_child_replaced(
        self, name: str, dead: int, count: int, timeout_s: float = 120.0
    ) -> list[int]:
        """Until the supervisor of `name` runs `count` children again, none of them `dead`."""
        deadline = time.monotonic() + timeout_s
        while True:
            kids = self.children(name)
            if len(kids) == count and dead not in kids:
                return kids
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{name}: children {kids} after {timeout_s:.0f}s; want {count} without {dead}"
                )
            time.sleep(0.2)

    def stop(self, name: str, timeout_s: float = 30.0) -> None:
        """SIGTERM (services drain and commit), then SIGKILL after the deadline."""
        self.stop_all(timeout_s, names=[name])

    def stop_all(self, timeout_s: float = 30.0, names: list[str] | None = None) -> None:
        """Supervisors first: SIGTERM, which they forward to their children and wait a
        grace period (shorter than `timeout_s`). A supervisor still there at the deadline
        gets SIGKILL, then so does any child of it still running."""
        names = [n for n in (self.names() if names is None else names) if self.pid(n) is not None]
        children = {n: self.children(n) for n in names}
        for n in names:  # signal all first: they drain in parallel
            self.signal(n, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for n in names:
            if not self._wait_gone(n, max(0.0, deadline - time.monotonic())):
                log.warning("%s did not stop in time; sending SIGKILL", n)
                self.signal(n, signal.SIGKILL)
                self._wait_gone(n, 10.0)
            for c in children[n]:
                if _is_ours(c, self.run_dir) and not _wait_pid_gone(
                    c, max(0.0, deadline - time.monotonic())
                ):
                    log.warning("%s: child pid %d outlived its supervisor; sending SIGKILL", n, c)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(c, signal.SIGKILL)
                    _wait_pid_gone(c, 10.0)

    def _wait_gone(self, name: str, timeout_s: float) -> bool:
        pid_path = self._pid_file(name)
        try:
            pid = int(pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return True
        return _wait_pid_gone(pid, timeout_s)

    def status(self) -> list[ServiceState]:
        out = []
        for n in self.names():
            p = self.pid(n)
            try:
                ports = self.spec(n).web_ports
            except (FileNotFoundError, ValueError, TypeError):
                ports = []
            out.append(ServiceState(n, "up" if p else "down", p, str(self.log_file(n)),
                                    self.children(n) if p else [], ports))  # fmt: skip
        return out

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


def _wait_pid_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(pid)
        if not _alive(pid):
            return True
        time.sleep(0.1)
    _reap(pid)
    return not _alive(pid)


def _children_of(parent: int) -> list[int]:
    """Pids whose parent is `parent`, oldest first (from /proc; Linux)."""
    found: list[tuple[int, int]] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After "pid (comm)": state ppid pgrp ... field 22 of stat (index 19 here) is starttime.
        if int(fields[1]) == parent and fields[0] != "Z":
            found.append((int(fields[19]), int(entry.name)))
    return [pid for _, pid in sorted(found)]


def process_age_s(pid: int) -> float | None:
    """Seconds since `pid` started, from /proc (None when it is gone)."""
    try:
        start_ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


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
