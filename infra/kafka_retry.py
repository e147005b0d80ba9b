"""One retry helper for Kafka admin and metadata calls (watermarks, group offsets, topics).

`call(fn, what)` runs `fn` and retries it while it fails with a retriable Kafka error
(a leader move, a coordinator change, a broker restarting, a request timeout) with
capped exponential backoff and jitter, until a deadline. Then, or at once for an error
that retrying cannot fix, it raises `KafkaCallFailed`: one exception type whose message
is one line a CLI can print as is, keeping the last Kafka error and the attempt count.

A `Deadline` can be shared by several calls (a list_topics, then one watermark query per
partition) so a multi-step probe has one time budget, not one per step.

Pure apart from the clock and the sleep, both injectable for tests; no client is built here.
"""

from __future__ import annotations

import concurrent.futures
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from confluent_kafka import KafkaError, KafkaException

log = logging.getLogger(__name__)
T = TypeVar("T")

# Retried whatever librdkafka's own `retriable()` flag says: the errors of a leader
# election, a coordinator move, a broker going away or coming back, and timeouts.
RETRIABLE_CODES = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.NOT_CONTROLLER,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.BROKER_NOT_AVAILABLE,
        KafkaError.REPLICA_NOT_AVAILABLE,
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.UNKNOWN_LEADER_EPOCH,
        KafkaError.OFFSET_NOT_AVAILABLE,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._WAIT_COORD,
        KafkaError._NODE_UPDATE,
        KafkaError._RESOLVE,
    }
)

DEFAULT_DEADLINE_S = 60.0


class KafkaCallFailed(RuntimeError):
    """A Kafka admin/metadata call failed for good: not retriable, or out of time.

    `str()` is one line for a CLI; `error` is the last KafkaError (None for a timeout
    that carried none) and `cause` the last exception."""

    def __init__(
        self, what: str, cause: BaseException, attempts: int, elapsed_s: float, retriable: bool
    ) -> None:
        self.what = what
        self.cause = cause
        self.error = kafka_error(cause)
        self.attempts = attempts
        self.elapsed_s = elapsed_s
        self.retriable = retriable
        why = (
            f"still failing after {attempts} attempts in {elapsed_s:.1f}s"
            if retriable
            else "not retriable"
        )
        super().__init__(f"Kafka {what} failed ({why}): {describe(cause)}")


def kafka_error(exc: BaseException) -> KafkaError | None:
    """The KafkaError an exception carries (KafkaException wraps one in args[0])."""
    if isinstance(exc, KafkaError):
        return exc
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def describe(exc: BaseException) -> str:
    """One line: the Kafka error name and text, else the exception's class and text."""
    err = kafka_error(exc)
    if err is not None:
        return f"{err.name()}: {err.str()}".replace("\n", " ")
    text = str(exc).replace("\n", " ")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def is_retriable(exc: BaseException) -> bool:
    """Worth another try: a retriable Kafka error, or a timeout waiting for a future."""
    err = kafka_error(exc)
    if err is not None:
        return err.code() in RETRIABLE_CODES or bool(err.retriable())
    return isinstance(exc, TimeoutError | concurrent.futures.TimeoutError)


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with full jitter (so many clients do not retry in step)."""

    first_s: float = 0.1
    max_s: float = 2.0
    factor: float = 2.0

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        cap = min(self.max_s, self.first_s * self.factor ** max(0, attempt - 1))
        return cap * (0.5 + 0.5 * rand())


class Deadline:
    """A point in time shared by several calls; `left()` is never negative."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self.at = clock() + seconds

    def left(self) -> float:
        return max(0.0, self.at - self.clock())

    def passed(self) -> bool:
        return self.clock() >= self.at


def call(
    fn: Callable[[], T],
    what: str,
    *,
    deadline: Deadline | float = DEFAULT_DEADLINE_S,
    backoff: Backoff = Backoff(),
    retriable: Callable[[BaseException], bool] = is_retriable,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Return `fn()`, retrying retriable failures until `deadline` (seconds or shared).

    Raises KafkaCallFailed with the last error when the deadline passes or an error is
    not retriable. `fn` should take its own timeouts from `deadline.left()` when it can.
    """
    dl = deadline if isinstance(deadline, Deadline) else Deadline(deadline)
    start = dl.clock()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified right below
            elapsed = dl.clock() - start
            if not retriable(exc):
                raise KafkaCallFailed(what, exc, attempt, elapsed, retriable=False) from exc
            pause = backoff.delay(attempt)
            if dl.left() <= pause:
                raise KafkaCallFailed(what, exc, attempt, elapsed, retriable=True) from exc
            log.info(
                "Kafka %s: %s (attempt %d); retrying in %.2fs", what, describe(exc), attempt, pause
            )
            sleep(pause)


def check_metadata(md: object, topics: list[str]) -> None:
    """Raise a retriable KafkaException if a topic's metadata is missing or has an error.

    A metadata answer given during a leader election can lack a topic, carry a topic
    error, or hold a partition without a leader; each means "ask again", not "absent".
    A topic the cluster does not know raises UNKNOWN_TOPIC_OR_PART (not retried).
    """
    md_topics = getattr(md, "topics", {})
    for t in topics:
        tm = md_topics.get(t)
        if tm is None:
            raise KafkaException(
                KafkaError(
                    KafkaError.UNKNOWN_TOPIC_OR_PART, f"topic {t} not in the cluster's metadata"
                )
            )
        if tm.error is not None:
            raise KafkaException(tm.error)
        for p in tm.partitions.values():
            if p.leader < 0:
                raise KafkaException(
                    p.error
                    or KafkaError(KafkaError.LEADER_NOT_AVAILABLE, f"{t}[{p.id}] has no leader")
                )
