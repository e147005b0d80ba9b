"""Kafka record -> Cassandra row writes. Pure: no driver, no client, no clock.

Rows are the table dataclasses of schemas.rows, built by keyword (never by position).

Every write carries `USING TIMESTAMP` from the record itself (predictions:
processed_at_ms, dead letters: failed_at_ms, in microseconds), so replaying a topic can
never replace a newer value with an older one, and the same record written twice
writes the same cells.

What cannot be mapped becomes data, not a crash:

* A prediction that cannot be decoded (or is invalid: no top-k, bad image id) is
  refused by the sink: it writes a rejection row under the record's row id (stage
  "sink", reason = the decode error code), so the image is still accounted for; the
  raw record also goes to the sink's dead-letter topic for forensics. Its write
  timestamp is the Kafka record's timestamp, which is fixed, so a replay is idempotent
  too.
* A dead letter that cannot be decoded is handled the same way (stage from its
  `stage` header or its topic name, reason from its `error-reason` header).
* Every record gets a row id, also without a usable key: `schemas.image_id.row_id`
  (the key when it is a valid id, else `key-sha256:<hash of its bytes>`, or
  `no-key:<origin>` for a keyless record), and rejection rows keep the raw key's
  printable form (`raw_key`). Deterministic and injective, so a replay lands on the same
  row and two keys never share one.
* A record written under a schema version newer than the sink knows is not bad data:
  `map_record` raises `UnknownSchemaVersion` and the sink stops before it.

One status per image: a prediction's request also deletes the image's `rejections` row
`USING TIMESTAMP` <its own timestamp>, and a rejection's deletes the `predictions` row at
<its timestamp - 1 us>, so the newer write wins whatever the order of arrival, a tie goes
to the prediction (a tombstone beats data of the same timestamp), and a replay writes the
same cells and tombstones again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from schemas import codec, dead_letter, topics
from schemas.image_id import (
    InvalidImageId,
    raw_key_text,
    row_id,
    validate_row_id,
)
from schemas.raw import headers_dict
from schemas.rows import PredictionByLabelRow, PredictionRow, RejectionRow, Row, bound_values

SINK_STAGE = "sink"

# Statement names (see consumers.statements for the CQL).
PREDICTION = "prediction"
PREDICTION_BY_LABEL = "prediction_by_label"
REJECTION = "rejection"
DELETE_REJECTION = "delete_rejection"
DELETE_PREDICTION = "delete_prediction"
DELETES = frozenset({DELETE_REJECTION, DELETE_PREDICTION})
# The upsert statement of each row type.
UPSERT_OF: dict[type[Row], str] = {
    PredictionRow: PREDICTION,
    PredictionByLabelRow: PREDICTION_BY_LABEL,
    RejectionRow: REJECTION,
}

# Cassandra write timestamps are signed 64-bit microseconds.
MAX_TIMESTAMP_US = 2**63 - 1
# A record with no usable time at all is written at the oldest timestamp there is, so
# any status with a real time replaces it (and a replay writes the same cells).
NO_TIMESTAMP_US = 1
# Fields of the last-resort rejection row are cut to these, so that row always fits.
FALLBACK_MESSAGE_CHARS = 500
FALLBACK_FIELD_CHARS = 200


@dataclass(frozen=True)
class Write:
    """One row write: which prepared statement, its parameters, the write timestamp (us).

    An upsert built by `upsert` keeps its typed `row` (read it by column name); `params`
    are that row's bound values in column order. A delete's params are the image id."""

    statement: str
    params: tuple[Any, ...]
    timestamp_us: int
    row: Row | None = None

    @classmethod
    def upsert(cls, row: Row, timestamp_us: int) -> Write:
        return cls(UPSERT_OF[type(row)], bound_values(row), timestamp_us, row)

    @property
    def is_delete(self) -> bool:
        return self.statement in DELETES

    def bind_values(self) -> tuple[Any, ...]:
        # Upserts end with `USING TIMESTAMP ?`; deletes start with it
        # (`DELETE FROM t USING TIMESTAMP ? WHERE image_id = ?`).
        if self.is_delete:
            return (self.timestamp_us, *self.params)
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


class UnknownSchemaVersion(Exception):
    """A record written under a newer schema version than this sink knows (a rolling
    upgrade reached the writers first): valid data that must not become a rejection."""


def _ms_to_us(ms: int) -> int:
    return int(ms) * 1000


def _kafka_timestamp_us(rec: KafkaRecord) -> int | None:
    us = _ms_to_us(rec.timestamp_ms)
    return us if 0 < us <= MAX_TIMESTAMP_US else None


def _write_timestamp_us(record_ms: int, rec: KafkaRecord) -> int:
    """The record's own time; the Kafka timestamp if the record has none."""
    if record_ms and record_ms > 0:
        us = _ms_to_us(record_ms)
        if us > MAX_TIMESTAMP_US:
            raise InvalidRecord("bad-timestamp", f"record time {record_ms} ms is out of range")
        return us
    us_or_none = _kafka_timestamp_us(rec)
    if us_or_none is None:
        raise InvalidRecord("no-timestamp", "record has no timestamp to write with")
    return us_or_none


