"""The faust-streaming app: one agent per stage, micro-batched, at-least-once.

For each stage the agent takes up to `batch_size` events (or what arrived within
`batch_window_s`) with `Stream.noack_take`, so faust never acks them on its own. The
batch is processed in the stage's one-thread executor (the event loop stays free for
heartbeats), every output or dead-letter record is sent, and only when the broker has
acknowledged all of those sends (acks=all, idempotent producer) are the input events
acked; faust then commits offsets up to the first un-acked one. If sending fails, the
worker exits non-zero without acking: the batch is redelivered to whichever worker
owns the partition next.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from schemas.topics import STAGE_BY_NAME, Stage
from stream_app.health import StageStats
from stream_app.labels import load_labels
from stream_app.records import InRecord, OutRecord, normalize_headers
from stream_app.settings import StreamSettings
from stream_app.spec import preprocess_for
from stream_app.stages import DecodeStage, InferStage, PostprocessStage

log = logging.getLogger(__name__)

EX_SEND_FAILED = 75  # EX_TEMPFAIL: the supervisor restarts the worker


class _IdempotentProducer(faust_aiokafka.Producer):
    """faust only enables idempotence inside transactions; we want it always:
    acks=all + enable_idempotence, so producer retries never duplicate or reorder."""

    def _settings_extra(self) -> dict[str, Any]:
        return {"acks": "all", "enable_idempotence": True}


faust_aiokafka.Transport.Producer = _IdempotentProducer


class Processor(Protocol):
    def process(self, batch: list[InRecord]) -> list[OutRecord]: ...


def broker_url(bootstrap: list[str]) -> str:
    return ";".join(f"kafka://{hp}" for hp in bootstrap)


@dataclass
class Runtime:
    """What a worker holds besides the faust app: stats, executors, exit code."""

    settings: StreamSettings
    stats: dict[str, StageStats] = field(default_factory=dict)
    executors: dict[str, ThreadPoolExecutor] = field(default_factory=dict)
    exit_code: int = 0
    model_name: str | None = None
    model_version: str | None = None


def create_app(settings: StreamSettings, web_port: int | None = None) -> tuple[faust.App, Runtime]:
    """Build the faust app with an agent for each configured stage."""
    s = settings.stream
    w = s.worker
    port = web_port or w.web_port
    max_bytes = settings.kafka.max_message_bytes + 1024 * 1024
    datadir = w.data_dir / f"{w.app_id}-{port}"
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        w.app_id,
        broker=broker_url(settings.kafka.bootstrap_list()),
        autodiscover=False,
        datadir=str(datadir),
        # The topics are pre-created by `python -m infra provision` (registry sizing);
        # workers never declare topics and need no leader-election topic.
        topic_allow_declare=False,
        topic_disable_leader=True,
        topic_partitions=settings.kafka.partitions,
        topic_replication_factor=settings.kafka.replication_factor,
        producer_acks=-1,
        producer_max_request_size=max_bytes,
        producer_max_batch_size=min(w.producer_max_batch_bytes, max_bytes),
        producer_linger_ms=w.producer_linger_ms,
        consumer_max_fetch_size=max_bytes,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=w.session_timeout_s,
        broker_heartbeat_interval=w.heartbeat_interval_s,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=True,
        web_host=w.web_host,
        web_port=port,
        web_bind=w.web_host,
        worker_redirect_stdouts=False,
    )
    rt = Runtime(settings)
    processors = _build_processors(settings, rt)
    for name in w.stages:
        _register_stage(app, rt, STAGE_BY_NAME[name], processors[name])
    _register_health(app, rt)
    return app, rt


def _build_processors(settings: StreamSettings, rt: Runtime) -> dict[str, Processor]:
    s = settings.stream
    prefix = s.topic_prefix
    stages = s.worker.stages
    out: dict[str, Processor] = {}
    labels: list[str] | None = None
    if "infer" in stages:
        # torch is imported only here, and only by workers that run the model, which
        # is loaded once per worker.
        from stream_app.infer import Inferencer
        from stream_app.model import configure_torch, load_model

        configure_torch(s.infer.torch_threads)
        model = load_model(s.model)
        labels = model.labels
        rt.model_name, rt.model_version = model.info.name, model.info.version
        inferencer = Inferencer(model, s.infer.max_forward_batch)
        out["infer"] = InferStage(STAGE_BY_NAME["infer"], inferencer, model.info, prefix)
    if "decode" in stages:
        spec = preprocess_for(s.model)
        out["decode"] = DecodeStage(STAGE_BY_NAME["decode"], spec, s.decode, prefix)
    if "postprocess" in stages:
        if labels is None:
            labels = load_labels(s.model.labels_path)
        out["postprocess"] = PostprocessStage(
            STAGE_BY_NAME["postprocess"], labels, s.postprocess.top_k, prefix
        )
    return out


def _register_stage(app: faust.App, rt: Runtime, stage: Stage, processor: Processor) -> None:
    s = rt.settings.stream
    w = s.worker
    prefix = s.topic_prefix
    source_name = prefix + stage.source
    source = app.topic(source_name, key_serializer="raw", value_serializer="raw", allow_empty=True)
    outputs = {
        prefix + name: app.topic(prefix + name, key_serializer="raw", value_serializer="raw")
        for name in (stage.sink, stage.dlq)
    }
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"stage-{stage.name}")
    rt.executors[stage.name] = executor
    stats = rt.stats[stage.name] = StageStats(stage.name, source_name)

    async def run_stage(stream: faust.StreamT) -> None:
        loop = asyncio.get_running_loop()
        # noack_take is on faust.Stream, not on the StreamT protocol the agent is typed with.
        taker = cast(faust.Stream, stream)
        async for events in taker.noack_take(w.batch_size, within=w.batch_window_s):
            records = [_in_record(e) for e in events]
            started = time.perf_counter()
            try:
                outs = await loop.run_in_executor(executor, processor.process, records)
                if len(outs) != len(records):
                    raise RuntimeError(
                        f"{stage.name} produced {len(outs)} records for {len(records)} inputs"
                    )
                futures = [
                    await outputs[o.topic].send(
                        key=o.key, value=o.value, headers=o.headers, force=True
                    )
                    for o in outs
                ]
                await asyncio.wait_for(asyncio.gather(*futures), timeout=w.send_timeout_s)
            except Exception as exc:
                stats.errors += 1
                _fail_worker(rt, stage, records, exc)
                return  # events stay un-acked: never committed, redelivered after restart
            for event in events:
                await stream.ack(event)
            positions: dict[int, int] = {}
            for r in records:
                positions[r.partition] = max(positions.get(r.partition, 0), r.offset + 1)
            dead = [o.reason for o in outs if o.dead]
            stats.batch_done(
                len(records),
                len(outs) - len(dead),
                len(dead),
                time.perf_counter() - started,
                dead,
                positions,
            )

    run_stage.__name__ = run_stage.__qualname__ = f"{stage.name}_agent"
    app.agent(source, name=f"stream_app.{stage.name}")(run_stage)


def _in_record(event: Any) -> InRecord:
    msg = event.message
    ts = getattr(msg, "timestamp", None)
    return InRecord(
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        key=msg.key if msg.key is None or isinstance(msg.key, bytes) else bytes(msg.key),
        value=event.value,
        headers=normalize_headers(msg.headers),
        timestamp_ms=int(ts * 1000) if ts else None,
    )


def _fail_worker(rt: Runtime, stage: Stage, records: list[InRecord], exc: BaseException) -> None:
    where = ", ".join(r.where for r in records[:3]) + (" ..." if len(records) > 3 else "")
    log.critical(
        "%s: batch of %d (%s) failed: %s: %s; not acking it, stopping the worker "
        "so its partitions are redelivered",
        stage.name,
        len(records),
        where,
        type(exc).__name__,
        exc,
        exc_info=exc,
    )
    rt.exit_code = EX_SEND_FAILED
    os.kill(os.getpid(), signal.SIGTERM)  # graceful stop: commits only acked offsets


def health_snapshot(app: faust.App, rt: Runtime) -> dict[str, Any]:
    stages = []
    assignment = _assignment(app)
    # faust keeps committed offsets in a private dict; only used for lag, so guarded.
    committed_by_tp = getattr(app.consumer, "_committed_offset", {}) if assignment else {}
    for st in rt.stats.values():
        highwaters: dict[int, int | None] = {}
        committed: dict[int, int | None] = {}
        for tp in assignment:
            if tp.topic == st.source:
                try:
                    highwaters[tp.partition] = app.consumer.highwater(tp)
                except Exception:
                    highwaters[tp.partition] = None
                c = committed_by_tp.get(tp) if hasattr(committed_by_tp, "get") else None
                committed[tp.partition] = c if isinstance(c, int) else None
        stages.append(st.snapshot(highwaters, committed))
    return {
        "status": "failing" if rt.exit_code else "ok",
        "pid": os.getpid(),
        "app_id": app.conf.id,
        "model": {"name": rt.model_name, "version": rt.model_version},
        "batch_size": rt.settings.stream.worker.batch_size,
        "stages": stages,
    }


def _assignment(app: faust.App) -> set[Any]:
    try:
        return set(app.consumer.assignment())
    except Exception:  # consumer not started yet
        return set()


def _register_health(app: faust.App, rt: Runtime) -> None:
    @app.page("/health/")
    async def health(web: Any, request: Any) -> Any:
        return web.json(health_snapshot(app, rt))

    @app.timer(interval=rt.settings.stream.worker.health_log_interval_s)
    async def log_health() -> None:
        for st in health_snapshot(app, rt)["stages"]:
            log.info(
                "health %s: in=%d out=%d dlq=%d batches=%d last_batch=%d lag=%s",
                st["stage"],
                st["records_in"],
                st["records_out"],
                st["dead_letters"],
                st["batches"],
                st["last_batch_size"],
                st["total_lag"],
            )
