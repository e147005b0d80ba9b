"""Decode stage on real photos and on every kind of bad input (no servers, no torch)."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from stream_app.decode import decode_image, sniff_format, to_rgb
from stream_app.errors import DecodeError, StageError
from stream_app.settings import DecodeSettings
from stream_app.spec import PreprocessSpec

PHOTOS = Path(os.path.dirname(skimage.data.__file__))
SPEC = PreprocessSpec(input_size=224, resize_size=256, mean=(0.5,) * 3, std=(0.5,) * 3)
LIMITS = DecodeSettings()


def photo(name: str) -> bytes:
    return (PHOTOS / name).read_bytes()


def encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def reason_of(data: bytes, limits: DecodeSettings = LIMITS) -> str:
    with pytest.raises(DecodeError) as info:
        decode_image(data, SPEC, limits)
    err = info.value
    assert isinstance(err, StageError) and err.stage == "decode"
    assert err.retriable is False
    assert err.message and err.reason in str(err)
    return err.reason


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@pytest.mark.parametrize(
    "name,fmt,size",
    [
        ("chelsea.png", "PNG", (451, 300)),
        ("coffee.png", "PNG", (600, 400)),
        ("astronaut.png", "PNG", (512, 512)),
        ("rocket.jpg", "JPEG", (640, 427)),
        ("camera.png", "PNG", (512, 512)),  # greyscale
    ],
)
def test_real_photos_decode_to_model_input(name: str, fmt: str, size: tuple[int, int]) -> None:
    out = decode_image(photo(name), SPEC, LIMITS)
    assert out.format == fmt
    assert (out.width, out.height) == size
    assert out.pixels.dtype == np.uint8
    assert out.pixels.shape == (3, 224, 224)
    assert out.pixels.flags["C_CONTIGUOUS"]
    assert out.pixels.std() > 10  # a photo, not a blank


def test_resize_and_center_crop_match_an_independent_computation() -> None:
    data = photo("chelsea.png")
    im = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = im.size  # 451 x 300: shorter side is the height
    im = im.resize((round(w * 256 / h), 256), Image.Resampling.BICUBIC)
    left, top = (im.width - 224) // 2, (im.height - 224) // 2
    expected = np.asarray(im.crop((left, top, left + 224, top + 224))).transpose(2, 0, 1)
    got = decode_image(data, SPEC, LIMITS).pixels
    # The decoder resamples the crop box only (bounded memory); the filter taps are the
    # same, so at most a rounding step differs on a handful of pixels.
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.max() <= 1
    assert (diff > 0).mean() < 0.001


@pytest.mark.parametrize("size", [(1, 20000), (20000, 1), (10, 201)])
def test_strips_beyond_the_aspect_ratio_are_refused_before_decoding(size) -> None:
    buf = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buf, "PNG")
    with pytest.raises(DecodeError) as err:
        decode_image(buf.getvalue(), SPEC, LIMITS)
    assert err.value.reason == "bad-aspect-ratio"


def test_a_thin_image_within_the_ratio_decodes_without_a_full_size_intermediate() -> None:
    # 20 x 400 resized whole would be 256 x 5120; the crop-box resample makes 224 x 224.
    buf = io.BytesIO()
    Image.new("RGB", (20, 400), (9, 99, 199)).save(buf, "PNG")
    out = decode_image(buf.getvalue(), SPEC, LIMITS)
    assert out.pixels.shape == (3, 224, 224)
    assert (out.pixels[:, 100, 100] == (9, 99, 199)).all()


def test_exif_orientation_is_applied() -> None:
    # A landscape image stored with orientation 6 (rotate 90 CW) is portrait when shown.
    arr = np.zeros((300, 400, 3), np.uint8)
    arr[:, :200] = (255, 0, 0)  # left half red, right half blue
    arr[:, 200:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(arr), "JPEG", exif=exif, quality=95)
    out = decode_image(data, SPEC, LIMITS)
    assert (out.width, out.height) == (300, 400)
    top_rgb = out.pixels[:, 5, 112]
    bottom_rgb = out.pixels[:, 218, 112]
    assert top_rgb[0] > 200 and top_rgb[2] < 60  # red is on top after rotation
    assert bottom_rgb[2] > 200 and bottom_rgb[0] < 60


# --- modes -------------------------------------------------------------------------


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    arr = np.zeros((64, 64), np.uint16)
    arr[:, :32] = 1000  # would clip to 255 with a naive convert; scaled it is ~4
    arr[:, 32:] = 65535
    im = Image.fromarray(arr)
    data = encode(im, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = decode_image(data, SPEC, LIMITS)
    assert out.pixels[:, 112, 10].tolist() == [4, 4, 4]
    assert out.pixels[:, 112, 210].tolist() == [255, 255, 255]


def test_cmyk_jpeg_decodes_to_rgb() -> None:
    im = Image.new("CMYK", (64, 64), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(encode(im, "JPEG", quality=95), SPEC, LIMITS)
    r, g, b = (int(v) for v in out.pixels[:, 112, 112])
    assert r > 200 and g < 60 and b < 60


def test_palette_image_decodes_with_its_palette() -> None:
    im = Image.new("P", (64, 64))
    im.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    im.paste(1, (0, 0, 64, 64))
    out = decode_image(encode(im, "GIF"), SPEC, LIMITS)
    assert out.pixels[:, 100, 100].tolist() == [0, 200, 0]


def test_palette_transparency_and_la_alpha_composite_over_white() -> None:
    p = Image.new("P", (32, 32))
    p.putpalette([10, 20, 30] * 256)
    data = encode(p, "PNG", transparency=0)
    assert decode_image(data, SPEC, LIMITS).pixels[:, 50, 50].tolist() == [255, 255, 255]

    la = Image.new("LA", (32, 32), (0, 0))  # black, fully transparent
    la.paste((0, 255), (0, 0, 16, 32))  # left half black, opaque
    out = decode_image(encode(la, "PNG"), SPEC, LIMITS)
    assert out.pixels[:, 112, 5].tolist() == [0, 0, 0]
    assert out.pixels[:, 112, 218].tolist() == [255, 255, 255]


def test_one_bit_and_rgba_decode() -> None:
    one_bit = encode(Image.new("1", (20, 20), 1), "BMP")
    assert decode_image(one_bit, SPEC, LIMITS).pixels.min() == 255
    rgba = encode(Image.new("RGBA", (20, 20), (255, 0, 0, 255)), "WEBP", lossless=True)
    assert decode_image(rgba, SPEC, LIMITS).pixels[:, 0, 0].tolist() == [255, 0, 0]


def test_float_tiff_is_an_unsupported_mode() -> None:
    im = Image.fromarray(np.random.default_rng(0).random((16, 16), dtype=np.float32))
    assert im.mode == "F"
    assert reason_of(encode(im, "TIFF")) == "unsupported-mode"


def test_out_of_range_32_bit_integer_is_an_unsupported_mode() -> None:
    im = Image.fromarray(np.full((8, 8), 1 << 20, np.int32))
    assert im.mode == "I"
    with pytest.raises(DecodeError) as info:
        to_rgb(im, "TIFF")
    assert info.value.reason == "unsupported-mode"


# --- bad inputs --------------------------------------------------------------------


def test_zero_bytes_is_empty() -> None:
    assert reason_of(b"") == "empty"


def test_random_bytes_and_text_are_not_images() -> None:
    assert reason_of(np.random.default_rng(1).bytes(4096)) == "not-an-image"
    assert reason_of(b"hello, I am a text file\n" * 20) == "not-an-image"
    assert reason_of(b'{"image": "nope"}') == "not-an-image"


def test_disallowed_format_is_not_an_image() -> None:
    data = encode(Image.new("RGB", (8, 8)), "PNG")
    assert reason_of(data, DecodeSettings(formats=("JPEG",))) == "not-an-image"


def test_oversized_payload_is_too_large() -> None:
    data = photo("coffee.png")
    assert reason_of(data, DecodeSettings(max_bytes=len(data) - 1)) == "too-large"


@pytest.mark.parametrize("name", ["chelsea.png", "rocket.jpg"])
@pytest.mark.parametrize("fraction", [0.3, 0.9])
def test_truncated_photo_is_truncated(name: str, fraction: float) -> None:
    data = photo(name)
    with pytest.raises(DecodeError) as info:
        decode_image(data[: int(len(data) * fraction)], SPEC, LIMITS)
    assert info.value.reason == "truncated"
    assert isinstance(info.value.__cause__, OSError)  # Pillow's own error is kept


def test_png_cut_inside_its_header_is_truncated() -> None:
    assert reason_of(photo("chelsea.png")[:20]) == "truncated"


def test_damaged_jpeg_huffman_table_is_corrupt() -> None:
    # Zeroing the Huffman table makes the entropy-coded data undecodable. (Random bytes
    # in the scan data alone often decode "fine" as garbage: libjpeg only warns.)
    data = photo("rocket.jpg")
    dht = data.index(b"\xff\xc4")
    damaged = data[: dht + 4] + bytes(30) + data[dht + 34 :]
    with pytest.raises(DecodeError) as info:
        decode_image(damaged, SPEC, LIMITS)
    assert info.value.reason == "corrupt"
    assert isinstance(info.value.__cause__, OSError)


def test_damaged_png_is_corrupt() -> None:
    data = bytearray(photo("chelsea.png"))
    mid = len(data) // 2
    data[mid : mid + 400] = bytes(400)
    assert reason_of(bytes(data)) == "corrupt"


def test_decompression_bomb_over_our_limit() -> None:
    # 3000x3000 of zeros: a ~30 KB PNG that would expand to 9 Mpx.
    data = encode(Image.new("L", (3000, 3000)), "PNG")
    assert len(data) < 100_000
    assert reason_of(data, DecodeSettings(max_pixels=2_000_000)) == "decompression-bomb"
    # ... and the same file is fine under a higher limit.
    ok = decode_image(data, SPEC, DecodeSettings(max_pixels=10_000_000))
    assert ok.pixels.shape == (3, 224, 224)


def test_decompression_bomb_refused_by_pillow_header_check() -> None:
    # A PNG whose header claims 100000 x 100000 (10 Gpx) with a tiny body: Pillow's own
    # DecompressionBombError fires in open(), before any pixel is allocated.
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )
    with pytest.raises(DecodeError) as info:
        decode_image(data, SPEC, DecodeSettings(max_pixels=10**12))
    assert info.value.reason == "decompression-bomb"
    assert isinstance(info.value.__cause__, Image.DecompressionBombError)


def test_sniff_format() -> None:
    assert sniff_format(photo("rocket.jpg")) == "JPEG"
    assert sniff_format(photo("coffee.png")) == "PNG"
    assert sniff_format(b"RIFF\0\0\0\0WEBPVP8 ") == "WEBP"
    assert sniff_format(b"plain text") is None


def test_a_jpeg_with_too_many_scans_is_refused_before_decoding() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "JPEG", progressive=True)
    data = buf.getvalue()
    assert decode_image(data, SPEC, LIMITS).pixels.shape == (3, 224, 224)
    # Repeat the last scan many times: each decodes the whole image again.
    sos = data.rindex(b"\xff\xda")
    bomb = data[:sos] + data[sos:-2] * 150 + b"\xff\xd9"
    with pytest.raises(DecodeError) as err:
        decode_image(bomb, SPEC, LIMITS)
    assert err.value.reason == "decompression-bomb" and "scans" in str(err.value)
