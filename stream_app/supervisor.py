"""`python -m stream_app workers -n N`: N worker processes under one supervisor.

Each child is `python -m stream_app worker --web-port P+i`, named `worker-i` in the log.
The restart policy (backoff, giving up loudly after N crashes in a row, exit codes 75
"send failed" and 76 "a stage stalled" as restartable, SIGTERM forwarded with a grace
period) is `infra.supervisor`'s, shared with the sink's supervisor.
"""

from __future__ import annotations

import sys

from infra.supervisor import ChildSpec, Supervisor, SupervisorSettings


def worker_specs(n: int, first_port: int) -> list[ChildSpec]:
    if n < 1:
        raise SystemExit("-n must be >= 1")
    return [
        ChildSpec(
            f"worker-{i}",
            [sys.executable, "-m", "stream_app", "worker", "--web-port", str(first_port + i)],
        )
        for i in range(n)
    ]


def run_workers(n: int, first_port: int, settings: SupervisorSettings) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or until a worker crash-loops (exit 1)."""
    sup = Supervisor(worker_specs(n, first_port), settings)
    sup.install_signal_handlers()
    return sup.run()
