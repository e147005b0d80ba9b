"""Per-stage counters for the health view: records in/out, dead letters, batches, lag."""

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
    # next offset to process per partition of the source topic
    positions: dict[int, int] = field(default_factory=dict)
    started_at: float = field(default_factory=time.monotonic)
    last_batch_at: float | None = None
    _recent: deque[tuple[float, int, float]] = field(default_factory=lambda: deque(maxlen=50))

    def batch_done(
        self,
        size: int,
        out: int,
        dead: int,
        seconds: float,
        reasons: list[str],
        positions: dict[int, int],
    ) -> None:
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
        self._recent.append((now, size, seconds))

    def snapshot(
        self, highwaters: dict[int, int | None], committed: dict[int, int | None] | None = None
    ) -> dict[str, Any]:
        """A JSON-able view; `highwaters` maps assigned source partitions to their end,
        `committed` their committed offsets (where processing starts for a partition
        this worker has not processed anything from yet)."""
        committed = committed or {}
        lag: dict[str, int | None] = {}
        for p, hw in sorted(highwaters.items()):
            pos = self.positions.get(p)
            if pos is None:
                pos = committed.get(p)
            if hw is not None and pos is None and hw == 0:
                lag[str(p)] = 0  # empty partition
            else:
                lag[str(p)] = None if hw is None or pos is None else max(0, hw - pos)
        known = [v for v in lag.values() if v is not None]
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
            "batches": self.batches,
            "last_batch_size": self.last_batch_size,
            "max_batch_size": self.max_batch_size,
            "mean_batch_size": round(n / len(recent), 2) if recent else 0,
            "images_per_busy_s": round(n / busy, 1) if busy > 0 else None,
            "failed_batches": self.errors,
            "assigned_partitions": sorted(highwaters),
            "lag": lag,
            "total_lag": sum(known) if known else (0 if not highwaters else None),
            "seconds_since_last_batch": (
                None
                if self.last_batch_at is None
                else round(time.monotonic() - self.last_batch_at, 1)
            ),
        }
