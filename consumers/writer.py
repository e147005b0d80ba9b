"""Bounded asynchronous Cassandra writes with retry and backoff.

`AsyncWriter` keeps at most `concurrency` requests in flight (session.execute_async).
A submission is the statements of one record (e.g. a prediction's two rows and the
delete of its rejection); they always travel in one request. With `batch_rows` > 1, each
request carries whatever submissions are queued when a slot frees up, up to `batch_rows`
statements and about `batch_bytes`, as one UNLOGGED batch: at a low rate a request holds
one record (no added latency), under load they fill up, which cuts Cassandra's CPU per
row several-fold (BENCHMARKS.md). A request of several records that fails with a
non-retriable error is split: each record is retried alone, so one bad row fails only
its own record. The driver's callbacks run on its I/O thread and only put the outcome on
a queue; all bookkeeping (window, retries, counters) happens in the caller's thread
inside `pump()`, so the sink loop needs no locks.

Error classes (see `is_retriable`, `is_fatal`):
* transient in practice (timeouts, unavailable, overloaded, a replica's WriteFailure, a
  coordinator's ServerError, connection errors): retried with exponential backoff,
  forever; the record stays unreported, so its offset is never committed past it;
* fatal (missing keyspace/table, no permission): no record can get past it; nothing
  more starts and the sink stops;
* anything else (InvalidRequest: a value Cassandra refuses): reported as failed, for
  that record alone.
Writes are idempotent (upserts and deletes at a fixed `USING TIMESTAMP`), so retrying is safe.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from consumers.metrics import track_request
from consumers.records import Write
from consumers.settings import RetrySettings

log = logging.getLogger(__name__)


def _retriable_types() -> tuple[type[BaseException], ...]:
    from cassandra import OperationTimedOut, Unavailable, WriteFailure, WriteTimeout
    from cassandra.cluster import NoHostAvailable
    from cassandra.connection import ConnectionBusy, ConnectionException
    from cassandra.protocol import (
        IsBootstrappingErrorMessage,
        OverloadedErrorMessage,
        ServerError,
    )

    # Replicas or a coordinator that are down, slow, overloaded, starting, or dying
    # mid-request. WriteFailure (a replica answered with an error: disk full, a node
    # shutting down) and ServerError (the coordinator's own exception) are transient in
    # practice; dead-lettering them would leave the image without a row.
    return (
        Unavailable,
        WriteTimeout,
        WriteFailure,
        OperationTimedOut,
        NoHostAvailable,
        ConnectionException,
        ConnectionBusy,
        OverloadedErrorMessage,
        IsBootstrappingErrorMessage,
        ServerError,
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

    def __init__(self, write: Write, error: BaseException, attempts: int) -> None:
        super().__init__(
            f"{write.statement} failed after {attempts} attempt(s): {type(error).__name__}: {error}"
        )
        self.write = write
        self.error = error
        self.attempts = attempts


@dataclass
class _Job:
    """One submission: the statements of one record, always sent in one request."""

    writes: tuple[Write, ...]
    owner: Any
    attempts: int = 0
    # Set after its batch failed for a reason that is not retriable: from then on this
    # record goes alone, so the error lands on the record that caused it.
    solo: bool = False

    @property
    def size(self) -> int:
        return sum(estimated_size(w.params) for w in self.writes)


def estimated_size(value: Any) -> int:
    """Rough serialized size of a bound value, for capping a batch's bytes."""
    if isinstance(value, str | bytes | bytearray):
        return len(value) + 4
    if isinstance(value, list | tuple | set | frozenset):
        return 4 + sum(estimated_size(v) for v in value)
    if isinstance(value, dict):
        return 4 + sum(estimated_size(k) + estimated_size(v) for k, v in value.items())
    return 8


class _BatchWarningFilter(logging.Filter):
    """Lets the first server warning about the sink's own batches through, then drops them.

    Clusters with default settings warn on every multi-partition or >5 KiB UNLOGGED
    batch, and the driver logs each one; the sink's batches are deliberate (see the
    module doc), so one line says so and the rest would only be noise.
    """

    MARKERS = ("Unlogged batch covering", "exceeding specified threshold")

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if not any(m in msg for m in self.MARKERS):
            return True
        self.seen += 1
        if self.seen == 1:
            record.msg = "%s (the sink batches on purpose; further batch warnings are not logged)"
            record.args = (msg,)
            return True
        return False


