"""`python -m stream_app workers -n N`: run N worker processes and keep them running.

Each child is `python -m stream_app worker --web-port P+i`. A child that exits is
restarted (after a growing delay if it keeps dying) unless the supervisor is stopping.
SIGTERM/SIGINT are forwarded to every child; children still alive after a grace period
get SIGKILL.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

GRACE_S = 30.0


@dataclass
class Child:
    index: int
    port: int
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    next_start_at: float = 0.0


def _spawn(child: Child) -> None:
    cmd = [sys.executable, "-m", "stream_app", "worker", "--web-port", str(child.port)]
    child.proc = subprocess.Popen(cmd)
    child.started_at = time.monotonic()
    log.info("worker %d started: pid %d, web port %d", child.index, child.proc.pid, child.port)


def run_workers(n: int, first_port: int, restart: bool = True) -> int:
    if n < 1:
        raise SystemExit("-n must be >= 1")
    children = [Child(i, first_port + i) for i in range(n)]
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        log.info("received %s: stopping %d worker(s)", signal.Signals(signum).name, n)
        for c in children:
            if c.proc is not None and c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for c in children:
        _spawn(c)
    worst = 0
    while not stopping:
        for c in children:
            if c.proc is None:
                if time.monotonic() >= c.next_start_at and not stopping:
                    _spawn(c)
                continue
            code = c.proc.poll()
            if code is None:
                continue
            worst = worst or code
            c.proc = None
            if not restart:
                log.warning("worker %d exited with %s; not restarting", c.index, code)
                continue
            # Back off when a worker dies soon after starting (crash loop).
            quick = time.monotonic() - c.started_at < 30
            c.restarts = c.restarts + 1 if quick else 0
            delay = min(30.0, 1.0 * 2 ** min(c.restarts, 5)) if quick else 1.0
            c.next_start_at = time.monotonic() + delay
            log.warning("worker %d exited with %s; restarting in %.0fs", c.index, code, delay)
        if not restart and all(c.proc is None for c in children):
            return worst
        time.sleep(0.5)
    deadline = time.monotonic() + GRACE_S
    for c in children:
        if c.proc is None:
            continue
        try:
            c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("worker %d (pid %d) ignored SIGTERM; killing it", c.index, c.proc.pid)
            c.proc.kill()
            c.proc.wait()
    return 0
