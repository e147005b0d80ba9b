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

# Bounds on what any Kafka client can put in a raw record's headers. Every header rides
# along in the record's dead letter, so unbounded headers could make a dead letter too
# large for its topic; 16 KiB holds any honest set many times over.
MAX_HEADER_COUNT = 64
MAX_HEADER_BYTES = 16 * 1024
# produced-at: epoch milliseconds from 1 to the end of year 9999, the range a Cassandra
# timestamp, an Avro long and a Python datetime all hold. No clock is consulted, so the
# verdict on a record never changes when it is replayed (a drifted clock is data, not an
# error).
PRODUCED_AT_MAX_MS = 253_402_300_799_999
_PRODUCED_AT_DIGITS = len(str(PRODUCED_AT_MAX_MS))
# Free text kept with the row; longer values are cut (the image itself is unaffected).
MAX_SOURCE_CHARS = 1024


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
    if (
        len(data) >= 18
        and data[:2] == b"BM"
        and int.from_bytes(data[14:18], "little") in _BMP_DIB_SIZES
    ):
        return "image/bmp"
    return None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def raw_headers(
    content_type: str, source: str, produced_at_ms: int | None = None
) -> list[tuple[str, bytes]]:
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
        k = printable(k)
        if v is None:
            out[k] = ""
        elif isinstance(v, bytes | bytearray | memoryview):
            out[k] = bytes(v).decode("utf-8", errors="replace")
        else:
            out[k] = str(v)
    return out


def printable(text: str) -> str:
    """`text` as valid UTF-8: undecodable bytes kept as surrogates become \\xNN escapes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


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
    check_headers(headers)
    h = headers_dict(headers)
    produced = h.get(H_PRODUCED_AT)
    if produced is None:
        if record_timestamp_ms is None or record_timestamp_ms <= 0:
            raise RawRecordError("bad-header", f"raw record has no {H_PRODUCED_AT} header")
        produced_at_ms = record_timestamp_ms
    else:
        produced_at_ms = parse_produced_at(produced)
    return RawImage(
        image_id=image_id,
        data=bytes(value or b""),
        content_type=h.get(H_CONTENT_TYPE, ""),
        source=h.get(H_SOURCE, "")[:MAX_SOURCE_CHARS],
        produced_at_ms=produced_at_ms,
    )


def parse_produced_at(text: str) -> int:
    """Decimal epoch milliseconds in [1, PRODUCED_AT_MAX_MS]; anything else is refused."""
    shown = text if len(text) <= 40 else f"{text[:40]}... ({len(text)} chars)"
    if not (text.isascii() and text.isdigit()) or len(text) > _PRODUCED_AT_DIGITS:
        raise RawRecordError(
            "bad-header", f"header {H_PRODUCED_AT}={shown!r} is not epoch milliseconds"
        )
    value = int(text)
    if not 1 <= value <= PRODUCED_AT_MAX_MS:
        raise RawRecordError(
            "bad-header",
            f"header {H_PRODUCED_AT}={shown!r} is outside 1..{PRODUCED_AT_MAX_MS} "
            "(epoch milliseconds up to the year 9999)",
        )
    return value


CONTRACT_HEADERS = (H_CONTENT_TYPE, H_SOURCE, H_PRODUCED_AT)


def check_headers(headers: Headers | None) -> None:
    """Refuse header sets no honest producer sends: too many, too large, a name that is
    not UTF-8 (the stream app's consumer keeps such names as surrogates), or a contract
    header that repeats or whose value is not UTF-8 (either would be read ambiguously)."""
    items = list(headers or ())
    seen: set[str] = set()
    for name, value in items:
        if name not in CONTRACT_HEADERS:
            continue
        if name in seen:
            raise RawRecordError("bad-header", f"header {name} appears more than once")
        seen.add(name)
        if isinstance(value, bytes | bytearray | memoryview):
            try:
                bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                shown = bytes(value)[:60]
                raise RawRecordError(
                    "bad-header", f"header {name}={shown!r} is not UTF-8"
                ) from None
    if len(items) > MAX_HEADER_COUNT:
        raise RawRecordError(
            "bad-header", f"raw record has {len(items)} headers, limit is {MAX_HEADER_COUNT}"
        )
    total = 0
    for name, value in items:
        try:
            total += len(name.encode("utf-8"))
        except UnicodeEncodeError:
            shown = name.encode("utf-8", "surrogateescape")[:60]
            raise RawRecordError("bad-header", f"header name {shown!r} is not UTF-8") from None
        if value is not None:
            total += len(
                value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
            )
    if total > MAX_HEADER_BYTES:
        raise RawRecordError(
            "bad-header", f"raw record headers hold {total} bytes, limit is {MAX_HEADER_BYTES}"
        )