_batch_warning_filter = _BatchWarningFilter()


def unlogged_batch(bound: list[Any], consistency: Any) -> Any:
    """One UNLOGGED batch of bound statements. Not logged: each row is an idempotent
    upsert with its own timestamp, so a partly applied batch is completed by the retry."""
    from cassandra.query import BatchStatement, BatchType

    batch = BatchStatement(batch_type=BatchType.UNLOGGED, consistency_level=consistency)
    for b in bound:
        batch.add(b)
    batch.is_idempotent = True
    return batch


@dataclass
class WriterStats:
    rows_written: int = 0  # upserts acknowledged (the deletes that go with them not counted)
    requests: int = 0
    # Batches that failed with a non-retriable error and were retried row by row.
    batches_split: int = 0
    retries: int = 0
    failed: int = 0
    last_error: str = ""
    errors_by_class: dict[str, int] = field(default_factory=dict)


Completion = tuple[Any, Write, "WriteFailed | None"]
_Event = tuple[list[_Job], "BaseException | None"]


class AsyncWriter:
    """Submit writes with an owner token; `pump()` returns (owner, write, failure|None)."""

    def __init__(
        self,
        session: Any,
        prepared: dict[str, Any],
        *,
        concurrency: int,
        retry: RetrySettings,
        batch_rows: int = 1,
        batch_bytes: int = 20_000,
        clock: Callable[[], float] = time.monotonic,
        make_batch: Callable[[list[Any], Any], Any] | None = None,
    ) -> None:
        self._session = session
        self._prepared = prepared
        self._concurrency = concurrency
        self._batch_rows = max(1, batch_rows)
        self._batch_bytes = batch_bytes
        self._make_batch = make_batch or unlogged_batch
        # Every record of several statements is a batch, whatever `batch_rows` says.
        proto = logging.getLogger("cassandra.protocol")
        if _batch_warning_filter not in proto.filters:
            proto.addFilter(_batch_warning_filter)
        # A batch takes the consistency its statements were prepared with.
        first = next(iter(prepared.values()), None)
        self._consistency = getattr(first, "consistency_level", None)
        # A job taken out of the queues that did not fit the batch being built.
        self._carry: _Job | None = None
        self._retry = retry
        self._clock = clock
        self._queued: deque[_Job] = deque()
        self._retry_heap: list[tuple[float, int, _Job]] = []
        self._seq = itertools.count()
        self._events: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        self.in_flight = 0  # requests
        self._jobs_in_flight = 0
        self.stats = WriterStats()
        # Set by an error no record can get past (see is_fatal); nothing starts after it.
        self.fatal: WriteFailed | None = None

    # -- submission ------------------------------------------------------------------
    def submit(self, writes: Write | Sequence[Write], owner: Any) -> None:
        """Queue one record's statements; they go in one request, and each is reported
        by `pump()` as (owner, write, failure|None)."""
        group = (writes,) if isinstance(writes, Write) else tuple(writes)
        if not group:
            raise ValueError("nothing to write")
        self._queued.append(_Job(group, owner))
        if self._batch_rows == 1:
            self._start_ready()
        # Batching: requests start in pump(), once the caller has queued all it has.

    @property
    def backlog(self) -> int:
        """Submissions not yet finished: queued, waiting to retry, or in flight."""
        return (
            len(self._queued)
            + len(self._retry_heap)
            + self._jobs_in_flight
            + (self._carry is not None)
        )

    @property
    def waiting_retry(self) -> int:
        return len(self._retry_heap)

    def _cancelled(self, job: _Job) -> bool:
        return bool(getattr(job.owner, "cancelled", False))

    def _start(self, jobs: list[_Job]) -> None:
        self.in_flight += 1
        self._jobs_in_flight += len(jobs)
        self.stats.requests += 1
        for job in jobs:
            job.attempts += 1
        try:
            bound = [
                self._prepared[w.statement].bind(w.bind_values()) for j in jobs for w in j.writes
            ]
            request = bound[0] if len(bound) == 1 else self._make_batch(bound, self._consistency)
            future = self._session.execute_async(request)
        except Exception as exc:  # raised before the request left (e.g. bad bind values)
            self._events.put((jobs, exc))
            return
        track_request(future, [w.statement for j in jobs for w in j.writes])
        future.add_callbacks(
            callback=lambda _rows, js=jobs: self._events.put((js, None)),
            errback=lambda exc, js=jobs: self._events.put((js, exc)),
        )

    def _next_job(self, now: float) -> _Job | None:
        """The next write to start: a carried one, a due retry, then the queue."""
        while True:
            if self._carry is not None:
                job, self._carry = self._carry, None
            elif self._retry_heap and self._retry_heap[0][0] <= now:
                job = heapq.heappop(self._retry_heap)[2]
            elif self._queued:
                job = self._queued.popleft()
            else:
                return None
            if not self._cancelled(job):
                return job

    def _start_ready(self) -> None:
        now = self._clock()
        while self.fatal is None and self.in_flight < self._concurrency:
            job = self._next_job(now)
            if job is None:
                return
            # A record always goes whole, even when it alone exceeds the caps.
            jobs = [job]
            size, rows = job.size, len(job.writes)
            while not job.solo and rows < self._batch_rows:
                nxt = self._next_job(now)
                if nxt is None:
                    break
                nsize = nxt.size
                if (
                    nxt.solo
                    or size + nsize > self._batch_bytes
                    or rows + len(nxt.writes) > self._batch_rows
                ):
                    self._carry = nxt
                    break
                jobs.append(nxt)
                size += nsize
                rows += len(nxt.writes)
            self._start(jobs)

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

    def _handle(self, event: _Event, done: list[Completion]) -> None:
        sent, exc = event
        self.in_flight -= 1
        self._jobs_in_flight -= len(sent)
        if exc is None:
            self.stats.rows_written += sum(not w.is_delete for job in sent for w in job.writes)
            done.extend((job.owner, w, None) for job in sent for w in job.writes)
            return
        name = type(exc).__name__
        self.stats.errors_by_class[name] = self.stats.errors_by_class.get(name, 0) + 1
        self.stats.last_error = f"{name}: {exc}"
        jobs = [job for job in sent if not self._cancelled(job)]
        if is_fatal(exc):
            if self.fatal is None:
                first = jobs[0] if jobs else None
                self.fatal = WriteFailed(
                    first.writes[0] if first else Write("", (), 0),
                    exc,
                    first.attempts if first else 0,
                )
                log.critical("stopping writes: %s", self.fatal)
            # Never reported: their records stay unsettled.
            self._queued.extendleft(reversed(jobs))
            return
        if is_retriable(exc):
            for job in jobs:
                delay = backoff_s(self._retry, job.attempts)
                self.stats.retries += 1
                log.debug(
                    "retrying %s for %r in %.2fs (attempt %d): %s: %s",
                    job.writes[0].statement,
                    job.writes[0].params[0],
                    delay,
                    job.attempts,
                    name,
                    exc,
                )
                heapq.heappush(self._retry_heap, (self._clock() + delay, next(self._seq), job))
            return
        # Whether the request held other records is decided on what was sent, not on
        # what survives cancellation: a survivor of a shared request may be innocent.
        if len(sent) > 1:
            # One record may have spoiled the batch: retry each alone, at once; this
            # attempt does not count against them.
            self.stats.batches_split += 1
            log.warning(
                "batch of %d records failed (%s: %s); retrying them one by one",
                len(sent),
                name,
                exc,
            )
            for job in jobs:
                job.solo = True
                job.attempts -= 1
            self._queued.extendleft(reversed(jobs))
            return
        for job in jobs:
            self.stats.failed += 1
            for w in job.writes:
                done.append((job.owner, w, WriteFailed(w, exc, job.attempts)))


def prepare_writes(session: Any, statements: dict[str, str], consistency: int) -> dict[str, Any]:
    """Prepare each write at `consistency`, marked idempotent (fixed timestamp upserts)."""
    prepared = {}
    for name, cql in statements.items():
        ps = session.prepare(cql)
        ps.consistency_level = consistency
        ps.is_idempotent = True
        prepared[name] = ps
    return prepared
