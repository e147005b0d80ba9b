"""Pipeline benchmark: the real stream workers and sink, images end to end.

Images are published to `bench.p.images.raw` by the project's publisher
(producers.publisher.publish_items: acks=all, idempotent), either as a burst (as fast
as the brokers acknowledge: saturation) or paced at a fixed rate. A run is done when
the predictions topic holds the run's records and the sink group has committed past
them; then the rows are read back at LOCAL_QUORUM.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Callable
from typing import Any

from bench import images, topology
from bench.cpu import CpuMeter
from bench.measure import RunResult, collect_rows
from bench.waits import quiet, retrying
from infra import groups
from producers.publisher import publish_items
from producers.settings import ProducerSettings
from schemas import topics

log = logging.getLogger(__name__)
STAGES = [s.name for s in topics.STAGES]


def run_once(alive: Callable[[], None], session: Any, tag: str, count: int, rate: float = 0.0,
             timeout_s: float = 600.0, prefix: str = topology.PIPELINE_PREFIX,
             meter: CpuMeter | None = None) -> RunResult:
    settings = ProducerSettings()
    settings.producer.topic = prefix + topics.RAW
    settings.producer.rate = rate
    kafka = settings.kafka
    pred_topic = prefix + topics.PREDICTIONS
    before = retrying(lambda: groups.end_offsets(kafka, [pred_topic])[pred_topic], what="end offsets")
    alive()
    if meter is not None:
        meter.sample_background_once()
    start = meter.snapshot() if meter is not None else None
    result = publish_items(images.items(count, tag), settings)
    if result.summary.failed:
        raise RuntimeError(f"publish failed for {result.summary.failed} image(s): {result.summary.failures[:3]}")
    produced = [t for _, t in result.delivered]
    ids = [i for i, _ in result.delivered]
    first, last = min(produced), max(produced)

    def done() -> bool:
        alive()
        if groups.end_offsets(kafka, [pred_topic])[pred_topic] - before < len(ids):
            return False
        return groups.group_lag(kafka, topology.PIPELINE_SINK_GROUP, [pred_topic])["total"] == 0

    marks: dict[str, Any] = {}

    def finished() -> bool:
        if not done():
            return False
        if meter is not None:
            marks["end"] = meter.snapshot()  # before the read-back, which loads Cassandra
        return True

    rows, missing = collect_rows(session, topology.KEYSPACE, ids, first, timeout_s, quiet(finished))
    cpu = meter.diff(start, marks["end"], len(ids)) if meter is not None and start is not None and "end" in marks else None
    return RunResult(f"pipeline {tag}", len(ids), first, last, rows, missing, cpu)


def worker_health(ports: list[int], timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """Each worker's /health/ view (batch sizes, per-stage counters and lag)."""
    out = []
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/", timeout=timeout_s) as r:
                out.append(json.loads(r.read()))
        except Exception as exc:  # noqa: BLE001 - health is informative, not required
            out.append({"port": port, "error": f"{type(exc).__name__}: {exc}"})
    return out


def batch_summary(health: list[dict[str, Any]]) -> dict[str, Any]:
    """Per stage over all workers: records, batches, mean batch, busy-time rate."""
    agg: dict[str, dict[str, Any]] = {}
    for h in health:
        for st in h.get("stages", []):
            a = agg.setdefault(st["stage"], {"records_in": 0, "batches": 0, "max_batch_size": 0,
                                             "images_per_busy_s": []})
            a["records_in"] += st.get("records_in", 0)
            a["batches"] += st.get("batches", 0)
            a["max_batch_size"] = max(a["max_batch_size"], st.get("max_batch_size", 0))
            if st.get("images_per_busy_s"):
                a["images_per_busy_s"].append(st["images_per_busy_s"])
    for a in agg.values():
        a["mean_batch_size"] = round(a["records_in"] / a["batches"], 2) if a["batches"] else None
    return agg
