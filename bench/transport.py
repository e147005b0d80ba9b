"""Transport-only benchmark: the pipeline's topology with identity stages, small payloads.

Producer (acks=all, idempotent) -> <prefix>images.raw -> stage -> images.decoded ->
stage -> images.inferred -> stage -> images.predictions -> the real sink
(`python -m consumers sink`) -> Cassandra `vision_bench` at LOCAL_QUORUM. Payloads are
valid Prediction records (~150 bytes) published straight into the first topic and
moved unchanged, so the sink stores them like real predictions (2 rows each).

The stages are either `bench.relay` processes (a confluent-kafka consume -> produce loop:
the floor of a Python hop, prefix bench.t.) or the real stream workers in relay mode
(`python -m stream_app worker` with PIPELINE_STREAM__WORKER__RELAY=true: faust's
consumer, micro-batching, executor hand-off and acks=all sends, prefix bench.f.).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from bench import topology
from bench.cpu import CpuMeter
from bench.measure import RunResult, read_back
from infra import groups
from infra.kafka_clients import producer_config
from infra.settings import PipelineSettings
from schemas import codec, topics
from schemas.raw import now_ms

log = logging.getLogger(__name__)


def prediction_event(
    image_id: str, i: int, produced_at_ms: int
) -> tuple[bytes, list[tuple[str, bytes]]]:
    rec = {
        "image_id": image_id,
        "source": "bench/transport",
        "content_type": "",
        "produced_at_ms": produced_at_ms,
        "raw_topic": topology.PREFIX + topics.RAW,
        "raw_partition": -1,
        "raw_offset": i,
        "model_name": "identity",
        "model_version": "0",
        "top_k": [{"class_index": i % 1000, "label": f"bench-{i % 100}", "score": 1.0}],
        "processed_at_ms": produced_at_ms,
        "trace": {},
    }
    return codec.encode(codec.PREDICTION, rec)


def publish_events(
    settings: PipelineSettings,
    tag: str,
    count: int,
    rate: float = 0.0,
    prefix: str = topology.PREFIX,
) -> tuple[list[str], int, int]:
    """Publish `count` events as fast as acks allow (or at `rate`/s); (ids, first_ms, last_ms)."""
    from confluent_kafka import KafkaException, Producer

    p = Producer(producer_config(settings.kafka, {"client.id": "bench-transport"}))
    topic = prefix + topics.RAW
    errors: list[Any] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    ids = [f"bench-t-{tag}-{i:07d}" for i in range(count)]
    first = now_ms()
    t0 = time.monotonic()
    for i, image_id in enumerate(ids):
        if rate > 0:
            due = t0 + i / rate
            while (wait := due - time.monotonic()) > 0:
                p.poll(min(wait, 0.05))
        value, headers = prediction_event(image_id, i, now_ms())
        while True:
            try:
                p.produce(
                    topic,
                    value=value,
                    key=image_id.encode(),
                    headers=headers,  # type: ignore[arg-type]
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    last = now_ms()
    if p.flush(120.0) > 0 or errors:
        raise KafkaException(errors[0] if errors else "transport publish: flush timed out")
    return ids, first, last


def run_once(
    settings: PipelineSettings,
    alive: Callable[[], None],
    session: Any,
    tag: str,
    count: int,
    rate: float = 0.0,
    timeout_s: float = 300.0,
    meter: CpuMeter | None = None,
    kind: topology.TransportKind = topology.RELAYS,
) -> RunResult:
    alive()
    if meter is not None:
        meter.sample_background_once()
    start = meter.snapshot() if meter is not None else None
    ids, first, last = publish_events(settings, tag, count, rate, kind.prefix)
    pred_topic = kind.prefix + topics.PREDICTIONS

    with groups.Prober(settings.kafka) as probe:  # polled every 0.5 s: kept clients

        def sink_done() -> bool:
            alive()
            if probe.group_lag(kind.sink_group, [pred_topic])["total"]:
                return False
            stages = [
                probe.group_lag(group, sources)["total"]
                for group, sources in kind.stage_groups().items()
            ]
            return not any(stages)

        rows, missing, cpu = read_back(
            session, topology.KEYSPACE, ids, first, timeout_s, sink_done, meter, start
        )
    return RunResult(f"transport {kind.name} {tag}", count, first, last, rows, missing, cpu)
