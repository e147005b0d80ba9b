"""Bad input ends with a clear reason, and the good images around it are all stored.

The corpus is built here: files for the producer (which refuses what is not an image or
too large), and raw records published the way any Kafka client could (kcat-style, with
wrong headers or garbage), which the stream rejects with a reason per image.
"""

from __future__ import annotations

import io
import random

import pytest
from confluent_kafka import Producer
from e2e_harness import assert_accounted
from PIL import Image

from infra.kafka_clients import producer_config
from producers.files import file_items
from producers.items import NOT_AN_IMAGE, TOO_LARGE
from producers.synthetic import synthetic_items
from schemas.image_id import content_id
from schemas.raw import raw_headers

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.slow]


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _corpus(tmp_path, rng: random.Random) -> tuple[dict[str, bytes], dict[str, str]]:
    """Files on disk; returns name -> bytes and, for files the producer must refuse, name -> reason."""
    good = [it.data for it in synthetic_items(30, (128, 96), seed=rng.randrange(1 << 30))]
    photo = _png(Image.new("RGB", (64, 48), (200, 30, 30)))
    jpeg = good[0]
    files = {f"good-{i}.jpg": data for i, data in enumerate(good)}
    garbled = bytearray(jpeg)
    for i in range(300, len(garbled) - 2, 7):  # keep SOI and headers, wreck the scan data
        garbled[i] = rng.randrange(256)
    files["corrupt.jpg"] = bytes(garbled) + b"not-jpeg" * 3
    files["truncated.png"] = photo[: len(photo) // 2]
    # A decompression bomb: tiny file, 20000 x 20000 pixels (over the 40 MP limit).
    files["bomb.png"] = _png(Image.new("1", (20000, 20000)))
    refused = {
        "zero.jpg": NOT_AN_IMAGE,
        "random.png": NOT_AN_IMAGE,
        "text.jpg": NOT_AN_IMAGE,
        "huge.jpg": TOO_LARGE,
    }
    files["zero.jpg"] = b""
    files["random.png"] = bytes(rng.randrange(256) for _ in range(4096))
    files["text.jpg"] = b"this is a text file with an image extension\n" * 20
    files["huge.jpg"] = b"\xff\xd8\xff\xe0" + bytes(
        rng.randrange(256) for _ in range(11 * 1024 * 1024)
    )
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return files, refused


def test_bad_inputs_end_with_reasons_and_good_ones_are_stored(healthy, tmp_path):
    rng = random.Random(2026)
    files, refused = _corpus(tmp_path, rng)
    limit = healthy.kafka.max_message_bytes
    res = healthy.publish(file_items([tmp_path], max_bytes=limit))

    # The producer's refusals: one clear reason per refused file, and the rest published.
    skips = {p.source.rsplit("/", 1)[-1]: p for p in res.summary.skips}
    assert set(skips) == set(refused), res.summary.skips
    for name, reason in refused.items():
        assert skips[name].reason == reason
        assert skips[name].detail
    assert res.summary.failed == 0
    published = {content_id(data): name for name, data in files.items() if name not in refused}
    assert {i for i, _ in res.delivered} == set(published)

    # Raw records from "any client": garbage bodies and wrong header values.
    raw_cases = {
        "raw-zero": (b"", raw_headers("image/jpeg", "kcat")),
        "raw-random": (
            bytes(rng.randrange(256) for _ in range(2048)),
            raw_headers("image/png", "kcat"),
        ),
        "raw-text": (b"plain text, not pixels", raw_headers("image/jpeg", "kcat")),
        "raw-bad-produced-at": (
            files["good-1.jpg"],
            [("content-type", b"image/jpeg"), ("source", b"kcat"), ("produced-at", b"yesterday")],
        ),
    }
    ids = {f"badinput-{name}-{rng.randrange(1 << 40):x}": name for name in raw_cases}
    p = Producer(producer_config(healthy.kafka))
    errors: list[str] = []
    for image_id, name in ids.items():
        value, headers = raw_cases[name]
        p.produce(
            healthy.raw_topic,
            value=value,
            key=image_id.encode(),
            headers=headers,
            on_delivery=lambda err, _m: errors.append(str(err)) if err else None,
        )
    assert p.flush(60) == 0 and not errors, errors

    all_ids = list(published) + list(ids)
    acc = healthy.wait_accounted(all_ids)
    assert_accounted(acc, all_ids, healthy.diagnose)

    expect_rejected = {
        "corrupt.jpg": {"corrupt", "truncated"},
        "truncated.png": {"truncated", "corrupt"},
        "bomb.png": {"decompression-bomb"},
    }
    for image_id, name in published.items():
        if name.startswith("good-"):
            assert image_id in acc.stored, f"{name} was not stored: {acc.rejected.get(image_id)}"
        else:
            row = acc.rejected.get(image_id)
            assert row is not None, f"{name} was not rejected"
            assert row["stage"] == "decode" and row["reason"] in expect_rejected[name], (name, row)
            assert row["message"]
    expect_raw = {
        "raw-zero": {"empty"},
        "raw-random": {"not-an-image"},
        "raw-text": {"not-an-image"},
        "raw-bad-produced-at": {"bad-header"},
    }
    for image_id, name in ids.items():
        row = acc.rejected.get(image_id)
        assert row is not None, f"{name} was not rejected"
        assert row["reason"] in expect_raw[name], (name, row)
        assert row["message"]
