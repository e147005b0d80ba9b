"""The sink's parts alone (no servers): committer, dead-letter writer, health.

The loop that ties them together is tested in test_consumers_sink_loop.py.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from consumers.committer import Committer
from consumers.dead_letters import TRUNCATED_PAYLOAD_BYTES, DeadLetterWriter
from consumers.health import HealthLog, consumer_lag, lag_text
from consumers.pending import PendingRecord, SinkCounters
from consumers.records import KafkaRecord, map_record
from consumers.writer import WriterStats
from schemas import dead_letter, topics

P = topics.PREDICTIONS


def pending(offset: int, partition: int = 0, value: bytes = b"junk") -> PendingRecord:
    rec = KafkaRecord(P, partition, offset, b"img-%d" % offset, value, [], 1_700_000_000_000)
    mapped = map_record(rec)  # undecodable: a refused record with a dead letter
    return PendingRecord(rec, mapped, remaining=len(mapped.writes))


class OffsetsConsumer:
    def __init__(self) -> None:
        self.stored: list[dict[tuple[str, int], int]] = []
        self.commits: list[dict[tuple[str, int], int]] = []

    def store_offsets(self, offsets: list[Any]) -> None:
        self.stored.append({(o.topic, o.partition): o.offset for o in offsets})

    def commit(self, offsets: list[Any], asynchronous: bool) -> None:
        assert asynchronous is False
        self.commits.append({(o.topic, o.partition): o.offset for o in offsets})


def committer() -> tuple[Committer, OffsetsConsumer, SinkCounters]:
    counters = SinkCounters()
    c = Committer(counters, drain_timeout_s=1.0)
    consumer = OffsetsConsumer()
    c.attach(consumer)
    return c, consumer, counters


def test_only_the_contiguous_done_watermark_is_stored() -> None:
    c, consumer, _ = committer()
    prs = [pending(i) for i in range(3)]
    for pr in prs:
        c.track(pr.tp, pr.rec.offset)
        c.hold(pr)
    c.finish(prs[1])
    c.store()
    assert consumer.stored == [] and c.open_count == 2
    c.finish(prs[0])
    c.store()
    c.store()  # nothing moved since: nothing stored again
    assert consumer.stored == [{(P, 0): 2}]


def test_commit_sends_each_position_once() -> None:
    c, consumer, counters = committer()
    pr = pending(5)
    c.track(pr.tp, 5)
    c.hold(pr)
    c.finish(pr)
    c.commit()
    c.commit()
    assert consumer.commits == [{(P, 0): 6}] and counters.commits == 1


def test_release_drains_commits_what_is_done_and_cancels_the_rest() -> None:
    c, consumer, _ = committer()
    done, stuck, other = pending(0), pending(1), pending(0, partition=1)
    for pr in (done, stuck, other):
        c.track(pr.tp, pr.rec.offset)
        c.hold(pr)
    asked: list[float] = []

    def drain(until_done: Any, timeout_s: float) -> bool:
        asked.append(timeout_s)
        c.finish(done)  # the loop's writes acknowledge one record, then time runs out
        return until_done()

    c.release([(P, 0)], drain, "revoked")
    assert asked == [1.0]
    assert consumer.commits == [{(P, 0): 1}]
    assert stuck.cancelled and not other.cancelled
    assert c.open_count == 1 and c.tracker.partitions() == [(P, 1)]


class DlqProducer:
    def __init__(self, refuse: list[BaseException] | None = None) -> None:
        self.refuse = list(refuse or [])
        self.fail: list[Any] = []
        self.queued: list[tuple[bytes, list[tuple[str, bytes]], Any]] = []
        self.sent: list[tuple[bytes, list[tuple[str, bytes]]]] = []

    def produce(self, topic: str, key: Any, value: bytes, headers: Any, on_delivery: Any) -> None:
        assert topic == "sink.dlq"
        if self.refuse:
            raise self.refuse.pop(0)
        self.queued.append((value, headers, on_delivery))

    def poll(self, _timeout: float = 0) -> None:
        queued, self.queued = self.queued, []
        for value, headers, cb in queued:
            if self.fail:
                cb(self.fail.pop(0), None)
            else:
                self.sent.append((value, headers))
                cb(None, None)

    def __len__(self) -> int:
        return len(self.queued)


def test_a_delivered_dead_letter_hands_its_record_back() -> None:
    producer, delivered = DlqProducer(), list[PendingRecord]()
    w = DeadLetterWriter(producer, "sink.dlq", delivered.append)
    pr = pending(3)
    w.send(pr)
    assert w.busy() and delivered == []
    w.poll()
    assert delivered == [pr] and not w.busy()
    ((value, headers),) = producer.sent
    assert dead_letter.read_dead_letter(value, headers)["origin_offset"] == 3


def test_an_undelivered_dead_letter_is_sent_again_and_its_record_waits() -> None:
    producer, delivered = DlqProducer(), list[PendingRecord]()
    producer.fail = [KafkaError(KafkaError._MSG_TIMED_OUT)]
    w = DeadLetterWriter(producer, "sink.dlq", delivered.append)
    pr = pending(3)
    w.send(pr)
    w.poll()  # fails: due again in 1 s (one attempt so far)
    assert delivered == [] and pr.dlq_attempts == 1 and not pr.dlq_truncate
    w._retry = [(0.0, p) for _, p in w._retry]  # the delay has passed
    w.poll()  # sent again
    w.poll()  # delivered
    assert delivered == [pr] and pr.dlq_attempts == 2


def test_a_dead_letter_too_large_goes_again_cut() -> None:
    too_large = KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    producer, delivered = DlqProducer(refuse=[too_large]), list[PendingRecord]()
    w = DeadLetterWriter(producer, "sink.dlq", delivered.append)
    pr = pending(0, value=b"\x05" * (TRUNCATED_PAYLOAD_BYTES * 2))
    w.send(pr)
    assert pr.dlq_truncate and producer.queued == []
    w.poll()  # the retry is due at once: sent cut
    w.poll()
    ((value, headers),) = producer.sent
    assert len(dead_letter.read_dead_letter(value, headers)["payload"]) == TRUNCATED_PAYLOAD_BYTES
    assert delivered == [pr]


def test_a_cancelled_record_is_not_handed_back() -> None:
    producer, delivered = DlqProducer(), list[PendingRecord]()
    w = DeadLetterWriter(producer, "sink.dlq", delivered.append)
    pr = pending(0)
    w.send(pr)
    pr.cancelled = True  # its partition was released meanwhile
    w.poll()
    assert delivered == []


def test_any_other_produce_error_is_raised() -> None:
    other = KafkaException(KafkaError(KafkaError._INVALID_ARG))
    w = DeadLetterWriter(DlqProducer(refuse=[other]), "sink.dlq", lambda _pr: None)
    with pytest.raises(KafkaException):
        w.send(pending(0))


class LagConsumer:
    def __init__(self, positions: dict[tuple[str, int], int], ends: dict[int, int]) -> None:
        self.positions, self.ends = positions, ends

    def assignment(self) -> list[Any]:
        return [TopicPartition(t, p) for t, p in self.positions]

    def position(self, tps: list[Any]) -> list[Any]:
        return [
            TopicPartition(t.topic, t.partition, self.positions[(t.topic, t.partition)])
            for t in tps
        ]

    def get_watermark_offsets(self, tp: Any, cached: bool) -> tuple[int, int]:
        assert cached  # never a broker round trip on the loop's thread
        return 10, self.ends[tp.partition]


def test_lag_is_the_distance_to_the_log_end_from_the_position_or_the_start() -> None:
    consumer = LagConsumer({(P, 0): 40, (P, 1): -1001, (P, 2): 7}, {0: 50, 1: 25, 2: -1})
    assert consumer_lag(consumer) == {(P, 0): 10, (P, 1): 15}
    assert lag_text({(P, 1): 15, (P, 0): 10, ("b", 3): 0}) == f"b[3:0] {P}[0:10,1:15]"
    assert lag_text({}) == "-"


def test_lag_is_empty_when_the_consumer_cannot_answer() -> None:
    class Down:
        def assignment(self) -> list[Any]:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))

    assert consumer_lag(Down()) == {}


def test_the_health_line_reports_the_rate_since_the_last_one(caplog: Any) -> None:
    health = HealthLog(interval_s=10.0, now=100.0)
    assert not health.due(109.9) and health.due(110.0)
    stats, counters = WriterStats(rows_written=500, requests=50), SinkCounters(records=250)
    with caplog.at_level(logging.INFO, logger="consumers.health"):
        health.report(110.0, stats, counters, in_flight=3, open_records=7, paused=True, lag={})
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("health: 50 rows/s, rows 500, records 250")
    assert "(10.0 rows/request), open 7 (paused), lag -" in line
    assert not health.due(119.0) and health.due(120.0)
