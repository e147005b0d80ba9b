"""The background service runner, on real (tiny) processes; and the facts it asks the services."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from consumers.settings import SinkSettings
from demo.accounting import percentile
from orchestration import service_facts
from orchestration.services import WORKERS_SERVICE, Services, ServiceSpec, pipeline_specs
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


def test_group_ids_are_the_services_own(monkeypatch):
    monkeypatch.delenv("PIPELINE_STREAM__WORKER__APP_ID", raising=False)
    monkeypatch.delenv("PIPELINE_SINK__GROUP_ID", raising=False)
    assert service_facts.stream_group() == StreamSettings().stream.worker.app_id == "torchstream"
    assert service_facts.sink_group() == SinkSettings().sink.group_id == "vision-sink"
    # An override reaches orchestration the way it reaches the services.
    monkeypatch.setenv("PIPELINE_STREAM__WORKER__APP_ID", "ts-x")
    monkeypatch.setenv("PIPELINE_SINK__GROUP_ID", "sink-x")
    assert service_facts.stream_group() == StreamSettings().stream.worker.app_id == "ts-x"
    assert service_facts.sink_group() == SinkSettings().sink.group_id == "sink-x"


def test_env_var_names_follow_the_settings(monkeypatch):
    assert service_facts.SINK_METRICS_PORT_ENV == "PIPELINE_METRICS__PORT"
    assert service_facts.WORKER_WEB_PORT_ENV == "PIPELINE_STREAM__WORKER__WEB_PORT"
    monkeypatch.setenv(service_facts.WORKER_WEB_PORT_ENV, "7123")
    assert StreamSettings().stream.worker.web_port == 7123
    with pytest.raises(KeyError):  # an unknown field yields no variable name
        service_facts.env_var(StreamSettings, "stream", "no_such_field")


def test_percentile_nearest_rank():
    assert percentile([], 50) is None
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0


# -- supervised services (infra.supervisor) ------------------------------------------
def supervised(*child: str, name: str = "c") -> list[str]:
    return [sys.executable, "-m", "infra.supervisor", "--name", name, "--", *child]


def _wait(what, check, timeout=20.0):
    import time

    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return got


def test_pipeline_specs_run_everything_supervised():
    specs = {s.name: s for s in pipeline_specs(workers=3, sinks=1, web_port_base=7000)}
    assert set(specs) == {WORKERS_SERVICE, "sink-1"}
    w = specs[WORKERS_SERVICE]
    assert w.argv[1:] == ["-m", "stream_app", "workers", "-n", "3", "--web-port", "7000"]
    assert w.web_ports == [7000, 7001, 7002]
    sink = specs["sink-1"].argv
    assert sink[1:3] == ["-m", "infra.supervisor"]
    assert sink[sink.index("--") + 1 :] == [sys.executable, "-m", "consumers", "sink"]
    # Each sink's metrics port follows the workers' web ports: no two pipelines clash.
    two = pipeline_specs(workers=3, sinks=2, web_port_base=7000)
    assert [s.env.get("PIPELINE_METRICS__PORT") for s in two[1:]] == ["7003", "7004"]


def test_a_killed_child_is_replaced_by_its_supervisor(tmp_path):
    svc = Services(tmp_path)
    sup = svc.start(ServiceSpec("s", supervised(*SLEEPER)))
    first = _wait("the child", lambda: svc.children("s"))
    assert len(first) == 1 and first[0] != sup
    _wait("the child's output", lambda: "[c] ready" in svc.tail("s"))
    assert svc.kill_child("s") == first[0]
    again = svc.wait_child_replaced("s", first[0], 1, timeout_s=20)
    assert svc.pid("s") == sup, "the supervisor itself kept running"
    assert "[c] ready" in _wait(
        "the restarted child's output",
        lambda: svc.tail("s").count("[c] ready") >= 2 and svc.tail("s"),
    )
    svc.stop("s", timeout_s=10)
    assert svc.pid("s") is None
    assert not any(Path(f"/proc/{p}").exists() for p in again)


def test_stop_kills_a_child_that_outlives_its_supervisor(tmp_path):
    # The supervisor's grace (60 s) is longer than stop's deadline (1 s): stop SIGKILLs the
    # supervisor, the child ignores the SIGTERM that brings, and stop kills it by pid.
    svc = Services(tmp_path, env={"PIPELINE_SUPERVISOR__GRACE_S": "60"})
    svc.start(ServiceSpec("s", supervised(*TERM_IGNORER)))
    kids = _wait("the child", lambda: svc.children("s"))
    _wait("the child to ignore SIGTERM", lambda: "[c] ready" in svc.tail("s"))
    svc.stop("s", timeout_s=1)
    assert svc.pid("s") is None
    assert not _alive_pid(kids[0])


def _alive_pid(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_forget_drops_only_stopped_services(tmp_path):
    svc = Services(tmp_path)
    svc.start(ServiceSpec("old", ["true"]))
    _wait("it to exit", lambda: svc.pid("old") is None)
    svc.start(ServiceSpec("live", SLEEPER))
    svc.forget("old")
    svc.forget("live")
    assert svc.names() == ["live"]
    svc.stop_all(timeout_s=10)
