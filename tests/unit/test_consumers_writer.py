"""The bounded async writer against a fake session (no servers)."""

import pytest
from cassandra import (
    ConsistencyLevel,
    InvalidRequest,
    OperationTimedOut,
    Unauthorized,
    Unavailable,
    WriteFailure,
    WriteTimeout,
)
from cassandra.cluster import NoHostAvailable
from cassandra.connection import ConnectionBusy, ConnectionException, ConnectionShutdown
from cassandra.protocol import IsBootstrappingErrorMessage, OverloadedErrorMessage, ServerError

from consumers.records import DELETE_REJECTION, Write
from consumers.settings import RetrySettings
from consumers.writer import AsyncWriter, is_fatal, is_retriable

CL = ConsistencyLevel.LOCAL_QUORUM


class FakeFuture:
    def __init__(self):
        self.cb = self.eb = None

    def add_callbacks(self, callback, errback):
        self.cb, self.eb = callback, errback


class FakePrepared:
    def bind(self, values):
        return values


class FakeSession:
    """Holds futures until the test resolves them; fails keys listed in `plan` first."""

    def __init__(self, plan=None):
        self.pending: list[tuple[tuple, FakeFuture]] = []
        self.plan = dict(plan or {})  # key -> list of exceptions to raise before success
        self.max_in_flight = 0
        self.calls = 0

    def execute_async(self, bound):
        f = FakeFuture()
        self.pending.append((bound, f))
        self.calls += 1
        self.max_in_flight = max(self.max_in_flight, len(self.pending))
        return f

    def resolve_all(self):
        pending, self.pending = self.pending, []
        for bound, f in pending:
            # A batch (see make_batch) fails with the first planned error of any of its rows.
            keys = [key_of(b) for b in bound[1]] if bound[0] == "batch" else [key_of(bound)]
            errors = next((self.plan[k] for k in keys if self.plan.get(k)), [])
            if errors:
                f.eb(errors.pop(0))
            else:
                f.cb([])


def key_of(bound):
    """The key a bound write is for (upserts bind it first, deletes after the timestamp)."""
    return next(v for v in bound if isinstance(v, str))


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def write(key):
    return Write("w", (key,), 1000)


def delete(key):
    return Write(DELETE_REJECTION, (key,), 1000)


def make_batch(bound, consistency):
    return ("batch", tuple(bound))


def make(session, concurrency=4, clock=None, batch_rows=1, batch_bytes=20_000):
    return AsyncWriter(
        session,
        {"w": FakePrepared(), DELETE_REJECTION: FakePrepared()},
        concurrency=concurrency,
        retry=RetrySettings(initial_backoff_s=0.1, max_backoff_s=1.0),
        clock=clock or Clock(),
        batch_rows=batch_rows,
        batch_bytes=batch_bytes,
        make_batch=make_batch,
    )


def sizes(session):
    return [len(b[1]) if b[0] == "batch" else 1 for b, _ in session.pending]


def run_until_idle(writer, session, clock, rounds=100):
    done = []
    for _ in range(rounds):
        session.resolve_all()
        done += writer.pump(0)
        clock.t += 2.0  # past any backoff
        if writer.backlog == 0:
            break
    return done


def test_window_bounds_requests_in_flight():
    s, clock = FakeSession(), Clock()
    w = make(s, concurrency=4, clock=clock)
    for i in range(50):
        w.submit(write(f"k{i}"), owner=i)
    assert w.in_flight == 4 and w.backlog == 50
    done = run_until_idle(w, s, clock)
    assert s.max_in_flight == 4
    assert sorted(o for o, _, f in done if f is None) == list(range(50))
    assert w.stats.rows_written == 50 and w.backlog == 0


def test_retriable_errors_are_retried_with_backoff_then_succeed():
    cl = ConsistencyLevel.LOCAL_QUORUM
    s = FakeSession(
        {
            "k1": [
                Unavailable("down", cl, 2, 1),
                WriteTimeout(
                    "slow", consistency=cl, required_responses=2, received_responses=1, write_type=0
                ),
            ]
        }
    )
    clock = Clock()
    w = make(s, clock=clock)
    w.submit(write("k1"), owner="a")
    s.resolve_all()
    assert w.pump(0) == [] and w.waiting_retry == 1 and w.in_flight == 0
    assert s.calls == 1  # not re-sent before its backoff is due
    clock.t += 2.0
    done = run_until_idle(w, s, clock)
    assert [(o, f) for o, _, f in done] == [("a", None)]
    assert w.stats.retries == 2 and s.calls == 3


def test_non_retriable_error_fails_at_once_and_keeps_the_cause():
    err = InvalidRequest("bad")
    s, clock = FakeSession({"k": [err]}), Clock()
    w = make(s, clock=clock)
    w.submit(write("k"), owner="x")
    ((owner, _, failure),) = run_until_idle(w, s, clock)
    assert owner == "x" and failure.error is err
    assert failure.attempts == 1 and w.stats.failed == 1


