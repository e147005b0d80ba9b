"""Decode stage: image file bytes -> validated uint8 C x H x W model input.

Pure Pillow + numpy (no torch). Every refusal is a `DecodeError` with a reason:

  empty               zero bytes
  too-large           more bytes than DecodeSettings.max_bytes
  not-an-image        no allowed Pillow plugin recognises the bytes
  truncated           the data stops before the image does
  corrupt             the data is damaged (bad stream, bad header, bad EXIF)
  decompression-bomb  width x height above DecodeSettings.max_pixels (or Pillow's limit),
                      or a JPEG with more than DecodeSettings.max_jpeg_scans scans
  bad-aspect-ratio    the longer side over DecodeSettings.max_aspect_ratio x the shorter
  unsupported-mode    a pixel format we do not convert (float, 32-bit int out of range)

Conversion to RGB: EXIF orientation applied; palette, grey, 1-bit, CMYK, YCbCr, LAB, HSV
converted by Pillow; alpha composited over white; 16-bit grey scaled to 8 bits
(65535 -> 255), not clipped. Then the shorter side is resized to `resize_size`
(bicubic) and the centre `input_size` square cropped.

Memory is bounded by what the producer cannot inflate: the decoded source is at most
`max_pixels`, and the resize works in source coordinates on the crop box only, so its
output is `input_size` square whatever the input's shape (a 1 x 100000 image once made
a 256 x 25,600,000 intermediate).
"""

from __future__ import annotations

import io
import logging
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from schemas.raw import sniff_content_type
from stream_app.errors import DecodeError
from stream_app.settings import DecodeSettings
from stream_app.spec import PreprocessSpec

log = logging.getLogger(__name__)

_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
# Modes Pillow converts to RGB faithfully.
_DIRECT = frozenset({"RGB", "RGBX", "L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV"})
# Pillow messages that mean "the data ends too early".
_TRUNCATION_HINTS = ("truncated", "end of file", "premature end", "not enough data")


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # uint8, shape (3, input_size, input_size), C-contiguous
    width: int  # of the image as oriented (after EXIF rotation), before resizing
    height: int
    format: str  # Pillow's format name, e.g. "JPEG"


def sniff_format(data: bytes) -> str | None:
    """Pillow's format name from the magic bytes (None if unknown); cheap, no parsing.
    The magic-byte table is the raw contract's (schemas.raw)."""
    mime = sniff_content_type(data)
    return None if mime is None else mime.split("/", 1)[1].upper()


def decode_image(data: bytes, spec: PreprocessSpec, limits: DecodeSettings) -> DecodedImage:
    """Validate and decode `data` into the model input described by `spec`."""
    if not data:
        raise DecodeError("empty", "image payload is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise DecodeError(
            "too-large", f"image payload is {len(data)} bytes, limit is {limits.max_bytes}"
        )
    im = _open(data, limits)
    fmt = im.format or "unknown"
    _check_pixels(im.size, limits, fmt)
    _check_aspect(im.size, limits, fmt)
    _check_scans(data, limits, fmt)
    width, height = im.size  # as stored; swapped below if EXIF rotates by 90 degrees
    if limits.jpeg_draft and fmt == "JPEG":
        _draft(im, int(spec.resize_size * limits.jpeg_draft_oversample))
    stored = im.size
    try:
        im.load()  # force a full decode: truncation and stream damage surface here
    except Image.DecompressionBombError as exc:
        raise DecodeError("decompression-bomb", f"{fmt}: {exc}", cause=exc) from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        raise _load_error(fmt, exc) from exc
    try:
        im = ImageOps.exif_transpose(im)
    except Exception as exc:  # Pillow raises assorted types on malformed EXIF
        raise DecodeError("corrupt", f"{fmt}: bad EXIF orientation data: {exc}", cause=exc) from exc
    if im.size != stored:
        width, height = height, width
    rgb = to_rgb(im, fmt)
    pixels = resize_center_crop(rgb, spec.resize_size, spec.input_size)
    return DecodedImage(pixels=pixels, width=width, height=height, format=fmt)


