"""Prometheus metrics of a stream worker, served at `/metrics` on its faust web port.

Counters and gauges are read on scrape from what the worker already keeps: the health
snapshot (`StageStats` per stage, lag from the consumer's assignment and highwaters), so
the agents do no extra work for them. Histograms need one observation per batch or per
forward pass: `observe_batch` (one call in app.py's agent) and `forward_timer` (one
`with` in infer.py). Those histograms are process-wide objects registered into each
worker's own registry (one worker per process; tests may build several apps).

Guarantees: a scrape never raises into faust or the agents (a failing snapshot is logged
and only the process metrics are served); labels stay low-cardinality (stage, topic,
partition, reason). Names and meanings: docs/metrics.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    CollectorRegistry,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from schemas.topics import STAGE_BY_NAME
from stream_app.records import InRecord

log = logging.getLogger(__name__)

# prometheus_client's text format; aiohttp refuses a charset inside content_type.
CONTENT_TYPE = "text/plain; version=0.0.4"

# Seconds a micro-batch takes from take() to acked: the model dominates (tens of ms
# per image on 2 cores), a broker outage stretches sends up to send_timeout_s.
BATCH_SECONDS = Histogram(
    "torchstream_stage_batch_duration_seconds",
    "Time from a micro-batch's processing start until all its outputs were acknowledged",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    registry=None,
)
BATCH_RECORDS = Histogram(
    "torchstream_stage_batch_size_records",
    "Records per micro-batch",
    ["stage"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
    registry=None,
)
INPUT_AGE = Histogram(
    "torchstream_stage_input_age_seconds",
    "Per record: time from its Kafka timestamp (produced by the previous hop; for decode, "
    "by the producer) until its batch was done at this stage",
    ["stage"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
    registry=None,
)
FORWARD_SECONDS = Histogram(
    "torchstream_model_forward_duration_seconds",
    "Wall time of one model forward pass",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=None,
)
FORWARD_IMAGES = Histogram(
    "torchstream_model_forward_batch_images",
    "Images in one model forward pass",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
    registry=None,
)
_HISTOGRAMS = (BATCH_SECONDS, BATCH_RECORDS, INPUT_AGE, FORWARD_SECONDS, FORWARD_IMAGES)


def observe_batch(stage: str, records: Sequence[InRecord], seconds: float) -> None:
    """Called once per acknowledged batch by the stage agent (event loop, cheap)."""
    BATCH_SECONDS.labels(stage).observe(seconds)
    BATCH_RECORDS.labels(stage).observe(len(records))
    now_ms = time.time() * 1000
    age = INPUT_AGE.labels(stage)
    for r in records:
        if r.timestamp_ms:
            age.observe(max(0.0, (now_ms - r.timestamp_ms) / 1000))


@contextmanager
def forward_timer(images: int) -> Iterator[None]:
    """Times one forward pass (executor thread); a pass that raises is not observed."""
    started = time.perf_counter()
    yield
    FORWARD_SECONDS.observe(time.perf_counter() - started)
    FORWARD_IMAGES.observe(images)


class StageCollector(Collector):
    """Reads the worker's health snapshot on every scrape and turns it into metrics.

    `snapshot` returns stream_app.app.health_snapshot's dict; `prefix` is the topic prefix
    the stages write with (the snapshot names only source topics).
    """

    def __init__(self, snapshot: Callable[[], dict[str, Any]], prefix: str = "") -> None:
        self._snapshot = snapshot
        self._prefix = prefix

    def describe(self) -> Iterable[Metric]:
        return []  # no fixed names to check at registration; collect() says what there is

    def collect(self) -> Iterable[Metric]:
        try:
            snap = self._snapshot()
        except Exception as exc:  # the scrape must not break the worker
            log.warning("metrics: health snapshot failed: %s: %s", type(exc).__name__, exc)
            return []
        for st in snap.get("stages", []):  # each stage's series exist from its start, at 0
            for h in (BATCH_SECONDS, BATCH_RECORDS, INPUT_AGE):
                h.labels(st["stage"])
        return list(stage_metrics(snap, self._prefix, now=time.time()))


def stage_metrics(snap: dict[str, Any], prefix: str, now: float) -> Iterator[Metric]:
    """Pure: the metric families of one health snapshot (unit-tested without faust)."""
    rin = CounterMetricFamily(
        "torchstream_stage_records_in",
        "Records a stage consumed and finished (acknowledged)",
        labels=["stage", "topic"],
    )
    rout = CounterMetricFamily(
        "torchstream_stage_records_out",
        "Records a stage sent to its next topic",
        labels=["stage", "topic"],
    )
    dead = CounterMetricFamily(
        "torchstream_stage_dead_letters",
        "Records a stage sent to its dead-letter topic, by reason",
        labels=["stage", "topic", "reason"],
    )
    failed = CounterMetricFamily(
        "torchstream_stage_failed_batches",
        "Batches whose sends failed (the worker exits; the batch is redelivered)",
        labels=["stage"],
    )
    batches = CounterMetricFamily(
        "torchstream_stage_batches", "Micro-batches finished", labels=["stage"]
    )
    last = GaugeMetricFamily(
        "torchstream_stage_last_batch_timestamp_seconds",
        "Unix time of the stage's last finished batch in this worker",
        labels=["stage"],
    )
    oldest = GaugeMetricFamily(
        "torchstream_stage_oldest_unacked_age_seconds",
        "Age of the "
        "oldest input the stage holds unacknowledged (a batch in hand, "
        "or records waiting with no progress); 0 when none",
        labels=["stage"],
    )
    stalled = GaugeMetricFamily(
        "torchstream_stage_stalled",
        "1 while the worker's watchdog judges the stage stalled",
        labels=["stage"],
    )
    lag = GaugeMetricFamily(
        "torchstream_consumer_lag_records",
        "Records between a partition's end and the consumer's position, per assigned partition",
        labels=["stage", "topic", "partition"],
    )
    model = snap.get("model") or {}
    info = GaugeMetricFamily(
        "torchstream_worker_info",
        "Always 1: the worker's consumer group and model",
        labels=["app_id", "model", "model_version"],
    )
    info.add_metric(
        [
            str(snap.get("app_id", "")),
            str(model.get("name") or ""),
            str(model.get("version") or ""),
        ],
        1,
    )
    yield info
    for st in snap.get("stages", []):
        name = st["stage"]
        topics = STAGE_BY_NAME.get(name)
        out_topic = prefix + topics.sink if topics else ""
        dlq_topic = prefix + topics.dlq if topics else ""
        rin.add_metric([name, st["source"]], st["records_in"])
        if "records_out_by_topic" in st:  # the topics really written (fused stages too)
            for topic, n in sorted(st["records_out_by_topic"].items()):
                rout.add_metric([name, topic], n)
            for topic, reasons in sorted(st["dead_letters_by_topic"].items()):
                for reason, n in sorted(reasons.items()):
                    dead.add_metric([name, topic, reason], n)
        else:  # older snapshots: the stage's registry topics
            rout.add_metric([name, out_topic], st["records_out"])
            for reason, n in sorted(st.get("dead_letter_reasons", {}).items()):
                dead.add_metric([name, dlq_topic, reason], n)
        failed.add_metric([name], st.get("failed_batches", 0))
        batches.add_metric([name], st.get("batches", 0))
        since = st.get("seconds_since_last_batch")
        if since is not None:
            last.add_metric([name], now - since)
        # Liveness fields of newer health snapshots; older ones lack them.
        if "oldest_unacked_age_s" in st:
            oldest.add_metric([name], st["oldest_unacked_age_s"] or 0.0)
        if "stalled" in st:
            stalled.add_metric([name], 1 if st["stalled"] else 0)
        for part, n in sorted(st.get("lag", {}).items(), key=lambda kv: int(kv[0])):
            if n is not None:
                lag.add_metric([name, st["source"], str(part)], n)
    yield from (rin, rout, dead, failed, batches, last, oldest, stalled, lag)


def build_registry(snapshot: Callable[[], dict[str, Any]], prefix: str = "") -> CollectorRegistry:
    """A worker's registry: stage collector, histograms, process CPU/RSS, GC, platform."""
    reg = CollectorRegistry()
    reg.register(StageCollector(snapshot, prefix))
    for h in _HISTOGRAMS:
        reg.register(h)
    ProcessCollector(registry=reg)
    reg.register(PLATFORM_COLLECTOR)
    reg.register(GC_COLLECTOR)
    return reg


def register_metrics(
    app: Any, snapshot: Callable[[], dict[str, Any]], prefix: str = ""
) -> CollectorRegistry:
    """Serve the worker's metrics at /metrics on its faust web server."""
    registry = build_registry(snapshot, prefix)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(registry), content_type=CONTENT_TYPE)

    return registry
