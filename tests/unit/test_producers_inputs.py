"""Producer inputs: files found and recognised by content, sample photos, synthetic images."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from producers import files, samples, synthetic
from producers.imaging import FORMATS, encode
from producers.items import Item, Skip
from schemas.raw import sniff_content_type


def _png() -> bytes:
    return encode(np.full((8, 8, 3), 100, np.uint8), "PNG")


def _jpeg() -> bytes:
    return encode(np.full((8, 8, 3), 50, np.uint8), "JPEG")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "photo.txt").write_bytes(_jpeg())  # an image with a misleading name
    (tmp_path / "notes.jpg").write_text("not an image at all")  # text with an image name
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.bin").write_bytes(_png())
    return tmp_path


def _by_name(entries) -> dict[str, Item | Skip]:
    return {Path(e.source).name: e for e in entries}


def test_directory_without_recursive_reads_only_its_files(tree: Path) -> None:
    got = _by_name(files.file_items([tree]))
    assert set(got) == {"photo.txt", "notes.jpg", "empty.png"}


def test_recognised_by_content_not_extension(tree: Path) -> None:
    got = _by_name(files.file_items([tree], recursive=True))
    assert isinstance(got["photo.txt"], Item) and got["photo.txt"].content_type == "image/jpeg"
    assert got["photo.txt"].data == (tree / "photo.txt").read_bytes()
    assert isinstance(got["deep.bin"], Item) and got["deep.bin"].content_type == "image/png"
    assert isinstance(got["notes.jpg"], Skip) and got["notes.jpg"].reason == "not-an-image"
    assert "starts" in got["notes.jpg"].detail
    assert isinstance(got["empty.png"], Skip) and "empty file" in got["empty.png"].detail


def test_recursive_order_is_sorted_and_stable(tree: Path) -> None:
    a = [e.source for e in files.file_items([tree], recursive=True)]
    assert a == sorted(a) == [e.source for e in files.file_items([tree], recursive=True)]


def test_missing_and_unreadable_paths_become_skips(tmp_path: Path) -> None:
    got = list(files.file_items([tmp_path / "nope.jpg"]))
    assert len(got) == 1 and isinstance(got[0], Skip) and got[0].reason == "unreadable"
    # A path that stops being readable between listing and reading.
    d = tmp_path / "dir-not-file"
    d.mkdir()
    skip = files.read_image(d)
    assert isinstance(skip, Skip) and skip.reason == "unreadable"
    if os.geteuid() != 0:  # root reads anything
        f = tmp_path / "locked.jpg"
        f.write_bytes(_jpeg())
        f.chmod(0)
        assert files.read_image(f).reason == "unreadable"


def test_too_large_file_is_skipped_without_reading(tmp_path: Path) -> None:
    f = tmp_path / "big.jpg"
    f.write_bytes(b"\xff\xd8\xff" + b"\x00" * 5000)
    skip = files.read_image(f, max_bytes=4096)
    assert isinstance(skip, Skip) and skip.reason == "too-large" and "5003 bytes" in skip.detail
    assert isinstance(files.read_image(f, max_bytes=10_000), Item)


@pytest.mark.parametrize("fmt", FORMATS)
def test_encode_every_format_is_sniffed_and_decodable(fmt: str) -> None:
    data = encode(synthetic.synthetic_pixels(0, (40, 30)), fmt)
    assert sniff_content_type(data) == f"image/{fmt.lower()}"
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.size == (40, 30)


def test_sample_photos_are_real_colour_photos() -> None:
    assert samples.PHOTO_NAMES == ("chelsea", "coffee", "astronaut", "rocket", "motorcycle")
    for name in samples.PHOTO_NAMES:
        arr = np.asarray(samples.photo(name))
        assert arr.ndim == 3 and arr.shape[2] == 3 and min(arr.shape[:2]) >= 200
        # Colour, not grey: the channels differ.
        assert np.abs(arr[..., 0].astype(int) - arr[..., 2]).mean() > 5


def test_samples_count_distinct_ids_and_determinism() -> None:
    items = list(samples.sample_items(repeat=3, corrupt=5, seed=1))
    assert len(items) == 5 * 4 + 5
    ids = [hashlib.sha256(i.data).hexdigest() for i in items]
    assert len(set(ids)) == len(ids)
    assert [i.source for i in items[:5]] == [f"samples/{n}" for n in samples.PHOTO_NAMES]
    again = list(samples.sample_items(repeat=3, corrupt=5, seed=1))
    assert [i.data for i in again] == [i.data for i in items]
    other = list(samples.sample_items(repeat=3, corrupt=0, seed=2))
    assert other[5].data != items[5].data  # variants follow the seed
    assert other[0].data == items[0].data  # originals do not


def test_sample_variants_decode_and_differ_in_size_or_format() -> None:
    kinds = set()
    for item in samples.sample_items(repeat=8, seed=0):
        img = Image.open(io.BytesIO(item.data))
        img.load()
        kinds.add((img.format, img.size))
        assert sniff_content_type(item.data) is not None
    assert len(kinds) >= 30
    assert len({f for f, _ in kinds}) >= 3


def test_corrupt_samples_look_like_images_but_do_not_decode() -> None:
    items = list(samples.corrupt_items(8, seed=0))
    assert {i.source.split("/")[2] for i in items} == set(samples.CORRUPT_KINDS)
    for item in items:
        assert sniff_content_type(item.data) in ("image/jpeg", "image/png"), item.source
        with pytest.raises((OSError, SyntaxError, ValueError)):
            img = Image.open(io.BytesIO(item.data))
            img.load()


def test_synthetic_size_determinism_and_distinct_ids() -> None:
    items = list(synthetic.synthetic_items(50, (224, 224), seed=3))
    assert len({hashlib.sha256(i.data).digest() for i in items}) == 50
    img = Image.open(io.BytesIO(items[7].data))
    assert (img.format, img.size, img.mode) == ("JPEG", (224, 224), "RGB")
    again = list(synthetic.synthetic_items(8, (224, 224), seed=3))
    assert [i.data for i in again] == [i.data for i in items[:8]]
    assert list(synthetic.synthetic_items(1, (224, 224), seed=4))[0].data != items[0].data
    wide = next(synthetic.synthetic_items(1, (640, 100)))
    assert Image.open(io.BytesIO(wide.data)).size == (640, 100)


@pytest.mark.parametrize("text", ["224x224", "640X480", " 32x8 "])
def test_parse_size(text: str) -> None:
    w, h = synthetic.parse_size(text)
    assert f"{w}x{h}" == text.strip().lower()


@pytest.mark.parametrize("text", ["224", "0x10", "10x", "axb", "224*224", "99999x10"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        synthetic.parse_size(text)
