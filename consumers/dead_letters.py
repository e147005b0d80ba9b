"""The sink's dead-letter writer: the producer to its own dead-letter topic and its retries.

A refused record (undecodable, or rows Cassandra refused for good) is finished only once
its dead letter is delivered: at least once, retried without limit while the record
stays open (so its offset does not move). A dead letter the topic refuses as too large
goes again with the original payload cut to TRUNCATED_PAYLOAD_BYTES (the record's row is
written already; the dead letter is for forensics). Producer hygiene as in
confluent-kafka's example: a delivery callback per message, `poll(0)` every loop turn,
`BufferError` as backpressure, `flush()` on exit.

Who calls me: `Sink` (one thread; delivery callbacks run inside `poll`). It sends a
settled record's dead letter (`send`), calls `poll` every loop turn, asks `busy` while
draining and `flush`es at shutdown.
What I change: the dead-letter topic and the record's dead-letter state (`dlq_attempts`,
`dlq_truncate`); once a dead letter is delivered I call `on_delivered`, and the sink
finishes the record (I never touch offsets).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from consumers.pending import PendingRecord
from consumers.records import sink_dead_letter, write_failed_request

log = logging.getLogger(__name__)

TRUNCATED_PAYLOAD_BYTES = 64 * 1024
# Longest wait between two tries of an undelivered dead letter (1 s more per attempt).
MAX_RETRY_DELAY_S = 30.0


class DeadLetterWriter:
    def __init__(
        self, producer: Any, topic: str, on_delivered: Callable[[PendingRecord], None]
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._on_delivered = on_delivered
        # (due time, record): dead letters to send again.
        self._retry: list[tuple[float, PendingRecord]] = []

    def send(self, pr: PendingRecord) -> None:
        """Produce the dead letter of `pr` (its own request, or the write failure's)."""
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
                self._failed(pr, err)
                return
            self._on_delivered(pr)

        from confluent_kafka import KafkaException

        while True:
            try:
                self._producer.produce(
                    self._topic, key=pr.rec.key, value=value, headers=headers, on_delivery=delivered
                )
                return
            except BufferError:
                self._producer.poll(0.1)
            except KafkaException as exc:  # refused before it left, e.g. too large
                if not too_large(exc.args[0]):
                    raise
                self._failed(pr, exc.args[0])
                return

    def poll(self) -> None:
        """Serve delivery callbacks, then send again the dead letters whose retry is due."""
        self._producer.poll(0)
        if not self._retry:
            return
        now = time.monotonic()
        due = [pr for t, pr in self._retry if t <= now]
        self._retry = [(t, pr) for t, pr in self._retry if t > now]
        for pr in due:
            if not pr.cancelled:
                self.send(pr)

    def busy(self) -> bool:
        """Messages still in the producer's queue (not yet delivered or failed)."""
        return len(self._producer) > 0

    def flush(self, timeout_s: float) -> None:
        self._producer.flush(timeout_s)

    def _failed(self, pr: PendingRecord, err: Any) -> None:
        """Retry a dead letter that was not delivered (at-least-once: its record stays
        open meanwhile); one refused as too large goes again with its payload cut."""
        if too_large(err) and not pr.dlq_truncate:
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
            self._retry.append((time.monotonic(), pr))
            return
        log.error(
            "dead letter for %s[%d]@%d not delivered (%s); retrying",
            pr.rec.topic,
            pr.rec.partition,
            pr.rec.offset,
            err,
        )
        self._retry.append((time.monotonic() + min(MAX_RETRY_DELAY_S, pr.dlq_attempts), pr))


def too_large(err: Any) -> bool:
    """A produce error that retrying the same message cannot fix: it is too large."""
    from confluent_kafka import KafkaError

    code = err.code() if hasattr(err, "code") else None
    return code in (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE)
