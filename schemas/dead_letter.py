"""Dead-letter records: what failed, where, why, and the original payload.

The value is an Avro `DeadLetter`; the same facts ride in headers too, so a person
with kcat can read why a record was rejected without an Avro decoder.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from schemas import codec
from schemas.raw import headers_dict, now_ms

H_ERROR_CLASS = "error-class"
H_ERROR_MESSAGE = "error-message"
H_REASON = "error-reason"
H_STAGE = "stage"
H_ORIGIN_TOPIC = "origin-topic"
H_ORIGIN_PARTITION = "origin-partition"
H_ORIGIN_OFFSET = "origin-offset"

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
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Encode a DeadLetter; returns (value, headers) ready to produce under the original key."""
    cls = error_class or (type(error).__name__ if error is not None else "Error")
    msg = (message if message is not None else str(error) if error is not None else reason)
    msg = msg[:MAX_MESSAGE_CHARS]
    record = {
        "image_id": image_id,
        "stage": stage,
        "reason": reason,
        "error_class": cls,
        "error_message": msg,
        "retriable": retriable,
        "origin_topic": origin_topic,
        "origin_partition": origin_partition,
        "origin_offset": origin_offset,
        "source": source,
        "produced_at_ms": produced_at_ms,
        "failed_at_ms": now_ms(),
        "payload": payload or b"",
        "payload_headers": headers_dict(payload_headers),
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
    return value, headers


def read_dead_letter(value: bytes | None, headers: Iterable[tuple[str, Any]] | None) -> dict[str, Any]:
    return codec.decode(codec.DEAD_LETTER, value, headers)
