"""`orchestration pipeline status`: per-stage health from the workers, truthful exit code."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from orchestration import pipeline_cli, pipeline_status
from orchestration.services import Services, ServiceSpec

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def stage(name: str, **over: Any) -> dict[str, Any]:
    s = {
        "stage": name, "source": f"images.{name}", "records_in": 10, "records_out": 9,
        "dead_letters": 1, "dead_letter_reasons": {"not-an-image": 1},
        "oldest_unacked_age_s": None, "last_progress_age_s": 1.5,
        "lag": {"0": 0, "1": 4}, "total_lag": 4, "stalled": False,
    }  # fmt: skip
    s.update(over)
    return s


class FakeWorker:
    """A /health/ endpoint serving whatever `body` holds."""

    def __init__(self) -> None:
        self.body: dict[str, Any] = {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                data = json.dumps(owner.body).encode()
                self.send_response(200 if self.path == "/health/" else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def worker() -> Iterator[FakeWorker]:
    w = FakeWorker()
    yield w
    w.server.shutdown()


@pytest.fixture
def services(tmp_path, worker) -> Iterator[Services]:
    svc = Services(tmp_path)
    svc.start(ServiceSpec("stream-workers", SLEEPER, web_ports=[worker.port]))
    svc.start(ServiceSpec("sink-1", SLEEPER))
    yield svc
    svc.stop_all(timeout_s=10)


def status(services: Services, capsys, *flags: str) -> tuple[int, str]:
    args = argparse.Namespace(pipeline_command="status", json="--json" in flags)
    code = pipeline_cli.run(args, services.run_dir)
    return code, capsys.readouterr().out


def test_every_stage_field_is_shown(services, worker, capsys):
    worker.body = {"status": "ok", "pid": 4242, "stages": [stage("decode"), stage("infer")]}
    report = pipeline_status.collect(services)
    # SLEEPER is not a supervisor: it runs no children, which status reports.
    assert report["problems"] == [
        "sink-1: its supervisor runs no process (restarting, or it gave up)",
        "stream-workers: its supervisor runs no process (restarting, or it gave up)",
    ]
    text = pipeline_status.render(report)
    assert f"worker :{worker.port}  pid 4242  ok" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("decode"))
    for cell in ("10", "9", "not-an-image=1", "4 (p1=4)", "1.5s"):
        assert cell in row, (cell, row)
    assert "STALLED" not in text


def test_a_stalled_stage_is_shown_and_fails_the_status(services, worker, capsys):
    worker.body = {"status": "stalled", "pid": 4242, "stages": [
        stage("decode"),
        stage("infer", stalled=True, oldest_unacked_age_s=75.0, last_progress_age_s=80.0),
    ]}  # fmt: skip
    code, out = status(services, capsys)
    assert code == 1
    infer = next(line for line in out.splitlines() if line.strip().startswith("infer"))
    assert infer.rstrip().endswith("STALLED") and "75.0s" in infer and "80.0s" in infer
    assert "stage infer STALLED" in out and "is stalled" in out


def test_missing_fields_show_as_dashes_not_zeros(services, worker, capsys):
    worker.body = {"status": "ok", "pid": 1, "stages": [{"stage": "decode", "records_in": 3}]}
    report = pipeline_status.collect(services)
    row = next(line for line in pipeline_status.render(report).splitlines() if "decode" in line)
    assert row.split() == ["decode", "3", "-", "-", "-", "-", "-", "-"]


def test_a_silent_worker_and_a_dead_service_fail_the_status(services, worker, capsys):
    worker.server.shutdown()
    worker.server.server_close()
    services.stop("sink-1", timeout_s=10)
    code, out = status(services, capsys, "--json")
    assert code == 1
    report = json.loads(out)
    assert "sink-1: down" in report["problems"]
    assert any("does not answer /health/" in p for p in report["problems"])
    sink = next(s for s in report["services"] if s["name"] == "sink-1")
    assert sink["state"] == "down" and sink["pid"] is None


def test_no_services_is_not_healthy(tmp_path, capsys):
    code, out = status(Services(tmp_path), capsys)
    assert code == 1 and "no pipeline services" in out


def test_supervised_services_with_healthy_stages_pass(tmp_path, worker, capsys):
    sup = [sys.executable, "-m", "infra.supervisor", "--", *SLEEPER]
    svc = Services(tmp_path)
    svc.start(ServiceSpec("stream-workers", sup, web_ports=[worker.port]))
    svc.start(ServiceSpec("sink-1", sup))
    worker.body = {"status": "ok", "pid": 7, "stages": [stage("decode")]}
    try:
        import time

        deadline = time.monotonic() + 20
        while not all(svc.children(n) for n in svc.names()):
            assert time.monotonic() < deadline, "supervisors did not start their children"
            time.sleep(0.05)
        code, out = status(svc, capsys)
        assert code == 0, out
        assert out.rstrip().endswith("healthy")
        assert "sink-1          up" in out and "(up " in out
    finally:
        svc.stop_all(timeout_s=10)


def test_a_supervisor_that_gave_up_is_down_with_its_reason(tmp_path, capsys):
    crash = [sys.executable, "-c", "import sys; print('cannot reach brokers'); sys.exit(75)"]
    svc = Services(tmp_path, env={"PIPELINE_SUPERVISOR__BACKOFF_BASE_S": "0.05"})
    svc.start(ServiceSpec("sink-1", [sys.executable, "-m", "infra.supervisor", "--name", "sink-1",
                                     "--max-crashes", "2", "--", *crash]))  # fmt: skip
    import time

    deadline = time.monotonic() + 30
    while svc.pid("sink-1") is not None:
        assert time.monotonic() < deadline, "the supervisor did not give up"
        time.sleep(0.05)
    code, out = status(svc, capsys)
    assert code == 1
    assert "sink-1: down (infra.supervisor: giving up on sink-1: 2 crashes in a row" in out
