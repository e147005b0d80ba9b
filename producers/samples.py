"""Bundled sample photos (scikit-image's data, no download) and deterministic variants.

Five real colour photos: chelsea (a tabby cat), coffee (a cup), astronaut, rocket and
motorcycle (left view of the stereo pair). (`horse` is a binary silhouette, `camera` and
`coins` are grey: not used.) Variants crop, flip, resize and re-encode at another
quality or format, so each has different bytes and so a different id; the same seed
gives the same bytes. `corrupt_items` makes files that start like images but cannot be
decoded: the producer publishes them anyway, rejecting them is the stream's job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import cache

import numpy as np
from PIL import Image

from producers.imaging import encode
from producers.items import Item

PHOTOS: dict[str, Callable[[], np.ndarray]] = {}


def _register() -> None:
    from skimage import data

    PHOTOS.update(
        chelsea=data.chelsea,
        coffee=data.coffee,
        astronaut=data.astronaut,
        rocket=data.rocket,
        motorcycle=lambda: data.stereo_motorcycle()[0],
    )


_register()
PHOTO_NAMES = tuple(PHOTOS)

# Variant formats, weighted towards what cameras and phones produce.
_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
_WEIGHTS = (0.6, 0.1, 0.1, 0.05, 0.05, 0.1)
# Corruption kinds, cycled by `corrupt_items`.
CORRUPT_KINDS = ("truncated-jpeg", "garbled-jpeg", "truncated-png", "header-only-jpeg")
SAMPLES_PREFIX = "samples"


@cache
def photo(name: str) -> Image.Image:
    return Image.fromarray(PHOTOS[name]()).convert("RGB")


@cache
def original_bytes(name: str) -> bytes:
    return encode(photo(name), "JPEG", quality=95)


def variant(name: str, index: int, seed: int = 0) -> tuple[bytes, str]:
    """Variant `index` (>= 1) of photo `name`: (bytes, description). Deterministic."""
    rng = np.random.default_rng([seed, PHOTO_NAMES.index(name), index])
    img = photo(name)
    w, h = img.size
    # Crop 70-100% of each side, keeping the subject (these photos are roughly centred).
    cw, ch = (int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0)))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    scale = rng.uniform(0.4, 1.2)
    size = (max(32, int(cw * scale)), max(32, int(ch * scale)))
    img = img.resize(size, Image.Resampling.BILINEAR)
    fmt = str(rng.choice(_FORMATS, p=_WEIGHTS))
    quality = int(rng.integers(60, 96))
    desc = f"{fmt.lower()} {size[0]}x{size[1]} q{quality} crop@{x0},{y0}"
    return encode(img, fmt, quality), desc


def sample_items(repeat: int = 0, corrupt: int = 0, seed: int = 0) -> Iterator[Item]:
    """Each photo, then `repeat` variants of each, then `corrupt` corrupt files.

    Every item has distinct bytes, so distinct content ids: a variant that happens to
    equal an earlier item is re-drawn under the next index.
    """
    seen: set[bytes] = set()

    def fresh(data: bytes) -> bool:
        import hashlib

        digest = hashlib.sha256(data).digest()
        if digest in seen:
            return False
        seen.add(digest)
        return True

    for name in PHOTO_NAMES:
        data = original_bytes(name)
        fresh(data)
        yield Item(data, f"{SAMPLES_PREFIX}/{name}", content_type="image/jpeg")
    for i in range(1, repeat + 1):
        for name in PHOTO_NAMES:
            k = i
            data, _ = variant(name, k, seed)
            while not fresh(data):
                k += repeat + 1_000_000
                data, _ = variant(name, k, seed)
            yield Item(data, f"{SAMPLES_PREFIX}/{name}/v{i}")
    yield from corrupt_items(corrupt, seed, seen)


def corrupt_bytes(kind: str, index: int, seed: int = 0) -> bytes:
    """A file with a valid image signature that no decoder accepts."""
    rng = np.random.default_rng([seed, 99, index])
    name = PHOTO_NAMES[index % len(PHOTO_NAMES)]
    jpeg = original_bytes(name)
    if kind == "truncated-jpeg":
        # Cut inside the entropy-coded data: the SOI and headers survive, the EOI does not.
        return jpeg[: int(len(jpeg) * rng.uniform(0.2, 0.6))]
    if kind == "garbled-jpeg":
        # Keep the 4-byte signature, replace the segment headers after it with noise.
        noise = rng.integers(0, 256, 2048, dtype=np.uint8).tobytes()
        return jpeg[:4] + noise + jpeg[4 + len(noise) :]
    if kind == "truncated-png":
        png = encode(photo(name).resize((128, 96)), "PNG")
        return png[: int(len(png) * rng.uniform(0.3, 0.7))]
    if kind == "header-only-jpeg":
        return jpeg[: 2 + 18 + int(rng.integers(0, 16))]  # SOI + APP0, then nothing
    raise ValueError(f"unknown corruption {kind!r}; use one of {', '.join(CORRUPT_KINDS)}")


def corrupt_items(count: int, seed: int = 0, seen: set[bytes] | None = None) -> Iterator[Item]:
    import hashlib

    seen = set() if seen is None else seen
    for i in range(count):
        kind = CORRUPT_KINDS[i % len(CORRUPT_KINDS)]
        k = i
        data = corrupt_bytes(kind, k, seed)
        while hashlib.sha256(data).digest() in seen:
            k += count + 1_000
            data = corrupt_bytes(kind, k, seed)
        seen.add(hashlib.sha256(data).digest())
        yield Item(data, f"{SAMPLES_PREFIX}/corrupt/{kind}/{i}")
