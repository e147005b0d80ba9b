"""Run the read API (`python -m consumers api`) as a background service and wait for it.

The API's own module (consumers/api/launch.py) says where a running API listens and
whether it serves; starting it is orchestration's, so the service never imports the
process table it would be started from.
"""

from __future__ import annotations

import sys
from pathlib import Path

from consumers.api.launch import Endpoint, wait_serving
from orchestration.service_facts import CONSUMERS_MODULE
from orchestration.services import Services, ServiceSpec

SERVICE_NAME = "api"


def service_spec(port: int | None = None) -> ServiceSpec:
    argv = [sys.executable, "-m", CONSUMERS_MODULE, "api"]
    if port is not None:
        argv += ["--port", str(port)]
    return ServiceSpec(SERVICE_NAME, argv)


def start(services: Services, run_dir: Path | str, timeout_s: float = 60.0) -> Endpoint:
    """Start the API as a service of `services` (or find it running) and wait until it serves."""
    pid = services.start(service_spec())
    return wait_serving(run_dir, timeout_s, pid=pid)
