"""infra.kafka_retry: which errors are retried, backoff, the shared deadline, one-line errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException

from infra import kafka_retry
from infra.kafka_retry import Backoff, Deadline, KafkaCallFailed, call, check_metadata


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def failing(errors: list[BaseException], result: str = "ok"):
    calls = {"n": 0}

    def fn() -> str:
        calls["n"] += 1
        if errors:
            raise errors.pop(0)
        return result

    return fn, calls


def kexc(code: int, text: str = "boom") -> KafkaException:
    return KafkaException(KafkaError(code, text))


@pytest.mark.parametrize(
    "code",
    [
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError.REQUEST_TIMED_OUT,
    ],
)
def test_leader_and_coordinator_moves_are_retried_until_success(code: int) -> None:
    clock = FakeClock()
    fn, calls = failing([kexc(code), kexc(code)])
    assert call(fn, "probe", deadline=Deadline(30, clock), sleep=clock.sleep) == "ok"
    assert calls["n"] == 3
    assert len(clock.sleeps) == 2


def test_future_timeouts_are_retried() -> None:
    clock = FakeClock()
    fn, calls = failing([TimeoutError("future")])
    assert call(fn, "probe", deadline=Deadline(30, clock), sleep=clock.sleep) == "ok"
    assert calls["n"] == 2


def test_librdkafka_retriable_flag_is_honoured() -> None:
    err = SimpleNamespace(code=lambda: KafkaError.INVALID_CONFIG, retriable=lambda: True)
    exc = KafkaException(err)
    # SimpleNamespace is no KafkaError: only a real one counts.
    assert not kafka_retry.is_retriable(exc)
    real = KafkaError(KafkaError.INVALID_CONFIG, "x", retriable=True)
    assert kafka_retry.is_retriable(KafkaException(real))


def test_a_non_retriable_error_fails_at_once_with_one_line() -> None:
    clock = FakeClock()
    fn, calls = failing([kexc(KafkaError.TOPIC_AUTHORIZATION_FAILED, "denied\nsecond line")])
    with pytest.raises(KafkaCallFailed) as info:
        call(fn, "watermark offsets of t[0]", deadline=Deadline(30, clock), sleep=clock.sleep)
    assert calls["n"] == 1 and clock.sleeps == []
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("Kafka watermark offsets of t[0] failed (not retriable)")
    assert "TOPIC_AUTHORIZATION_FAILED" in msg
    assert info.value.error is not None
    assert info.value.error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert not info.value.retriable


def test_other_exceptions_are_not_retried() -> None:
    clock = FakeClock()
    fn, calls = failing([KeyError("topic")])
    with pytest.raises(KafkaCallFailed, match="not retriable"):
        call(fn, "probe", deadline=Deadline(30, clock), sleep=clock.sleep)
    assert calls["n"] == 1


def test_deadline_ends_retries_with_the_last_error() -> None:
    clock = FakeClock()
    errors = [kexc(KafkaError.NOT_LEADER_FOR_PARTITION, f"try {i}") for i in range(1000)]
    fn, calls = failing(errors)
    with pytest.raises(KafkaCallFailed) as info:
        call(
            fn,
            "end offsets",
            deadline=Deadline(5.0, clock),
            sleep=clock.sleep,
            backoff=Backoff(first_s=0.1, max_s=1.0),
        )
    exc = info.value
    assert exc.retriable and exc.attempts == calls["n"] > 3
    assert clock.now - 100.0 <= 5.0  # never sleeps past the deadline
    assert "still failing after" in str(exc) and "NOT_LEADER_FOR_PARTITION" in str(exc)
    assert f"try {calls['n'] - 1}" in str(exc)


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    b = Backoff(first_s=0.1, max_s=1.0, factor=2.0)
    assert [b.delay(n, rand=lambda: 1.0) for n in (1, 2, 3, 4, 5, 9)] == [
        0.1,
        0.2,
        0.4,
        0.8,
        1.0,
        1.0,
    ]
    assert b.delay(3, rand=lambda: 0.0) == pytest.approx(0.2)


def test_a_shared_deadline_bounds_several_calls() -> None:
    clock = FakeClock()
    dl = Deadline(3.0, clock)
    fn, _ = failing([kexc(KafkaError._TRANSPORT)] * 2)
    call(fn, "first", deadline=dl, sleep=clock.sleep, backoff=Backoff(first_s=1.0, max_s=1.0))
    spent = clock.now - 100.0
    assert 1.0 <= spent <= 2.0
    fn2, _ = failing([kexc(KafkaError._TRANSPORT)] * 10)
    with pytest.raises(KafkaCallFailed):
        call(fn2, "second", deadline=dl, sleep=clock.sleep, backoff=Backoff(first_s=1.0, max_s=1.0))
    assert clock.now - 100.0 <= 3.0


def _md(topics: dict[str, object]) -> SimpleNamespace:
    return SimpleNamespace(topics=topics)


def _topic(leaders: list[int], error: KafkaError | None = None) -> SimpleNamespace:
    parts = {i: SimpleNamespace(id=i, leader=lead, error=None) for i, lead in enumerate(leaders)}
    return SimpleNamespace(error=error, partitions=parts)


def test_metadata_without_a_leader_is_retriable() -> None:
    with pytest.raises(KafkaException) as info:
        check_metadata(_md({"t": _topic([1, -1, 2])}), ["t"])
    assert kafka_retry.is_retriable(info.value)
    check_metadata(_md({"t": _topic([1, 2, 3])}), ["t"])


def test_metadata_topic_error_and_unknown_topic() -> None:
    err = KafkaError(KafkaError.LEADER_NOT_AVAILABLE, "electing")
    with pytest.raises(KafkaException) as info:
        check_metadata(_md({"t": _topic([1], error=err)}), ["t"])
    assert kafka_retry.is_retriable(info.value)
    with pytest.raises(KafkaException) as info:
        check_metadata(_md({}), ["t"])
    assert not kafka_retry.is_retriable(info.value)
