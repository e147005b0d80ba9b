"""Image ids: caller-supplied, or the sha256 of the bytes.

Deriving the id from the content makes publishing the same file twice idempotent end to
end: both records carry one key, and every downstream write is an upsert by that key.
"""

from __future__ import annotations

import hashlib
import re

# Ids travel as Kafka keys and Cassandra partition keys: keep them printable and bounded.
_ID_PATTERN = re.compile(r"[A-Za-z0-9._:/@+=-]{1,200}")


class InvalidImageId(ValueError):
    pass


def content_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_id_for(data: bytes, supplied: str | None = None) -> str:
    """The id to publish `data` under: `supplied` if given (validated), else its sha256."""
    if supplied is None:
        return content_id(data)
    validate_image_id(supplied)
    return supplied


def validate_image_id(image_id: str) -> str:
    """A caller-supplied id: the character rules, and none of the derived ids' prefixes
    (a key spelled like a derived id would otherwise land on another record's row)."""
    # fullmatch, not match: `$` would accept a trailing newline.
    if not isinstance(image_id, str) or not _ID_PATTERN.fullmatch(image_id):
        raise InvalidImageId(
            f"image id {image_id!r} must be 1-200 characters of letters, digits and ._:/@+=-"
        )
    if image_id.startswith(_DERIVED_PREFIXES):
        raise InvalidImageId(
            f"image id {image_id!r} starts with a prefix reserved for derived ids "
            f"({', '.join(_DERIVED_PREFIXES)})"
        )
    return image_id


def validate_row_id(row: str) -> str:
    """An id a row may be stored under: a valid image id, or a derived one (`row_id`)."""
    if isinstance(row, str) and (_KEY_HASH_ID.fullmatch(row) or _NO_KEY_ID.fullmatch(row)):
        return row
    return validate_image_id(row)


# Prefixes of ids the pipeline derives when a record's key is no valid id. They are
# deterministic (a replay lands on the same row) and injective (two different keys can
# never share a row), unlike a lossy decode of the bytes.
KEY_HASH_PREFIX = "key-sha256:"
NO_KEY_PREFIX = "no-key:"
_DERIVED_PREFIXES = (KEY_HASH_PREFIX, NO_KEY_PREFIX)
_KEY_HASH_ID = re.compile(re.escape(KEY_HASH_PREFIX) + r"[0-9a-f]{64}")
_NO_KEY_ID = re.compile(re.escape(NO_KEY_PREFIX) + r"[A-Za-z0-9._-]{1,249}/[0-9]{1,10}/[0-9]{1,19}")


def row_id(key: bytes | str | None, origin: tuple[str, int, int]) -> str:
    """The id a record's row is stored under: its key when that is a valid image id.

    Otherwise `key-sha256:<hex of the raw key bytes>`, or, for a record without a key,
    `no-key:<topic>/<partition>/<offset>` of the record that first carried the image
    (`origin`), so a keyless record still ends as exactly one row.
    """
    if key is None or len(key) == 0:
        topic, partition, offset = origin
        return f"{NO_KEY_PREFIX}{topic}/{partition}/{offset}"
    raw = key.encode("utf-8", errors="surrogateescape") if isinstance(key, str) else bytes(key)
    try:
        return validate_image_id(raw.decode("utf-8"))
    except (UnicodeDecodeError, InvalidImageId):
        return KEY_HASH_PREFIX + hashlib.sha256(raw).hexdigest()


def raw_key_text(key: bytes | None, limit: int = 256) -> str | None:
    """A printable, bounded form of a key that is no valid id (for a `raw_key` column):
    None for a valid id or no key; else its bytes in Python's escaped form, cut at `limit`."""
    if not key:
        return None
    try:
        validate_image_id(bytes(key).decode("utf-8"))
        return None
    except (UnicodeDecodeError, InvalidImageId):
        text = repr(bytes(key[: limit + 1]))[2:-1]
        return text if len(key) <= limit else f"{text[: 4 * limit]}... ({len(key)} bytes)"
