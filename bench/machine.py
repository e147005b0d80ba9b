"""What the figures were measured on: cores, load, Python, torch, Kafka, Cassandra."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from typing import Any


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def kafka_version() -> str | None:
    """The brokers' version, from the install directory the running brokers use."""
    import re

    try:
        out = subprocess.run(
            ["ps", "-eo", "args"], capture_output=True, text=True, timeout=5
        ).stdout
    except Exception:  # noqa: BLE001
        return None
    m = re.search(r"kafka[-_](\d+\.\d+\.\d+)", out)
    return m.group(1) if m else None


def cassandra_version(session: Any) -> str | None:
    try:
        return session.execute("SELECT release_version FROM system.local").one().release_version
    except Exception:  # noqa: BLE001
        return None


def machine_info(session: Any = None) -> dict[str, Any]:
    try:  # the installed version, without importing torch (only stream_app may)
        from importlib.metadata import version

        torch_v: str | None = version("torch")
    except Exception:  # noqa: BLE001
        torch_v = None
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)),
        "mem_gib": mem,
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch_v,
        "confluent_kafka": _version("confluent-kafka"),
        "faust_streaming": _version("faust-streaming"),
        "cassandra_driver": _version("cassandra-driver"),
        "kafka": kafka_version(),
        "cassandra": cassandra_version(session) if session is not None else None,
    }
