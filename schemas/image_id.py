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
    # fullmatch, not match: `$` would accept a trailing newline.
    if not isinstance(image_id, str) or not _ID_PATTERN.fullmatch(image_id):
        raise InvalidImageId(
            f"image id {image_id!r} must be 1-200 characters of letters, digits and ._:/@+=-"
        )
    return image_id
