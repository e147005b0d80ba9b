"""The sink loop: Kafka (predictions + stage DLQs) -> Cassandra, offsets after the acks.

One thread owns everything: it consumes, maps each record to row writes, hands them to
the bounded `AsyncWriter`, and settles records as the writer reports them. A record is
done when Cassandra acknowledged all its rows (and, if it is refused, when its dead
letter is delivered); only then does its offset count, and only the contiguous
done-watermark per partition is stored (`WatermarkTracker`). librdkafka's auto-commit
commits what is stored; shutdown and rebalances commit synchronously.

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
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from consumers.consistency import (
    ConsistencyConfigError,
    Overlap,
    keyspace_replication,
    require_overlap,
)
from consumers.offsets import TP, WatermarkTracker
from consumers.records import (
    KafkaRecord,
    Mapped,
    UnknownSchemaVersion,
    fallback_writes,
    map_record,
    sink_dead_letter,
    write_failed_request,
)
from consumers.settings import SinkSettings
from consumers.statements import write_statements
from consumers.writer import AsyncWriter, WriteFailed, prepare_writes
from infra.cassandra_session import connect, consistency_level
from infra.kafka_clients import consumer_config, masked, producer_config
from schemas import cql

log = logging.getLogger(__name__)

# A sink dead letter the topic refused as too large is sent again with the original
# payload cut to this (the row is written already; the dead letter is for forensics).
TRUNCATED_PAYLOAD_BYTES = 64 * 1024


class SinkFatalError(RuntimeError):
    """A fault no record can get past (missing keyspace, no permission, a record newer
    than this sink's schemas): the sink stops with offsets before it."""


@dataclass(eq=False)
class PendingRecord:
    rec: KafkaRecord
    mapped: Mapped
    remaining: int
    failure: WriteFailed | None = None
    # Set once its rows were refused and the last-resort rejection row was submitted.
    fallback: bool = False
    cancelled: bool = False
    dlq_attempts: int = 0
    # Set after the dead-letter topic refused the dead letter as too large.
    dlq_truncate: bool = False

    @property
    def tp(self) -> TP:
        return (self.rec.topic, self.rec.partition)


@dataclass
class SinkCounters:
    records: int = 0
    predictions: int = 0
    rejections: int = 0
    refused: int = 0
    dead_lettered: int = 0
    commits: int = 0


def check_startup_consistency(session: Any, settings: SinkSettings) -> Overlap:
    """Refuse to start unless the keyspace's actual RF and the configured levels give W+R>RF."""
    cs = settings.cassandra
    replication = keyspace_replication(session, cs.keyspace)
    overlap = require_overlap(
        replication, cs.local_datacenter, cs.write_consistency, cs.read_consistency
    )
    if overlap.rf != cs.replication_factor:
        log.warning(
            "keyspace %s has RF %d in %s, settings say %d; checked against the actual RF",
            cs.keyspace,
            overlap.rf,
            overlap.scope,
            cs.replication_factor,
        )
    log.info("consistency check passed: %s", overlap.reason)
    return overlap


def check_tables(session: Any, keyspace: str) -> None:
    """Refuse to start without the tables; warn about a top_k column replays would corrupt."""
    rows = session.execute(
        "SELECT table_name, column_name, type FROM system_schema.columns WHERE keyspace_name = %s",
        (keyspace,),
    )
    columns = {(r.table_name, r.column_name): r.type for r in rows}
    tables = {t for t, _ in columns}
    missing = [t for t in cql.TABLES if t not in tables]
    if missing:
        raise ConsistencyConfigError(
            f"keyspace {keyspace!r} lacks table(s) {missing}; provision it first "
            "(python -m infra provision)"
        )
    absent = [f"{t}.{c}" for t, c, _type in cql.ADDED_COLUMNS if (t, c) not in columns]
    if absent:
        raise ConsistencyConfigError(
            f"keyspace {keyspace!r} lacks column(s) {absent}; provision it again "
            "(python -m infra provision adds them)"
        )
    top_k = columns.get((cql.PREDICTIONS_TABLE, "top_k"), "")
    if top_k.startswith("list<"):
        log.warning(
            "%s.%s.top_k is a non-frozen list (%s): a replayed prediction appends its "
            "classes again. Recreate the table from schemas/ddl/vision.cql (frozen list)",
            keyspace,
            cql.PREDICTIONS_TABLE,
            top_k,
        )


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
        self.tracker = WatermarkTracker()
        self.counters = SinkCounters()
        self._open: dict[TP, dict[int, PendingRecord]] = defaultdict(dict)
        self._open_count = 0
        self._dlq_retry: list[tuple[float, PendingRecord]] = []
        self._paused = False
        self._consumer: Any = None
        self._producer: Any = None
        self._writer: AsyncWriter | None = None
        self._cluster: Any = None
        self._warned_topics: set[str] = set()
        self._committed: dict[TP, int] = {}
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
        self._producer = self._clients.producer(
            producer_config(self.settings.kafka, {"client.id": "vision-sink-dlq"})
        )
        overrides = {"client.id": f"vision-sink-{self.group_id}", "enable.partition.eof": False}
        overrides.update(ss.consumer_config)
        conf = consumer_config(self.settings.kafka, self.group_id, overrides)
        log.info("sink consumer config: %s", masked(conf))
        self._consumer = self._clients.consumer(conf)
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
        next_health = time.monotonic() + ss.health_interval_s
        last_rows, last_t = 0, time.monotonic()
        try:
            while not stop.is_set():
                self._flow_control()
                busy = self._open_count > 0
                msgs = self._consumer.consume(ss.batch_size, 0 if busy else ss.poll_timeout_s)
                for msg in msgs:
                    self._accept(msg)
                self._progress(0.05 if busy else 0.0)
                self._store()
                if self._writer.fatal is not None:
                    raise SinkFatalError(str(self._writer.fatal))
                now = time.monotonic()
                if now >= next_health:
                    rows = self._writer.stats.rows_written
                    self._log_health((rows - last_rows) / (now - last_t))
                    last_rows, last_t = rows, now
                    next_health = now + ss.health_interval_s
            log.info("stopping: draining %d open record(s)", self._open_count)
        finally:
            self._shutdown()
        return self.counters

    def _flow_control(self) -> None:
        limit = self.settings.sink.max_pending_records
        if not self._paused and self._open_count >= limit:
            self._consumer.pause(self._consumer.assignment())
            self._paused = True
        elif self._paused and self._open_count <= limit // 2:
            self._consumer.resume(self._consumer.assignment())
            self._paused = False

    def _accept(self, msg: Any) -> None:
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
        tp = (rec.topic, rec.partition)
        self.tracker.track(tp, rec.offset)
        try:
            mapped = map_record(rec, self.settings.sink.predictions_topic)
        except UnknownSchemaVersion as exc:
            # Tracked but never done: no offset is stored or committed past it.
            raise SinkFatalError(str(exc)) from exc
        pr = PendingRecord(rec, mapped, remaining=len(mapped.writes))
        self._open[tp][rec.offset] = pr
        self._open_count += 1
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
        assert self._writer is not None
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
        self._producer.poll(0)
        if self._dlq_retry:
            now = time.monotonic()
            due = [pr for t, pr in self._dlq_retry if t <= now]
            self._dlq_retry = [(t, pr) for t, pr in self._dlq_retry if t > now]
            for pr in due:
                if not pr.cancelled:
                    self._send_dead_letter(pr)

    def _settle(self, pr: PendingRecord) -> None:
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
            self._send_dead_letter(pr)
        else:
            self._finish(pr)

    def _send_dead_letter(self, pr: PendingRecord) -> None:
        req = pr.mapped.dead_letter
        if req is None:
            assert pr.failure is not None
            req = write_failed_request(pr.mapped, pr.failure.error)
        value, headers = sink_dead_letter(
            pr.rec, req, TRUNCATED_PAYLOAD_BYTES if pr.dlq_truncate else None
        )
        pr.dlq_attempts += 1

        def delivered(err: Any, _msg: Any, pr: PendingRecord = pr) -> None:
            if pr.cancelled:
                return
            if err is not None:
                self._dead_letter_failed(pr, err)
                return
            self.counters.dead_lettered += 1
            self._finish(pr)

        from confluent_kafka import KafkaException

        while True:
            try:
                self._producer.produce(
                    self.settings.sink.dead_letter_topic,
                    key=pr.rec.key,
                    value=value,
                    headers=headers,
                    on_delivery=delivered,
                )
                return
            except BufferError:
                self._producer.poll(0.1)
            except KafkaException as exc:  # refused before it left, e.g. too large
                if not _too_large(exc.args[0]):
                    raise
                self._dead_letter_failed(pr, exc.args[0])
                return

    def _dead_letter_failed(self, pr: PendingRecord, err: Any) -> None:
        """Retry a dead letter that was not delivered (at-least-once: its record stays
        open meanwhile); one refused as too large goes again with its payload cut."""
        if _too_large(err) and not pr.dlq_truncate:
            pr.dlq_truncate = True
            log.warning(
                "dead letter for %s[%d]@%d too large (%s); sending it with the payload "
                "cut to %d bytes",
                pr.rec.topic,
                pr.rec.partition,
                pr.rec.offset,
                err,
                TRUNCATED_PAYLOAD_BYTES,
            )
            self._dlq_retry.append((time.monotonic(), pr))
            return
        log.error(
            "dead letter for %s[%d]@%d not delivered (%s); retrying",
            pr.rec.topic,
            pr.rec.partition,
            pr.rec.offset,
            err,
        )
        self._dlq_retry.append((time.monotonic() + min(30.0, pr.dlq_attempts), pr))

    def _finish(self, pr: PendingRecord) -> None:
        tp = pr.tp
        self._open[tp].pop(pr.rec.offset, None)
        self._open_count -= 1
        kind = "refused" if pr.fallback else pr.mapped.kind
        if kind == "prediction":
            self.counters.predictions += 1
        elif kind == "rejection":
            self.counters.rejections += 1
        self.tracker.done(tp, pr.rec.offset)

    # -- offsets ---------------------------------------------------------------------
    def _store(self) -> None:
        advanced = self.tracker.advanced()
        if not advanced:
            return
        from confluent_kafka import KafkaException, TopicPartition

        offsets = [TopicPartition(t, p, off) for (t, p), off in advanced.items()]
        try:
            self._consumer.store_offsets(offsets=offsets)
        except KafkaException as exc:  # e.g. a partition revoked between poll and store
            log.warning("store_offsets failed for %s: %s", advanced, exc)

    def _commit_sync(self, tps: list[TP] | None = None) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        positions = {
            tp: off
            for tp, off in self.tracker.positions(tps).items()
            if self._committed.get(tp) != off
        }
        if not positions:
            return
        offsets = [TopicPartition(t, p, off) for (t, p), off in positions.items()]
        try:
            self._consumer.store_offsets(offsets=offsets)
        except KafkaException as exc:
            log.debug("store_offsets before commit: %s", exc)
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
            self._committed.update(positions)
            self.counters.commits += 1
            log.info("committed %s", {f"{t}[{p}]": o for (t, p), o in positions.items()})
        except KafkaException as exc:
            log.warning("synchronous commit of %s failed: %s", positions, exc)

    def _stuck(self) -> bool:
        """After a fatal write error nothing more will finish once in-flight requests end."""
        w = self._writer
        return (
            w is not None and w.fatal is not None and w.in_flight == 0 and not self._producer_busy()
        )

    def _producer_busy(self) -> bool:
        return self._producer is not None and len(self._producer) > 0

    def _drain(self, until_done: Any, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not until_done():
            if self._stuck():
                return False
            if time.monotonic() >= deadline:
                return False
            self._progress(0.05)
        return True

    # -- rebalance -------------------------------------------------------------------
    def _on_assign(self, _consumer: Any, partitions: list[Any]) -> None:
        self.assigned |= {(p.topic, p.partition) for p in partitions}
        log.info("assigned %s", [f"{p.topic}[{p.partition}]" for p in partitions])
        if self._paused and partitions:
            self._consumer.pause(partitions)

    def _release(self, partitions: list[Any], why: str) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        self.assigned -= set(tps)
        if not tps:
            return
        drained = self._drain(
            lambda: all(not self._open.get(tp) for tp in tps), self.settings.sink.drain_timeout_s
        )
        if not drained:
            log.warning(
                "%s: %d record(s) of %s still unacknowledged after %.0fs; they will be "
                "read again by the next owner",
                why,
                sum(len(self._open.get(tp, {})) for tp in tps),
                tps,
                self.settings.sink.drain_timeout_s,
            )
        self._commit_sync(tps)
        for tp in tps:
            for pr in self._open.pop(tp, {}).values():
                pr.cancelled = True
                self._open_count -= 1
        self.tracker.forget(tps)
        for tp in tps:
            self._committed.pop(tp, None)
        log.info("%s %s", why, [f"{t}[{p}]" for t, p in tps])

    def _on_revoke(self, _consumer: Any, partitions: list[Any]) -> None:
        self._release(partitions, "revoked")

    def _on_lost(self, _consumer: Any, partitions: list[Any]) -> None:
        self._release(partitions, "lost")

    # -- health and shutdown ---------------------------------------------------------
    def lag(self) -> dict[TP, int]:
        from confluent_kafka import TopicPartition

        out: dict[TP, int] = {}
        try:
            assignment = self._consumer.assignment()
            positions = self._consumer.position(assignment)
        except Exception as exc:  # noqa: BLE001 - health must not kill the sink
            log.debug("lag unavailable: %s", exc)
            return out
        for tp in positions:
            try:
                lo, hi = self._consumer.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), cached=True
                )
            except Exception:  # noqa: BLE001
                continue
            if hi < 0:
                continue
            pos = tp.offset if tp.offset >= 0 else lo
            out[(tp.topic, tp.partition)] = max(0, hi - pos)
        return out

    def _log_health(self, rows_per_s: float) -> None:
        assert self._writer is not None
        st = self._writer.stats
        by_topic: dict[str, list[str]] = defaultdict(list)
        for (t, p), lag in sorted(self.lag().items()):
            by_topic[t].append(f"{p}:{lag}")
        lag_text = " ".join(f"{t}[{','.join(v)}]" for t, v in by_topic.items()) or "-"
        log.info(
            "health: %.0f rows/s, rows %d, records %d (pred %d, rej %d, refused %d, "
            "dlq %d), retries %d, failed %d, in-flight %d (%.1f rows/request), open %d%s, "
            "lag %s%s",
            rows_per_s,
            st.rows_written,
            self.counters.records,
            self.counters.predictions,
            self.counters.rejections,
            self.counters.refused,
            self.counters.dead_lettered,
            st.retries,
            st.failed,
            self._writer.in_flight,
            st.rows_written / st.requests if st.requests else 0.0,
            self._open_count,
            " (paused)" if self._paused else "",
            lag_text,
            f", last error {st.last_error}" if st.retries else "",
        )

    def _shutdown(self) -> None:
        try:
            if self._writer is not None and self._consumer is not None:
                ok = self._drain(lambda: self._open_count == 0, self.settings.sink.drain_timeout_s)
                if not ok:
                    log.warning(
                        "shutdown: %d record(s) unacknowledged after %.0fs; not committed",
                        self._open_count,
                        self.settings.sink.drain_timeout_s,
                    )
                if self._producer is not None:
                    self._producer.flush(10)
                self._progress(0)
                self._store()
                self._commit_sync()
                self._consumer.close()
                log.info(
                    "sink stopped: %s, rows %d", self.counters, self._writer.stats.rows_written
                )
        finally:
            if self._cluster is not None:
                self._cluster.shutdown()

    @property
    def rows_written(self) -> int:
        """Upserts Cassandra acknowledged (the one-status deletes not counted)."""
        return 0 if self._writer is None else self._writer.stats.rows_written

    @property
    def open_records(self) -> int:
        return self._open_count


def _too_large(err: Any) -> bool:
    """A produce error that retrying the same message cannot fix: it is too large."""
    from confluent_kafka import KafkaError

    code = err.code() if hasattr(err, "code") else None
    return code in (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE)
