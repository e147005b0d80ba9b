"""The three pipeline stages as batch functions: list[InRecord] -> list[OutRecord].

Each input record yields exactly one output record: the next topic's record, or a dead
letter on the stage's DLQ carrying the original key, value and headers. Nothing is
dropped. The functions are synchronous and CPU-bound; the faust agents call them in an
executor thread.

No record can fail a batch: `process` isolates every failure to its record (each output
is encoded on its own, and a batch step that raises is bisected until the record that
raised is alone), so the worst a record can do is become its own dead letter. Every
output is checked against its target topic's `max.message.bytes`: an output too large
becomes a dead letter, and a dead letter too large carries a cut payload with the
original size in a header.

Torch is not imported here: InferStage receives an `Inferencer` built by the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from schemas import codec
from schemas.dead_letter import dead_letter
from schemas.image_id import row_id
from schemas.raw import RawRecordError, now_ms, parse_raw
from schemas.topics import Stage, TopicSpec, topic_registry
from stream_app.decode import decode_image
from stream_app.errors import InferError, StageError
from stream_app.postprocess import top_k
from stream_app.records import InRecord, OutRecord
from stream_app.settings import DecodeSettings
from stream_app.spec import ModelInfo, PreprocessSpec

if TYPE_CHECKING:
    from stream_app.infer import Inferencer

log = logging.getLogger(__name__)

LINEAGE = (
    "image_id",
    "source",
    "content_type",
    "produced_at_ms",
    "raw_topic",
    "raw_partition",
    "raw_offset",
)


# Room left in a record for its key, headers and framing beside the value.
RECORD_OVERHEAD_BYTES = 64 * 1024


def topic_limits(specs: Sequence[TopicSpec] | None = None) -> dict[str, int]:
    """max.message.bytes of every registry topic (unprefixed names), as provisioned; the
    default registry's when `specs` (KafkaSettings.topics()) is not given."""
    return {t.name: t.max_message_bytes for t in (specs or topic_registry())}


def _default_limits() -> dict[str, int]:
    return topic_limits()


