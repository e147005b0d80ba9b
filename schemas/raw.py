"""The `images.raw` contract: value = the image file's bytes, unchanged; key = image id.

Headers (all utf-8 strings):
  content-type  MIME type sniffed from the bytes (image/jpeg, image/png, ...)
  source        free text naming where the image came from (a path, a camera, a job)
  produced-at   milliseconds since the Unix epoch, as decimal digits

Any Kafka client can publish here, e.g. with kcat:
  kcat -P -b 127.0.0.1:19092 -t images.raw -k my-id \
       -H content-type=image/jpeg -H source=kcat -H produced-at=$(date +%s%3N) photo.jpg
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from schemas.image_id import validate_image_id

H_CONTENT_TYPE = "content-type"
H_SOURCE = "source"
H_PRODUCED_AT = "produced-at"

# Magic bytes -> MIME type. Checked in order; first match wins.
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"II*\x00", 0, "image/tiff"),
    (b"MM\x00*", 0, "image/tiff"),
)
_BMP_DIB_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
SUPPORTED_CONTENT_TYPES = frozenset(
    {"image/jpeg", "image/png", "image/gif", "image/bmp", "image/tiff", "image/webp"}
)

Headers = Sequence[tuple[str, bytes | str | None]]


class RawRecordError(ValueError):
    """A raw record that breaks the contract (missing key, bad header)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def sniff_content_type(data: bytes) -> str | None:
    """The image MIME type from magic bytes, or None if the bytes are no known image."""
    for magic, offset, mime in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return mime
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    # "BM" alone matches too much text; also require a known DIB header size.
    if len(data) >= 18 and data[:2] == b"BM" and int.from_bytes(data[14:18], "little") in _BMP_DIB_SIZES:
        return "image/bmp"
    return None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def raw_headers(content_type: str, source: str, produced_at_ms: int | None = None) -> list[tuple[str, bytes]]:
    ts = now_ms() if produced_at_ms is None else produced_at_ms
    return [
        (H_CONTENT_TYPE, content_type.encode()),
        (H_SOURCE, source.encode()),
        (H_PRODUCED_AT, str(ts).encode()),
    ]


def headers_dict(headers: Iterable[tuple[str, bytes | str | None]] | None) -> dict[str, str]:
    """Kafka headers as str -> str (last one wins; undecodable bytes replaced)."""
    out: dict[str, str] = {}
    for k, v in headers or ():
        if v is None:
            out[k] = ""
        elif isinstance(v, bytes | bytearray | memoryview):
            out[k] = bytes(v).decode("utf-8", errors="replace")
        else:
            out[k] = str(v)
    return out


@dataclass(frozen=True)
class RawImage:
    image_id: str
    data: bytes
    content_type: str
    source: str
    produced_at_ms: int


def parse_raw(
    key: bytes | str | None,
    value: bytes | None,
    headers: Headers | None,
    record_timestamp_ms: int | None = None,
) -> RawImage:
    """Read an `images.raw` record, checking the key and headers against the contract.

    A missing `produced-at` falls back to the Kafka record timestamp (plain clients may
    not set it); a present but malformed one is an error. The bytes themselves are not
    validated here: whether they are a usable image is the decode stage's call.
    """
    if key is None or len(key) == 0:
        raise RawRecordError("missing-key", "raw record has no key (the image id)")
    try:
        image_id = bytes(key).decode("utf-8") if not isinstance(key, str) else key
        validate_image_id(image_id)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RawRecordError("bad-key", f"raw record key is not a valid image id: {exc}") from exc
    h = headers_dict(headers)
    produced = h.get(H_PRODUCED_AT)
    if produced is None:
        if record_timestamp_ms is None or record_timestamp_ms <= 0:
            raise RawRecordError("bad-header", f"raw record has no {H_PRODUCED_AT} header")
        produced_at_ms = record_timestamp_ms
    else:
        try:
            produced_at_ms = int(produced)
        except ValueError:
            raise RawRecordError(
                "bad-header", f"header {H_PRODUCED_AT}={produced!r} is not epoch milliseconds"
            ) from None
        if produced_at_ms <= 0:
            raise RawRecordError("bad-header", f"header {H_PRODUCED_AT}={produced!r} is not positive")
    return RawImage(
        image_id=image_id,
        data=bytes(value or b""),
        content_type=h.get(H_CONTENT_TYPE, ""),
        source=h.get(H_SOURCE, ""),
        produced_at_ms=produced_at_ms,
    )
