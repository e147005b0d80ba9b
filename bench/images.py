"""The benchmark's image set: the bundled sample photos and their seeded variants.

Fixed seed, fixed bytes: model-only and the pipeline see the very same images. Each
repetition publishes them under fresh ids (same bytes, new keys), so no run's rows
are mistaken for an earlier run's.
"""

from __future__ import annotations

from functools import cache

from producers.items import Item
from producers.samples import sample_items

SEED = 20261126


@cache
def image_bytes(count: int, seed: int = SEED) -> tuple[bytes, ...]:
    """`count` distinct images (5 photos, then variants of mixed size and format)."""
    repeat = max(0, -(-(count - 5) // 5))
    out = [it.data for it in sample_items(repeat=repeat, corrupt=0, seed=seed)]
    return tuple(out[:count])


def items(count: int, tag: str, seed: int = SEED) -> list[Item]:
    """The image set as publishable items with ids `bench-<tag>-<index>`."""
    return [
        Item(data, f"bench/{tag}/{i}", image_id=f"bench-{tag}-{i:06d}")
        for i, data in enumerate(image_bytes(count, seed))
    ]