class BaseStage:
    """Routing shared by the stages: output and dead-letter records, size limits, and the
    per-record isolation of failures."""

    def __init__(
        self, topics: Stage, prefix: str = "", topic_limits: dict[str, int] | None = None
    ) -> None:
        self.name = topics.name
        self.sink = prefix + topics.sink
        self.dlq = prefix + topics.dlq
        limits = topic_limits or _default_limits()
        self.sink_limit = limits[topics.sink]
        self.dlq_limit = limits[topics.dlq]

    # -- the batch entry point ---------------------------------------------------------
    def process(self, batch: Sequence[InRecord]) -> list[OutRecord]:
        """One output per input, in order; never raises because of what a record holds."""
        refused = {i: self._refused_by_consumer(r) for i, r in enumerate(batch) if r.refused}
        if not refused:
            return self._isolated(list(batch))
        rest = iter(self._isolated([r for i, r in enumerate(batch) if i not in refused]))
        return [refused[i] if i in refused else next(rest) for i in range(len(batch))]

    def _refused_by_consumer(self, rec: InRecord) -> OutRecord:
        reason = rec.refused or "refused"
        return self.dead(
            rec,
            reason=reason,
            error=StageError(
                reason,
                f"the record's batch was not handed over ({reason}): it inflates past the "
                "consumer's bound or does not decompress; key and value are unknown",
            ),
            keep_payload=False,
        )

    def _process(self, batch: Sequence[InRecord]) -> list[OutRecord]:
        raise NotImplementedError

    def _isolated(self, batch: list[InRecord]) -> list[OutRecord]:
        if not batch:
            return []
        try:
            outs = self._process(batch)
            if len(outs) != len(batch):
                raise RuntimeError(f"{len(outs)} outputs for {len(batch)} inputs")
        except Exception as exc:
            if len(batch) == 1:
                log.exception("%s: unexpected error on %s", self.name, batch[0].where)
                return [self.dead(batch[0], reason="internal-error", error=exc)]
            log.warning(
                "%s: batch of %d failed (%s: %s); splitting it to isolate the record",
                self.name,
                len(batch),
                type(exc).__name__,
                exc,
            )
            mid = len(batch) // 2
            return self._isolated(batch[:mid]) + self._isolated(batch[mid:])
        return [self._fit(rec, out) for rec, out in zip(batch, outs, strict=True)]

    # -- outputs -------------------------------------------------------------------------
    def output(self, key: bytes | None, schema: str, record: dict[str, Any]) -> OutRecord:
        value, headers = codec.encode(schema, record)
        return OutRecord(self.sink, key, value, headers)

    def _each(self, batch: Sequence[InRecord], one: Any) -> list[OutRecord]:
        """`one(rec)` for each record; a record whose step raises becomes its dead letter."""
        outs = []
        for rec in batch:
            try:
                outs.append(one(rec))
            except Exception as exc:
                log.exception("%s: unexpected error on %s", self.name, rec.where)
                outs.append(self.dead(rec, reason="internal-error", error=exc))
        return outs

    def _fit(self, rec: InRecord, out: OutRecord) -> OutRecord:
        """`out`, or its dead letter when it would not fit its topic. (Dead letters fit by
        construction: `dead` cuts the payload to the room the DLQ topic leaves.)"""
        size = record_size(out)
        if out.dead or size <= self.sink_limit:
            return out
        return self.dead(
            rec,
            reason="output-too-large",
            error=StageError(
                "output-too-large",
                f"output of {size} bytes exceeds {self.sink}'s max.message.bytes "
                f"({self.sink_limit})",
            ),
        )

    def dead(
        self,
        rec: InRecord,
        *,
        reason: str,
        error: BaseException,
        image_id: str | None = None,
        source: str = "",
        produced_at_ms: int = 0,
        keep_payload: bool = True,
    ) -> OutRecord:
        """The dead letter for `rec`. Never raises: if the full one cannot be encoded (or
        would not fit), a bare one without the original payload and headers is sent."""
        retriable = bool(getattr(error, "retriable", False))
        message = getattr(error, "message", None) or str(error)
        key_text = image_id or row_id(rec.key, (rec.topic, rec.partition, rec.offset))
        fields = dict(
            image_id=key_text,
            stage=self.name,
            reason=reason,
            error=error,
            message=message,
            origin_topic=rec.topic,
            origin_partition=rec.partition,
            origin_offset=rec.offset,
            source=source,
            produced_at_ms=produced_at_ms,
            retriable=retriable,
        )
        room = self.dlq_limit - RECORD_OVERHEAD_BYTES - len(rec.key or b"")
        if not keep_payload:
            room = 0
        try:
            value, headers = dead_letter(
                payload=rec.value,
                payload_headers=rec.headers,
                max_payload_bytes=max(0, room),
                **fields,  # type: ignore[arg-type]
            )
        except Exception as exc:  # keep the record accounted for whatever it holds
            log.exception("%s: full dead letter for %s failed: %s", self.name, rec.where, exc)
            value, headers = dead_letter(
                payload=b"",
                payload_headers=None,
                max_payload_bytes=0,
                **fields,  # type: ignore[arg-type]
            )
        log.warning(
            "%s: %s -> %s (%s: %s: %s)",
            self.name,
            rec.where,
            self.dlq,
            reason,
            type(error).__name__,
            message,
        )
        return OutRecord(self.dlq, rec.key, value, headers, dead=True, reason=reason)

    def refused(self, rec: InRecord, error: BaseException, topic: str = "") -> OutRecord:
        """The bare dead letter (no payload) for a record whose output (to `topic`) the
        broker refused for its size or shape; its original size stays in a header."""
        return self.dead(rec, reason="output-too-large", error=error, keep_payload=False)

    def read(self, rec: InRecord, schema: str) -> dict[str, Any]:
        return codec.decode(schema, rec.value, rec.headers)


def record_size(out: OutRecord) -> int:
    """Bytes the record takes in a batch, give or take framing (counted generously)."""
    headers = sum(len(k.encode("utf-8", "surrogateescape")) + len(v) + 8 for k, v in out.headers)
    return len(out.value) + len(out.key or b"") + headers + 128


def _trace(record: dict[str, Any], stage: str) -> dict[str, int]:
    trace = dict(record.get("trace") or {})
    trace[stage] = now_ms()
    return trace


class DecodeStage(BaseStage):
    """images.raw (image file bytes) -> images.decoded (Avro DecodedImage)."""

    def __init__(
        self,
        topics: Stage,
        spec: PreprocessSpec,
        limits: DecodeSettings,
        prefix: str = "",
        topic_limits: dict[str, int] | None = None,
    ) -> None:
        super().__init__(topics, prefix, topic_limits)
        self.spec = spec
        self.limits = limits

    def _process(self, batch: Sequence[InRecord]) -> list[OutRecord]:
        return self._each(batch, self.one)

    def one(self, rec: InRecord) -> OutRecord:
        try:
            raw = parse_raw(rec.key, rec.value, rec.headers, rec.timestamp_ms)
        except RawRecordError as exc:
            return self.dead(rec, reason=exc.reason, error=exc)
        try:
            img = decode_image(raw.data, self.spec, self.limits)
        except StageError as exc:
            return self.dead(
                rec,
                reason=exc.reason,
                error=exc,
                image_id=raw.image_id,
                source=raw.source,
                produced_at_ms=raw.produced_at_ms,
            )
        except Exception as exc:  # a Pillow bug must not stop the stream
            log.exception("decode: unexpected error on %s", rec.where)
            return self.dead(
                rec,
                reason="internal-error",
                error=exc,
                image_id=raw.image_id,
                source=raw.source,
                produced_at_ms=raw.produced_at_ms,
            )
        c, h, w = img.pixels.shape
        record = {
            "image_id": raw.image_id,
            "source": raw.source,
            "content_type": raw.content_type,
            "produced_at_ms": raw.produced_at_ms,
            "raw_topic": rec.topic,
            "raw_partition": rec.partition,
            "raw_offset": rec.offset,
            "original_width": img.width,
            "original_height": img.height,
            "channels": c,
            "height": h,
            "width": w,
            "pixels": img.pixels.tobytes(),
            "trace": {"decode": now_ms()},
        }
        return self.output(rec.key, codec.DECODED_IMAGE, record)


