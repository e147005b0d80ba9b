"""Dead-letter records: what failed, where, why, and the original payload.

The value is an Avro `DeadLetter`; the same facts ride in headers too, so a person
with kcat can read why a record was rejected without an Avro decoder.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from schemas import codec
from schemas.raw import MAX_HEADER_BYTES, PRODUCED_AT_MAX_MS, headers_dict, now_ms, printable

H_ERROR_CLASS = "error-class"
H_ERROR_MESSAGE = "error-message"
H_REASON = "error-reason"
H_STAGE = "stage"
H_ORIGIN_TOPIC = "origin-topic"
H_ORIGIN_PARTITION = "origin-partition"
H_ORIGIN_OFFSET = "origin-offset"
# Set when the original payload was cut so the dead letter fits its topic.
H_PAYLOAD_BYTES = "payload-original-bytes"
H_PAYLOAD_TRUNCATED = "payload-truncated"

MAX_MESSAGE_CHARS = 2000


def dead_letter(
    *,
    image_id: str,
    stage: str,
    reason: str,
    error: BaseException | None = None,
    error_class: str | None = None,
    message: str | None = None,
    origin_topic: str,
    origin_partition: int,
    origin_offset: int,
    payload: bytes | None,
    payload_headers: Iterable[tuple[str, Any]] | None = None,
    source: str = "",
    produced_at_ms: int = 0,
    retriable: bool = False,
    max_payload_bytes: int | None = None,
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Encode a DeadLetter; returns (value, headers) ready to produce under the original key.

    Never fails on what the original record held: text is made valid UTF-8, the original
    headers are kept up to MAX_HEADER_BYTES, an out-of-range time becomes 0, and a payload
    over `max_payload_bytes` is cut, with its original size in a header.
    """
    cls = printable(error_class or (type(error).__name__ if error is not None else "Error"))
    msg = message if message is not None else str(error) if error is not None else reason
    msg = printable(msg[:MAX_MESSAGE_CHARS])
    payload = payload or b""
    original_size = len(payload)
    if max_payload_bytes is not None and original_size > max_payload_bytes:
        payload = payload[: max(0, max_payload_bytes)]
    record = {
        "image_id": printable(image_id),
        "stage": stage,
        "reason": reason,
        "error_class": cls,
        "error_message": msg,
        "retriable": retriable,
        "origin_topic": origin_topic,
        "origin_partition": origin_partition,
        "origin_offset": origin_offset,
        "source": printable(source),
        "produced_at_ms": produced_at_ms if 0 <= produced_at_ms <= PRODUCED_AT_MAX_MS else 0,
        "failed_at_ms": now_ms(),
        "payload": payload,
        "payload_headers": bounded_headers(payload_headers),
    }
    value, headers = codec.encode(codec.DEAD_LETTER, record)
    headers += [
        (H_STAGE, stage.encode()),
        (H_REASON, reason.encode()),
        (H_ERROR_CLASS, cls.encode()),
        # Headers are for humans: one line, bounded.
        (H_ERROR_MESSAGE, " ".join(msg.split())[:500].encode()),
        (H_ORIGIN_TOPIC, origin_topic.encode()),
        (H_ORIGIN_PARTITION, str(origin_partition).encode()),
        (H_ORIGIN_OFFSET, str(origin_offset).encode()),
    ]
    if len(payload) < original_size:
        headers += [(H_PAYLOAD_TRUNCATED, b"true"), (H_PAYLOAD_BYTES, str(original_size).encode())]
    return value, headers


def bounded_headers(headers: Iterable[tuple[str, Any]] | None) -> dict[str, str]:
    """The original headers as text, at most MAX_HEADER_BYTES of them (a note says so)."""
    out: dict[str, str] = {}
    total = 0
    for name, value in headers_dict(headers).items():
        total += len(name) + len(value)
        if total > MAX_HEADER_BYTES:
            out["(truncated)"] = "headers beyond the first 16 KiB are not kept"
            break
        out[name] = value
    return out


def read_dead_letter(
    value: bytes | None, headers: Iterable[tuple[str, Any]] | None
) -> dict[str, Any]:
    return codec.decode(codec.DEAD_LETTER, value, headers)
