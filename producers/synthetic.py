"""Generated images for load: smooth gradients, blobs and noise, encoded as JPEG.

Image `i` under seed `s` is always the same bytes, and no two indices share bytes
(the index is drawn into the pixels), so every image has its own content id.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache

import numpy as np

from producers.imaging import encode
from producers.items import Item

SIZE_RE = re.compile(r"^(\d{1,5})[xX](\d{1,5})$")


def parse_size(text: str) -> tuple[int, int]:
    """'224x224' -> (224, 224)."""
    m = SIZE_RE.match(text.strip())
    if not m or not (8 <= int(m[1]) <= 16384 and 8 <= int(m[2]) <= 16384):
        raise ValueError(f"size {text!r} must be WxH with each side in 8..16384, e.g. 224x224")
    return int(m[1]), int(m[2])


@lru_cache(maxsize=4)
def _grid(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(w, dtype=np.float32)[None, :] / w, np.arange(h, dtype=np.float32)[:, None] / h


def _noise(seed: int, at_least: int) -> np.ndarray:
    # One bank of sensor-like noise per seed; each image reads it from its own offset.
    return _noise_bank(seed, max(1 << 20, 2 * at_least).bit_length())


@lru_cache(maxsize=2)
def _noise_bank(seed: int, bits: int) -> np.ndarray:
    return np.random.default_rng([seed, 7]).normal(0, 10, 1 << bits).astype(np.float32)


def synthetic_pixels(index: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    w, h = size
    rng = np.random.default_rng([seed, index])
    x, y = _grid(w, h)  # broadcasting rows and columns keeps this cheap
    img = np.empty((3, h, w), np.float32)  # channel-first: contiguous per-channel writes
    tau = np.float32(2 * np.pi)
    for c in range(3):
        a, b, phase = rng.uniform(-1, 1, 3).astype(np.float32)
        # sin(u + v) = sin u cos v + cos u sin v: two outer products instead of h*w sines.
        u, v = a * x * tau, (b * y + phase / 2) * tau
        img[c] = 128 + 90 * (np.sin(u) * np.cos(v) + np.cos(u) * np.sin(v))
    # A few soft blobs so the picture has structure, not only a gradient.
    for _ in range(3):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
        gx = np.exp(-((x - cx) ** 2) / (2 * r * r))
        gy = np.exp(-((y - cy) ** 2) / (2 * r * r))
        img += (gy * gx)[None] * rng.uniform(-120, 120, 3).astype(np.float32)[:, None, None]
    noise = _noise(seed, img.size)
    start = int(rng.integers(0, noise.size - img.size + 1))
    img += noise[start : start + img.size].reshape(img.shape)
    out = np.clip(img, 0, 255, out=img).astype(np.uint8).transpose(1, 2, 0).copy()
    # Stamp the index into the first row: distinct bytes even if two draws looked alike.
    out[0, : min(w, 8), 0] = np.frombuffer(int(index).to_bytes(8, "big"), np.uint8)[: min(w, 8)]
    return out


def synthetic_items(
    count: int,
    size: tuple[int, int] = (224, 224),
    seed: int = 0,
    fmt: str = "JPEG",
    quality: int = 90,
) -> Iterator[Item]:
    w, h = size
    for i in range(count):
        data = encode(synthetic_pixels(i, size, seed), fmt, quality)
        yield Item(data, f"synthetic/{w}x{h}/{seed}/{i}")
