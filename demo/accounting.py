"""Account for every produced image id: stored prediction, rejection, or missing.

Reads go through consumers.queries.lookup at the configured read consistency
(LOCAL_QUORUM, under the read profile that rides through one node dying), so a complete
count is complete on a quorum of replicas, not just on one node. Each id gets one status;
an id that also had a row in the other table is listed in `both` (an accounting
violation unless the writer is about to delete the older row).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from consumers import queries


@dataclass
class Accounting:
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejected: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)
    shadowed: set[str] = field(default_factory=set)

    @property
    def both(self) -> set[str]:
        """Ids with rows in both tables: an accounting violation."""
        return set(self.shadowed)

    def complete(self) -> bool:
        return not self.missing


def account(session: Any, keyspace: str, ids: Iterable[str]) -> Accounting:
    found = queries.lookup(session, ids, keyspace=keyspace)
    return Accounting(stored=found.predictions, rejected=found.rejections,
                      missing=set(found.missing), shadowed=found.shadowed)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no data."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-int(q * len(ordered)) // 100)))
    return float(ordered[rank - 1])


def latencies_ms(acc: Accounting) -> list[float]:
    """Produce-to-stored latency of every accounted image."""
    rows = list(acc.stored.values()) + list(acc.rejected.values())
    return [
        float(r["stored_at"] - r["produced_at"])
        for r in rows
        if r.get("stored_at") and r.get("produced_at")
    ]
