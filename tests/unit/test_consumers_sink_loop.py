"""The sink loop with fake Kafka and Cassandra clients: offsets follow the acks, in order."""

from __future__ import annotations

import threading
import time
from collections import namedtuple
from typing import Any

import pytest
from cassandra import ConsistencyLevel, InvalidRequest, Unavailable, WriteFailure
from cassandra.protocol import ServerError

from consumers.settings import RetrySettings, SinkSection, SinkSettings
from consumers.sink import Sink, SinkClients
from schemas import codec, dead_letter, topics

P = topics.PREDICTIONS
Row = namedtuple("Row", "replication")
Col = namedtuple("Col", "table_name column_name type")


def wait_for(pred, timeout=30.0, what="condition"):  # roomy: a loaded CI box
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(autouse=True)
def fake_batches(monkeypatch):
    """Requests of several statements (one record's rows, or several records) as a tuple
    the fake session can read, instead of the driver's BatchStatement."""
    monkeypatch.setattr("consumers.writer.unlogged_batch", lambda bound, _cl: ("batch", bound))


class Msg:
    def __init__(self, topic, partition, offset, key, value, headers, ts=1_700_000_000_000):
        self._t, self._p, self._o = topic, partition, offset
        self._k, self._v, self._h, self._ts = key, value, headers, ts

    def topic(self):
        return self._t

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def key(self):
        return self._k

    def value(self):
        return self._v

    def headers(self):
        return self._h

    def timestamp(self):
        return (1, self._ts)

    def error(self):
        return None


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

    def assignment(self):
        return list(self.assigned)

    def pause(self, tps):
        pass

    def resume(self, tps):
        pass

    def position(self, tps):
        return tps

    def get_watermark_offsets(self, tp, cached=False):
        return (0, 0)

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
    """Delivers on poll(). `fail` holds errors for the next deliveries (err passed to the
    callback); `refuse` holds exceptions produce() raises before queueing."""

    def __init__(self, fail=None, refuse=None):
        self.sent: list[tuple] = []
        self.pending: list[tuple] = []
        self.fail = list(fail or [])
        self.refuse = list(refuse or [])
        self.attempts = 0

    def produce(self, topic, key, value, headers, on_delivery):
        self.attempts += 1
        if self.refuse:
            raise self.refuse.pop(0)
        self.pending.append((topic, key, value, headers, on_delivery))

    def poll(self, timeout=0):
        pending, self.pending = self.pending, []
        for topic, key, value, headers, cb in pending:
            if self.fail:
                cb(self.fail.pop(0), None)
                continue
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
        self.extra_columns = [Col("rejections", "raw_key", "text")]
        self.answered: list[tuple] = []  # every statement acknowledged: (cql, values)

    def execute(self, query, params=None):
        if "system_schema.keyspaces" in query:
            return [Row({"class": "NetworkTopologyStrategy", "datacenter1": "3"})]
        return [
            Col(t, "image_id", "text")
            for t in ("predictions", "predictions_by_label", "rejections")
        ] + self.extra_columns

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
                self.answered += statements(bound)
                f.cb([])
        return len(chosen)

    def held_statements(self):
        with self.lock:
            return [st for b, _ in self.requests for st in statements(b)]


def statements(bound):
    return list(bound[1]) if bound[0] == "batch" else [bound]


def image_of(bound):
    """The image a request is for (a record's statements travel together)."""
    cql, values = statements(bound)[0]
    if cql.startswith("DELETE"):
        return values[1]
    return values[1] if "predictions_by_label" in cql else values[0]


class FakeCluster:
    def shutdown(self):
        pass


def pred_msg(offset, image_id, partition=0, version=None):
    rec = {
        "image_id": image_id,
        "produced_at_ms": 1,
        "raw_topic": "r",
        "raw_partition": 0,
        "raw_offset": 0,
        "model_name": "m",
        "model_version": "1",
        "top_k": [{"class_index": 1, "label": "cat", "score": 0.5}],
        "processed_at_ms": 1000 + offset,
    }
    value, headers = codec.encode(codec.PREDICTION, rec)
    if version is not None:
        headers = [
            (k, str(version).encode() if k == codec.H_SCHEMA_VERSION else v) for k, v in headers
        ]
    return Msg(P, partition, offset, image_id.encode(), value, headers)