def refusal_timestamp_us(rec: KafkaRecord) -> int:
    """Write time of a row the sink writes for a record it refused: the Kafka timestamp
    (fixed per record, so a replay is idempotent), or the oldest time if it has none."""
    return _kafka_timestamp_us(rec) or NO_TIMESTAMP_US


def _none_if_zero(ms: int | None) -> int | None:
    return ms if ms and ms > 0 else None


def record_origin(rec: KafkaRecord) -> tuple[str, int, int]:
    return (rec.topic, rec.partition, rec.offset)


def dead_letter_origin(rec: KafkaRecord) -> tuple[str, int, int]:
    """Where the image first entered (a dead letter's origin headers), so a keyless
    record gets the `no-key:` id its stage used; the record's own place otherwise."""
    h = headers_dict(rec.headers)
    try:
        topic = h[dead_letter.H_ORIGIN_TOPIC]
        origin = (
            topic,
            int(h[dead_letter.H_ORIGIN_PARTITION]),
            int(h[dead_letter.H_ORIGIN_OFFSET]),
        )
    except (KeyError, ValueError, TypeError):
        return record_origin(rec)
    return origin if topic else record_origin(rec)


def key_image_id(rec: KafkaRecord, origin: tuple[str, int, int] | None = None) -> str:
    """The row id from the Kafka key: the key if it is a valid image id, else the safe id
    (`schemas.image_id.row_id`), so every record has exactly one row to land on."""
    return row_id(rec.key, origin or record_origin(rec))


def _valid_or_safe_id(image_id: str, origin: tuple[str, int, int]) -> str:
    """An id taken from a record body: itself if valid (or derived by a stage, see
    `schemas.image_id.row_id`), else the hash of its bytes."""
    try:
        return validate_row_id(image_id)
    except InvalidImageId:
        return row_id(image_id, origin)


def _delete(statement: str, image_id: str, timestamp_us: int) -> Write:
    return Write(statement, (image_id,), timestamp_us)


def _with_delete_prediction(row: RejectionRow, timestamp_us: int) -> tuple[Write, ...]:
    # 1 us older than the rejection: on a tie the prediction's own tombstone removes the
    # rejection and this one leaves the prediction, so exactly one row survives.
    ts = max(0, timestamp_us - 1)
    return (Write.upsert(row, timestamp_us), _delete(DELETE_PREDICTION, row.image_id, ts))


def prediction_writes(pred: dict[str, Any], rec: KafkaRecord) -> tuple[Write, ...]:
    """Rows for a decoded Prediction: the predictions row, its by-label row, and the
    delete of the image's rejection at the prediction's timestamp."""
    image_id = pred.get("image_id") or key_image_id(rec)
    try:
        validate_row_id(image_id)
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
    main = PredictionRow(
        image_id=image_id,
        label=top["label"],
        class_index=int(top["class_index"]),
        score=float(top["score"]),
        top_k=top_k_rows,
        model_name=pred.get("model_name", ""),
        model_version=pred.get("model_version", ""),
        source=pred.get("source", ""),
        content_type=pred.get("content_type", ""),
        raw_topic=pred.get("raw_topic", ""),
        raw_partition=int(pred.get("raw_partition", -1)),
        raw_offset=int(pred.get("raw_offset", -1)),
        produced_at=produced_at,
        processed_at=processed_at,
        stage_ms=trace,
    )
    by_label = PredictionByLabelRow(
        label=main.label,
        image_id=image_id,
        score=main.score,
        model_name=main.model_name,
        model_version=main.model_version,
        source=main.source,
        produced_at=produced_at,
    )
    return (
        Write.upsert(main, ts),
        Write.upsert(by_label, ts),
        _delete(DELETE_REJECTION, image_id, ts),
    )


