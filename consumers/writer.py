"""Bounded asynchronous Cassandra writes with retry and backoff.

`AsyncWriter` keeps at most `concurrency` requests in flight (session.execute_async).
The driver's callbacks run on its I/O thread and only put the outcome on a queue; all
bookkeeping (window, retries, counters) happens in the caller's thread inside `pump()`,
so the sink loop needs no locks. Retriable errors are retried with exponential backoff
(forever by default); anything else, or exhausted retries, is reported as failed.
Writes are idempotent upserts with a fixed `USING TIMESTAMP`, so retrying is safe.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from consumers.records import Write
from consumers.settings import RetrySettings

log = logging.getLogger(__name__)


def _retriable_types() -> tuple[type[BaseException], ...]:
    from cassandra import OperationTimedOut, Unavailable, WriteTimeout
    from cassandra.cluster import NoHostAvailable
    from cassandra.connection import ConnectionException
    from cassandra.protocol import IsBootstrappingErrorMessage, OverloadedErrorMessage

    # The four the contract names, plus what a coordinator dying mid-request looks like
    # (connection errors) and a coordinator that is overloaded or still starting. Not
    # retried: WriteFailure (replicas answered with an error), InvalidRequest, ...
    return (
        Unavailable,
        WriteTimeout,
        OperationTimedOut,
        NoHostAvailable,
        ConnectionException,
        OverloadedErrorMessage,
        IsBootstrappingErrorMessage,
    )


_RETRIABLE: tuple[type[BaseException], ...] | None = None


def is_retriable(exc: BaseException) -> bool:
    global _RETRIABLE
    if _RETRIABLE is None:
        _RETRIABLE = _retriable_types()
    return isinstance(exc, _RETRIABLE)


def is_fatal(exc: BaseException) -> bool:
    """Errors about the environment, not the record: every later write would fail too.

    A missing keyspace or table, or missing permissions: dead-lettering would empty the
    topic into the DLQ, so the sink stops instead (offsets stay before these records).
    """
    from cassandra import InvalidRequest, Unauthorized

    if isinstance(exc, Unauthorized):
        return True
    if isinstance(exc, InvalidRequest):
        msg = str(exc).lower()
        return "does not exist" in msg or "unconfigured table" in msg
    return False


def backoff_s(policy: RetrySettings, attempt: int, jitter: float = 0.2) -> float:
    """Delay before retry number `attempt` (1-based): exponential, capped, +/- jitter."""
    base = min(policy.max_backoff_s, policy.initial_backoff_s * policy.multiplier ** (attempt - 1))
    if jitter:
        base *= 1 + random.uniform(-jitter, jitter)
    return base


class WriteFailed(Exception):
    """A write that will not be retried; keeps the driver's exception (with its counts)."""

    def __init__(self, write: Write, error: BaseException, attempts: int, retriable: bool) -> None:
        super().__init__(f"{write.statement} failed after {attempts} attempt(s): "
                         f"{type(error).__name__}: {error}")
        self.write = write
        self.error = error
        self.attempts = attempts
        self.retriable = retriable


@dataclass
class _Job:
    write: Write
    owner: Any
    attempts: int = 0


@dataclass
class WriterStats:
    rows_written: int = 0
    retries: int = 0
    failed: int = 0
    last_error: str = ""
    errors_by_class: dict[str, int] = field(default_factory=dict)


Completion = tuple[Any, Write, "WriteFailed | None"]


