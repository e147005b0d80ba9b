"""Where a local cluster keeps its state: one run dir, one sub-dir per node."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_RUN_DIR = ".run"
STATE_FILE = "cluster.json"


def resolve_run_dir(explicit: str | os.PathLike[str] | None = None,
                    env: dict[str, str] | None = None) -> Path:
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
        return self.logs / "node.log"

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