def dlq_msg(offset, image_id, failed_at_ms, key=None):
    value, headers = dead_letter.dead_letter(
        image_id=image_id,
        stage="infer",
        reason="oom",
        origin_topic=topics.RAW,
        origin_partition=0,
        origin_offset=offset,
        payload=b"",
    )
    dl = dead_letter.read_dead_letter(value, headers) | {"failed_at_ms": failed_at_ms}
    value, headers = codec.encode(codec.DEAD_LETTER, dl)
    return Msg(
        topics.INFER_DLQ, 0, offset, image_id.encode() if key is None else key, value, headers
    )


class Harness:
    def __init__(self, messages, failures=None, producer=None, **sink):
        self.consumer = FakeConsumer(messages)
        self.producer = producer if producer is not None else FakeProducer()
        self.session = FakeSession(failures)
        # One row per request: the fake session answers per image (the writer's batching
        # has its own tests in test_consumers_writer.py; integration tests use both).
        section = SinkSection(
            **(
                {
                    "concurrency": 64,
                    "write_batch_rows": 1,
                    "health_interval_s": 0.05,
                    "drain_timeout_s": 5.0,
                    "retry": RetrySettings(initial_backoff_s=0.01, max_backoff_s=0.02),
                }
                | sink
            )
        )
        clients = SinkClients(
            cassandra=lambda _s: (FakeCluster(), self.session),
            consumer=lambda _conf: self.consumer,
            producer=lambda _conf: self.producer,
        )
        # Fake clients: no login to resolve (secure mode would read the run dir's secrets).
        self.sink = Sink(
            SinkSettings(sink=section, security={"mode": "plaintext"}),
            group_id="g",
            clients=clients,
        )
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
        wait_for(lambda: h.held() == 4, what="the 4 records' requests in flight")
        h.session.answer(lambda i: i in ("img-1", "img-2", "img-3"))
        wait_for(lambda: h.sink.rows_written == 6, what="6 acks processed")
        # Record 0 is unacknowledged: nothing may be stored, however many later acks.
        assert h.consumer.last_stored((P, 0)) is None
        h.session.answer(lambda i: i == "img-0")
        wait_for(lambda: h.consumer.last_stored((P, 0)) == 4, what="offset 4 stored")
    assert h.consumer.commits[-1] == {(P, 0): 4}


def test_a_records_rows_and_its_one_status_delete_go_in_one_request():
    with Harness([pred_msg(0, "img-0")]) as h:
        wait_for(lambda: h.held() == 1, what="one request")
        (main, by_label, drop) = h.session.held_statements()
        assert "INTO vision.predictions " in main[0] and "predictions_by_label" in by_label[0]
        # The image's rejection goes at the prediction's own timestamp.
        assert drop == (
            "DELETE FROM vision.rejections USING TIMESTAMP ? WHERE image_id = ?",
            (main[1][-1], "img-0"),
        )
        time.sleep(0.05)
        assert h.consumer.last_stored((P, 0)) is None
        h.session.answer(lambda _i: True)
        wait_for(lambda: h.consumer.last_stored((P, 0)) == 1, what="stored after the ack")
    assert h.sink.rows_written == 2  # the delete is not a row


def test_a_rejection_deletes_the_prediction_1us_before_its_own_time():
    with Harness([dlq_msg(0, "img-r", failed_at_ms=5000)]) as h:
        wait_for(lambda: h.held() == 1, what="one request")
        (row, drop) = h.session.held_statements()
        assert "INTO vision.rejections" in row[0] and row[1][-1] == 5_000_000
        assert drop == (
            "DELETE FROM vision.predictions USING TIMESTAMP ? WHERE image_id = ?",
            (4_999_999, "img-r"),
        )
        h.session.answer(lambda _i: True)
        wait_for(lambda: h.consumer.last_stored((topics.INFER_DLQ, 0)) == 1, what="stored")


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


def answer_until(h, pred, what):
    def step() -> bool:
        h.session.answer(lambda _i: True)
        return pred()

    wait_for(step, what=what)