def _draft(im: Image.Image, resize_size: int) -> None:
    """Ask libjpeg for the smallest DCT scale (1/2, 1/4, 1/8) at which the shorter side
    still holds `resize_size` pixels: the bicubic resize then still downsamples, from a
    source up to 64 x smaller to decode. The crop box is computed on the drafted size.
    (DecodeSettings.jpeg_draft_oversample sets the margin kept above the model's resize:
    libjpeg's scaled IDCT is not Pillow's bicubic filter, see docs/stream_app.md.)"""
    w, h = im.size
    short = min(w, h)
    if short < 2 * resize_size:
        return  # no scale keeps the shorter side >= resize_size
    # draft picks the largest scale s with size // s >= the request on both sides.
    request = (-(-w * resize_size // short), -(-h * resize_size // short))
    try:
        im.draft("RGB" if im.mode == "RGB" else None, request)
    except (OSError, ValueError) as exc:  # draft only reconfigures; load reports damage
        log.debug("JPEG draft not applied: %s", exc)


def _open(data: bytes, limits: DecodeSettings) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=list(limits.formats))
    except Image.DecompressionBombError as exc:
        raise DecodeError("decompression-bomb", str(exc), cause=exc) from exc
    except UnidentifiedImageError as exc:
        raise _unidentified(data, limits, exc) from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        # Raised while a plugin that accepted the magic bytes read the header.
        fmt = sniff_format(data) or "image"
        raise _load_error(fmt, exc) from exc


def _unidentified(data: bytes, limits: DecodeSettings, exc: Exception) -> DecodeError:
    fmt = sniff_format(data)
    if fmt is None:
        head = data[:8].hex()
        return DecodeError(
            "not-an-image",
            f"{len(data)} bytes are not an image of an allowed format "
            f"({', '.join(limits.formats)}); first bytes: {head}",
            cause=exc,
        )
    if fmt not in limits.formats:
        return DecodeError("not-an-image", f"{fmt} images are not allowed here", cause=exc)
    # The magic says e.g. PNG but Pillow could not read the header: ask that plugin why.
    inner = _plugin_error(fmt, data)
    if inner is not None:
        err = _load_error(fmt, inner)
        err.__cause__ = inner
        return err
    return DecodeError("corrupt", f"{fmt} header cannot be parsed", cause=exc)


def _plugin_error(fmt: str, data: bytes) -> BaseException | None:
    Image.init()
    factory = Image.OPEN.get(fmt)
    if factory is None:
        return None
    try:
        factory[0](io.BytesIO(data), "")
    except Exception as exc:
        return exc
    return None


def _load_error(fmt: str, exc: BaseException) -> DecodeError:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, EOFError | struct.error) or any(
        h in text.lower() for h in _TRUNCATION_HINTS
    ):
        return DecodeError("truncated", f"{fmt} data is truncated: {text}", cause=exc)
    return DecodeError("corrupt", f"{fmt} data is corrupt: {text}", cause=exc)


def _check_pixels(size: tuple[int, int], limits: DecodeSettings, fmt: str) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise DecodeError("corrupt", f"{fmt} header declares a {w}x{h} image")
    if w * h > limits.max_pixels:
        raise DecodeError(
            "decompression-bomb",
            f"{fmt} image is {w}x{h} = {w * h} pixels, limit is {limits.max_pixels}",
        )


def _check_scans(data: bytes, limits: DecodeSettings, fmt: str) -> None:
    if fmt != "JPEG":
        return
    # Start-of-scan markers. Entropy-coded data never holds FF DA (an FF there is
    # stuffed with 00), so this counts scans, or more if metadata happens to hold the
    # bytes: an over-count can only refuse an image with hundreds of them.
    scans = data.count(b"\xff\xda")
    if scans > limits.max_jpeg_scans:
        raise DecodeError(
            "decompression-bomb",
            f"JPEG has {scans} scans, limit is {limits.max_jpeg_scans} (each scan decodes "
            "the whole image again)",
        )


def _check_aspect(size: tuple[int, int], limits: DecodeSettings, fmt: str) -> None:
    w, h = size
    if max(w, h) > limits.max_aspect_ratio * min(w, h):
        raise DecodeError(
            "bad-aspect-ratio",
            f"{fmt} image is {w}x{h}; the longer side may be at most "
            f"{limits.max_aspect_ratio:g} x the shorter",
        )


def to_rgb(im: Image.Image, fmt: str = "image") -> Image.Image:
    """Convert any supported mode to 8-bit RGB (alpha over white, 16-bit scaled)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _SIXTEEN_BIT:
        return _grey16_to_rgb(np.asarray(im), fmt)
    if mode == "I":
        arr = np.asarray(im)
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise DecodeError(
                "unsupported-mode",
                f"{fmt} 32-bit integer image with values {lo}..{hi}; only 0..65535 is supported",
            )
        return _grey16_to_rgb(arr, fmt)
    if mode == "P" and "transparency" in im.info:
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in _ALPHA:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in _DIRECT:
        try:
            return im.convert("RGB")
        except ValueError as exc:
            raise DecodeError("unsupported-mode", f"{fmt} mode {mode}: {exc}", cause=exc) from exc
    raise DecodeError("unsupported-mode", f"{fmt} images in pixel mode {mode!r} are not supported")


def _grey16_to_rgb(arr: np.ndarray, fmt: str) -> Image.Image:
    if arr.ndim != 2:
        raise DecodeError("unsupported-mode", f"{fmt} 16-bit image with shape {arr.shape}")
    # Round-to-nearest 65535 -> 255 scaling, in place: one temporary of the image's size.
    wide = arr.astype(np.uint32)
    wide *= 255
    wide += 32767
    wide //= 65535
    grey = wide.astype(np.uint8)
    del wide
    return Image.fromarray(grey).convert("RGB")


def crop_box(
    size: tuple[int, int], resize_size: int, crop: int
) -> tuple[float, float, float, float]:
    """The source-coordinate box whose bicubic resize to `crop` square equals resizing the
    shorter side to `resize_size` and cutting the centre `crop` square."""
    w, h = size
    if w <= h:
        nw, nh = resize_size, max(resize_size, int(round(h * resize_size / w)))
    else:
        nw, nh = max(resize_size, int(round(w * resize_size / h))), resize_size
    left, top = (nw - crop) // 2, (nh - crop) // 2
    sx, sy = w / nw, h / nh
    return (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)


def resize_center_crop(im: Image.Image, resize_size: int, crop: int) -> np.ndarray:
    """Shorter side -> resize_size (bicubic), centre crop `crop` square, as uint8 CHW.

    One resample of the crop box: allocates `crop` x `crop` pixels, never the resized
    whole image."""
    box = crop_box(im.size, resize_size, crop)
    out = im.resize((crop, crop), Image.Resampling.BICUBIC, box=box)
    hwc = np.asarray(out, dtype=np.uint8)
    return np.ascontiguousarray(hwc.transpose(2, 0, 1))
