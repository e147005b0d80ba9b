"""The images.raw contract: content sniffing, headers, parse_raw."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from schemas import raw
from schemas.raw import RawImage, RawRecordError, parse_raw, raw_headers, sniff_content_type


def _encode(fmt: str, mode: str = "RGB", **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (16, 12), (200, 30, 60) if mode == "RGB" else 128).save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [
        ("JPEG", "image/jpeg"),
        ("PNG", "image/png"),
        ("WEBP", "image/webp"),
        ("BMP", "image/bmp"),
        ("GIF", "image/gif"),
        ("TIFF", "image/tiff"),
    ],
)
def test_sniff_real_files_written_by_pillow(fmt: str, mime: str) -> None:
    assert sniff_content_type(_encode(fmt)) == mime
    assert mime in raw.SUPPORTED_CONTENT_TYPES


def test_sniff_big_endian_tiff_and_gif87() -> None:
    assert sniff_content_type(b"MM\x00*" + b"\x00" * 8) == "image/tiff"
    assert sniff_content_type(b"GIF87a" + b"\x00" * 8) == "image/gif"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xd8",  # too short for the JPEG SOI + marker
        b"hello world, not an image",
        b"BMW is a car brand, and this text starts with BM",
        b"RIFF\x00\x00\x00\x00WAVEfmt ",  # RIFF, but audio
        b"%PDF-1.7\n",
        b"\x00\x00\x00\x18ftypmp42",
    ],
)
def test_sniff_rejects_non_images(data: bytes) -> None:
    assert sniff_content_type(data) is None


def test_sniff_ignores_extension_like_content_only() -> None:
    # A corrupt JPEG (valid header, garbage after it) still sniffs as JPEG: the decode stage judges it.
    assert sniff_content_type(b"\xff\xd8\xff\xe0" + b"\x00" * 100) == "image/jpeg"


def test_raw_headers_shape() -> None:
    h = raw_headers("image/png", "cam-7", 1_700_000_000_123)
    assert h == [
        ("content-type", b"image/png"),
        ("source", b"cam-7"),
        ("produced-at", b"1700000000123"),
    ]
    assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in h)


def test_raw_headers_default_timestamp_is_now_ms() -> None:
    before = raw.now_ms()
    ts = int(dict(raw_headers("image/jpeg", "x"))["produced-at"])
    assert before <= ts <= raw.now_ms()


def test_raw_headers_utf8_source_round_trips() -> None:
    h = raw_headers("image/jpeg", "caméra/α", 5)
    assert parse_raw(b"id-1", b"x", h).source == "caméra/α"


def test_parse_raw_round_trip() -> None:
    data = _encode("PNG")
    rec = parse_raw(b"img-1", data, raw_headers("image/png", "unit", 1_700_000_000_000))
    assert rec == RawImage("img-1", data, "image/png", "unit", 1_700_000_000_000)


def test_parse_raw_accepts_str_key_and_str_headers() -> None:
    rec = parse_raw("img-2", b"v", [("produced-at", "17"), ("content-type", "image/gif")])
    assert (rec.image_id, rec.produced_at_ms, rec.content_type, rec.source) == (
        "img-2",
        17,
        "image/gif",
        "",
    )


def test_parse_raw_falls_back_to_record_timestamp() -> None:
    rec = parse_raw(b"img-3", b"v", [("content-type", b"image/jpeg")], record_timestamp_ms=99)
    assert rec.produced_at_ms == 99


def test_parse_raw_refuses_a_repeated_contract_header() -> None:
    with pytest.raises(RawRecordError, match="more than once"):
        parse_raw(b"k", b"v", [("produced-at", b"1"), ("produced-at", b"2")])
    with pytest.raises(RawRecordError, match="not UTF-8"):
        parse_raw(b"k", b"v", [("produced-at", b"1"), ("source", b"cam-\xff")])
    # Headers outside the contract are opaque: repeats and any bytes are fine.
    rec = parse_raw(b"k", b"v", [("x", b"\xff"), ("x", b"2"), ("produced-at", b"2")])
    assert rec.produced_at_ms == 2


def test_parse_raw_keeps_value_unchanged_even_if_not_an_image() -> None:
    rec = parse_raw(b"k", b"not an image", raw_headers("image/jpeg", "s", 1))
    assert rec.data == b"not an image"
    assert parse_raw(b"k", None, raw_headers("image/jpeg", "s", 1)).data == b""


@pytest.mark.parametrize(
    ("key", "headers", "ts", "reason"),
    [
        (None, raw_headers("image/jpeg", "s", 1), None, "missing-key"),
        (b"", raw_headers("image/jpeg", "s", 1), None, "missing-key"),
        (b"\xff\xfe", raw_headers("image/jpeg", "s", 1), None, "bad-key"),
        (b"has space", raw_headers("image/jpeg", "s", 1), None, "bad-key"),
        (b"x" * 201, raw_headers("image/jpeg", "s", 1), None, "bad-key"),
        (b"k", [("content-type", b"image/jpeg")], None, "bad-header"),
        (b"k", [("content-type", b"image/jpeg")], -1, "bad-header"),
        (b"k", [("produced-at", b"yesterday")], None, "bad-header"),
        (b"k", [("produced-at", b"0")], 5, "bad-header"),
        (b"k", [("produced-at", b"-5")], None, "bad-header"),
    ],
)
def test_parse_raw_errors_carry_reason(key, headers, ts, reason) -> None:
    with pytest.raises(RawRecordError) as err:
        parse_raw(key, b"v", headers, record_timestamp_ms=ts)
    assert err.value.reason == reason
    assert str(err.value)


def test_headers_dict_decodes_and_replaces() -> None:
    assert raw.headers_dict([("a", b"x"), ("b", None), ("c", b"\xff"), ("d", 3)]) == {
        "a": "x",
        "b": "",
        "c": "\ufffd",
        "d": "3",
    }
    assert raw.headers_dict(None) == {}
