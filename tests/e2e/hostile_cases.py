"""The hostile raw records of issue 11 and the outcome each one must have.

Each `Case` is one record as any Kafka client could publish it to `images.raw` (key,
value, headers, compression), with the stage and the reasons its rejection row may
carry. `CASES` is the expectation table the end-to-end test checks row by row; the
good photos interleaved with it come from `good_photos`.

A case whose key is a valid image id is found under that key; one whose key is no
valid id under `schemas.image_id.row_id(key, origin)`, which needs the partition and
offset the record landed at (known only after delivery).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from producers.samples import PHOTO_NAMES, original_bytes, variant
from schemas.image_id import KEY_HASH_PREFIX, validate_image_id
from schemas.raw import H_CONTENT_TYPE, H_PRODUCED_AT, H_SOURCE, now_ms

Header = tuple[str | bytes, bytes | None]

# Reason sets: the names the decode stage emits for each refusal (schemas/raw.py,
# stream_app/decode.py). A set holds more than one where either name is right.
BAD_HEADER = frozenset({"bad-header"})
BAD_KEY = frozenset({"bad-key"})
MISSING_KEY = frozenset({"missing-key"})
TOO_LARGE = frozenset({"too-large"})
THIN = frozenset({"bad-aspect-ratio"})
NOT_AN_IMAGE = frozenset({"not-an-image"})
TRUNCATED = frozenset({"truncated", "corrupt"})
EMPTY = frozenset({"empty"})

# Raw topic limit (schemas.topics.RAW_MAX_MESSAGE_BYTES) exceeded after decompression.
LZ4_BOMB_BYTES = 12 * 1024 * 1024
HUGE_HEADER_BYTES = 900 * 1024
MANY_HEADERS = 2000


@dataclass(frozen=True)
class Case:
    name: str  # short, unique: part of the record's key when the key is valid
    group: str  # the letter (a-g)
    key: bytes | None  # None: no key at all
    value: bytes | None
    headers: list[Header]
    reasons: frozenset[str]
    stage: str = "decode"
    lz4: bool = False  # publish compressed with lz4 (its own producer)
    # Publish with kcat: confluent-kafka's Python client turns a bytes header name into
    # its repr ("b'x-\\xff'", checked with 2.16.1), so it cannot send a non-UTF-8 name.
    kcat: bool = False

    @property
    def key_is_id(self) -> bool:
        if not self.key:
            return False
        try:
            validate_image_id(self.key.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return False
        return True


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def headers(
    *,
    produced_at: bytes | None = None,
    source: bytes = b"hostile-test",
    content_type: bytes = b"image/jpeg",
) -> list[Header]:
    """The contract's three headers (produced-at now unless given)."""
    ts = str(now_ms()).encode() if produced_at is None else produced_at
    return [(H_CONTENT_TYPE, content_type), (H_SOURCE, source), (H_PRODUCED_AT, ts)]


def good_photos(n: int) -> list[bytes]:
    """`n` distinct real photos: the five originals, then variants of each."""
    out = [original_bytes(name) for name in PHOTO_NAMES]
    i = 1
    while len(out) < n:
        for name in PHOTO_NAMES:
            data, _ = variant(name, i, seed=11)
            if data not in out:
                out.append(data)
        i += 1
    return out[:n]


