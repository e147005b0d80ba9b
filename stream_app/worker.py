"""Run one faust worker process."""

from __future__ import annotations

import logging

import faust

from stream_app.app import create_app
from stream_app.settings import StreamSettings

log = logging.getLogger(__name__)


def run_worker(settings: StreamSettings, web_port: int | None = None) -> int:
    """Run until stopped; returns the process exit code (non-zero after a failure)."""
    app, rt = create_app(settings, web_port)
    log.info("stream worker settings: %s", settings.masked())
    worker = faust.Worker(app, loglevel=settings.log_level.lower())
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        return rt.exit_code or code
    finally:
        for ex in rt.executors.values():
            ex.shutdown(wait=False, cancel_futures=True)
    return rt.exit_code
