"""What a publish run did: counts, reasons, throughput; text and JSON forms."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Delivered:
    """One acknowledged record: where it landed."""

    image_id: str
    produced_at_ms: int
    partition: int
    offset: int
    source: str
    size: int


@dataclass(frozen=True)
class Problem:
    """An input that was skipped or a record that failed: `reason` is a short code."""

    source: str
    reason: str
    detail: str
    image_id: str | None = None


@dataclass
class Summary:
    topic: str
    delivered: int = 0
    failed: int = 0
    skipped: int = 0
    bytes: int = 0
    elapsed_s: float = 0.0
    interrupted: bool = False
    # Ids delivered more than once in this run (same bytes twice): harmless, but counted.
    duplicate_ids: int = 0
    failures: list[Problem] = field(default_factory=list)
    skips: list[Problem] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.delivered / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.skipped == 0 and not self.interrupted

    def exit_code(self) -> int:
        """0 all published; 1 deliveries failed; 3 only inputs skipped; 130 interrupted."""
        if self.interrupted:
            return 130
        if self.failed:
            return 1
        if self.skipped:
            return 3
        return 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "delivered": self.delivered,
            "failed": self.failed,
            "skipped": self.skipped,
            "bytes": self.bytes,
            "elapsed_s": round(self.elapsed_s, 3),
            "images_per_s": round(self.images_per_s, 2),
            "mb_per_s": round(self.mb_per_s, 3),
            "interrupted": self.interrupted,
            "duplicate_ids": self.duplicate_ids,
            "failure_reasons": dict(Counter(p.reason for p in self.failures)),
            "skip_reasons": dict(Counter(p.reason for p in self.skips)),
            "failures": [vars(p) for p in self.failures],
            "skips": [vars(p) for p in self.skips],
            "exit_code": self.exit_code(),
        }

    def format_text(self, max_listed: int = 20) -> str:
        lines = [
            f"topic {self.topic}: delivered {self.delivered}, failed {self.failed}, "
            f"skipped {self.skipped}; {self.bytes / 1e6:.2f} MB in {self.elapsed_s:.2f} s "
            f"= {self.images_per_s:.1f} images/s, {self.mb_per_s:.2f} MB/s"
        ]
        if self.duplicate_ids:
            lines.append(f"  {self.duplicate_ids} ids published more than once (same content)")
        for title, problems in (("failed", self.failures), ("skipped", self.skips)):
            if not problems:
                continue
            reasons = Counter(p.reason for p in problems)
            lines.append(f"  {title}: " + ", ".join(f"{n} {r}" for r, n in reasons.most_common()))
            for p in problems[:max_listed]:
                lines.append(f"    {p.source}: {p.reason}: {p.detail}")
            if len(problems) > max_listed:
                lines.append(f"    ... and {len(problems) - max_listed} more")
        if self.interrupted:
            lines.append("  interrupted: the remaining inputs were not published")
        return "\n".join(lines)