def build_cases(token: str) -> list[Case]:
    """Every hostile case once; `token` makes the keys unique to this run."""
    photo = original_bytes("chelsea")

    def k(name: str) -> bytes:
        return f"hostile-{token}-{name}".encode()

    def case(
        name: str,
        group: str,
        value: bytes | None,
        hdrs: list[Header],
        reasons: frozenset[str],
        key: Callable[[str], bytes | None] = k,
        lz4: bool = False,
        kcat: bool = False,
    ) -> Case:
        return Case(name, group, key(name), value, hdrs, reasons, lz4=lz4, kcat=kcat)

    # Two keys that a lossy decode (errors="replace") maps to the same string.
    lossy_a = f"hostile-{token}-\xff".encode("latin-1")
    lossy_b = f"hostile-{token}-\xfe".encode("latin-1")
    not_utf8 = b"\xff\xfe" + token.encode() + b"\x80"
    # A key spelled like the row id derived for `not_utf8`: it must not land on that row.
    spoof = (KEY_HASH_PREFIX + hashlib.sha256(not_utf8).hexdigest()).encode()
    assert lossy_a.decode("utf-8", "replace") == lossy_b.decode("utf-8", "replace")
    return [
        # a. produced-at out of range or not integer milliseconds
        case("ts-2pow63", "a", photo, headers(produced_at=str(2**63).encode()), BAD_HEADER),
        case("ts-negative", "a", photo, headers(produced_at=b"-5"), BAD_HEADER),
        case("ts-text", "a", photo, headers(produced_at=b"abc"), BAD_HEADER),
        case("ts-float", "a", photo, headers(produced_at=b"1764590000000.5"), BAD_HEADER),
        # b. tiny files, extreme aspect ratio
        case("png-1x20000", "b", png(1, 20_000), headers(content_type=b"image/png"), THIN),
        case("png-1x100000", "b", png(1, 100_000), headers(content_type=b"image/png"), THIN),
        # c. headers too large to carry forward
        case(
            "header-900k",
            "c",
            photo,
            [*headers(), ("x-padding", b"p" * HUGE_HEADER_BYTES)],
            BAD_HEADER,
        ),
        case(
            "headers-2000",
            "c",
            photo,
            [*headers(), *((f"x-h{i}", b"v") for i in range(MANY_HEADERS))],
            BAD_HEADER,
        ),
        # d. lz4 batch small on the wire, over the raw limit once decompressed
        case(
            "lz4-bomb",
            "d",
            b"\x89PNG\r\n\x1a\n" + bytes(LZ4_BOMB_BYTES),
            headers(content_type=b"image/png"),
            TOO_LARGE,
            lz4=True,
        ),
        # e. keys that are no valid image id (each needs its own row)
        case("key-not-utf8", "e", photo, headers(), BAD_KEY, key=lambda _n: not_utf8),
        case("key-spoofs-derived", "e", photo, headers(), BAD_KEY, key=lambda _n: spoof),
        case("key-lossy-a", "e", photo, headers(), BAD_KEY, key=lambda _n: lossy_a),
        case("key-lossy-b", "e", photo, headers(), BAD_KEY, key=lambda _n: lossy_b),
        case("key-empty", "e", photo, headers(), MISSING_KEY, key=lambda _n: b""),
        case("key-none", "e", photo, headers(), MISSING_KEY, key=lambda _n: None),
        case(
            "key-300",
            "e",
            photo,
            headers(),
            BAD_KEY,
            key=lambda _n: (f"hostile-{token}-" + "k" * 300)[:300].encode(),
        ),
        # f. values that are no usable image
        case(
            "not-an-image", "f", b"this is plain text, not pixels\n" * 40, headers(), NOT_AN_IMAGE
        ),
        case("truncated-jpeg", "f", photo[: len(photo) // 2], headers(), TRUNCATED),
        case("empty-value", "f", b"", headers(), EMPTY),
        case("null-value", "f", None, headers(), EMPTY),
        # g. headers that break the contract's encoding or uniqueness
        case(
            "header-name-not-utf8",
            "g",
            photo,
            [*headers(), (b"x-\xff\xfe", b"v")],
            BAD_HEADER,
            kcat=True,
        ),
        case("header-value-not-utf8", "g", photo, headers(source=b"cam-\xff\xfe"), BAD_HEADER),
        case(
            "produced-at-twice",
            "g",
            photo,
            [*headers(), (H_PRODUCED_AT, str(now_ms() - 60_000).encode())],
            BAD_HEADER,
        ),
    ]
