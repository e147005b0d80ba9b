"""The three pipeline stages as batch functions: list[InRecord] -> list[OutRecord].

Each input record yields exactly one output record: the next topic's record, or a dead
letter on the stage's DLQ carrying the original key, value and headers. Nothing is
dropped. The functions are synchronous and CPU-bound; the faust agents call them in an
executor thread.

Torch is not imported here: InferStage receives an `Inferencer` built by the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from schemas import codec
from schemas.dead_letter import dead_letter
from schemas.raw import RawRecordError, now_ms, parse_raw
from schemas.topics import Stage
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


class BaseStage:
    """Routing shared by the stages: output and dead-letter records."""

    def __init__(self, topics: Stage, prefix: str = "") -> None:
        self.name = topics.name
        self.sink = prefix + topics.sink
        self.dlq = prefix + topics.dlq

    def output(self, key: bytes | None, schema: str, record: dict[str, Any]) -> OutRecord:
        value, headers = codec.encode(schema, record)
        return OutRecord(self.sink, key, value, headers)

    def dead(
        self,
        rec: InRecord,
        *,
        reason: str,
        error: BaseException,
        image_id: str | None = None,
        source: str = "",
        produced_at_ms: int = 0,
    ) -> OutRecord:
        retriable = bool(getattr(error, "retriable", False))
        message = getattr(error, "message", None) or str(error)
        key_text = image_id
        if key_text is None and rec.key is not None:
            key_text = rec.key.decode("utf-8", errors="replace")
        value, headers = dead_letter(
            image_id=key_text or "",
            stage=self.name,
            reason=reason,
            error=error,
            message=message,
            origin_topic=rec.topic,
            origin_partition=rec.partition,
            origin_offset=rec.offset,
            payload=rec.value,
            payload_headers=rec.headers,
            source=source,
            produced_at_ms=produced_at_ms,
            retriable=retriable,
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

    def read(self, rec: InRecord, schema: str) -> dict[str, Any]:
        return codec.decode(schema, rec.value, rec.headers)


def _trace(record: dict[str, Any], stage: str) -> dict[str, int]:
    trace = dict(record.get("trace") or {})
    trace[stage] = now_ms()
    return trace


class DecodeStage(BaseStage):
    """images.raw (image file bytes) -> images.decoded (Avro DecodedImage)."""

    def __init__(
        self, topics: Stage, spec: PreprocessSpec, limits: DecodeSettings, prefix: str = ""
    ) -> None:
        super().__init__(topics, prefix)
        self.spec = spec
        self.limits = limits

    def process(self, batch: Sequence[InRecord]) -> list[OutRecord]:
        return [self.one(rec) for rec in batch]

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
        self, topics: Stage, inferencer: Inferencer, info: ModelInfo, prefix: str = ""
    ) -> None:
        super().__init__(topics, prefix)
        self.inferencer = inferencer
        self.info = info

    def process(self, batch: Sequence[InRecord]) -> list[OutRecord]:
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
            record = {k: d[k] for k in LINEAGE}
            record.update(
                model_name=self.info.name,
                model_version=self.info.version,
                logits=outcome.logits.tolist(),
                trace=_trace(d, self.name),
            )
            out[i] = self.output(rec.key, codec.INFERENCE, record)
        return [o for o in out if o is not None]

    def _dead_for(self, rec: InRecord, d: dict[str, Any], exc: StageError) -> OutRecord:
        return self.dead(
            rec,
            reason=exc.reason,
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

    def __init__(self, topics: Stage, labels: list[str], k: int, prefix: str = "") -> None:
        super().__init__(topics, prefix)
        self.labels = labels
        self.k = k

    def process(self, batch: Sequence[InRecord]) -> list[OutRecord]:
        return [self.one(rec) for rec in batch]

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
