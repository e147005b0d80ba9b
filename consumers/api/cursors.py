"""Opaque page tokens and the validation of path and query parameters. Pure: no I/O.

A page token is URL-safe base64 of a small JSON object naming what it pages (`k`: kind and
label/reason) and where the next page starts. A token that does not decode, or that was
issued for another label or reason, is a 400, never a 500: it is client input.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from consumers.api.errors import ApiError, bad_request
from schemas.image_id import InvalidImageId, validate_row_id

# Labels and reasons are free text from the model / the stages, but bounded and printable.
_TEXT = re.compile(r"[^\x00-\x1f\x7f]{1,200}")
MAX_TOKEN_CHARS = 1024


def image_id(value: str) -> str:
    try:
        return validate_row_id(value)
    except InvalidImageId:
        shown = value if len(value) <= 64 else value[:64] + "..."
        raise bad_request(
            "bad_image_id",
            f"image id {shown!r} must be 1-200 characters of letters, digits and ._:/@+=-",
        ) from None


def text(name: str, value: str) -> str:
    if not _TEXT.fullmatch(value):
        raise bad_request(f"bad_{name}", f"{name} must be 1-200 printable characters")
    return value


def limit(raw: str | None, default: int, maximum: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        n = int(raw)
    except ValueError:
        raise bad_request("bad_limit", f"limit must be an integer, got {raw[:40]!r}") from None
    if n < 1 or n > maximum:
        raise bad_request("bad_limit", f"limit must be between 1 and {maximum}, got {n}")
    return n


def encode(kind: str, scope: str, position: Any) -> str:
    doc = json.dumps({"k": kind, "s": scope, "p": position}, separators=(",", ":"))
    return base64.urlsafe_b64encode(doc.encode()).decode().rstrip("=")


def decode(token: str | None, kind: str, scope: str) -> Any:
    """The position a token holds, or None for no token; ApiError 400 if it is not ours."""
    if token is None or token == "":
        return None
    bad = ApiError(400, "bad_page_token", "page token is malformed or from another query")
    if len(token) > MAX_TOKEN_CHARS:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        doc = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad from None
    if not isinstance(doc, dict) or doc.get("k") != kind or doc.get("s") != scope:
        raise bad
    return doc.get("p")