class AsyncWriter:
    """Submit writes with an owner token; `pump()` returns (owner, write, failure|None)."""

    def __init__(
        self,
        session: Any,
        prepared: dict[str, Any],
        *,
        concurrency: int,
        retry: RetrySettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._prepared = prepared
        self._concurrency = concurrency
        self._retry = retry
        self._clock = clock
        self._queued: deque[_Job] = deque()
        self._retry_heap: list[tuple[float, int, _Job]] = []
        self._seq = itertools.count()
        self._events: queue.SimpleQueue[tuple[_Job, BaseException | None]] = queue.SimpleQueue()
        self.in_flight = 0
        self.stats = WriterStats()
        # Set by an error no record can get past (see is_fatal); nothing starts after it.
        self.fatal: WriteFailed | None = None

    # -- submission ------------------------------------------------------------------
    def submit(self, write: Write, owner: Any) -> None:
        self._queued.append(_Job(write, owner))
        self._start_ready()

    @property
    def backlog(self) -> int:
        """Writes not yet finished: queued, waiting to retry, or in flight."""
        return len(self._queued) + len(self._retry_heap) + self.in_flight

    @property
    def waiting_retry(self) -> int:
        return len(self._retry_heap)

    def _cancelled(self, job: _Job) -> bool:
        return bool(getattr(job.owner, "cancelled", False))

    def _start(self, job: _Job) -> None:
        job.attempts += 1
        self.in_flight += 1
        try:
            bound = self._prepared[job.write.statement].bind(job.write.bind_values())
            future = self._session.execute_async(bound)
        except Exception as exc:  # raised before the request left (e.g. bad bind values)
            self._events.put((job, exc))
            return
        future.add_callbacks(
            callback=lambda _rows, j=job: self._events.put((j, None)),
            errback=lambda exc, j=job: self._events.put((j, exc)),
        )

    def _start_ready(self) -> None:
        now = self._clock()
        while self.fatal is None and self.in_flight < self._concurrency:
            if self._retry_heap and self._retry_heap[0][0] <= now:
                job = heapq.heappop(self._retry_heap)[2]
            elif self._queued:
                job = self._queued.popleft()
            else:
                return
            if self._cancelled(job):
                continue
            self._start(job)

    # -- completion ------------------------------------------------------------------
    def pump(self, timeout: float = 0.0) -> list[Completion]:
        """Start what fits, wait up to `timeout` for outcomes, return the finished writes."""
        self._start_ready()
        done: list[Completion] = []
        wait = timeout
        if self.in_flight == 0 and self._retry_heap:
            wait = min(timeout, max(0.0, self._retry_heap[0][0] - self._clock()))
        elif self.in_flight == 0:
            wait = 0.0
        try:
            first = self._events.get(timeout=wait) if wait > 0 else self._events.get_nowait()
        except queue.Empty:
            self._start_ready()
            return done
        self._handle(first, done)
        while True:
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                break
            self._handle(ev, done)
        self._start_ready()
        return done

    def _handle(self, event: tuple[_Job, BaseException | None], done: list[Completion]) -> None:
        job, exc = event
        self.in_flight -= 1
        if exc is None:
            self.stats.rows_written += 1
            done.append((job.owner, job.write, None))
            return
        name = type(exc).__name__
        self.stats.errors_by_class[name] = self.stats.errors_by_class.get(name, 0) + 1
        self.stats.last_error = f"{name}: {exc}"
        if self._cancelled(job):
            return
        if is_fatal(exc):
            if self.fatal is None:
                self.fatal = WriteFailed(job.write, exc, job.attempts, retriable=False)
                log.critical("stopping writes: %s", self.fatal)
            self._queued.appendleft(job)  # never reported: its record stays unsettled
            return
        retriable = is_retriable(exc)
        limit = self._retry.max_attempts
        if retriable and (limit == 0 or job.attempts < limit):
            delay = backoff_s(self._retry, job.attempts)
            self.stats.retries += 1
            log.debug("retrying %s for %r in %.2fs (attempt %d): %s: %s", job.write.statement,
                      job.write.params[0], delay, job.attempts, name, exc)
            heapq.heappush(self._retry_heap, (self._clock() + delay, next(self._seq), job))
            return
        self.stats.failed += 1
        done.append((job.owner, job.write, WriteFailed(job.write, exc, job.attempts, retriable)))


def prepare_writes(session: Any, statements: dict[str, str], consistency: int) -> dict[str, Any]:
    """Prepare each write at `consistency`, marked idempotent (fixed timestamp upserts)."""
    prepared = {}
    for name, cql in statements.items():
        ps = session.prepare(cql)
        ps.consistency_level = consistency
        ps.is_idempotent = True
        prepared[name] = ps
    return prepared