class InferStage(BaseStage):
    """images.decoded -> images.inferred (Avro Inference with float32 logits)."""

    def __init__(
        self,
        topics: Stage,
        inferencer: Inferencer,
        info: ModelInfo,
        prefix: str = "",
        topic_limits: dict[str, int] | None = None,
    ) -> None:
        super().__init__(topics, prefix, topic_limits)
        self.inferencer = inferencer
        self.info = info

    def _process(self, batch: Sequence[InRecord]) -> list[OutRecord]:
        out: list[OutRecord | None] = [None] * len(batch)
        decoded: list[tuple[int, dict[str, Any]]] = []
        arrays: list[object] = []
        for i, rec in enumerate(batch):
            try:
                d = self.read(rec, codec.DECODED_IMAGE)
            except codec.SchemaError as exc:
                out[i] = self.dead(rec, reason=exc.reason, error=exc)
                continue
            try:
                arrays.append(_pixels(d))
            except InferError as exc:
                out[i] = self._dead_for(rec, d, exc)
                continue
            decoded.append((i, d))
        outcomes = self.inferencer.run(arrays) if arrays else []
        for (i, d), outcome in zip(decoded, outcomes, strict=True):
            rec = batch[i]
            if outcome.error is not None:
                out[i] = self._dead_for(rec, d, outcome.error)
                continue
            assert outcome.logits is not None
            logits = outcome.logits
            try:
                record = {k: d[k] for k in LINEAGE}
                record.update(
                    model_name=self.info.name,
                    model_version=self.info.version,
                    logits=logits.tolist(),
                    trace=_trace(d, self.name),
                )
                out[i] = self.output(rec.key, codec.INFERENCE, record)
            except Exception as exc:  # encoding fails for this record alone
                out[i] = self._dead_for(rec, d, exc)
        return [o for o in out if o is not None]

    def _dead_for(
        self, rec: InRecord, d: dict[str, Any], exc: Exception, reason: str | None = None
    ) -> OutRecord:
        return self.dead(
            rec,
            reason=reason or str(getattr(exc, "reason", None) or "internal-error"),
            error=exc,
            image_id=d.get("image_id"),
            source=d.get("source", ""),
            produced_at_ms=d.get("produced_at_ms", 0),
        )


def _pixels(d: dict[str, Any]) -> np.ndarray:
    c, h, w = d["channels"], d["height"], d["width"]
    data = d["pixels"]
    if c <= 0 or h <= 0 or w <= 0 or len(data) != c * h * w:
        raise InferError("wrong-shape", f"pixels hold {len(data)} bytes, header says {c}x{h}x{w}")
    return np.frombuffer(data, dtype=np.uint8).reshape(c, h, w)


class PostprocessStage(BaseStage):
    """images.inferred -> images.predictions (Avro Prediction, top-k with labels)."""

    def __init__(
        self,
        topics: Stage,
        labels: list[str],
        k: int,
        prefix: str = "",
        topic_limits: dict[str, int] | None = None,
    ) -> None:
        super().__init__(topics, prefix, topic_limits)
        self.labels = labels
        self.k = k

    def _process(self, batch: Sequence[InRecord]) -> list[OutRecord]:
        return self._each(batch, self.one)

    def one(self, rec: InRecord) -> OutRecord:
        try:
            d = self.read(rec, codec.INFERENCE)
        except codec.SchemaError as exc:
            return self.dead(rec, reason=exc.reason, error=exc)
        try:
            best = top_k(np.asarray(d["logits"], dtype=np.float32), self.labels, self.k)
        except StageError as exc:
            return self.dead(
                rec,
                reason=exc.reason,
                error=exc,
                image_id=d["image_id"],
                source=d.get("source", ""),
                produced_at_ms=d.get("produced_at_ms", 0),
            )
        record = {k: d[k] for k in LINEAGE}
        record.update(
            model_name=d["model_name"],
            model_version=d["model_version"],
            top_k=[
                {"class_index": c.class_index, "label": c.label, "score": c.score} for c in best
            ],
            processed_at_ms=now_ms(),
            trace=_trace(d, self.name),
        )
        return self.output(rec.key, codec.PREDICTION, record)
