"""Dead-letter records: Avro value + human-readable headers, original payload kept."""

from __future__ import annotations

import pytest

from schemas import codec, dead_letter
from schemas.codec import SchemaError
from schemas.dead_letter import read_dead_letter
from schemas.raw import headers_dict, raw_headers

PAYLOAD = b"\xff\xd8\xff\xe0" + bytes(range(256))


def _dl(**kw):
    args = dict(
        image_id="img-1",
        stage="decode",
        reason="truncated",
        error=OSError("image file is truncated\n(5 bytes not processed)"),
        origin_topic="images.raw",
        origin_partition=4,
        origin_offset=1234567890123,
        payload=PAYLOAD,
        payload_headers=raw_headers("image/jpeg", "unit", 1_700_000_000_000),
        source="unit",
        produced_at_ms=1_700_000_000_000,
    )
    args.update(kw)
    return dead_letter.dead_letter(**args)


def test_value_round_trips_with_original_payload_and_headers() -> None:
    value, headers = _dl()
    rec = read_dead_letter(value, headers)
    assert rec["payload"] == PAYLOAD
    assert rec["payload_headers"] == {
        "content-type": "image/jpeg",
        "source": "unit",
        "produced-at": "1700000000000",
    }
    assert rec["image_id"] == "img-1"
    assert rec["stage"] == "decode"
    assert rec["reason"] == "truncated"
    assert rec["error_class"] == "OSError"
    assert rec["error_message"] == "image file is truncated\n(5 bytes not processed)"
    assert rec["retriable"] is False
    assert (rec["origin_topic"], rec["origin_partition"], rec["origin_offset"]) == (
        "images.raw",
        4,
        1234567890123,
    )
    assert rec["produced_at_ms"] == 1_700_000_000_000
    assert rec["failed_at_ms"] >= rec["produced_at_ms"]


def test_headers_carry_schema_and_failure_facts() -> None:
    _, headers = _dl()
    h = headers_dict(headers)
    assert h[codec.H_SCHEMA_NAME] == codec.DEAD_LETTER
    assert h[codec.H_SCHEMA_VERSION] == "1"
    assert h[dead_letter.H_STAGE] == "decode"
    assert h[dead_letter.H_REASON] == "truncated"
    assert h[dead_letter.H_ERROR_CLASS] == "OSError"
    # One line for humans reading with kcat.
    assert h[dead_letter.H_ERROR_MESSAGE] == "image file is truncated (5 bytes not processed)"
    assert h[dead_letter.H_ORIGIN_TOPIC] == "images.raw"
    assert h[dead_letter.H_ORIGIN_PARTITION] == "4"
    assert h[dead_letter.H_ORIGIN_OFFSET] == "1234567890123"
    assert all(isinstance(v, bytes) for _, v in headers)
    names = [k for k, _ in headers]
    assert len(names) == len(set(names)), "no duplicate header names"


def test_explicit_class_and_message_without_exception() -> None:
    value, headers = _dl(
        error=None, error_class="ModelTimeout", message="took 31 s", retriable=True
    )
    rec = read_dead_letter(value, headers)
    assert (rec["error_class"], rec["error_message"], rec["retriable"]) == (
        "ModelTimeout",
        "took 31 s",
        True,
    )


def test_defaults_without_error_use_reason() -> None:
    rec = read_dead_letter(*_dl(error=None))
    assert rec["error_class"] == "Error"
    assert rec["error_message"] == "truncated"


def test_long_messages_are_bounded() -> None:
    value, headers = _dl(error=ValueError("x" * 10_000))
    assert len(read_dead_letter(value, headers)["error_message"]) == dead_letter.MAX_MESSAGE_CHARS
    assert len(headers_dict(headers)[dead_letter.H_ERROR_MESSAGE]) <= 500


def test_missing_payload_and_key_still_encode() -> None:
    rec = read_dead_letter(*_dl(image_id="", payload=None, payload_headers=None))
    assert rec["payload"] == b"" and rec["payload_headers"] == {} and rec["image_id"] == ""


def test_read_dead_letter_rejects_other_records() -> None:
    value, headers = codec.encode(
        codec.INFERENCE,
        {
            "image_id": "i",
            "produced_at_ms": 1,
            "raw_topic": "images.raw",
            "raw_partition": 0,
            "raw_offset": 0,
            "model_name": "m",
            "model_version": "1",
            "logits": [],
        },
    )
    with pytest.raises(SchemaError) as err:
        read_dead_letter(value, headers)
    assert err.value.reason == "wrong-schema"
