"""Kafka record -> Cassandra row parameters. Pure: no driver, no client, no clock.

Every write carries `USING TIMESTAMP` from the record itself (predictions:
processed_at_ms, dead letters: failed_at_ms, in microseconds), so replaying a topic can
never replace a newer value with an older one, and the same record written twice
writes the same cells.

What cannot be mapped becomes data, not a crash:

* A prediction that cannot be decoded (or is invalid: no top-k, no image id) is
  refused by the sink. If the Kafka key gives an image id, the sink writes a rejection
  row for it (stage "sink", reason = the decode error code), so the image is still
  accounted for; the raw record also goes to the sink's dead-letter topic for
  forensics. Its write timestamp is the Kafka record's timestamp, which is fixed, so a
  replay is idempotent too.
* A dead letter that cannot be decoded is handled the same way (stage from its
  `stage` header or its topic name, reason from its `error-reason` header).
* A record with no usable image id cannot become a row at all; it goes only to the
  sink's dead-letter topic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from schemas import codec, dead_letter, topics
from schemas.image_id import InvalidImageId, validate_image_id
from schemas.raw import headers_dict

SINK_STAGE = "sink"

# Statement names (see consumers.statements for the CQL).
PREDICTION = "prediction"
PREDICTION_BY_LABEL = "prediction_by_label"
REJECTION = "rejection"


@dataclass(frozen=True)
class Write:
    """One row upsert: which prepared statement, its parameters, the write timestamp (us)."""

    statement: str
    params: tuple[Any, ...]
    timestamp_us: int

    def bind_values(self) -> tuple[Any, ...]:
        # Every statement ends with `USING TIMESTAMP ?`.
        return (*self.params, self.timestamp_us)


@dataclass(frozen=True)
class DeadLetterRequest:
    """What the sink must publish to its own dead-letter topic for this record."""

    image_id: str
    reason: str
    error_class: str
    message: str
    retriable: bool = False
    source: str = ""
    produced_at_ms: int = 0


@dataclass(frozen=True)
class KafkaRecord:
    """The parts of a consumed message the mapping needs (tests build these directly)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, Any]] | None
    timestamp_ms: int

    @classmethod
    def from_message(cls, msg: Any) -> KafkaRecord:
        _, ts = msg.timestamp()
        return cls(
            topic=msg.topic(),
            partition=msg.partition(),
            offset=msg.offset(),
            key=msg.key(),
            value=msg.value(),
            headers=msg.headers() or [],
            timestamp_ms=int(ts) if ts and ts > 0 else 0,
        )


@dataclass(frozen=True)
class Mapped:
    """The outcome of mapping one record: rows to write and/or a dead letter to publish."""

    kind: str  # "prediction" | "rejection" | "refused"
    image_id: str | None
    writes: tuple[Write, ...] = ()
    dead_letter: DeadLetterRequest | None = None


