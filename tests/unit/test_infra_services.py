"""The background service runner, on real (tiny) processes; and defaults kept in step."""

from __future__ import annotations

import sys

from consumers.settings import SinkSettings
from demo.accounting import percentile
from infra import pipeline_cli
from infra.services import Services, ServiceSpec
from stream_app.settings import StreamSettings

SLEEPER = [sys.executable, "-c", "import time, sys; print('ready', flush=True); time.sleep(600)"]
TERM_IGNORER = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)",
]


def test_start_status_stop(tmp_path):
    svc = Services(tmp_path)
    pid = svc.start(ServiceSpec("s1", SLEEPER))
    assert svc.pid("s1") == pid
    assert svc.start(ServiceSpec("s1", SLEEPER)) == pid, "a running service is not started twice"
    assert [(s.name, s.state) for s in svc.status()] == [("s1", "up")]
    svc.stop("s1", timeout_s=10)
    assert svc.pid("s1") is None
    assert [(s.name, s.state) for s in svc.status()] == [("s1", "down")]


def test_kill_and_restart(tmp_path):
    svc = Services(tmp_path)
    first = svc.start(ServiceSpec("w", SLEEPER))
    assert svc.kill("w")
    assert svc.pid("w") is None
    second = svc.restart("w")
    assert second != first and svc.pid("w") == second
    svc.stop_all(timeout_s=10)
    assert svc.pid("w") is None


def test_stop_escalates_to_sigkill(tmp_path):
    svc = Services(tmp_path)
    svc.start(ServiceSpec("stubborn", TERM_IGNORER))
    import time

    deadline = time.monotonic() + 10
    while "ready" not in svc.tail("stubborn") and time.monotonic() < deadline:
        time.sleep(0.05)
    svc.stop("stubborn", timeout_s=1)
    assert svc.pid("stubborn") is None


def test_foreign_pid_is_never_signalled(tmp_path):
    svc = Services(tmp_path)
    svc.dir.mkdir(parents=True)
    (svc.dir / "other.json").write_text('{"name": "other", "argv": ["true"], "env": {}}')
    (svc.dir / "other.pid").write_text("1")  # init: alive, but not started by us
    assert svc.pid("other") is None
    assert not svc.kill("other")


def test_pipeline_cli_defaults_match_services():
    assert StreamSettings().stream.worker.app_id == pipeline_cli.STREAM_APP_ID_DEFAULT
    assert SinkSettings().sink.group_id == pipeline_cli.SINK_GROUP_DEFAULT


def test_percentile_nearest_rank():
    assert percentile([], 50) is None
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