def rejection_writes(dl: dict[str, Any], rec: KafkaRecord) -> tuple[Write, ...]:
    """The rejections row for a decoded DeadLetter, and the delete of its prediction."""
    origin = record_origin(rec)
    if dl.get("origin_topic"):
        origin = (
            dl["origin_topic"],
            int(dl.get("origin_partition", -1)),
            int(dl.get("origin_offset", -1)),
        )
    image_id = (
        _valid_or_safe_id(dl["image_id"], origin)
        if dl.get("image_id")
        else key_image_id(rec, origin)
    )
    ts = _write_timestamp_us(dl.get("failed_at_ms", 0), rec)
    row = RejectionRow(
        image_id=image_id,
        stage=dl.get("stage") or stage_of_topic(rec.topic),
        reason=dl.get("reason", ""),
        error_class=dl.get("error_class", ""),
        message=dl.get("error_message", ""),
        retriable=bool(dl.get("retriable", False)),
        source=dl.get("source", ""),
        origin_topic=dl.get("origin_topic", ""),
        origin_partition=int(dl.get("origin_partition", -1)),
        origin_offset=int(dl.get("origin_offset", -1)),
        produced_at=_none_if_zero(dl.get("produced_at_ms")),
        rejected_at=_none_if_zero(dl.get("failed_at_ms")) or rec.timestamp_ms or None,
        raw_key=raw_key_text(rec.key),
    )
    return _with_delete_prediction(row, ts)


def stage_of_topic(topic: str) -> str:
    """images.infer.dlq -> infer; a name not in the registry -> the name itself."""
    for stage in topics.STAGES:
        if stage.dlq == topic:
            return stage.name
    if topic.endswith(".dlq"):
        return topic[: -len(".dlq")].rsplit(".", 1)[-1]
    return topic


def refused_rejection(
    rec: KafkaRecord,
    image_id: str,
    *,
    stage: str,
    reason: str,
    error_class: str,
    message: str,
    limit: int = dead_letter.MAX_MESSAGE_CHARS,
    field_limit: int | None = None,
) -> tuple[Write, ...]:
    """A rejection row for a record the sink itself refused (timestamped by Kafka), and
    the delete of its prediction. `field_limit` cuts the other text fields too."""

    def cut(text: str) -> str:
        return text if field_limit is None else text[:field_limit]

    row = RejectionRow(
        image_id=image_id,
        stage=cut(stage),
        reason=cut(reason),
        error_class=cut(error_class),
        message=message[:limit],
        retriable=False,
        source=cut(headers_dict(rec.headers).get("source", "")),
        origin_topic=rec.topic,
        origin_partition=rec.partition,
        origin_offset=rec.offset,
        produced_at=None,
        rejected_at=rec.timestamp_ms if _kafka_timestamp_us(rec) else None,
        raw_key=raw_key_text(rec.key),
    )
    return _with_delete_prediction(row, refusal_timestamp_us(rec))


def _refused(
    rec: KafkaRecord,
    *,
    stage: str,
    reason: str,
    error_class: str,
    message: str,
    origin: tuple[str, int, int] | None = None,
) -> Mapped:
    image_id = key_image_id(rec, origin)
    writes = refused_rejection(
        rec, image_id, stage=stage, reason=reason, error_class=error_class, message=message
    )
    dlr = DeadLetterRequest(
        image_id=image_id, reason=reason, error_class=error_class, message=message
    )
    return Mapped("refused", image_id, writes, dlr)


def fallback_writes(mapped: Mapped, rec: KafkaRecord, error: BaseException) -> tuple[Write, ...]:
    """The last-resort row for a record whose rows Cassandra refused for good: a small
    rejection under its (always valid) row id, every text field cut so that it fits."""
    image_id = mapped.image_id or key_image_id(rec)
    return refused_rejection(
        rec,
        _valid_or_safe_id(image_id, record_origin(rec)),
        stage=SINK_STAGE,
        reason="cassandra-refused",
        error_class=type(error).__name__,
        message=f"{mapped.kind} rows refused: {error}",
        limit=FALLBACK_MESSAGE_CHARS,
        field_limit=FALLBACK_FIELD_CHARS,
    )


# SchemaError and InvalidRecord are ValueErrors; the rest would be a record shaped in a
# way the mapping did not foresee: refused as data rather than crashing the sink.
_UNMAPPABLE = (ValueError, KeyError, TypeError, OverflowError)


