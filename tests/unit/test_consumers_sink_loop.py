"""The sink loop with fake Kafka and Cassandra clients: offsets follow the acks, in order."""

from __future__ import annotations

import threading
import time
from collections import namedtuple
from typing import Any

import pytest
from cassandra import InvalidRequest, Unavailable

from consumers.settings import RetrySettings, SinkSection, SinkSettings
from consumers.sink import Sink, SinkClients
from schemas import codec, dead_letter, topics

P = topics.PREDICTIONS
Row = namedtuple("Row", "replication")
Col = namedtuple("Col", "table_name column_name type")


def wait_for(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


class Msg:
    def __init__(self, topic, partition, offset, key, value, headers, ts=1_700_000_000_000):
        self._t, self._p, self._o = topic, partition, offset
        self._k, self._v, self._h, self._ts = key, value, headers, ts

    def topic(self): return self._t
    def partition(self): return self._p
    def offset(self): return self._o
    def key(self): return self._k
    def value(self): return self._v
    def headers(self): return self._h
    def timestamp(self): return (1, self._ts)
    def error(self): return None


class FakeConsumer:
    def __init__(self, messages):
        self.queue = list(messages)
        self.stored: list[dict] = []
        self.commits: list[dict] = []
        self.assigned: list[Any] = []
        self.revoke_next: list[Any] | None = None
        self.lock = threading.Lock()

    def subscribe(self, topics, on_assign, on_revoke, on_lost):
        self.on_assign, self.on_revoke = on_assign, on_revoke

    def consume(self, n, timeout):
        from confluent_kafka import TopicPartition

        if not self.assigned:
            tps = sorted({(m.topic(), m.partition()) for m in self.queue})
            self.assigned = [TopicPartition(t, p) for t, p in tps]
            self.on_assign(self, self.assigned)
        if self.revoke_next is not None:
            revoked, self.revoke_next = self.revoke_next, None
            self.on_revoke(self, revoked)
        with self.lock:
            out, self.queue = self.queue[:n], self.queue[n:]
        if not out:
            time.sleep(min(timeout, 0.005))
        return out

    def assignment(self): return list(self.assigned)
    def pause(self, tps): pass
    def resume(self, tps): pass
    def position(self, tps): return tps
    def get_watermark_offsets(self, tp, cached=False): return (0, 0)

    def store_offsets(self, offsets):
        self.stored.append({(o.topic, o.partition): o.offset for o in offsets})

    def commit(self, offsets, asynchronous=True):
        assert asynchronous is False
        self.commits.append({(o.topic, o.partition): o.offset for o in offsets})

    def close(self):
        self.on_revoke(self, self.assigned)

    def last_stored(self, tp):
        vals = [s[tp] for s in self.stored if tp in s]
        return vals[-1] if vals else None


class FakeProducer:
    def __init__(self):
        self.sent: list[tuple] = []
        self.pending: list[tuple] = []

    def produce(self, topic, key, value, headers, on_delivery):
        self.pending.append((topic, key, value, headers, on_delivery))

    def poll(self, timeout=0):
        pending, self.pending = self.pending, []
        for topic, key, value, headers, cb in pending:
            self.sent.append((topic, key, value, headers))
            cb(None, None)
        return len(pending)

    def flush(self, timeout=None):
        self.poll()
        return 0

    def __len__(self):
        return len(self.pending)


class Future:
    def add_callbacks(self, callback, errback):
        self.cb, self.eb = callback, errback


class Prepared:
    def __init__(self, cql):
        self.cql = cql

    def bind(self, values):
        return (self.cql, tuple(values))


class FakeSession:
    """execute_async holds each request until the test answers it."""

    def __init__(self, failures=None):
        self.lock = threading.Lock()
        self.requests: list[tuple[tuple, Future]] = []
        self.failures = dict(failures or {})  # image id -> [exceptions]

    def execute(self, query, params=None):
        if "system_schema.keyspaces" in query:
            return [Row({"class": "NetworkTopologyStrategy", "datacenter1": "3"})]
        return [Col(t, "image_id", "text") for t in ("predictions", "predictions_by_label",
                                                        "rejections")]

    def prepare(self, cql):
        return Prepared(cql)

    def execute_async(self, bound):
        f = Future()
        with self.lock:
            self.requests.append((bound, f))
        return f

    def answer(self, pick):
        """Answer the held requests for which pick(image_id) is true."""
        with self.lock:
            chosen = [(b, f) for b, f in self.requests if pick(image_of(b))]
            self.requests = [(b, f) for b, f in self.requests if not pick(image_of(b))]
        for bound, f in chosen:
            errs = self.failures.get(image_of(bound))
            if errs:
                f.eb(errs.pop(0))
            else:
                f.cb([])
        return len(chosen)


def image_of(bound):
    cql, values = bound
    return values[1] if "predictions_by_label" in cql else values[0]


class FakeCluster:
    def shutdown(self):
        pass


def pred_msg(offset, image_id, partition=0):
    rec = {"image_id": image_id, "produced_at_ms": 1, "raw_topic": "r", "raw_partition": 0,
           "raw_offset": 0, "model_name": "m", "model_version": "1",
           "top_k": [{"class_index": 1, "label": "cat", "score": 0.5}],
           "processed_at_ms": 1000 + offset}
    value, headers = codec.encode(codec.PREDICTION, rec)
    return Msg(P, partition, offset, image_id.encode(), value, headers)


class Harness:
    def __init__(self, messages, failures=None, **sink):
        self.consumer = FakeConsumer(messages)
        self.producer = FakeProducer()
        self.session = FakeSession(failures)
        # One row per request: the fake session answers per image (the writer's batching
        # has its own tests in test_consumers_writer.py; integration tests use both).
        section = SinkSection(**({"concurrency": 64, "write_batch_rows": 1,
                                  "health_interval_s": 0.05,
                                  "drain_timeout_s": 5.0,
                                  "retry": RetrySettings(initial_backoff_s=0.01,
                                                         max_backoff_s=0.02)} | sink))
        clients = SinkClients(
            cassandra=lambda _s: (FakeCluster(), self.session),
            consumer=lambda _conf: self.consumer,
            producer=lambda _conf: self.producer,
        )
        self.sink = Sink(SinkSettings(sink=section), group_id="g", clients=clients)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            self.sink.run(self.stop)
        except BaseException as exc:  # noqa: BLE001
            self.error = exc

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()
        if self.error and exc[0] is None:
            raise self.error

    def held(self):
        with self.session.lock:
            return len(self.session.requests)


def test_offsets_are_stored_only_up_to_the_first_unacknowledged_record():
    msgs = [pred_msg(i, f"img-{i}") for i in range(4)]
    with Harness(msgs) as h:
        wait_for(lambda: h.held() == 8, what="all 8 writes in flight")
        h.session.answer(lambda i: i in ("img-1", "img-2", "img-3"))
        wait_for(lambda: h.sink.rows_written == 6, what="6 acks processed")
        # Record 0 is unacknowledged: nothing may be stored, however many later acks.
        assert h.consumer.last_stored((P, 0)) is None
        h.session.answer(lambda i: i == "img-0")
        wait_for(lambda: h.consumer.last_stored((P, 0)) == 4, what="offset 4 stored")
    assert h.consumer.commits[-1] == {(P, 0): 4}


def test_a_record_is_done_only_when_both_of_its_rows_are_acknowledged():
    with Harness([pred_msg(0, "img-0")]) as h:
        wait_for(lambda: h.held() == 2, what="2 writes")
        with h.session.lock:
            bound, fut = h.session.requests.pop(0)  # only the first of the two rows
        fut.cb([])
        wait_for(lambda: h.sink.rows_written == 1, what="one ack")
        assert h.consumer.last_stored((P, 0)) is None
        h.session.answer(lambda _i: True)
        wait_for(lambda: h.consumer.last_stored((P, 0)) == 1, what="stored after both")


def test_retriable_error_is_retried_and_then_stored():
    failures = {"img-0": [Unavailable("down", 6, 2, 1)]}
    with Harness([pred_msg(0, "img-0")], failures=failures) as h:
        def answered_all() -> bool:
            h.session.answer(lambda _i: True)  # the first answer fails, the retry succeeds
            return h.sink.rows_written == 2

        wait_for(answered_all, what="retry then success")
        wait_for(lambda: h.consumer.last_stored((P, 0)) == 1, what="stored")
    assert h.sink._writer.stats.retries == 1
    assert h.producer.sent == []


def test_refused_write_goes_to_the_sink_dlq_before_its_offset_is_stored():
    failures = {"img-0": [InvalidRequest("too big")]}
    with Harness([pred_msg(0, "img-0"), pred_msg(1, "img-1")], failures=failures) as h:
        wait_for(lambda: h.held() == 4, what="4 writes")
        h.session.answer(lambda _i: True)
        wait_for(lambda: h.consumer.last_stored((P, 0)) == 2, what="both stored")
    (topic, key, value, headers), = h.producer.sent
    dl = dead_letter.read_dead_letter(value, headers)
    assert topic == topics.SINK_DLQ and key == b"img-0"
    assert dl["reason"] == "cassandra-refused" and dl["error_class"] == "InvalidRequest"
    assert (dl["origin_topic"], dl["origin_offset"]) == (P, 0)


def test_undecodable_prediction_writes_a_rejection_and_a_dead_letter():
    bad = Msg(P, 0, 0, b"img-x", b"\x05junk", [("schema-name", b"Prediction"),
                                              ("schema-version", b"2")])
    with Harness([bad]) as h:
        wait_for(lambda: h.held() == 1, what="the rejection write")
        with h.session.lock:
            (cql, values), _ = h.session.requests[0]
        assert "rejections" in cql and values[:3] == ("img-x", "sink", "undecodable")
        assert h.producer.sent == [] and h.consumer.last_stored((P, 0)) is None
        h.session.answer(lambda _i: True)
        wait_for(lambda: h.consumer.last_stored((P, 0)) == 1, what="stored")
    assert [s[0] for s in h.producer.sent] == [topics.SINK_DLQ]


def test_revocation_drains_and_commits_the_revoked_partition():
    from confluent_kafka import TopicPartition

    msgs = [pred_msg(0, "a0", partition=0), pred_msg(0, "b0", partition=1)]
    with Harness(msgs) as h:
        wait_for(lambda: h.held() == 4, what="4 writes")
        h.session.answer(lambda i: i == "b0")
        h.consumer.revoke_next = [TopicPartition(P, 0)]
        # The revoke handler waits for a0's writes; answer them while it drains.
        wait_for(lambda: h.session.answer(lambda i: i == "a0") > 0, what="drain in progress")
        wait_for(lambda: {(P, 0): 1} in h.consumer.commits, what="sync commit of revoked p0")
        assert h.sink.tracker.partitions() == [(P, 1)]


def test_window_limits_requests_in_flight():
    records = 50
    msgs = [pred_msg(i, f"img-{i}") for i in range(records)]
    with Harness(msgs, concurrency=8) as h:
        seen = 0
        while h.sink.rows_written < 2 * records:
            seen = max(seen, h.held())
            assert seen <= 8
            h.session.answer(lambda _i: True)
            time.sleep(0.001)
        wait_for(lambda: h.consumer.last_stored((P, 0)) == records, what="all stored")
    assert seen == 8


def test_missing_keyspace_stops_the_sink_instead_of_dead_lettering_everything():
    from consumers.sink import SinkFatalError

    gone = InvalidRequest('Error from server: code=2200 [Invalid query] message="keyspace '
                          'vision does not exist"')
    msgs = [pred_msg(i, f"img-{i}") for i in range(3)]
    h = Harness(msgs, failures={"img-1": [gone, gone]})
    with pytest.raises(SinkFatalError), h:
        wait_for(lambda: h.held() == 6, what="6 writes")
        h.session.answer(lambda i: i == "img-0")
        wait_for(lambda: h.consumer.last_stored((P, 0)) == 1, what="img-0 stored")
        h.session.answer(lambda _i: True)
        h.thread.join(10)
    assert h.producer.sent == []  # nothing dead-lettered
    assert h.consumer.commits[-1] == {(P, 0): 1}  # committed up to the failed record only
