"""The faust-streaming app: one agent per stage, micro-batched, at-least-once.

For each stage the agent takes up to `batch_size` events (or what arrived within
`batch_window_s`) with `Stream.noack_take`, so faust never acks them on its own. The
batch is processed in the stage's one-thread executor (the event loop stays free for
heartbeats), every output or dead-letter record is sent, and only when the broker has
acknowledged all of those sends (acks=all, idempotent producer) are the input events
acked; faust then commits offsets up to the first un-acked one.

What a record holds never stops a stage: the stage turns every record-level failure
into that record's dead letter (stream_app/stages.py), and a record the broker refuses
for its size is sent again as a dead letter without its payload. The worker exits only
for faults of the infrastructure: sends that fail past `send_timeout_s` (exit 75), or a
stage the watchdog finds stalled (exit 76); unacked input is then redelivered to the
partition's next owner, and the supervisor restarts the worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import faust
from aiokafka import errors as kafka_errors

from schemas.topics import STAGE_BY_NAME, Stage
from stream_app import faust_seam
from stream_app.health import StageStats
from stream_app.kafka_auth import faust_credentials
from stream_app.labels import load_labels
from stream_app.lag import LagProbe
from stream_app.metrics import observe_batch, register_metrics
from stream_app.records import InRecord, OutRecord, normalize_headers
from stream_app.settings import StreamSettings, WorkerSettings
from stream_app.spec import preprocess_for
from stream_app.stages import DecodeStage, InferStage, PostprocessStage, topic_limits

log = logging.getLogger(__name__)

EX_SEND_FAILED = 75  # EX_TEMPFAIL: the supervisor restarts the worker
EX_STALLED = 76  # a stage stalled: the supervisor restarts the worker

# The broker (or the client's own size check) refuses this record, not the cluster's
# state: resending cannot help, so the record goes to its dead letter instead.
RECORD_REFUSED = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.CorruptRecordException,
)


class Processor(Protocol):
    def process(self, batch: list[InRecord]) -> list[OutRecord]: ...

    def refused(self, rec: InRecord, error: BaseException, topic: str) -> OutRecord: ...


def broker_url(bootstrap: list[str]) -> str:
    return ";".join(f"kafka://{hp}" for hp in bootstrap)


@dataclass
class Runtime:
    """What a worker holds besides the faust app: stats, executors, exit code."""

    settings: StreamSettings
    stats: dict[str, StageStats] = field(default_factory=dict)
    executors: dict[str, ThreadPoolExecutor] = field(default_factory=dict)
    exit_code: int = 0
    stalled: list[str] = field(default_factory=list)
    model_name: str | None = None
    model_version: str | None = None


def create_app(settings: StreamSettings, web_port: int | None = None) -> tuple[faust.App, Runtime]:
    """Build the faust app with an agent for each configured stage."""
    faust_seam.install()
    s = settings.stream
    w = s.worker
    port = web_port or w.web_port
    max_bytes = settings.kafka.max_message_bytes + 1024 * 1024
    datadir = w.data_dir / f"{w.app_id}-{port}"
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        w.app_id,
        broker=broker_url(settings.kafka.bootstrap_list()),
        broker_credentials=faust_credentials(settings.kafka),
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
        producer_compression_type=(
            None if w.producer_compression == "none" else w.producer_compression
        ),
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
    register_metrics(app, lambda: health_snapshot(app, rt), s.topic_prefix)
    return app, rt


def _build_processors(settings: StreamSettings, rt: Runtime) -> dict[str, Processor]:
    s = settings.stream
    prefix = s.topic_prefix
    stages = s.worker.stages
    limits = topic_limits(settings.kafka.topics())
    if s.worker.relay:
        from stream_app.relay import RelayStage

        return {n: RelayStage(STAGE_BY_NAME[n], prefix, limits) for n in stages}
    out: dict[str, Processor] = {}
    labels: list[str] | None = None
    if "infer" in stages:
        # torch is imported only here, and only by workers that run the model, which
        # is loaded once per worker.
        from stream_app.infer import Inferencer
        from stream_app.model import configure_torch, load_model

        configure_torch(s.infer.torch_threads)
        model = load_model(s.model, s.infer.max_forward_batch)
        labels = model.labels
        rt.model_name, rt.model_version = model.info.name, model.info.version
        inferencer = Inferencer(model, s.infer.max_forward_batch)
        out["infer"] = InferStage(
            STAGE_BY_NAME["infer"], inferencer, model.info, prefix, topic_limits=limits
        )
    if "decode" in stages:
        spec = preprocess_for(s.model)
        out["decode"] = DecodeStage(
            STAGE_BY_NAME["decode"], spec, s.decode, prefix, topic_limits=limits
        )
    if "postprocess" in stages:
        if labels is None:
            labels = load_labels(s.model.labels_path)
        out["postprocess"] = PostprocessStage(
            STAGE_BY_NAME["postprocess"], labels, s.postprocess.top_k, prefix, topic_limits=limits
        )
    chain = _fused_chain(s.worker, stages)
    if chain:
        from stream_app.fused import FusedStages

        # The chain runs in its first stage's agent. Each later stage keeps an agent of
        # its own on its source topic, idle while nothing is written there: without it,
        # what a worker running that stage's predecessor alone writes there, or what was
        # left there when the workers switched to fused, would never be processed. Those
        # agents get their own processors (one executor thread each; an Inferencer is
        # not thread-safe); the model is shared.
        fused: list[Any] = [out[n] for n in chain]
        out[chain[0]] = FusedStages(fused)
        for name, stage in zip(chain[1:], fused[1:], strict=True):
            out[name] = _twin(stage, s.infer.max_forward_batch, prefix, limits)
    return out


def _fused_chain(w: WorkerSettings, stages: Sequence[str]) -> list[str]:
    """The stages this worker runs as one agent, in pipeline order ([] for none): decode
    and infer when fuse_decode_infer, infer and postprocess when fuse_postprocess, each
    only where this worker runs both."""
    chain: list[str] = []
    for a, b, on in (
        ("decode", "infer", w.fuse_decode_infer),
        ("infer", "postprocess", w.fuse_postprocess),
    ):
        if on and a in stages and b in stages:
            chain = (chain or [a]) + [b]  # the links share infer, so the chain stays whole
    return chain


def _twin(stage: Any, max_forward_batch: int, prefix: str, limits: dict[str, int]) -> Processor:
    """A fresh processor like `stage`, for the idle agent on that stage's own source."""
    if isinstance(stage, InferStage):
        from stream_app.infer import Inferencer

        inferencer = Inferencer(stage.inferencer.model, max_forward_batch)
        return InferStage(
            STAGE_BY_NAME["infer"], inferencer, stage.info, prefix, topic_limits=limits
        )
    if isinstance(stage, PostprocessStage):
        return PostprocessStage(
            STAGE_BY_NAME["postprocess"], stage.labels, stage.k, prefix, topic_limits=limits
        )
    raise TypeError(f"no idle twin for {type(stage).__name__}")