class InvalidRecord(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _ms_to_us(ms: int) -> int:
    return int(ms) * 1000


def _write_timestamp_us(record_ms: int, rec: KafkaRecord) -> int:
    """The record's own time; the Kafka timestamp if the record has none."""
    if record_ms and record_ms > 0:
        return _ms_to_us(record_ms)
    if rec.timestamp_ms > 0:
        return _ms_to_us(rec.timestamp_ms)
    raise InvalidRecord("no-timestamp", "record has no timestamp to write with")


def _none_if_zero(ms: int | None) -> int | None:
    return ms if ms and ms > 0 else None


def key_image_id(rec: KafkaRecord) -> str | None:
    """The image id from the Kafka key, if it is a valid one."""
    if not rec.key:
        return None
    try:
        return validate_image_id(rec.key.decode("utf-8"))
    except (UnicodeDecodeError, InvalidImageId):
        return None


def prediction_writes(pred: dict[str, Any], rec: KafkaRecord) -> tuple[Write, ...]:
    """Rows for a decoded Prediction: the predictions row and its by-label row."""
    image_id = pred.get("image_id") or key_image_id(rec)
    if not image_id:
        raise InvalidRecord("no-image-id", "prediction has no image id and no usable key")
    try:
        validate_image_id(image_id)
    except InvalidImageId as exc:
        raise InvalidRecord("bad-image-id", str(exc)) from None
    top_k = pred.get("top_k") or []
    if not top_k:
        raise InvalidRecord("empty-top-k", f"prediction for {image_id} has no classes")
    top = top_k[0]
    if not top.get("label"):
        raise InvalidRecord("empty-label", f"prediction for {image_id} has an empty top-1 label")
    ts = _write_timestamp_us(pred.get("processed_at_ms", 0), rec)
    top_k_rows = [(int(c["class_index"]), c["label"], float(c["score"])) for c in top_k]
    produced_at = _none_if_zero(pred.get("produced_at_ms"))
    processed_at = _none_if_zero(pred.get("processed_at_ms"))
    trace = {str(k): int(v) for k, v in (pred.get("trace") or {}).items()}
    main = Write(
        PREDICTION,
        (
            image_id,
            top["label"],
            int(top["class_index"]),
            float(top["score"]),
            top_k_rows,
            pred.get("model_name", ""),
            pred.get("model_version", ""),
            pred.get("source", ""),
            pred.get("content_type", ""),
            pred.get("raw_topic", ""),
            int(pred.get("raw_partition", -1)),
            int(pred.get("raw_offset", -1)),
            produced_at,
            processed_at,
            trace,
        ),
        ts,
    )
    by_label = Write(
        PREDICTION_BY_LABEL,
        (
            top["label"],
            image_id,
            float(top["score"]),
            pred.get("model_name", ""),
            pred.get("model_version", ""),
            pred.get("source", ""),
            produced_at,
        ),
        ts,
    )
    return (main, by_label)


def rejection_write(dl: dict[str, Any], rec: KafkaRecord) -> Write:
    """The rejections row for a decoded DeadLetter."""
    image_id = dl.get("image_id") or key_image_id(rec)
    if not image_id:
        raise InvalidRecord("no-image-id", "dead letter has no image id and no usable key")
    ts = _write_timestamp_us(dl.get("failed_at_ms", 0), rec)
    return Write(
        REJECTION,
        (
            image_id,
            dl.get("stage") or stage_of_topic(rec.topic),
            dl.get("reason", ""),
            dl.get("error_class", ""),
            dl.get("error_message", ""),
            bool(dl.get("retriable", False)),
            dl.get("source", ""),
            dl.get("origin_topic", ""),
            int(dl.get("origin_partition", -1)),
            int(dl.get("origin_offset", -1)),
            _none_if_zero(dl.get("produced_at_ms")),
            _none_if_zero(dl.get("failed_at_ms")) or rec.timestamp_ms or None,
        ),
        ts,
    )


def stage_of_topic(topic: str) -> str:
    """images.infer.dlq -> infer; a name not in the registry -> the name itself."""
    for stage in topics.STAGES:
        if stage.dlq == topic:
            return stage.name
    if topic.endswith(".dlq"):
        return topic[: -len(".dlq")].rsplit(".", 1)[-1]
    return topic


def refused_rejection(
    rec: KafkaRecord, image_id: str, *, stage: str, reason: str, error_class: str, message: str
) -> Write:
    """A rejection row for a record the sink itself refused; timestamped by Kafka."""
    if rec.timestamp_ms <= 0:
        raise InvalidRecord("no-timestamp", "refused record has no Kafka timestamp")
    return Write(
        REJECTION,
        (
            image_id,
            stage,
            reason,
            error_class,
            message[: dead_letter.MAX_MESSAGE_CHARS],
            False,
            headers_dict(rec.headers).get("source", ""),
            rec.topic,
            rec.partition,
            rec.offset,
            None,
            rec.timestamp_ms,
        ),
        _ms_to_us(rec.timestamp_ms),
    )


def _refused(rec: KafkaRecord, *, stage: str, reason: str, error_class: str, message: str) -> Mapped:
    image_id = key_image_id(rec)
    writes: tuple[Write, ...] = ()
    if image_id is not None and rec.timestamp_ms > 0:
        writes = (
            refused_rejection(
                rec, image_id, stage=stage, reason=reason, error_class=error_class, message=message
            ),
        )
    dlr = DeadLetterRequest(
        image_id=image_id or "", reason=reason, error_class=error_class, message=message
    )
    return Mapped("refused", image_id, writes, dlr)


# SchemaError and InvalidRecord are ValueErrors; the rest would be a record shaped in a
# way the mapping did not foresee: refused as data rather than crashing the sink.
_UNMAPPABLE = (ValueError, KeyError, TypeError, OverflowError)


def _reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or "unmappable"


def map_record(rec: KafkaRecord, predictions_topic: str = topics.PREDICTIONS) -> Mapped:
    """Map one consumed record; never raises for bad input (bad input is a result)."""
    if rec.topic == predictions_topic:
        try:
            pred = codec.decode(codec.PREDICTION, rec.value, rec.headers)
            writes = prediction_writes(pred, rec)
        except _UNMAPPABLE as exc:
            return _refused(
                rec, stage=SINK_STAGE, reason=_reason(exc), error_class=type(exc).__name__,
                message=str(exc),
            )
        return Mapped("prediction", writes[0].params[0], writes)
    try:
        dl = dead_letter.read_dead_letter(rec.value, rec.headers)
        write = rejection_write(dl, rec)
    except _UNMAPPABLE as exc:
        h = headers_dict(rec.headers)
        return _refused(
            rec,
            stage=h.get(dead_letter.H_STAGE) or stage_of_topic(rec.topic),
            reason=h.get(dead_letter.H_REASON) or f"undecodable-dead-letter:{_reason(exc)}",
            error_class=h.get(dead_letter.H_ERROR_CLASS) or type(exc).__name__,
            message=h.get(dead_letter.H_ERROR_MESSAGE) or str(exc),
        )
    return Mapped("rejection", write.params[0], (write,))


def sink_dead_letter(
    rec: KafkaRecord, req: DeadLetterRequest
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Encode the sink's dead letter for `rec` (value, headers), keeping the original payload."""
    return dead_letter.dead_letter(
        image_id=req.image_id,
        stage=SINK_STAGE,
        reason=req.reason,
        error_class=req.error_class,
        message=req.message,
        origin_topic=rec.topic,
        origin_partition=rec.partition,
        origin_offset=rec.offset,
        payload=rec.value,
        payload_headers=rec.headers,
        source=req.source,
        produced_at_ms=req.produced_at_ms,
        retriable=req.retriable,
    )


def write_failed_request(mapped: Mapped, error: BaseException, *, retriable: bool) -> DeadLetterRequest:
    """The dead letter for a record whose rows Cassandra refused for good."""
    return DeadLetterRequest(
        image_id=mapped.image_id or "",
        reason="cassandra-retries-exhausted" if retriable else "cassandra-refused",
        error_class=type(error).__name__,
        message=str(error),
        retriable=retriable,
    )
