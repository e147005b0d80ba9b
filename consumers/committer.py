"""The sink's offsets: which records are open, how far each partition is done, the commits.

Side effect first, offset second: a record's offset counts only once the record is
finished, and only the contiguous done-watermark per partition is stored
(`WatermarkTracker`); librdkafka's auto-commit commits what is stored, and a rebalance
or shutdown commits synchronously.

Who calls me: `Sink` (one thread). It tracks each consumed offset (`track`), holds the
record once mapped (`hold`), finishes it once its rows and dead letter are acknowledged
(`finish`) and stores offsets every loop turn (`store`); its rebalance callbacks hand the
revoked or lost partitions to `release`, and its shutdown calls `commit`.
What I change: the consumer's stored and committed offsets (never its fetch position),
the watermarks, and the table of open records (a released record is `cancelled`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from consumers.offsets import TP, WatermarkTracker
from consumers.pending import PendingRecord, SinkCounters

log = logging.getLogger(__name__)

# Pumps the sink's writes until the predicate holds; False if it gave up first.
Drain = Callable[[Callable[[], bool], float], bool]


class Committer:
    def __init__(self, counters: SinkCounters, drain_timeout_s: float) -> None:
        self.tracker = WatermarkTracker()
        self.open: dict[TP, dict[int, PendingRecord]] = defaultdict(dict)
        self.open_count = 0
        self._counters = counters
        self._drain_timeout_s = drain_timeout_s
        self._committed: dict[TP, int] = {}
        self._consumer: Any = None

    def attach(self, consumer: Any) -> None:
        """The consumer whose offsets I store and commit (built once the sink connects)."""
        self._consumer = consumer

    # -- records ---------------------------------------------------------------------
    def track(self, tp: TP, offset: int) -> None:
        """A consumed offset, in consumption order: nothing past it counts until it is done."""
        self.tracker.track(tp, offset)

    def hold(self, pr: PendingRecord) -> None:
        self.open[pr.tp][pr.rec.offset] = pr
        self.open_count += 1

    def finish(self, pr: PendingRecord) -> None:
        """The record's side effects are acknowledged: its offset may count."""
        self.open[pr.tp].pop(pr.rec.offset, None)
        self.open_count -= 1
        self.tracker.done(pr.tp, pr.rec.offset)

    def partitions_idle(self, tps: list[TP]) -> bool:
        return all(not self.open.get(tp) for tp in tps)

    # -- offsets ---------------------------------------------------------------------
    def store(self) -> None:
        """Store the watermarks that moved; auto-commit sends them."""
        advanced = self.tracker.advanced()
        if not advanced:
            return
        from confluent_kafka import KafkaException, TopicPartition

        offsets = [TopicPartition(t, p, off) for (t, p), off in advanced.items()]
        try:
            self._consumer.store_offsets(offsets=offsets)
        except KafkaException as exc:  # e.g. a partition revoked between poll and store
            log.warning("store_offsets failed for %s: %s", advanced, exc)

    def commit(self, tps: list[TP] | None = None) -> None:
        """Commit the watermarks of `tps` (all by default) now, those not committed yet."""
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
            self._counters.commits += 1
            log.info("committed %s", {f"{t}[{p}]": o for (t, p), o in positions.items()})
        except KafkaException as exc:
            log.warning("synchronous commit of %s failed: %s", positions, exc)

    # -- rebalance -------------------------------------------------------------------
    def release(self, tps: list[TP], drain: Drain, why: str) -> None:
        """Partitions leave this member: drain their open records (up to the drain
        timeout), commit what is done, and forget the rest (the next owner reads it again)."""
        if not tps:
            return
        if not drain(lambda: self.partitions_idle(tps), self._drain_timeout_s):
            log.warning(
                "%s: %d record(s) of %s still unacknowledged after %.0fs; they will be "
                "read again by the next owner",
                why,
                sum(len(self.open.get(tp, {})) for tp in tps),
                tps,
                self._drain_timeout_s,
            )
        self.commit(tps)
        for tp in tps:
            for pr in self.open.pop(tp, {}).values():
                pr.cancelled = True
                self.open_count -= 1
        self.tracker.forget(tps)
        for tp in tps:
            self._committed.pop(tp, None)
        log.info("%s %s", why, [f"{t}[{p}]" for t, p in tps])
