"""The sink's health: consumer lag and the periodic health line (as stream_app/health.py
is the stages').

Who calls me: `Sink.run` once per loop turn (`HealthLog.due`, then `report`); `Sink.lag`
(and through it the health line) asks `consumer_lag`.
What I change: nothing but the log. Lag comes from the consumer's positions and its
cached watermarks (no broker round trip on the loop's thread); Prometheus gets the same
facts from consumers.metrics, which reads them off the loop's thread.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from consumers.offsets import TP
from consumers.pending import SinkCounters
from consumers.writer import WriterStats

log = logging.getLogger(__name__)


def consumer_lag(consumer: Any) -> dict[TP, int]:
    """Records behind the log end per assigned partition; {} when it cannot be read."""
    from confluent_kafka import TopicPartition

    out: dict[TP, int] = {}
    try:
        assignment = consumer.assignment()
        positions = consumer.position(assignment)
    except Exception as exc:  # noqa: BLE001 - health must not kill the sink
        log.debug("lag unavailable: %s", exc)
        return out
    for tp in positions:
        try:
            lo, hi = consumer.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), cached=True
            )
        except Exception:  # noqa: BLE001
            continue
        if hi < 0:
            continue
        pos = tp.offset if tp.offset >= 0 else lo
        out[(tp.topic, tp.partition)] = max(0, hi - pos)
    return out


def lag_text(lag: dict[TP, int]) -> str:
    """`topic[partition:lag,...] ...`, or `-` when there is none."""
    by_topic: dict[str, list[str]] = defaultdict(list)
    for (t, p), n in sorted(lag.items()):
        by_topic[t].append(f"{p}:{n}")
    return " ".join(f"{t}[{','.join(v)}]" for t, v in by_topic.items()) or "-"


class HealthLog:
    """When the next health line is due, and the write rate since the last one."""

    def __init__(self, interval_s: float, now: float) -> None:
        self._interval_s = interval_s
        self._next = now + interval_s
        self._last_rows = 0
        self._last_t = now

    def due(self, now: float) -> bool:
        return now >= self._next

    def report(
        self,
        now: float,
        stats: WriterStats,
        counters: SinkCounters,
        *,
        in_flight: int,
        open_records: int,
        paused: bool,
        lag: dict[TP, int],
    ) -> None:
        """Log one health line and start the next interval."""
        rows_per_s = (stats.rows_written - self._last_rows) / (now - self._last_t)
        self._last_rows, self._last_t = stats.rows_written, now
        self._next = now + self._interval_s
        log.info(
            "health: %.0f rows/s, rows %d, records %d (pred %d, rej %d, refused %d, "
            "dlq %d), retries %d, failed %d, in-flight %d (%.1f rows/request), open %d%s, "
            "lag %s%s",
            rows_per_s,
            stats.rows_written,
            counters.records,
            counters.predictions,
            counters.rejections,
            counters.refused,
            counters.dead_lettered,
            stats.retries,
            stats.failed,
            in_flight,
            stats.rows_written / stats.requests if stats.requests else 0.0,
            open_records,
            " (paused)" if paused else "",
            lag_text(lag),
            f", last error {stats.last_error}" if stats.retries else "",
        )