def _register_stage(app: faust.App, rt: Runtime, stage: Stage, processor: Processor) -> None:
    s = rt.settings.stream
    w = s.worker
    prefix = s.topic_prefix
    source_name = prefix + stage.source
    source = app.topic(source_name, key_serializer="raw", value_serializer="raw", allow_empty=True)
    outputs = {
        name: app.topic(name, key_serializer="raw", value_serializer="raw")
        for name in getattr(processor, "topics", (prefix + stage.sink, prefix + stage.dlq))
    }
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"stage-{stage.name}")
    rt.executors[stage.name] = executor
    stats = rt.stats[stage.name] = StageStats(stage.name, source_name)

    async def send(o: OutRecord) -> Any:
        return await outputs[o.topic].send(key=o.key, value=o.value, headers=o.headers, force=True)

    def fail(records: list[InRecord], exc: BaseException) -> None:
        stats.errors += 1
        _fail_worker(rt, stage, records, exc)

    async def finish(
        stream: faust.StreamT,
        events: Sequence[Any],
        records: list[InRecord],
        outs: list[OutRecord],
        started: float,
    ) -> bool:
        """Send a processed batch's outputs, wait for the broker's acks, then ack its
        inputs. False when that failed: the worker is stopping, and what is not acked is
        redelivered after the restart. (It runs as a task of its own: an exception left
        to escape would go unseen, so every failure stops the worker here.)"""
        try:
            await send_outputs(send, records, outs, processor.refused, w.send_timeout_s)
            for event in events:
                await stream.ack(event)
        except Exception as exc:
            fail(records, exc)
            return False
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
            [(o.topic, o.reason if o.dead else None) for o in outs],
        )
        observe_batch(stage.name, records, time.perf_counter() - started)
        return True

    async def run_stage(stream: faust.StreamT) -> None:
        loop = asyncio.get_running_loop()
        # noack_take is on faust.Stream, not on the StreamT protocol the agent is typed with.
        taker = cast(faust.Stream, stream)
        # The previous batch's sends and acks, running while this batch is processed
        # (overlap_sends): the model does not sit idle through a replication round trip.
        pending: asyncio.Task[bool] | None = None
        try:
            async for events in taker.noack_take(w.batch_size, within=w.batch_window_s):
                records = [_in_record(e) for e in events]
                stats.batch_taken()
                started = time.perf_counter()
                try:
                    outs = await loop.run_in_executor(executor, processor.process, records)
                    if len(outs) != len(records):
                        raise RuntimeError(
                            f"{stage.name} produced {len(outs)} records for {len(records)} inputs"
                        )
                except Exception as exc:
                    fail(records, exc)
                    return
                stats.sends_started()
                # One batch's sends in flight at a time, acked in the order taken: a
                # failed batch is never followed by an acked later one.
                if pending is not None and not await pending:
                    return
                pending = asyncio.ensure_future(finish(stream, events, records, outs, started))
                if not w.overlap_sends:
                    done, pending = pending, None
                    if not await done:
                        return
        finally:
            # Stopping: a batch still sending is not acked and so is redelivered.
            if pending is not None and not pending.done():
                pending.cancel()

    run_stage.__name__ = run_stage.__qualname__ = f"{stage.name}_agent"
    app.agent(source, name=f"stream_app.{stage.name}")(run_stage)


