"""No record can fail a stage's batch: each hostile record becomes its own dead letter.

Pure stage logic (no Kafka, no model): the decode and postprocess stages, with the
records any Kafka client could publish to images.raw.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import skimage.data
from PIL import Image

from schemas import codec
from schemas.dead_letter import H_PAYLOAD_BYTES, H_PAYLOAD_TRUNCATED, read_dead_letter
from schemas.image_id import KEY_HASH_PREFIX, NO_KEY_PREFIX, row_id
from schemas.raw import MAX_HEADER_BYTES, headers_dict, raw_headers
from schemas.topics import STAGE_BY_NAME
from stream_app.records import InRecord, OutRecord
from stream_app.settings import DecodeSettings, ModelSettings
from stream_app.spec import preprocess_for
from stream_app.stages import DecodeStage, PostprocessStage, topic_limits

PHOTO = (Path(os.path.dirname(skimage.data.__file__)) / "chelsea.png").read_bytes()
TOPIC = "images.raw"


def decode_stage(**limits: int) -> DecodeStage:
    return DecodeStage(
        STAGE_BY_NAME["decode"],
        preprocess_for(ModelSettings()),
        DecodeSettings(),
        topic_limits={**topic_limits(), **limits},
    )


def raw(offset: int, key: bytes | None, value: bytes | None = PHOTO, headers=None) -> InRecord:
    hdrs = raw_headers("image/png", "unit", 1_700_000_000_000) if headers is None else headers
    return InRecord(TOPIC, 0, offset, key, value, hdrs, 1_700_000_000_123)


def png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (5, 6, 7)).save(buf, "PNG")
    return buf.getvalue()


def dead_fields(out: OutRecord) -> dict:
    assert out.dead, out
    return read_dead_letter(out.value, out.headers)


HOSTILE = {
    "produced-at 2^63": (
        b"big-ts",
        [("content-type", b"image/png"), ("produced-at", b"9223372036854775808")],
        "bad-header",
    ),
    "produced-at negative": (b"neg-ts", [("produced-at", b"-5")], "bad-header"),
    "produced-at float": (b"float-ts", [("produced-at", b"1.7e12")], "bad-header"),
    "produced-at unicode digits": (b"uni-ts", [("produced-at", "١٢٣".encode())], "bad-header"),
    "too many headers": (b"many", [(f"h{i}", b"x") for i in range(65)], "bad-header"),
    "headers too large": (b"fat", [("pad", b"x" * (MAX_HEADER_BYTES + 1))], "bad-header"),
    "header name not utf-8": (b"badname", [("a\udcff", b"v")], "bad-header"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_headers_become_their_own_dead_letter_between_good_images(case: str) -> None:
    key, headers, reason = HOSTILE[case]
    stage = decode_stage()
    outs = stage.process([raw(0, b"good-1"), raw(1, key, headers=headers), raw(2, b"good-2")])
    assert [o.dead for o in outs] == [False, True, False]
    assert outs[1].reason == reason
    dl = dead_fields(outs[1])
    assert dl["image_id"] == key.decode()
    assert dl["reason"] == reason


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (b"\xff\xfe", "bad-key"),
        (b"\xff\xfd", "bad-key"),
        (b"has space", "bad-key"),
        (b"x" * 300, "bad-key"),
        (None, "missing-key"),
        (b"", "missing-key"),
    ],
)
def test_bad_keys_get_an_injective_deterministic_row_id(key: bytes | None, reason: str) -> None:
    (out,) = decode_stage().process([raw(7, key)])
    dl = dead_fields(out)
    assert out.reason == reason
    assert dl["image_id"] == row_id(key, (TOPIC, 0, 7))
    assert dl["image_id"].startswith(KEY_HASH_PREFIX if key else NO_KEY_PREFIX)


def test_two_non_utf8_keys_never_share_a_row() -> None:
    a, b = decode_stage().process([raw(0, b"\xff\xfe"), raw(1, b"\xff\xfd")])
    assert dead_fields(a)["image_id"] != dead_fields(b)["image_id"]


def test_an_output_too_large_for_its_topic_becomes_a_dead_letter() -> None:
    # A decoded image is ~150 KB; give images.decoded a 64 KB limit.
    stage = decode_stage(**{"images.decoded": 64 * 1024})
    (out,) = stage.process([raw(0, b"big-out")])
    assert out.reason == "output-too-large"
    assert "max.message.bytes" in dead_fields(out)["error_message"]


def test_a_dead_letter_too_large_for_its_topic_carries_a_cut_payload() -> None:
    stage = decode_stage(**{"images.decode.dlq": 128 * 1024})
    junk = b"\x00" * (1024 * 1024)  # not an image, and larger than the DLQ allows
    (out,) = stage.process([raw(0, b"junk", junk)])
    assert out.reason == "not-an-image"
    h = headers_dict(out.headers)
    assert h[H_PAYLOAD_TRUNCATED] == "true"
    assert h[H_PAYLOAD_BYTES] == str(len(junk))
    assert len(out.value) < 128 * 1024


def test_a_step_that_raises_fails_only_its_record(monkeypatch: pytest.MonkeyPatch) -> None:
    stage = decode_stage()
    real = stage.one

    def flaky(rec: InRecord) -> OutRecord:
        if rec.key == b"boom":
            raise OverflowError("Python int too large to convert to C long")
        return real(rec)

    monkeypatch.setattr(stage, "one", flaky)
    outs = stage.process([raw(0, b"a"), raw(1, b"boom"), raw(2, b"b")])
    assert [o.dead for o in outs] == [False, True, False]
    assert outs[1].reason == "internal-error"


def test_a_batch_step_that_raises_is_bisected_down_to_the_record() -> None:
    class Picky(PostprocessStage):
        calls = 0

        def _process(self, batch):  # a whole-batch step that chokes on one record
            Picky.calls += 1
            if any(r.key == b"bad" for r in batch):
                raise ValueError("cannot handle this batch")
            return [self.dead(r, reason="fine", error=ValueError("x")) for r in batch]

    stage = Picky(STAGE_BY_NAME["postprocess"], ["a"], 1)
    batch = [
        InRecord("images.inferred", 0, i, k, b"", [])
        for i, k in enumerate([b"a", b"b", b"bad", b"c", b"d"])
    ]
    outs = stage.process(batch)
    assert [o.reason for o in outs] == ["fine", "fine", "internal-error", "fine", "fine"]
    assert Picky.calls <= 1 + 2 * 3  # log2 splits, not one call per record


def test_thin_and_wide_images_are_refused_before_any_resize() -> None:
    outs = decode_stage().process([raw(0, b"thin", png(1, 20000)), raw(1, b"wide", png(100000, 1))])
    assert [o.reason for o in outs] == ["bad-aspect-ratio", "bad-aspect-ratio"]


def test_a_good_image_keeps_its_prediction_path() -> None:
    (out,) = decode_stage().process([raw(0, b"cat")])
    assert not out.dead
    d = codec.decode(codec.DECODED_IMAGE, out.value, out.headers)
    assert (d["channels"], d["height"], d["width"]) == (3, 224, 224)


def test_a_record_the_consumer_could_not_hand_over_becomes_its_dead_letter() -> None:
    marker = InRecord(
        TOPIC, 2, 40, None, None, [], 1_700_000_000_123, refused="decompressed-too-large"
    )
    outs = decode_stage().process([raw(39, b"good"), marker, raw(41, b"good-2")])
    assert [o.dead for o in outs] == [False, True, False]
    dl = dead_fields(outs[1])
    assert dl["reason"] == "decompressed-too-large"
    assert dl["image_id"] == f"{NO_KEY_PREFIX}{TOPIC}/2/40"
