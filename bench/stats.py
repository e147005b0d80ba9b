"""Pure numbers: percentiles, summaries over repetitions, rates, stage breakdowns.

No clients, no clocks: everything here is unit-tested without servers.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no data."""
    ordered = sorted(values)
    if not ordered:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in 0..100, got {q}")
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Median and spread of repeated measurements: n, median, min, max, spread_pct.

    spread_pct is (max - min) / median in percent: the honest width of a noisy figure.
    """
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"n": 0, "median": None, "min": None, "max": None, "spread_pct": None, "values": []}
    med = statistics.median(vals)
    spread = (max(vals) - min(vals)) / med * 100.0 if med else None
    return {
        "n": len(vals),
        "median": round(med, 3),
        "min": round(min(vals), 3),
        "max": round(max(vals), 3),
        "spread_pct": round(spread, 1) if spread is not None else None,
        "values": [round(v, 3) for v in vals],
    }


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, Any]:
    """p50/p95/p99/max of one run's latencies."""
    return {
        "count": len(latencies_ms),
        "p50_ms": percentile(latencies_ms, 50),
        "p95_ms": percentile(latencies_ms, 95),
        "p99_ms": percentile(latencies_ms, 99),
        "max_ms": max(latencies_ms) if latencies_ms else None,
    }


def throughput(count: int, first_ms: float, last_ms: float) -> float | None:
    """Items per second over [first_ms, last_ms]; None if the span is empty."""
    span = (last_ms - first_ms) / 1000.0
    if count <= 0 or span <= 0:
        return None
    return count / span


def steady_rate(times_ms: Iterable[float], trim: float = 0.1, min_items: int = 20) -> float | None:
    """Items per second between the trim and 1 - trim quantiles of completion times.

    A burst's end-to-end rate (count / (last done - first sent)) also counts the time
    the pipeline takes to fill and to drain: its latency, not its throughput. With 160
    images that is 15-25 % of the span, so the figure fell as the burst got shorter.
    The middle of the completions is the rate the pipeline sustains while it has a
    backlog, which is what "at saturation" means. None under min_items completions.
    """
    if not 0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim}")
    ordered = sorted(times_ms)
    if len(ordered) < min_items:
        return None
    lo = int(len(ordered) * trim)
    hi = len(ordered) - 1 - lo
    span = (ordered[hi] - ordered[lo]) / 1000.0
    if span <= 0:
        return None
    return (hi - lo) / span


def median_at(section: Mapping[str, Any] | None, *path: str) -> Any:
    """The "median" of the summary at `path` in a result dict; None where any key is absent."""
    for key in path:
        section = (section or {}).get(key)
    return (section or {}).get("median")


def paired_ratios(
    bursts: Sequence[Mapping[str, Any]], key: str, references: Sequence[float | None]
) -> list[float]:
    """bursts[i][key] / references[i] for each burst measured right after its reference."""
    return [b[key] / ref for b, ref in zip(bursts, references, strict=True) if ref and b.get(key)]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def stage_breakdown(
    rows: Iterable[Mapping[str, Any]], stages: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per-hop time (ms) from stored rows: produced -> stage1 -> ... -> stored.

    Each row needs `produced_at`, `stored_at` (epoch ms) and `stage_ms` (stage -> epoch
    ms when that stage emitted the record). A hop's time includes its queueing (time
    spent waiting in the topic before the stage) and its processing.
    """
    marks = ["produced", *stages, "stored"]
    hops: dict[str, list[float]] = {f"{a}->{b}": [] for a, b in zip(marks, marks[1:], strict=False)}
    for r in rows:
        trace = r.get("stage_ms") or {}
        points = [r.get("produced_at"), *(trace.get(s) for s in stages), r.get("stored_at")]
        for (a, b), t0, t1 in zip(
            zip(marks, marks[1:], strict=False), points, points[1:], strict=False
        ):
            if t0 is not None and t1 is not None:
                hops[f"{a}->{b}"].append(float(t1 - t0))
    out: dict[str, dict[str, Any]] = {}
    for name, vals in hops.items():
        out[name] = {
            "count": len(vals),
            "p50_ms": percentile(vals, 50),
            "p95_ms": percentile(vals, 95),
            "mean_ms": round(statistics.fmean(vals), 1) if vals else None,
        }
    return out