async def send_outputs(
    send: Callable[[OutRecord], Awaitable[Any]],
    records: list[InRecord],
    outs: list[OutRecord],
    refuse: Callable[[InRecord, BaseException, str], OutRecord],
    timeout_s: float,
) -> None:
    """Send every output (`send` returns a future of the broker's ack) and wait for all
    acks. A record the broker refuses for what it is (RECORD_REFUSED) is replaced in
    `outs` by `refuse(record, error, the topic it was for)`, its bare dead letter, and
    sent again; any other failure, or no ack within `timeout_s`, raises: the caller then
    acks nothing."""
    todo = list(range(len(outs)))
    for _ in range(3):
        futures: list[tuple[int, Any]] = []
        refused: list[tuple[int, BaseException]] = []
        for i in todo:
            try:
                futures.append((i, await send(outs[i])))
            except RECORD_REFUSED as exc:
                refused.append((i, exc))
        results = await asyncio.wait_for(
            asyncio.gather(*(f for _, f in futures), return_exceptions=True), timeout=timeout_s
        )
        for (i, _), result in zip(futures, results, strict=True):
            if isinstance(result, RECORD_REFUSED):
                refused.append((i, result))
            elif isinstance(result, BaseException):
                raise result
        if not refused:
            return
        for i, error in refused:
            outs[i] = refuse(records[i], error, outs[i].topic)
        todo = sorted(i for i, _ in refused)
    raise RuntimeError(f"{len(todo)} record(s) refused by the broker even as bare dead letters")


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
        refused=faust_seam.refused_batch_reason(msg.headers),
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
    faust_seam.request_exit(rt, EX_SEND_FAILED, rt.settings.stream.worker.stop_grace_s)


