"""Where Prometheus scrapes the pipeline: targets derived from the recorded service specs.

`scrape_targets` reads the specs orchestration/services.py records under
`<run_dir>/services/*.json`: each stream worker serves /metrics on its `--web-port`
(the spec's `web_ports`), each sink on its metrics port variable. The module names, the
default ports and that variable are the services' own (orchestration/service_facts.py).
`write_scrape_targets` writes Prometheus' file-SD `targets.json` atomically (Prometheus
re-reads the file whenever it changes), so a running monitor follows `pipeline up`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestration.service_facts import (
    CONSUMERS_MODULE,
    SINK_METRICS_PORT_DEFAULT,
    SINK_METRICS_PORT_ENV,
    STREAM_MODULE,
    WORKER_WEB_PORT_DEFAULT,
    WORKER_WEB_PORT_ENV,
)

log = logging.getLogger(__name__)

JOB_WORKER = "stream_worker"
JOB_SINK = "sink"
HOST = "127.0.0.1"


@dataclass(frozen=True)
class ScrapeTarget:
    job: str  # JOB_WORKER | JOB_SINK
    service: str  # the service's name under <run_dir>/services, e.g. worker-1
    address: str  # host:port


def _arg_after(argv: list[str], flag: str) -> str | None:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def targets_for_spec(spec: dict[str, Any]) -> list[ScrapeTarget]:
    """The metrics endpoints of one recorded service spec (name, argv, env, web_ports).

    Stream workers serve /metrics on their web ports (the spec's `web_ports`, else the
    `--web-port` of a single `worker`); a sink, supervised or not, on PIPELINE_METRICS__PORT.
    """
    argv = [str(a) for a in spec.get("argv", [])]
    env = spec.get("env") or {}
    name = str(spec.get("name", ""))
    modules = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-m"]
    if STREAM_MODULE in modules:
        ports = [int(p) for p in spec.get("web_ports") or []]
        if not ports and "worker" in argv:
            port = _arg_after(argv, "--web-port") or env.get(WORKER_WEB_PORT_ENV)
            ports = [int(port or WORKER_WEB_PORT_DEFAULT)]
        return [
            ScrapeTarget(JOB_WORKER, f"{name}-{i}" if len(ports) > 1 else name, f"{HOST}:{p}")
            for i, p in enumerate(ports, start=1)
        ]
    if CONSUMERS_MODULE in modules and "sink" in argv:
        port = env.get(SINK_METRICS_PORT_ENV) or os.environ.get(SINK_METRICS_PORT_ENV)
        return [ScrapeTarget(JOB_SINK, name, f"{HOST}:{int(port or SINK_METRICS_PORT_DEFAULT)}")]
    return []


def scrape_targets(run_dir: Path | str) -> list[ScrapeTarget]:
    """Every worker and sink that orchestration/services.py recorded under `run_dir`."""
    out = []
    for path in sorted((Path(run_dir) / "services").glob("*.json")):
        try:
            spec = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("skipping unreadable service spec %s: %s", path, exc)
            continue
        out.extend(targets_for_spec(spec))
    return out


def targets_file(run_dir: Path | str) -> Path:
    return Path(run_dir).resolve() / "monitor" / "targets.json"


def write_scrape_targets(run_dir: Path | str, targets: list[ScrapeTarget] | None = None) -> Path:
    """Write Prometheus' file-SD targets (default: derived from the service specs).

    Written to a temporary file and renamed, so Prometheus never reads half a file."""
    targets = scrape_targets(run_dir) if targets is None else targets
    groups = [
        {"targets": [t.address], "labels": {"job": t.job, "service": t.service}} for t in targets
    ]
    path = targets_file(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(groups, indent=2) + "\n")
    os.replace(tmp, path)
    return path