# What each transient error looks like when the driver raises it.
TRANSIENT = [
    Unavailable("down", CL, 2, 1),
    WriteTimeout("slow", consistency=CL, required_responses=2, received_responses=1, write_type=0),
    WriteFailure(
        "replica error",
        consistency=CL,
        required_responses=2,
        received_responses=1,
        failures=1,
        error_code_map={},
        write_type=0,
    ),
    ServerError(0, "java.lang.RuntimeException", None),
    OperationTimedOut("client timeout"),
    NoHostAvailable("none", {}),
    ConnectionException("reset"),
    ConnectionShutdown("closed"),
    ConnectionBusy("busy"),
    OverloadedErrorMessage(0, "overloaded", None),
    IsBootstrappingErrorMessage(0, "bootstrapping", None),
]


@pytest.mark.parametrize("err", TRANSIENT, ids=lambda e: type(e).__name__)
def test_each_transient_error_is_retried_forever_and_never_reported(err):
    s, clock = FakeSession({"k": [err] * 60}), Clock()
    w = make(s, clock=clock)
    w.submit(write("k"), owner="x")
    while w.stats.retries < 60:  # far past any old attempt limit: pending, never failed
        s.resolve_all()
        assert w.pump(0) == []
        clock.t += 10.0
    assert w.backlog == 1 and w.stats.failed == 0
    assert not is_fatal(err)
    done = run_until_idle(w, s, clock)  # the cluster is back
    assert [(o, f) for o, _, f in done] == [("x", None)] and s.calls == 61


@pytest.mark.parametrize(
    "err, fatal",
    [
        (InvalidRequest("Key length of 70000 is longer than maximum of 65535"), False),
        (InvalidRequest("Batch too large"), False),
        (InvalidRequest("keyspace vision does not exist"), True),
        (InvalidRequest("unconfigured table rejections"), True),
        (Unauthorized("no MODIFY permission"), True),
    ],
    ids=["key-too-long", "batch-too-large", "no-keyspace", "no-table", "unauthorized"],
)
def test_refused_and_fatal_errors_are_told_apart(err, fatal):
    assert not is_retriable(err) and is_fatal(err) is fatal
    s, clock = FakeSession({"k": [err]}), Clock()
    w = make(s, clock=clock)
    w.submit(write("k"), owner="x")
    done = run_until_idle(w, s, clock, rounds=3)
    if fatal:  # never reported: its record stays open, and nothing more starts
        assert done == [] and w.fatal is not None and w.fatal.error is err
    else:
        assert [(o, f.error) for o, _, f in done] == [("x", err)] and w.fatal is None


def test_cancelled_owner_is_dropped():
    class Owner:
        cancelled = False

    s, clock = FakeSession(), Clock()
    w = make(s, concurrency=1, clock=clock)
    a, b = Owner(), Owner()
    w.submit(write("a"), a)
    w.submit(write("b"), b)
    b.cancelled = True
    done = run_until_idle(w, s, clock)
    assert [o for o, _, _ in done] == [a] and s.calls == 1


def test_classification():
    assert all(is_retriable(e) for e in TRANSIENT)
    assert not is_retriable(InvalidRequest("x")) and not is_retriable(ValueError())


def test_a_records_statements_go_in_one_request_and_are_each_reported():
    s, clock = FakeSession(), Clock()
    w = make(s, concurrency=4, clock=clock, batch_rows=1)
    w.submit([write("a"), write("a2"), delete("a")], owner="rec")
    assert sizes(s) == [3]  # one batch of 3, even with batch_rows=1
    done = run_until_idle(w, s, clock)
    assert [(o, wr.statement) for o, wr, f in done if f is None] == [
        ("rec", "w"),
        ("rec", "w"),
        ("rec", DELETE_REJECTION),
    ]
    assert w.stats.rows_written == 2  # the delete is not a row


def test_a_failing_record_fails_all_its_statements():
    bad = InvalidRequest("value too large")
    s, clock = FakeSession({"a": [bad]}), Clock()
    w = make(s, clock=clock)
    w.submit([write("a"), delete("a")], owner="rec")
    done = run_until_idle(w, s, clock)
    assert [(o, f.error) for o, _, f in done] == [("rec", bad), ("rec", bad)]
    assert w.stats.failed == 1 and w.stats.batches_split == 0


def test_delete_binds_its_timestamp_first():
    assert delete("a").bind_values() == (1000, "a") and write("a").bind_values() == ("a", 1000)


def test_fatal_error_is_not_reported_and_stops_new_writes():
    gone = InvalidRequest("keyspace vision does not exist")
    s, clock = FakeSession({"k0": [gone]}), Clock()
    w = make(s, concurrency=1, clock=clock)
    w.submit(write("k0"), owner="a")
    w.submit(write("k1"), owner="b")
    s.resolve_all()
    assert w.pump(0) == [] and w.fatal is not None and w.fatal.error is gone
    assert s.calls == 1 and w.in_flight == 0  # k1 never started