def health_snapshot(app: faust.App, rt: Runtime) -> dict[str, Any]:
    w = rt.settings.stream.worker
    assigned = _assigned_by_topic(app)
    stages = [st.snapshot(assigned.get(st.source, []), w.stall_after_s) for st in rt.stats.values()]
    if rt.stalled or any(st["stalled"] for st in stages):
        status = "stalled"
    elif rt.exit_code:
        status = "failing"
    else:
        status = "ok"
    return {
        "status": status,
        "pid": os.getpid(),
        "app_id": app.conf.id,
        "model": {"name": rt.model_name, "version": rt.model_version},
        "batch_size": w.batch_size,
        "stages": stages,
    }


def _assigned_by_topic(app: faust.App) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    try:
        assignment = app.consumer.assignment()
    except Exception:  # consumer not started yet
        return out
    for tp in assignment:
        out.setdefault(tp.topic, []).append(tp.partition)
    return out


def _register_health(app: faust.App, rt: Runtime) -> None:
    w = rt.settings.stream.worker
    probe_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lag-probe")
    rt.executors["lag-probe"] = probe_executor
    probe: list[LagProbe] = []  # built on first use, in the probe's thread

    def measure(tps: list[tuple[str, int]]) -> dict[tuple[str, int], tuple[int, int] | None]:
        if not probe:
            probe.append(LagProbe(rt.settings.kafka, w.app_id))
        return probe[0].measure(tps)

    @app.page("/health/")
    async def health(web: Any, request: Any) -> Any:
        return web.json(health_snapshot(app, rt))

    @app.timer(interval=w.lag_probe_interval_s)
    async def watchdog() -> None:
        """Measure fresh lag, then restart the worker if a stage is stalled."""
        assigned = _assigned_by_topic(app)
        tps = [(t, p) for st in rt.stats.values() for t in [st.source] for p in assigned.get(t, [])]
        loop = asyncio.get_running_loop()
        try:
            lag = await loop.run_in_executor(probe_executor, measure, tps)
        except Exception as exc:  # a health probe must never stop the worker
            log.info("lag probe failed: %s: %s", type(exc).__name__, exc)
            lag = {}
        now = time.monotonic()
        for st in rt.stats.values():
            parts = assigned.get(st.source, [])
            if lag or not parts:
                st.lag_measured({p: lag.get((st.source, p)) for p in parts}, now)
        stalled = [st for st in rt.stats.values() if st.stalled(now, w.stall_after_s)]
        if not stalled or rt.exit_code:
            return
        for st in stalled:
            st.stalls += 1
            log.critical(
                "watchdog: stage %s is stalled: oldest unacknowledged input %.0fs old "
                "(bound %.0fs), partitions whose commit stands still behind waiting "
                "records: %s, last batch %.0fs ago, lag %s%s",
                st.stage,
                st.oldest_unacked_age_s(now) or 0.0,
                w.stall_after_s,
                st.stuck_partitions(now, w.stall_after_s),
                now - st.last_progress_at(),
                st.fresh_lag,
                "; restarting the worker" if w.restart_on_stall else "",
            )
        rt.stalled = [st.stage for st in stalled]
        if w.restart_on_stall:
            faust_seam.request_exit(rt, EX_STALLED, w.stop_grace_s)

    @app.timer(interval=w.health_log_interval_s)
    async def log_health() -> None:
        for st in health_snapshot(app, rt)["stages"]:
            log.info(
                "health %s: in=%d out=%d dlq=%d batches=%d last_batch=%d lag=%s "
                "oldest_unacked=%ss last_progress=%ss%s",
                st["stage"],
                st["records_in"],
                st["records_out"],
                st["dead_letters"],
                st["batches"],
                st["last_batch_size"],
                st["total_lag"],
                st["oldest_unacked_age_s"],
                st["last_progress_age_s"],
                " STALLED" if st["stalled"] else "",
            )
