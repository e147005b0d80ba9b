"""Per-stage counters for the health view: records in/out, dead letters, batches, lag,
and the liveness facts the watchdog judges a stage by.

A stage is *stalled* when it has held an unacknowledged input longer than the bound (a
batch in processing or in sending), or when one of its partitions has had records
waiting (fresh lag above zero) while the group's committed offset there stood still
for longer than the bound. The second catches one stuck partition while others flow:
a record faust never hands to the agent after a rebalance is never acked, so the
commit stops at it for good.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StageStats:
    stage: str
    source: str
    records_in: int = 0
    records_out: int = 0
    dead_letters: int = 0
    batches: int = 0
    last_batch_size: int = 0
    max_batch_size: int = 0
    errors: int = 0  # batches that failed as a whole (send failures)
    reasons: dict[str, int] = field(default_factory=dict)
    # Where the outputs went: fused stages write the last one's topic and each one's
    # dead-letter topic, so the stage's name alone does not say which topic.
    out_by_topic: dict[str, int] = field(default_factory=dict)
    dead_by_topic: dict[str, dict[str, int]] = field(default_factory=dict)
    # next offset to process per partition of the source topic
    positions: dict[int, int] = field(default_factory=dict)
    started_at: float = field(default_factory=time.monotonic)
    last_batch_at: float | None = None
    # Liveness: when the batch being processed was taken (None: none in processing),
    # and when the batch whose sends await acks was taken (a worker processes the next
    # batch while the previous one's acks come back, so both can be in hand); per
    # partition the last fresh lag, and since when records have waited there behind a
    # committed offset that did not move (absent: nothing waits).
    inflight_since: float | None = None
    _sending: deque[float] = field(default_factory=deque)  # taken-at, oldest first
    fresh_lag: dict[int, int | None] = field(default_factory=dict)
    waiting_since: dict[int, float] = field(default_factory=dict)
    _committed: dict[int, int] = field(default_factory=dict)
    lag_checked_at: float | None = None
    stalls: int = 0
    _recent: deque[tuple[float, int, float]] = field(default_factory=lambda: deque(maxlen=50))

    def batch_taken(self) -> None:
        self.inflight_since = time.monotonic()

    def sends_started(self) -> None:
        """Processing is done; from here the send timeout bounds the batch, not the
        watchdog (a broker election may take longer than the stall bound)."""
        if self.inflight_since is not None:
            self._sending.append(self.inflight_since)
        self.inflight_since = None

    @property
    def sending_since(self) -> float | None:
        """When the oldest batch still awaiting its acks was taken."""
        return self._sending[0] if self._sending else None

    def lag_measured(self, lag: dict[int, tuple[int, int] | None], at: float | None = None) -> None:
        """Fresh (committed offset, log end offset) per assigned partition, asked now;
        None where the broker did not answer."""
        now = time.monotonic() if at is None else at
        self.lag_checked_at = now
        self.fresh_lag = {p: None if v is None else max(0, v[1] - v[0]) for p, v in lag.items()}
        for p, v in lag.items():
            if v is None:
                # Unknown (the broker did not answer): judge nothing, observe anew. A probe
                # failing through a broker outage must not read as a stall; sends that
                # fail past send_timeout_s end the worker on their own.
                self.waiting_since.pop(p, None)
                self._committed.pop(p, None)
                continue
            committed, end = v
            moved = self._committed.get(p) != committed
            self._committed[p] = committed
            if end <= committed:
                self.waiting_since.pop(p, None)
            elif moved or p not in self.waiting_since:
                self.waiting_since[p] = now
        for p in set(self.waiting_since) - set(lag):
            del self.waiting_since[p]  # no longer ours
            self._committed.pop(p, None)

    def last_progress_at(self) -> float:
        return self.last_batch_at if self.last_batch_at is not None else self.started_at

    def oldest_unacked_age_s(self, now: float) -> float | None:
        """Age of the oldest input this stage holds, or that waits behind a commit that
        has not moved (a lower bound: it waited at least since then)."""
        starts = list(self.waiting_since.values())
        starts += [t for t in (self.inflight_since, self.sending_since) if t is not None]
        return now - min(starts) if starts else None

    def stuck_partitions(self, now: float, bound_s: float) -> list[int]:
        return sorted(p for p, t in self.waiting_since.items() if now - t > bound_s)

    def stalled(self, now: float, bound_s: float) -> bool:
        if self.inflight_since is not None and now - self.inflight_since > bound_s:
            return True
        return bool(self.stuck_partitions(now, bound_s))

    def batch_done(
        self,
        size: int,
        out: int,
        dead: int,
        seconds: float,
        reasons: list[str],
        positions: dict[int, int],
        sent: list[tuple[str, str | None]] | None = None,
    ) -> None:
        """`sent`: (topic, dead-letter reason or None) per output, when known."""
        for topic, reason in sent or ():
            if reason is None:
                self.out_by_topic[topic] = self.out_by_topic.get(topic, 0) + 1
            else:
                by = self.dead_by_topic.setdefault(topic, {})
                by[reason] = by.get(reason, 0) + 1
        self.records_in += size
        self.records_out += out
        self.dead_letters += dead
        self.batches += 1
        self.last_batch_size = size
        self.max_batch_size = max(self.max_batch_size, size)
        for r in reasons:
            self.reasons[r] = self.reasons.get(r, 0) + 1
        for p, nxt in positions.items():
            self.positions[p] = max(self.positions.get(p, 0), nxt)
        now = time.monotonic()
        self.last_batch_at = now
        if self._sending:  # batches finish in the order they were taken
            self._sending.popleft()
        self._recent.append((now, size, seconds))

    def snapshot(self, assigned: list[int], stall_after_s: float) -> dict[str, Any]:
        """A JSON-able view. `assigned`: the source partitions this worker holds; their lag
        is the last fresh measurement (None until one is made)."""
        now = time.monotonic()
        lag = {str(p): self.fresh_lag.get(p) for p in sorted(assigned)}
        known = [v for v in lag.values() if v is not None]
        oldest = self.oldest_unacked_age_s(now)
        recent = list(self._recent)
        busy = sum(s for _, _, s in recent)
        n = sum(size for _, size, _ in recent)
        return {
            "stage": self.stage,
            "source": self.source,
            "records_in": self.records_in,
            "records_out": self.records_out,
            "dead_letters": self.dead_letters,
            "dead_letter_reasons": dict(self.reasons),
            "records_out_by_topic": dict(self.out_by_topic),
            "dead_letters_by_topic": {t: dict(r) for t, r in self.dead_by_topic.items()},
            "batches": self.batches,
            "last_batch_size": self.last_batch_size,
            "max_batch_size": self.max_batch_size,
            "mean_batch_size": round(n / len(recent), 2) if recent else 0,
            "images_per_busy_s": round(n / busy, 1) if busy > 0 else None,
            "failed_batches": self.errors,
            "assigned_partitions": sorted(assigned),
            "lag": lag,
            "total_lag": sum(known) if known else (0 if not assigned else None),
            "lag_age_s": (
                None if self.lag_checked_at is None else round(now - self.lag_checked_at, 1)
            ),
            "oldest_unacked_age_s": None if oldest is None else round(oldest, 1),
            "last_progress_age_s": round(now - self.last_progress_at(), 1),
            "seconds_since_last_batch": (
                None if self.last_batch_at is None else round(now - self.last_batch_at, 1)
            ),
            "stalled": self.stalled(now, stall_after_s),
            "stall_after_s": stall_after_s,
            "stalls": self.stalls,
        }