def test_batches_fill_only_when_requests_queue_up():
    s, clock = FakeSession(), Clock()
    w = make(s, concurrency=2, clock=clock, batch_rows=8)
    w.submit(write("lone"), owner="lone")
    assert s.calls == 0  # batching: nothing leaves before pump()
    w.pump(0)
    assert sizes(s) == [1]  # a lone row is not held back to fill a batch
    for i in range(40):
        w.submit(write(f"k{i}"), owner=i)
    w.pump(0)
    assert sizes(s) == [1, 8] and w.in_flight == 2 and w.backlog == 41
    done = run_until_idle(w, s, clock)
    assert sorted(o for o, _, f in done if f is None and o != "lone") == list(range(40))
    assert w.stats.rows_written == 41 and w.stats.requests == 1 + 5 and s.max_in_flight == 2


def test_batch_bytes_cap():
    s, clock = FakeSession(), Clock()
    w = make(s, concurrency=1, clock=clock, batch_rows=100, batch_bytes=2000)
    for i in range(10):
        w.submit(Write("w", (f"k{i}", "x" * 600), 1000), owner=i)
    w.pump(0)
    assert sizes(s) == [3]
    run_until_idle(w, s, clock)
    assert w.stats.rows_written == 10 and w.stats.requests == 4


def test_failed_batch_is_split_so_only_the_bad_row_fails():
    bad = InvalidRequest("value too large")
    s, clock = FakeSession({"k2": [bad, bad]}), Clock()
    w = make(s, concurrency=1, clock=clock, batch_rows=8)
    for i in range(5):
        w.submit(write(f"k{i}"), owner=i)
    done = run_until_idle(w, s, clock)
    failed = [(o, f) for o, _, f in done if f is not None]
    assert [o for o, _ in failed] == [2] and failed[0][1].error is bad
    assert failed[0][1].attempts == 1  # the batch attempt does not count against the row
    assert sorted(o for o, _, f in done if f is None) == [0, 1, 3, 4]
    assert w.stats.batches_split == 1 and w.stats.requests == 1 + 5


def test_retriable_batch_failure_retries_every_row():
    cl = ConsistencyLevel.LOCAL_QUORUM
    s, clock = FakeSession({"k1": [Unavailable("down", cl, 2, 1)]}), Clock()
    w = make(s, concurrency=1, clock=clock, batch_rows=8)
    for i in range(4):
        w.submit(write(f"k{i}"), owner=i)
    w.pump(0)
    s.resolve_all()
    assert w.pump(0) == [] and w.waiting_retry == 4 and w.stats.retries == 4
    done = run_until_idle(w, s, clock)
    assert sorted(o for o, _, f in done if f is None) == [0, 1, 2, 3]
    assert w.stats.failed == 0 and w.stats.batches_split == 0


class Owner:
    def __init__(self):
        self.cancelled = False


def test_batch_split_counts_the_request_not_the_rows_left_after_a_revoke():
    """A batch of three fails on a bad row; two of its records were revoked meanwhile.

    The survivor may be innocent: it is retried alone (not failed because it is alone)."""
    bad = InvalidRequest("value too large")
    s, clock = FakeSession({"bad": [bad, bad]}), Clock()
    w = make(s, concurrency=1, clock=clock, batch_rows=8)
    good, revoked_bad, revoked = Owner(), Owner(), Owner()
    w.submit(write("good"), good)
    w.submit(write("bad"), revoked_bad)
    w.submit(write("other"), revoked)
    w.pump(0)
    assert sizes(s) == [3]
    revoked_bad.cancelled = revoked.cancelled = True  # revoked while the request was out
    done = run_until_idle(w, s, clock)
    assert [(o, f) for o, _, f in done] == [(good, None)]
    assert w.stats.batches_split == 1 and w.stats.failed == 0 and s.calls == 2


def test_fatal_error_in_a_batch_keeps_every_row_unreported():
    gone = InvalidRequest("unconfigured table predictions")
    s, clock = FakeSession({"k0": [gone]}), Clock()
    w = make(s, concurrency=1, clock=clock, batch_rows=8)
    for i in range(3):
        w.submit(write(f"k{i}"), owner=i)
    w.pump(0)
    s.resolve_all()
    assert w.pump(0) == [] and w.fatal is not None and w.backlog == 3 and w.in_flight == 0


def test_server_batch_warnings_are_logged_once(caplog):
    import logging

    make(FakeSession(), batch_rows=8)
    proto = logging.getLogger("cassandra.protocol")
    with caplog.at_level(logging.WARNING, logger="cassandra.protocol"):
        for _ in range(3):
            proto.warning("Server warning: Unlogged batch covering 64 partitions detected")
        proto.warning("Server warning: something else")
    texts = [r.getMessage() for r in caplog.records]
    assert sum("Unlogged batch covering" in t for t in texts) <= 1
    assert any("something else" in t for t in texts)
