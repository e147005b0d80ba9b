"""Publish a burst (or a paced stream), wait for it to be stored, read the rows back.

Shared by the pipeline and transport benchmarks: both end in Cassandra rows with
`produced_at` (set by the publisher) and `stored_at` (the coordinator's clock at write),
so throughput is count / (last stored_at - first produce), the steady rate is taken
over the middle 80 % of the stored_at times, and latency is per row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.cpu import CpuMeter
from bench.stats import latency_summary, steady_rate, throughput
from bench.waits import quiet
from consumers import queries

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    label: str
    count: int
    first_produce_ms: float
    last_produce_ms: float
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing: int = 0
    cpu: dict[str, Any] | None = None
    # Anything else a benchmark measured during the run (e.g. consumer lag).
    extra: dict[str, Any] = field(default_factory=dict)

    def latencies(self) -> list[float]:
        return [
            float(r["stored_at"] - r["produced_at"])
            for r in self.rows.values()
            if r.get("stored_at") and r.get("produced_at")
        ]

    def summary(self) -> dict[str, Any]:
        stored = [r["stored_at"] for r in self.rows.values() if r.get("stored_at")]
        last = max(stored) if stored else None
        return {
            "label": self.label,
            "count": self.count,
            "stored": len(self.rows),
            "missing": self.missing,
            "publish_s": round((self.last_produce_ms - self.first_produce_ms) / 1000.0, 3),
            "span_s": round((last - self.first_produce_ms) / 1000.0, 3) if last else None,
            "per_s": _round(throughput(len(stored), self.first_produce_ms, last)) if last else None,
            # The rate while a backlog was queued: the middle 80 % of the completions.
            "steady_per_s": _round(steady_rate(stored)),
            "offered_per_s": round(
                throughput(self.count, self.first_produce_ms, self.last_produce_ms) or 0.0, 2
            ),
            **latency_summary(self.latencies()),
            "cpu": self.cpu,
            **self.extra,
        }


def _round(v: float | None, digits: int = 2) -> float | None:
    return None if v is None else round(v, digits)


def collect_rows(
    session: Any,
    keyspace: str,
    ids: list[str],
    since_ms: float,
    timeout_s: float,
    done: Callable[[], bool] | None = None,
) -> tuple[dict[str, dict[str, Any]], int]:
    """Rows of `ids` written by this run (produced_at >= since_ms), waiting up to timeout_s.

    `done` (cheap, e.g. a consumer-group lag probe) gates the first full read so the
    database is not hammered with lookups while it is being measured.
    """
    deadline = time.monotonic() + timeout_s
    if done is not None:
        while not done():
            if time.monotonic() > deadline:
                break
            time.sleep(0.25)
    rows: dict[str, dict[str, Any]] = {}
    pending = list(ids)
    while pending:
        try:
            got = queries.fetch_predictions(session, pending, keyspace=keyspace, concurrency=128)
        except Exception as exc:  # noqa: BLE001 - a node restarting under us: read again
            log.warning("reading rows back failed (%s); retrying", exc)
            got = {}
        for i, r in got.items():
            if (r.get("produced_at") or 0) >= since_ms - 1:
                rows[i] = r
        pending = [i for i in pending if i not in rows]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return rows, len(pending)


def read_back(
    session: Any,
    keyspace: str,
    ids: list[str],
    since_ms: float,
    timeout_s: float,
    done: Callable[[], bool],
    meter: CpuMeter | None,
    start: Any,
) -> tuple[dict[str, dict[str, Any]], int, dict[str, Any] | None]:
    """collect_rows once `done` (transient probe errors mean "not yet"), and the CPU per
    item from `start` to the moment `done` first held: before the read-back, which loads
    Cassandra. Returns (rows, missing, cpu or None without a meter)."""
    marks: dict[str, Any] = {}

    def finished() -> bool:
        if not done():
            return False
        if meter is not None:
            marks["end"] = meter.snapshot()
        return True

    rows, missing = collect_rows(session, keyspace, ids, since_ms, timeout_s, quiet(finished))
    cpu = (
        meter.diff(start, marks["end"], len(ids))
        if meter is not None and start is not None and "end" in marks
        else None
    )
    return rows, missing, cpu
