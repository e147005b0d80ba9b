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
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from bench import images, topology
from bench.cpu import CpuMeter
from bench.measure import RunResult, read_back
from bench.waits import retrying
from infra import groups
from infra.settings import PipelineSettings
from producers.publisher import publish_items
from producers.settings import ProducerSettings
from schemas import topics

log = logging.getLogger(__name__)
STAGES = [s.name for s in topics.STAGES]


def lag_by_topic(partitions: dict[str, int]) -> dict[str, int]:
    """{'t[0]': 3, 't[1]': 2, 'u[0]': 1} -> {'t': 5, 'u': 1}."""
    out: dict[str, int] = {}
    for key, lag in partitions.items():
        topic = key.rsplit("[", 1)[0]
        out[topic] = out.get(topic, 0) + max(0, lag)
    return out


class LagSampler:
    """The largest committed-offset lag of each stage's input topic seen during a run.

    Sampled at most every `every_s` from the completion probe (two admin round trips per
    sample), so it shows where a burst queued: the stage whose input lag stays high is
    the slow one. Faust commits every few seconds, so this is coarse by design.
    """

    def __init__(
        self,
        kafka: Any,
        app_group: str,
        sink_group: str,
        prefix: str,
        every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kafka = kafka
        self.app_group, self.sink_group = app_group, sink_group
        self.stage_of = {prefix + s.source: s.name for s in topics.STAGES}
        self.sink_topic = prefix + topics.PREDICTIONS
        self.every_s = every_s
        self.clock = clock
        self.next_at = 0.0
        self.max_lag: dict[str, int] = {}
        self.samples = 0

    def record(self, lags: dict[str, int]) -> None:
        for topic, lag in lags.items():
            stage = "sink" if topic == self.sink_topic else self.stage_of.get(topic, topic)
            self.max_lag[stage] = max(self.max_lag.get(stage, 0), lag)
        self.samples += 1

    def maybe_sample(self, probe: groups.Prober | None = None) -> None:
        """`probe`: the run's kept probe clients (fresh clients per sample otherwise)."""
        now = self.clock()
        if now < self.next_at:
            return
        self.next_at = now + self.every_s

        def lag(group: str, topics: list[str]) -> dict[str, Any]:
            if probe is not None:
                return probe.group_lag(group, topics)
            return groups.group_lag(self.kafka, group, topics)

        try:
            app = lag(self.app_group, list(self.stage_of))
            sink = lag(self.sink_group, [self.sink_topic])
        except Exception as exc:  # noqa: BLE001 - informative only
            log.debug("lag sample failed: %s", exc)
            return
        self.record(lag_by_topic({**app["partitions"], **sink["partitions"]}))

    def summary(self) -> dict[str, Any]:
        order = [*STAGES, "sink"]
        return {
            "max_lag": {k: self.max_lag[k] for k in order if k in self.max_lag},
            "samples": self.samples,
            "every_s": self.every_s,
        }


def run_once(
    alive: Callable[[], None],
    session: Any,
    tag: str,
    count: int,
    rate: float = 0.0,
    timeout_s: float = 600.0,
    prefix: str = topology.PIPELINE_PREFIX,
    meter: CpuMeter | None = None,
    lag: LagSampler | None = None,
) -> RunResult:
    settings = ProducerSettings()
    settings.producer.topic = prefix + topics.RAW
    settings.producer.rate = rate
    kafka = PipelineSettings().kafka  # probes as the operator: the producer may not describe groups
    pred_topic = prefix + topics.PREDICTIONS
    with groups.Prober(kafka) as probe:  # polled every 0.5 s: kept clients, not new logins
        before = retrying(lambda: probe.end_offsets([pred_topic])[pred_topic], what="end offsets")
        alive()
        burst = images.items(count, tag)  # made (or cached) before the CPU window opens
        if meter is not None:
            meter.sample_background_once()
        start = meter.snapshot() if meter is not None else None
        result = publish_items(burst, settings)
        if result.summary.failed:
            raise RuntimeError(
                f"publish failed for {result.summary.failed} image(s): {result.summary.failures[:3]}"
            )
        produced = [t for _, t in result.delivered]
        ids = [i for i, _ in result.delivered]
        first, last = min(produced), max(produced)

        def done() -> bool:
            alive()
            if lag is not None:
                lag.maybe_sample(probe)
            if probe.end_offsets([pred_topic])[pred_topic] - before < len(ids):
                return False
            return probe.group_lag(topology.PIPELINE_SINK_GROUP, [pred_topic])["total"] == 0

        rows, missing, cpu = read_back(
            session, topology.KEYSPACE, ids, first, timeout_s, done, meter, start
        )
    res = RunResult(f"pipeline {tag}", len(ids), first, last, rows, missing, cpu)
    if lag is not None:
        res.extra["lag"] = lag.summary()
    return res


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
            a = agg.setdefault(
                st["stage"],
                {"records_in": 0, "batches": 0, "max_batch_size": 0, "images_per_busy_s": []},
            )
            a["records_in"] += st.get("records_in", 0)
            a["batches"] += st.get("batches", 0)
            a["max_batch_size"] = max(a["max_batch_size"], st.get("max_batch_size", 0))
            if st.get("images_per_busy_s"):
                a["images_per_busy_s"].append(st["images_per_busy_s"])
    for a in agg.values():
        a["mean_batch_size"] = round(a["records_in"] / a["batches"], 2) if a["batches"] else None
    return agg