def test_refused_write_still_leaves_a_rejection_row_and_a_dead_letter_before_its_offset():
    failures = {"img-0": [InvalidRequest("too big")]}
    with Harness([pred_msg(0, "img-0"), pred_msg(1, "img-1")], failures=failures) as h:
        wait_for(lambda: h.held() == 2, what="2 requests")
        h.session.answer(lambda _i: True)
        # img-0's rows were refused: its last-resort rejection row goes out first.
        wait_for(lambda: h.held() == 1, what="the fallback rejection")
        (row, drop) = h.session.held_statements()
        assert "INTO vision.rejections" in row[0] and "DELETE FROM vision.predictions" in drop[0]
        assert row[1][:4] == ("img-0", "sink", "cassandra-refused", "InvalidRequest")
        assert h.producer.sent == [] and h.consumer.last_stored((P, 0)) is None
        answer_until(h, lambda: h.consumer.last_stored((P, 0)) == 2, "both stored")
    ((topic, key, value, headers),) = h.producer.sent
    dl = dead_letter.read_dead_letter(value, headers)
    assert topic == topics.SINK_DLQ and key == b"img-0"
    assert dl["reason"] == "cassandra-refused" and dl["error_class"] == "InvalidRequest"
    assert (dl["origin_topic"], dl["origin_offset"]) == (P, 0)
    assert h.sink.counters.refused == 1 and h.sink.counters.predictions == 1


CL = ConsistencyLevel.LOCAL_QUORUM


@pytest.mark.parametrize(
    "err",
    [
        WriteFailure(
            "replica failed",
            consistency=CL,
            required_responses=2,
            received_responses=1,
            failures=1,
            error_code_map={},
            write_type=0,
        ),
        ServerError(0, "java.lang.AssertionError", None),
        Unavailable("down", CL, 2, 1),
    ],
    ids=lambda e: type(e).__name__,
)
def test_transient_errors_hold_the_offset_until_written_and_never_dead_letter(err):
    failures = {"img-0": [err] * 5}
    with Harness([pred_msg(0, "img-0"), pred_msg(1, "img-1")], failures=failures) as h:
        # the writer exists once the sink's thread has connected (late on a loaded machine)
        answer_until(
            h,
            lambda: h.sink._writer is not None and h.sink._writer.stats.retries >= 5,
            "5 failed attempts",
        )
        assert h.consumer.last_stored((P, 0)) is None  # img-1 is done, img-0 is not
        answer_until(h, lambda: h.consumer.last_stored((P, 0)) == 2, "stored once written")
    assert h.producer.sent == [] and h.sink._writer.stats.failed == 0


def test_records_without_a_usable_key_get_one_row_under_a_safe_id():
    junk = [(codec.H_SCHEMA_NAME, b"Prediction"), (codec.H_SCHEMA_VERSION, b"2")]
    msgs = [Msg(P, 0, 0, b"\xff\xfebad", b"\x05junk", junk), Msg(P, 0, 1, None, b"\x05junk", junk)]
    with Harness(msgs) as h:
        answer_until(h, lambda: h.consumer.last_stored((P, 0)) == 2, "both stored")
    rows = {v[0]: v for cql, v in h.session.answered if "INTO vision.rejections" in cql}
    hashed = next(i for i in rows if i.startswith("key-sha256:"))
    assert rows[hashed][-2] == "\\xff\\xfebad"  # raw_key, then the timestamp
    assert rows[f"no-key:{P}/0/1"][-2] is None
    assert len(h.producer.sent) == 2


def test_a_newer_schema_version_stops_the_sink_before_it():
    from consumers.sink import SinkFatalError

    newer = max(codec.versions(codec.PREDICTION)) + 1
    msgs = [pred_msg(0, "img-0"), pred_msg(1, "img-1", version=newer), pred_msg(2, "img-2")]
    h = Harness(msgs)
    with pytest.raises(SinkFatalError, match=f"v{newer}.*upgrade the sink"), h:
        answer_until(h, lambda: not h.thread.is_alive(), "the sink to stop")
    assert h.producer.sent == []  # nothing rejected or dead-lettered
    assert not any(v[0] in ("img-1", "img-2") for _cql, v in h.session.answered)
    assert h.consumer.commits[-1] == {(P, 0): 1}  # committed up to the newer record only


