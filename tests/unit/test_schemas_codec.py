"""Avro contracts: round trips of every record, headers, version resolution, errors."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from schemas import codec
from schemas.codec import SchemaError, decode, encode

TRACE = {"decode": 1_700_000_000_100, "infer": 1_700_000_000_200}
LINEAGE = {
    "image_id": "a" * 64,
    "source": "samples/chelsea",
    "content_type": "image/jpeg",
    "produced_at_ms": 1_700_000_000_000,
    "raw_topic": "images.raw",
    "raw_partition": 3,
    "raw_offset": 123_456_789_012,
}


def decoded_image() -> dict:
    return {
        **LINEAGE,
        "original_width": 451,
        "original_height": 300,
        "channels": 3,
        "height": 224,
        "width": 224,
        "pixels": bytes(range(256)) * (3 * 224 * 224 // 256) + b"\x00" * (3 * 224 * 224 % 256),
        "trace": TRACE,
    }


def inference() -> dict:
    return {
        **LINEAGE,
        "model_name": "efficientnet_lite0",
        "model_version": "1",
        "logits": [0.5, -1.25, 3.0, 0.0],  # exact in float32
        "trace": TRACE,
    }


def prediction_v1() -> dict:
    return {
        **LINEAGE,
        "model_name": "efficientnet_lite0",
        "model_version": "1",
        "top_k": [
            {"class_index": 281, "label": "tabby", "score": 0.75},
            {"class_index": 285, "label": "Egyptian cat", "score": 0.125},
        ],
        "processed_at_ms": 1_700_000_000_300,
    }


def prediction_v2() -> dict:
    return {**prediction_v1(), "trace": TRACE}


def dead_letter_record() -> dict:
    return {
        "image_id": "b" * 64,
        "stage": "decode",
        "reason": "truncated",
        "error_class": "OSError",
        "error_message": "image file is truncated",
        "retriable": False,
        "origin_topic": "images.raw",
        "origin_partition": 1,
        "origin_offset": 42,
        "source": "samples/corrupt-0",
        "produced_at_ms": 1_700_000_000_000,
        "failed_at_ms": 1_700_000_000_050,
        "payload": b"\xff\xd8\xff\xe0 truncated",
        "payload_headers": {"content-type": "image/jpeg"},
    }


NEWEST = {
    codec.DECODED_IMAGE: decoded_image,
    codec.INFERENCE: inference,
    codec.PREDICTION: prediction_v2,
    codec.DEAD_LETTER: dead_letter_record,
}


def test_catalog_has_every_record_name_constant() -> None:
    assert set(codec.schema_names()) == set(NEWEST)
    assert codec.versions(codec.PREDICTION) == [1, 2]


@pytest.mark.parametrize("name", sorted(NEWEST))
def test_round_trip_newest_version(name: str) -> None:
    record = NEWEST[name]()
    value, headers = encode(name, record)
    assert isinstance(value, bytes) and value
    assert dict(headers) == {
        codec.H_SCHEMA_NAME: name.encode(),
        codec.H_SCHEMA_VERSION: str(max(codec.versions(name))).encode(),
    }
    assert decode(name, value, headers) == record


def test_round_trip_keeps_bytes_and_longs_exact() -> None:
    rec = decoded_image()
    out = decode(codec.DECODED_IMAGE, *encode(codec.DECODED_IMAGE, rec))
    assert out["pixels"] == rec["pixels"] and len(out["pixels"]) == 3 * 224 * 224
    assert out["raw_offset"] == 123_456_789_012


def test_decode_accepts_headers_as_dict_and_str_values() -> None:
    value, _ = encode(codec.INFERENCE, inference())
    as_dict = {codec.H_SCHEMA_NAME: codec.INFERENCE, codec.H_SCHEMA_VERSION: "1"}
    assert decode(codec.INFERENCE, value, as_dict) == inference()
    # Extra headers (e.g. the DLQ ones or a tracing id) are ignored.
    extra = [("traceparent", b"00-abc"), *encode(codec.INFERENCE, inference())[1]]
    assert decode(codec.INFERENCE, value, extra) == inference()


def test_prediction_v1_decodes_under_v2_reader_with_trace_default() -> None:
    value, headers = encode(codec.PREDICTION, prediction_v1(), version=1)
    assert dict(headers)[codec.H_SCHEMA_VERSION] == b"1"
    out = decode(codec.PREDICTION, value, headers)
    assert out["trace"] == {}
    assert {k: v for k, v in out.items() if k != "trace"} == prediction_v1()


def test_v2_bytes_differ_from_v1_bytes() -> None:
    # The version header matters: v2 bytes read as v1 would leave the trace unread.
    v1, _ = encode(codec.PREDICTION, prediction_v1(), version=1)
    v2, _ = encode(codec.PREDICTION, prediction_v2())
    assert v2.startswith(v1) and len(v2) > len(v1)
    with pytest.raises(SchemaError) as err:
        decode(
            codec.PREDICTION,
            v2,
            {codec.H_SCHEMA_NAME: codec.PREDICTION, codec.H_SCHEMA_VERSION: "1"},
        )
    assert err.value.reason == "undecodable" and "trailing" in str(err.value)


def test_every_newer_version_only_adds_fields_with_defaults() -> None:
    """The compatibility rule behind 'a reader accepts older versions of its schema'."""
    for name in codec.schema_names():
        vs = codec.versions(name)
        for old, new in zip(vs, vs[1:], strict=False):
            old_fields = {f["name"]: f for f in _avsc(name, old)["fields"]}
            for f in _avsc(name, new)["fields"]:
                if f["name"] in old_fields:
                    assert f["type"] == old_fields[f["name"]]["type"], (name, new, f["name"])
                else:
                    assert "default" in f, f"{name} v{new} adds {f['name']} without a default"
            assert set(old_fields) <= {f["name"] for f in _avsc(name, new)["fields"]}


def _avsc(name: str, version: int) -> dict:
    path = resources.files("schemas").joinpath("avro", f"{name}.v{version}.avsc")
    return json.loads(path.read_text())


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "wrong-schema"),
        ({codec.H_SCHEMA_NAME: codec.INFERENCE, codec.H_SCHEMA_VERSION: "1"}, "wrong-schema"),
        ({codec.H_SCHEMA_NAME: codec.PREDICTION}, "bad-schema-version"),
        (
            {codec.H_SCHEMA_NAME: codec.PREDICTION, codec.H_SCHEMA_VERSION: "two"},
            "bad-schema-version",
        ),
        (
            {codec.H_SCHEMA_NAME: codec.PREDICTION, codec.H_SCHEMA_VERSION: "99"},
            "unknown-schema-version",
        ),
    ],
)
def test_decode_rejects_bad_headers_with_reason(headers: dict, reason: str) -> None:
    value, _ = encode(codec.PREDICTION, prediction_v2())
    with pytest.raises(SchemaError) as err:
        decode(codec.PREDICTION, value, headers)
    assert err.value.reason == reason
    assert str(err.value)


@pytest.mark.parametrize("value", [None, b""])
def test_decode_rejects_empty_value(value: bytes | None) -> None:
    _, headers = encode(codec.PREDICTION, prediction_v2())
    with pytest.raises(SchemaError) as err:
        decode(codec.PREDICTION, value, headers)
    assert err.value.reason == "empty-record"


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff\xd8\xff\xe0 this is a jpeg, not avro",
        b"\x02",
        bytes(range(256)) * 4,
    ],
)
def test_decode_rejects_garbage(garbage: bytes) -> None:
    _, headers = encode(codec.PREDICTION, prediction_v2())
    with pytest.raises(SchemaError) as err:
        decode(codec.PREDICTION, garbage, headers)
    assert err.value.reason == "undecodable"
    assert "Prediction v2" in str(err.value)


@pytest.mark.parametrize("name", sorted(NEWEST))
def test_decode_rejects_truncated_record(name: str) -> None:
    value, headers = encode(name, NEWEST[name]())
    with pytest.raises(SchemaError) as err:
        decode(name, value[: len(value) // 2], headers)
    assert err.value.reason == "undecodable"


def test_decoding_one_record_type_as_another_fails() -> None:
    value, headers = encode(codec.INFERENCE, inference())
    with pytest.raises(SchemaError) as err:
        decode(codec.DECODED_IMAGE, value, headers)
    assert err.value.reason == "wrong-schema"


def test_encode_rejects_unknown_schema_and_version() -> None:
    with pytest.raises(SchemaError) as err:
        encode("Nope", {})
    assert err.value.reason == "unknown-schema"
    with pytest.raises(SchemaError) as err:
        encode(codec.PREDICTION, prediction_v2(), version=7)
    assert err.value.reason == "unknown-schema-version"


def test_encode_rejects_missing_field_naming_it() -> None:
    rec = inference()
    del rec["model_name"]
    with pytest.raises(SchemaError) as err:
        encode(codec.INFERENCE, rec)
    assert err.value.reason == "invalid-record"
    assert "model_name" in str(err.value)


def test_encode_rejects_wrong_type() -> None:
    rec = decoded_image()
    rec["pixels"] = "not bytes"
    with pytest.raises(SchemaError) as err:
        encode(codec.DECODED_IMAGE, rec)
    assert err.value.reason == "invalid-record"


def test_encode_fills_defaults_for_optional_fields() -> None:
    rec = inference()
    del rec["trace"], rec["source"]
    out = decode(codec.INFERENCE, *encode(codec.INFERENCE, rec))
    assert out["trace"] == {} and out["source"] == ""
