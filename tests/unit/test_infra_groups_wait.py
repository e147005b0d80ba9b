"""infra.groups.wait_for_group asks with a fresh admin client when one keeps failing.

After a broker SIGKILL, a kept client asked the old group coordinator for minutes
(NOT_COORDINATOR) and the e2e harness's readiness wait timed out with the group Stable.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from infra import groups
from infra.settings import KafkaSettings


class _Future:
    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self._value, self._error = value, error

    def result(self, timeout: float | None = None) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


class StaleAdmin:
    """Always asks the coordinator that moved away."""

    calls = 0

    def describe_consumer_groups(self, names: list[str], request_timeout: float) -> Any:
        StaleAdmin.calls += 1
        error = KafkaException(KafkaError(KafkaError.NOT_COORDINATOR, "ConsumerGroupDescribe"))
        return {names[0]: _Future(error=error)}


class FreshAdmin:
    def describe_consumer_groups(self, names: list[str], request_timeout: float) -> Any:
        member = SimpleNamespace(assignment=SimpleNamespace(topic_partitions=[1, 2, 3]))
        desc = SimpleNamespace(state=SimpleNamespace(name="STABLE"), members=[member])
        return {names[0]: _Future(desc)}


def test_a_client_stuck_on_a_moved_coordinator_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Any] = []

    def admin(settings: KafkaSettings) -> Any:
        made.append(StaleAdmin() if not made else FreshAdmin())
        return made[-1]

    monkeypatch.setattr(groups, "_admin", admin)
    monkeypatch.setattr(groups, "DESCRIBE_ATTEMPT_S", 0.3)
    state = groups.wait_for_group(KafkaSettings(), "g", 1, timeout_s=20)
    assert (state.state, state.members, state.assigned_partitions) == ("STABLE", 1, 3)
    assert len(made) == 2 and StaleAdmin.calls >= 1


def test_a_group_that_never_settles_times_out_naming_the_last_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(groups, "_admin", lambda settings: StaleAdmin())
    monkeypatch.setattr(groups, "DESCRIBE_ATTEMPT_S", 0.2)
    with pytest.raises(TimeoutError, match="NOT_COORDINATOR"):
        groups.wait_for_group(KafkaSettings(), "g", 1, timeout_s=1.5)
