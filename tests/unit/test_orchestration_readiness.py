"""orchestration.readiness on real (tiny) processes: no Kafka needed for its failure paths.

A service that exits ends the wait at once with its log tail; a spent deadline ends it
with the tails too; `python -m orchestration` is the CLI that replaced `infra pipeline`.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from infra.settings import KafkaSettings
from orchestration.readiness import NotReady, start_all, start_and_wait, tails, wait_ready
from orchestration.services import Services, ServiceSpec

SLEEPER = [sys.executable, "-c", "import time; print('sleeping', flush=True); time.sleep(600)"]
CRASHER = [sys.executable, "-c", "import sys; print('boom: bad config', flush=True); sys.exit(3)"]
# Unreachable on purpose: the failure paths below must end before any Kafka call.
NO_KAFKA = KafkaSettings(bootstrap_servers="127.0.0.1:1")


def test_a_service_that_exits_ends_the_wait_with_its_tail(tmp_path):
    svc = Services(tmp_path)
    t0 = time.monotonic()
    try:
        with pytest.raises(NotReady) as info:
            start_and_wait(
                svc,
                [ServiceSpec("ok", SLEEPER), ServiceSpec("bad", CRASHER)],
                NO_KAFKA,
                {"some-group": 1},
                timeout_s=60,
            )
        assert time.monotonic() - t0 < 30, "a dead service must not wait for the deadline"
        assert "['bad'] exited" in info.value.cause
        assert "--- bad (down)" in info.value.tails
        assert "boom: bad config" in info.value.tails
        assert "boom: bad config" in str(info.value)
    finally:
        svc.stop_all(timeout_s=10)


def test_a_spent_deadline_is_not_ready_with_tails(tmp_path):
    svc = Services(tmp_path)
    try:
        start_all(svc, [ServiceSpec("ok", SLEEPER)])
        deadline = time.monotonic() + 10
        while "sleeping" not in svc.tail("ok") and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(NotReady) as info:
            wait_ready(svc, ["ok"], NO_KAFKA, {"some-group": 1}, timeout_s=0)
        assert "'some-group' not ready within 0s" in info.value.cause
        assert "--- ok (up)" in info.value.tails and "sleeping" in info.value.tails
    finally:
        svc.stop_all(timeout_s=10)


def test_start_all_forgets_stopped_services_of_another_layout(tmp_path):
    svc = Services(tmp_path)
    try:
        start_all(svc, [ServiceSpec("old", SLEEPER)])
        svc.stop("old", timeout_s=10)
        start_all(svc, [ServiceSpec("new", SLEEPER)], forget_others=True)
        assert svc.names() == ["new"]
        assert "--- new (up)" in tails(svc) and "old" not in tails(svc)
    finally:
        svc.stop_all(timeout_s=10)


def test_nothing_to_wait_for_is_ready_at_once(tmp_path):
    wait_ready(Services(tmp_path), [], NO_KAFKA, {}, timeout_s=0)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)


def test_the_pipeline_commands_are_orchestrations(tmp_path):
    res = _cli("orchestration", "--run-dir", str(tmp_path), "pipeline", "status")
    assert res.returncode == 1, res.stderr
    assert "python -m orchestration pipeline up" in res.stdout
    # infra no longer runs them (it would have to import orchestration); it says where.
    for command in ("pipeline", "monitor"):
        old = _cli("infra", "--run-dir", str(tmp_path), command, "status")
        assert old.returncode == 2
        assert f"moved: python -m orchestration {command}" in old.stderr
