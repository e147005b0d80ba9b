"""Account for every produced image id: stored prediction, rejection, or missing.

Reads go through consumers.queries.lookup at the configured read consistency
(LOCAL_QUORUM, under the read profile that rides through one node dying), so a complete
count is complete on a quorum of replicas, not just on one node. Each id gets one status;
an id that also had a row in the other table is listed in `both` (an accounting
violation unless the writer is about to delete the older row).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from consumers import queries
from infra import groups
from infra.settings import KafkaSettings


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
    return Accounting(
        stored=found.predictions,
        rejected=found.rejections,
        missing=set(found.missing),
        shadowed=found.shadowed,
    )


def wait_accounted(
    session: Any,
    keyspace: str,
    ids: Sequence[str],
    *,
    kafka: KafkaSettings,
    counted: Mapping[str, str],
    before: Mapping[str, int],
    timeout_s: float,
    done: Callable[[Accounting], tuple[int, int]] | None = None,
    progress: Callable[[dict[str, int]], None] | None = None,
    every_s: float = 1.0,
) -> tuple[Accounting, dict[str, int]]:
    """Poll until every id is stored or rejected, or `timeout_s` passed; returns the last
    accounting and counts (published, one count per `counted` name, stored, rejected).

    Each poll reads both tables (the read profile: one Cassandra node dying only slows
    it) and the end offsets of the `counted` topics ({name: topic}, records since
    `before`, through infra.kafka_retry: a leader move is retried). A Kafka failure that
    outlasts the retry deadline raises KafkaCallFailed (one line). `done` says which
    rows count (default: all found)."""
    deadline = time.monotonic() + timeout_s
    while True:
        acc = account(session, keyspace, ids)
        stored, rejected = done(acc) if done else (len(acc.stored), len(acc.rejected))
        now = groups.end_offsets(kafka, list(counted.values()))
        counts = {
            "published": len(ids),
            **{name: now[t] - before.get(t, 0) for name, t in counted.items()},
            "stored": stored,
            "rejected": rejected,
        }
        if progress is not None:
            progress(counts)
        if stored + rejected >= len(ids) or time.monotonic() > deadline:
            return acc, counts
        time.sleep(min(every_s, max(0.0, deadline - time.monotonic())))


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
