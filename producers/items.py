"""What a producer publishes: one image (bytes + where it came from), or why it cannot."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Item:
    """One image to publish. `image_id` None means the sha256 of `data`."""

    data: bytes
    source: str
    image_id: str | None = None
    # None: sniffed from the bytes at publish time.
    content_type: str | None = None


@dataclass(frozen=True)
class Skip:
    """An input that will not be published, and why (`reason` is a short code)."""

    source: str
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}: {self.detail}"


# Skip reasons.
UNREADABLE = "unreadable"
NOT_AN_IMAGE = "not-an-image"
TOO_LARGE = "too-large"
BAD_ID = "bad-id"
