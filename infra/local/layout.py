"""Where a local cluster keeps its state: one run dir, one sub-dir per node."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.local.errors import InfraError

log = logging.getLogger(__name__)

DEFAULT_RUN_DIR = ".run"
STATE_FILE = "cluster.json"


def resolve_run_dir(
    explicit: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None
) -> Path:
    """--run-dir, else $PIPELINE_RUN_DIR, else ./.run; always absolute."""
    env = dict(os.environ if env is None else env)
    raw = explicit or env.get("PIPELINE_RUN_DIR") or DEFAULT_RUN_DIR
    return Path(raw).expanduser().resolve()


@dataclass(frozen=True)
class NodeDirs:
    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "conf"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def log_file(self) -> Path:
        """The JVM's stdout and stderr (start banners, crashes before logging starts)."""
        return self.logs / "node.log"

    @property
    def server_log(self) -> Path:
        """The server's own log (log4j2 / logback), rolled at 20 MiB, 3 files kept."""
        return self.logs / "server.log"

    @property
    def pid_file(self) -> Path:
        return self.root / "pid"

    @property
    def marker(self) -> str:
        """A string every command line of this node's JVM contains."""
        return str(self.root) + os.sep

    def create(self) -> None:
        for d in (self.conf, self.data, self.tmp, self.logs):
            d.mkdir(parents=True, exist_ok=True)


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    def node(self, name: str) -> NodeDirs:
        return NodeDirs(self.path / name)

    def load_state(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def save_state(self, state: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.path / STATE_FILE)


class RunDirLock:
    """An exclusive flock on <run dir>/.lock, so that two processes (two test sessions, a
    test and a CLI call) never start, stop or record the same node at once. Re-entrant
    within one object."""

    def __init__(self, run_dir: Path, timeout: float = 900.0) -> None:
        self.path = run_dir / ".lock"
        self.timeout = timeout
        self._fd: int | None = None
        self._depth = 0
        self._guard = threading.RLock()

    def __enter__(self) -> RunDirLock:
        self._guard.acquire()
        if self._depth == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            deadline = time.monotonic() + self.timeout
            announced = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not announced:
                        log.info("waiting for another infra command to release %s", self.path)
                        announced = True
                    if time.monotonic() > deadline:
                        os.close(fd)
                        self._guard.release()
                        raise InfraError(
                            f"{self.path} still locked after {self.timeout:.0f}s by another "
                            f"infra command"
                        ) from None
                    time.sleep(0.2)
            self._fd = fd
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        self._guard.release()
