"""The sink loop: Kafka (predictions + stage DLQs) -> Cassandra, offsets after the acks.

One thread owns everything: `Sink.run` consumes, maps each record to row writes, hands
them to the bounded `AsyncWriter`, and settles records as the writer reports them. A
record is done when Cassandra acknowledged all its rows (and, if it is refused, when its
dead letter is delivered); only then does its offset count. The loop delegates one job
each, the way aiokafka's consumer is a facade over its parts:

* `consumers.committer.Committer`: open records, done-watermarks, stored and committed
  offsets, and the drain of a rebalance;
* `consumers.dead_letters.DeadLetterWriter`: the sink's dead-letter producer and its retries;
* `consumers.health`: lag and the periodic health line;
* `consumers.startup`: the checks against the cluster before the first record.

Every record the sink sees leaves a row: transient Cassandra errors are retried forever
(the record stays open, so nothing is committed past it); a record whose rows Cassandra
refuses for good gets a small last-resort rejection row (`records.fallback_writes`) and
a dead letter. What no record can fix stops the sink before it, offsets unmoved: a
missing keyspace or table, missing permissions, or a record under a schema version newer
than this sink reads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from consumers.committer import Committer
from consumers.dead_letters import TRUNCATED_PAYLOAD_BYTES, DeadLetterWriter
from consumers.health import HealthLog, consumer_lag
from consumers.offsets import TP, WatermarkTracker
from consumers.pending import PendingRecord, SinkCounters
from consumers.records import KafkaRecord, UnknownSchemaVersion, fallback_writes, map_record
from consumers.settings import SinkSettings
from consumers.startup import check_startup_consistency, check_tables
from consumers.statements import write_statements
from consumers.writer import AsyncWriter, prepare_writes
from infra.cassandra_session import connect, consistency_level
from infra.kafka_clients import consumer_config, masked, producer_config

log = logging.getLogger(__name__)

# Names other modules and tests import from here (they moved with the split).
__all__ = [
    "TRUNCATED_PAYLOAD_BYTES",
    "PendingRecord",
    "Sink",
    "SinkClients",
    "SinkCounters",
    "SinkFatalError",
    "check_startup_consistency",
    "check_tables",
]


class SinkFatalError(RuntimeError):
    """A fault no record can get past (missing keyspace, no permission, a record newer
    than this sink's schemas): the sink stops with offsets before it."""


def _real_cassandra(settings: SinkSettings) -> tuple[Any, Any]:
    return connect(settings.cassandra)


def _real_consumer(conf: dict[str, Any]) -> Any:
    from confluent_kafka import Consumer

    return Consumer(conf)


def _real_producer(conf: dict[str, Any]) -> Any:
    from confluent_kafka import Producer

    return Producer(conf)


@dataclass(frozen=True)
class SinkClients:
    """How the sink builds its clients; tests pass fakes (no servers)."""

    cassandra: Callable[[SinkSettings], tuple[Any, Any]] = _real_cassandra
    consumer: Callable[[dict[str, Any]], Any] = _real_consumer
    producer: Callable[[dict[str, Any]], Any] = _real_producer


class Sink:
    """The consumer group member that stores results; `run` is the whole loop."""

    def __init__(
        self,
        settings: SinkSettings,
        *,
        group_id: str | None = None,
        clients: SinkClients | None = None,
    ) -> None:
        self.settings = settings
        self._clients = clients or SinkClients()
        self.group_id = group_id or settings.sink.group_id
        self.counters = SinkCounters()
        self.committer = Committer(self.counters, settings.sink.drain_timeout_s)
        self._paused = False
        self._consumer: Any = None
        self._dead_letters: DeadLetterWriter | None = None
        self._writer: AsyncWriter | None = None
        self._cluster: Any = None
        self._warned_topics: set[str] = set()
        # Partitions this member holds (updated by the rebalance callbacks).
        self.assigned: set[TP] = set()
        self.started = threading.Event()

    # -- setup -----------------------------------------------------------------------
    def _connect(self) -> None:
        cs = self.settings.cassandra
        self._cluster, session = self._clients.cassandra(self.settings)
        check_startup_consistency(session, self.settings)
        check_tables(session, cs.keyspace)
        prepared = prepare_writes(
            session, write_statements(cs.keyspace), consistency_level(cs.write_consistency)
        )
        ss = self.settings.sink
        self._writer = AsyncWriter(
            session,
            prepared,
            concurrency=ss.concurrency,
            retry=ss.retry,
            batch_rows=ss.write_batch_rows,
            batch_bytes=ss.write_batch_bytes,
        )
        producer = self._clients.producer(
            producer_config(self.settings.kafka, {"client.id": "vision-sink-dlq"})
        )
        self._dead_letters = DeadLetterWriter(producer, ss.dead_letter_topic, self._dead_lettered)
        overrides = {"client.id": f"vision-sink-{self.group_id}", "enable.partition.eof": False}
        overrides.update(ss.consumer_config)
        conf = consumer_config(self.settings.kafka, self.group_id, overrides)
        log.info("sink consumer config: %s", masked(conf))
        self._consumer = self._clients.consumer(conf)
        self.committer.attach(self._consumer)
        self._consumer.subscribe(
            ss.topics(), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        log.info(
            "sink group %s subscribed to %s; writing to keyspace %s at %s "
            "(concurrency %d, up to %d rows per request)",
            self.group_id,
            ss.topics(),
            cs.keyspace,
            cs.write_consistency,
            ss.concurrency,
            ss.write_batch_rows,
        )

    # -- the loop --------------------------------------------------------------------
    def run(self, stop: threading.Event) -> SinkCounters:
        self._connect()
        assert self._writer is not None
        ss = self.settings.sink
        self.started.set()
        health = HealthLog(ss.health_interval_s, time.monotonic())
        try:
            while not stop.is_set():
                self._flow_control()
                busy = self.committer.open_count > 0
                msgs = self._consumer.consume(
                    ss.consume_max_messages, 0 if busy else ss.poll_timeout_s
                )
                for msg in msgs:
                    self._accept(msg)
                self._progress(0.05 if busy else 0.0)
                self.committer.store()
                if self._writer.fatal is not None:
                    raise SinkFatalError(str(self._writer.fatal))
                now = time.monotonic()
                if health.due(now):
                    health.report(
                        now,
                        self._writer.stats,
                        self.counters,
                        in_flight=self._writer.in_flight,
                        open_records=self.committer.open_count,
                        paused=self._paused,
                        lag=self.lag(),
                    )
            log.info("stopping: draining %d open record(s)", self.committer.open_count)
        finally:
            self._shutdown()
        return self.counters

    def _flow_control(self) -> None:
        """Pause every partition above max_pending_records open, resume at half of it."""
        limit = self.settings.sink.max_pending_records
        if not self._paused and self.committer.open_count >= limit:
            self._consumer.pause(self._consumer.assignment())
            self._paused = True
        elif self._paused and self.committer.open_count <= limit // 2:
            self._consumer.resume(self._consumer.assignment())
            self._paused = False

    def _accept(self, msg: Any) -> None:
        """Map one consumed message and submit its rows (or settle it if it has none)."""
        from confluent_kafka import KafkaError, KafkaException

        err = msg.error()
        if err is not None:
            if err.fatal():
                raise KafkaException(err)
            if err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                if msg.topic() not in self._warned_topics:
                    self._warned_topics.add(msg.topic())
                    log.warning("topic %s does not exist (yet): %s", msg.topic(), err.str())
            else:
                log.warning("consumer error on %s[%s]: %s", msg.topic(), msg.partition(), err.str())
            return
        rec = KafkaRecord.from_message(msg)
        self.committer.track((rec.topic, rec.partition), rec.offset)
        try:
            mapped = map_record(rec, self.settings.sink.predictions_topic)
        except UnknownSchemaVersion as exc:
            # Tracked but never done: no offset is stored or committed past it.
            raise SinkFatalError(str(exc)) from exc
        pr = PendingRecord(rec, mapped, remaining=len(mapped.writes))
        self.committer.hold(pr)
        self.counters.records += 1
        if mapped.kind == "refused":
            self.counters.refused += 1
            log.warning(
                "refusing %s[%d]@%d (image %s): %s: %s",
                rec.topic,
                rec.partition,
                rec.offset,
                mapped.image_id,
                mapped.dead_letter.reason if mapped.dead_letter else "",
                mapped.dead_letter.message if mapped.dead_letter else "",
            )
        if not mapped.writes:
            self._settle(pr)
            return
        assert self._writer is not None
        self._writer.submit(mapped.writes, pr)

    def _progress(self, timeout: float) -> None:
        """Collect finished writes and dead-letter deliveries; settle records."""
        assert self._writer is not None and self._dead_letters is not None
        for owner, _write, failure in self._writer.pump(timeout):
            pr: PendingRecord = owner
            if pr.cancelled:
                continue
            pr.remaining -= 1
            if failure is not None and pr.fallback:
                log.critical(
                    "record %s[%d]@%d (image %s): even its last-resort rejection row "
                    "was refused (%s); only its dead letter remains",
                    pr.rec.topic,
                    pr.rec.partition,
                    pr.rec.offset,
                    pr.mapped.image_id,
                    failure,
                )
            elif failure is not None and pr.failure is None:
                pr.failure = failure
                log.error(
                    "record %s[%d]@%d (image %s) cannot be written: %s",
                    pr.rec.topic,
                    pr.rec.partition,
                    pr.rec.offset,
                    pr.mapped.image_id,
                    failure,
                )
            if pr.remaining == 0:
                self._settle(pr)
        self._dead_letters.poll()

    def _settle(self, pr: PendingRecord) -> None:
        """All rows of `pr` answered: write its last-resort row, send its dead letter, or
        finish it, in that order of need."""
        assert self._dead_letters is not None
        if pr.failure is not None and not pr.fallback:
            # Its rows were refused for good: the image still gets a row, then the dead
            # letter goes out, then the offset may move.
            writes = fallback_writes(pr.mapped, pr.rec, pr.failure.error)
            pr.fallback = True
            pr.remaining = len(writes)
            self.counters.refused += 1
            assert self._writer is not None
            self._writer.submit(writes, pr)
            return
        if pr.failure is not None or pr.mapped.dead_letter is not None:
            self._dead_letters.send(pr)
        else:
            self._finish(pr)

    def _dead_lettered(self, pr: PendingRecord) -> None:
        self.counters.dead_lettered += 1
        self._finish(pr)

    def _finish(self, pr: PendingRecord) -> None:
        kind = "refused" if pr.fallback else pr.mapped.kind
        if kind == "prediction":
            self.counters.predictions += 1
        elif kind == "rejection":
            self.counters.rejections += 1
        self.committer.finish(pr)

    def _stuck(self) -> bool:
        """After a fatal write error nothing more will finish once in-flight requests end."""
        w = self._writer
        return (
            w is not None
            and w.fatal is not None
            and w.in_flight == 0
            and not (self._dead_letters is not None and self._dead_letters.busy())
        )

    def _drain(self, until_done: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not until_done():
            if self._stuck():
                return False
            if time.monotonic() >= deadline:
                return False
            self._progress(0.05)
        return True

    # -- rebalance (librdkafka calls these from inside consume()) ---------------------
    def _on_assign(self, _consumer: Any, partitions: list[Any]) -> None:
        self.assigned |= {(p.topic, p.partition) for p in partitions}
        log.info("assigned %s", [f"{p.topic}[{p.partition}]" for p in partitions])
        if self._paused and partitions:
            self._consumer.pause(partitions)

    def _release(self, partitions: list[Any], why: str) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        self.assigned -= set(tps)
        self.committer.release(tps, self._drain, why)

    def _on_revoke(self, _consumer: Any, partitions: list[Any]) -> None:
        self._release(partitions, "revoked")

    def _on_lost(self, _consumer: Any, partitions: list[Any]) -> None:
        self._release(partitions, "lost")

    # -- health and shutdown ---------------------------------------------------------
    def lag(self) -> dict[TP, int]:
        return consumer_lag(self._consumer)

    def _shutdown(self) -> None:
        """Drain what is open (up to the drain timeout), commit what is done, close."""
        try:
            if self._writer is not None and self._consumer is not None:
                timeout_s = self.settings.sink.drain_timeout_s
                if not self._drain(lambda: self.committer.open_count == 0, timeout_s):
                    log.warning(
                        "shutdown: %d record(s) unacknowledged after %.0fs; not committed",
                        self.committer.open_count,
                        timeout_s,
                    )
                if self._dead_letters is not None:
                    self._dead_letters.flush(10)
                self._progress(0)
                self.committer.store()
                self.committer.commit()
                self._consumer.close()
                log.info(
                    "sink stopped: %s, rows %d", self.counters, self._writer.stats.rows_written
                )
        finally:
            if self._cluster is not None:
                self._cluster.shutdown()

    # -- what tests and consumers.metrics read ----------------------------------------
    @property
    def tracker(self) -> WatermarkTracker:
        return self.committer.tracker

    @property
    def _open(self) -> dict[TP, dict[int, PendingRecord]]:
        return self.committer.open

    @property
    def _open_count(self) -> int:
        return self.committer.open_count

    @property
    def rows_written(self) -> int:
        """Upserts Cassandra acknowledged (the one-status deletes not counted)."""
        return 0 if self._writer is None else self._writer.stats.rows_written

    @property
    def open_records(self) -> int:
        return self.committer.open_count