def test_a_dead_letter_that_fails_to_send_is_retried_before_the_offset_moves():
    from confluent_kafka import KafkaError

    producer = FakeProducer(
        fail=[KafkaError(KafkaError._MSG_TIMED_OUT)] * 2, refuse=[BufferError("queue full")]
    )
    bad = Msg(P, 0, 0, b"img-x", b"\x05junk", [])
    with Harness([bad], producer=producer) as h:
        answer_until(h, lambda: h.producer.attempts >= 2, "the first failed delivery")
        assert h.producer.sent == [] and h.consumer.last_stored((P, 0)) is None
        wait_for(lambda: h.consumer.last_stored((P, 0)) == 1, timeout=15, what="delivered")
    assert len(h.producer.sent) == 1 and h.producer.attempts == 4  # buffer, 2 failed, ok
    assert h.sink.counters.dead_lettered == 1


def test_a_dead_letter_too_large_for_its_topic_goes_again_with_the_payload_cut():
    from confluent_kafka import KafkaError, KafkaException

    from consumers.sink import TRUNCATED_PAYLOAD_BYTES

    producer = FakeProducer(refuse=[KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))])
    bad = Msg(P, 0, 0, b"img-x", b"\x05" * (TRUNCATED_PAYLOAD_BYTES * 2), [])
    with Harness([bad], producer=producer) as h:
        answer_until(h, lambda: h.consumer.last_stored((P, 0)) == 1, "stored")
    ((_t, _k, value, headers),) = h.producer.sent
    assert len(dead_letter.read_dead_letter(value, headers)["payload"]) == TRUNCATED_PAYLOAD_BYTES
    assert ("payload-original-bytes", str(TRUNCATED_PAYLOAD_BYTES * 2).encode()) in headers


def test_a_keyspace_without_the_raw_key_column_is_refused_at_start():
    from consumers.consistency import ConsistencyConfigError

    h = Harness([])
    h.session.extra_columns = []
    with pytest.raises(ConsistencyConfigError, match="raw_key"), h:
        h.thread.join(10)


def test_undecodable_prediction_writes_a_rejection_and_a_dead_letter():
    bad = Msg(
        P, 0, 0, b"img-x", b"\x05junk", [("schema-name", b"Prediction"), ("schema-version", b"2")]
    )
    with Harness([bad]) as h:
        wait_for(lambda: h.held() == 1, what="the rejection write")
        (cql, values), _drop = h.session.held_statements()
        assert "rejections" in cql and values[:3] == ("img-x", "sink", "undecodable")
        assert h.producer.sent == [] and h.consumer.last_stored((P, 0)) is None
        h.session.answer(lambda _i: True)
        wait_for(lambda: h.consumer.last_stored((P, 0)) == 1, what="stored")
    assert [s[0] for s in h.producer.sent] == [topics.SINK_DLQ]


def test_revocation_drains_and_commits_the_revoked_partition():
    from confluent_kafka import TopicPartition

    msgs = [pred_msg(0, "a0", partition=0), pred_msg(0, "b0", partition=1)]
    with Harness(msgs) as h:
        wait_for(lambda: h.held() == 2, what="2 requests")
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

    gone = InvalidRequest(
        'Error from server: code=2200 [Invalid query] message="keyspace vision does not exist"'
    )
    msgs = [pred_msg(i, f"img-{i}") for i in range(3)]
    h = Harness(msgs, failures={"img-1": [gone, gone]})
    with pytest.raises(SinkFatalError), h:
        wait_for(lambda: h.held() == 3, what="3 requests")
        h.session.answer(lambda i: i == "img-0")
        wait_for(lambda: h.consumer.last_stored((P, 0)) == 1, what="img-0 stored")
        h.session.answer(lambda _i: True)
        h.thread.join(10)
    assert h.producer.sent == []  # nothing dead-lettered
    assert h.consumer.commits[-1] == {(P, 0): 1}  # committed up to the failed record only