def _reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or "unmappable"


def _check_newer_version(exc: BaseException, name: str, rec: KafkaRecord) -> None:
    """Raise UnknownSchemaVersion when `exc` is a version newer than the newest known.

    An unknown version at or below the newest (0, a gap) cannot come from an upgrade:
    that is bad data and becomes a rejection like any other."""
    if getattr(exc, "reason", None) != "unknown-schema-version":
        return
    try:
        version = int(headers_dict(rec.headers).get(codec.H_SCHEMA_VERSION, ""))
    except ValueError:
        return
    newest = max(codec.versions(name))
    if version > newest:
        raise UnknownSchemaVersion(
            f"{rec.topic}[{rec.partition}]@{rec.offset} is a {name} v{version}; this sink "
            f"reads up to v{newest}: upgrade the sink (offsets stay before this record)"
        ) from exc


def _image_id(write: Write) -> str:
    assert isinstance(write.row, PredictionRow | RejectionRow)
    return write.row.image_id


def map_record(rec: KafkaRecord, predictions_topic: str = topics.PREDICTIONS) -> Mapped:
    """Map one consumed record; never raises for bad input (bad input is a result).

    Raises UnknownSchemaVersion for a record newer than this sink (not bad input)."""
    if rec.topic == predictions_topic:
        try:
            pred = codec.decode(codec.PREDICTION, rec.value, rec.headers)
            writes = prediction_writes(pred, rec)
        except _UNMAPPABLE as exc:
            _check_newer_version(exc, codec.PREDICTION, rec)
            return _refused(
                rec,
                stage=SINK_STAGE,
                reason=_reason(exc),
                error_class=type(exc).__name__,
                message=str(exc),
            )
        return Mapped("prediction", _image_id(writes[0]), writes)
    try:
        dl = dead_letter.read_dead_letter(rec.value, rec.headers)
        rows = rejection_writes(dl, rec)
    except _UNMAPPABLE as exc:
        _check_newer_version(exc, codec.DEAD_LETTER, rec)
        h = headers_dict(rec.headers)
        return _refused(
            rec,
            stage=h.get(dead_letter.H_STAGE) or stage_of_topic(rec.topic),
            reason=h.get(dead_letter.H_REASON) or f"undecodable-dead-letter:{_reason(exc)}",
            error_class=h.get(dead_letter.H_ERROR_CLASS) or type(exc).__name__,
            message=h.get(dead_letter.H_ERROR_MESSAGE) or str(exc),
            origin=dead_letter_origin(rec),
        )
    return Mapped("rejection", _image_id(rows[0]), rows)


# The names schemas.dead_letter gives its own truncation, so readers look in one place.
H_PAYLOAD_TRUNCATED = "payload-truncated"
H_PAYLOAD_BYTES = "payload-original-bytes"


def sink_dead_letter(
    rec: KafkaRecord, req: DeadLetterRequest, payload_limit: int | None = None
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Encode the sink's dead letter for `rec` (value, headers), keeping the original payload.

    With `payload_limit` (after the topic refused the whole record as too large) the
    payload is cut to that many bytes, its headers dropped, and the original size named
    in a header."""
    payload, payload_headers = rec.value, rec.headers
    extra: list[tuple[str, bytes]] = []
    if payload_limit is not None:
        size = len(rec.value or b"")
        payload, payload_headers = (rec.value or b"")[:payload_limit], None
        extra = [(H_PAYLOAD_TRUNCATED, b"true"), (H_PAYLOAD_BYTES, str(size).encode())]
    value, headers = dead_letter.dead_letter(
        image_id=req.image_id,
        stage=SINK_STAGE,
        reason=req.reason,
        error_class=req.error_class,
        message=req.message,
        origin_topic=rec.topic,
        origin_partition=rec.partition,
        origin_offset=rec.offset,
        payload=payload,
        payload_headers=payload_headers,
        source=req.source,
        produced_at_ms=req.produced_at_ms,
        retriable=req.retriable,
    )
    return value, headers + extra


def write_failed_request(mapped: Mapped, error: BaseException) -> DeadLetterRequest:
    """The dead letter for a record whose rows Cassandra refused for good."""
    return DeadLetterRequest(
        image_id=mapped.image_id or "",
        reason="cassandra-refused",
        error_class=type(error).__name__,
        message=str(error),
    )
