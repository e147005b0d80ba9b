"""Encoding numpy images to file bytes (Pillow), shared by samples and synthetic."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Pillow format name -> save options that keep files realistic and deterministic.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")


def encode(pixels: np.ndarray | Image.Image, fmt: str = "JPEG", quality: int = 90) -> bytes:
    img = (
        pixels if isinstance(pixels, Image.Image) else Image.fromarray(np.ascontiguousarray(pixels))
    )
    fmt = fmt.upper()
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.convert("RGB" if img.mode not in ("L", "RGB") else img.mode).save(
            buf, "JPEG", quality=quality
        )
    elif fmt == "WEBP":
        img.save(buf, "WEBP", quality=quality, method=0)
    elif fmt == "GIF":
        img.convert("RGB").quantize(colors=256, dither=Image.Dither.NONE).save(buf, "GIF")
    elif fmt == "TIFF":
        img.save(buf, "TIFF", compression="tiff_deflate")
    elif fmt in ("PNG", "BMP"):
        img.save(buf, fmt)
    else:
        raise ValueError(f"unsupported format {fmt!r}; use one of {', '.join(FORMATS)}")
    return buf.getvalue()
