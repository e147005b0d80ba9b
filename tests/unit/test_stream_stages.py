"""The stage functions the faust agents run, chained without Kafka."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import skimage.data

from schemas import codec
from schemas.dead_letter import read_dead_letter
from schemas.raw import headers_dict, raw_headers
from schemas.topics import STAGE_BY_NAME
from stream_app.decode import decode_image
from stream_app.health import StageStats
from stream_app.infer import Inferencer
from stream_app.model import LoadedModel, load_model
from stream_app.postprocess import top_k
from stream_app.records import InRecord, OutRecord, normalize_headers
from stream_app.settings import DecodeSettings, ModelSettings
from stream_app.stages import DecodeStage, InferStage, PostprocessStage

PHOTOS = Path(os.path.dirname(skimage.data.__file__))
PREFIX = "t."


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model(ModelSettings())


@pytest.fixture(scope="module")
def stages(loaded: LoadedModel) -> tuple[DecodeStage, InferStage, PostprocessStage]:
    return (
        DecodeStage(STAGE_BY_NAME["decode"], loaded.preprocess, DecodeSettings(), PREFIX),
        InferStage(STAGE_BY_NAME["infer"], Inferencer(loaded), loaded.info, PREFIX),
        PostprocessStage(STAGE_BY_NAME["postprocess"], loaded.labels, 5, PREFIX),
    )


def raw(offset: int, key: bytes | None, value: bytes | None, headers=None) -> InRecord:
    hdrs = raw_headers("image/png", "unit-test", 1_700_000_000_000) if headers is None else headers
    return InRecord(PREFIX + "images.raw", offset % 3, offset, key, value, hdrs, 1_700_000_000_123)


def downstream(outs: list[OutRecord], topic: str) -> list[InRecord]:
    return [
        InRecord(o.topic, 0, i, o.key, o.value, o.headers)
        for i, o in enumerate(outs)
        if o.topic == topic
    ]


def test_photos_flow_to_predictions_and_bad_records_to_the_dlq(
    stages: tuple[DecodeStage, InferStage, PostprocessStage], loaded: LoadedModel
) -> None:
    decode, infer, post = stages
    names = ["chelsea.png", "coffee.png", "rocket.jpg"]
    blobs = [(PHOTOS / n).read_bytes() for n in names]
    batch = [
        raw(0, b"cat", blobs[0]),
        raw(1, b"empty", b""),
        raw(2, b"coffee", blobs[1]),
        raw(3, b"text", b"just some text"),
        raw(4, None, blobs[0]),  # no key: breaks the raw contract
        raw(5, b"cut", blobs[0][:3000]),
        raw(6, b"rocket", blobs[2]),
        raw(7, b"tomb", None),  # a tombstone
    ]
    outs = decode.process(batch)
    assert len(outs) == len(batch)  # one output per input, in order
    assert [o.topic for o in outs] == [
        "t.images.decoded", "t.images.decode.dlq", "t.images.decoded", "t.images.decode.dlq",
        "t.images.decode.dlq", "t.images.decode.dlq", "t.images.decoded", "t.images.decode.dlq",
    ]  # fmt: skip
    assert [o.reason for o in outs if o.dead] == [
        "empty", "not-an-image", "missing-key", "truncated", "empty",
    ]  # fmt: skip

    # Dead letters keep the original key, payload and headers, and say why in headers.
    dl = outs[5]
    assert dl.key == b"cut"
    letter = read_dead_letter(dl.value, dl.headers)
    assert letter["payload"] == blobs[0][:3000]
    assert letter["stage"] == "decode" and letter["reason"] == "truncated"
    assert letter["error_class"] == "DecodeError" and "truncated" in letter["error_message"]
    assert (letter["origin_topic"], letter["origin_partition"], letter["origin_offset"]) == (
        "t.images.raw", 2, 5,
    )  # fmt: skip
    assert letter["payload_headers"]["source"] == "unit-test"
    assert letter["produced_at_ms"] == 1_700_000_000_000
    h = headers_dict(dl.headers)
    assert h["error-reason"] == "truncated" and h["stage"] == "decode"
    assert h["origin-offset"] == "5" and h["error-class"] == "DecodeError"

    decoded = codec.decode(codec.DECODED_IMAGE, outs[0].value, outs[0].headers)
    assert (decoded["image_id"], decoded["raw_offset"]) == ("cat", 0)
    assert (decoded["original_width"], decoded["original_height"]) == (451, 300)
    assert len(decoded["pixels"]) == 3 * 224 * 224

    inferred = infer.process(downstream(outs, "t.images.decoded"))
    assert [o.topic for o in inferred] == ["t.images.inferred"] * 3
    predictions = post.process(downstream(inferred, "t.images.inferred"))
    assert [o.topic for o in predictions] == ["t.images.predictions"] * 3
    assert [o.key for o in predictions] == [b"cat", b"coffee", b"rocket"]

    # Each prediction equals the processing functions applied directly to the photo.
    inf = Inferencer(loaded)
    for name, blob, out in zip(names, blobs, predictions, strict=True):
        p = codec.decode(codec.PREDICTION, out.value, out.headers)
        arr = decode_image(blob, loaded.preprocess, DecodeSettings()).pixels
        (direct,) = inf.run([arr])
        expected = top_k(direct.logits, loaded.labels, 5)
        assert p["top_k"][0]["class_index"] == expected[0].class_index, name
        for got, want in zip(p["top_k"], expected, strict=True):
            assert abs(got["score"] - want.score) < 1e-4
        assert p["model_version"] == loaded.info.version
        assert p["source"] == "unit-test" and p["produced_at_ms"] == 1_700_000_000_000
        assert set(p["trace"]) == {"decode", "infer", "postprocess"}
        assert p["processed_at_ms"] >= p["trace"]["infer"]


def test_infer_stage_dead_letters_bad_records_and_keeps_the_rest(
    stages: tuple[DecodeStage, InferStage, PostprocessStage],
) -> None:
    decode, infer, _ = stages
    (good,) = decode.process([raw(0, b"cat", (PHOTOS / "chelsea.png").read_bytes())])
    d = codec.decode(codec.DECODED_IMAGE, good.value, good.headers)
    d["pixels"] = d["pixels"][:-1]  # one byte short of 3x224x224
    short_value, short_headers = codec.encode(codec.DECODED_IMAGE, d)
    batch = [
        InRecord("t.images.decoded", 0, 10, b"short", short_value, short_headers),
        InRecord("t.images.decoded", 0, 11, b"cat", good.value, good.headers),
        InRecord("t.images.decoded", 0, 12, b"junk", b"\x00\x01garbage", good.headers),
        InRecord("t.images.decoded", 0, 13, b"nohdr", good.value, []),
    ]
    outs = infer.process(batch)
    assert [o.topic for o in outs] == [
        "t.images.infer.dlq", "t.images.inferred", "t.images.infer.dlq", "t.images.infer.dlq",
    ]  # fmt: skip
    assert [o.reason for o in outs if o.dead] == ["wrong-shape", "undecodable", "wrong-schema"]
    letter = read_dead_letter(outs[0].value, outs[0].headers)
    assert letter["image_id"] == "cat" and letter["payload"] == short_value
    assert letter["payload_headers"]["schema-name"] == "DecodedImage"


def test_postprocess_stage_refuses_logits_of_the_wrong_size(
    stages: tuple[DecodeStage, InferStage, PostprocessStage],
) -> None:
    _, _, post = stages
    record = {
        "image_id": "x", "source": "", "content_type": "", "produced_at_ms": 1,
        "raw_topic": "t.images.raw", "raw_partition": 0, "raw_offset": 0,
        "model_name": "m", "model_version": "1", "logits": [0.0] * 10, "trace": {},
    }  # fmt: skip
    value, headers = codec.encode(codec.INFERENCE, record)
    (out,) = post.process([InRecord("t.images.inferred", 1, 2, b"x", value, headers)])
    assert out.dead and out.reason == "wrong-shape" and out.topic == "t.images.postprocess.dlq"


def test_normalize_headers() -> None:
    assert normalize_headers(None) == []
    assert normalize_headers([("a", b"1"), ("a", "2"), ("b", None)]) == [
        ("a", b"1"), ("a", b"2"), ("b", b""),
    ]  # fmt: skip
    assert normalize_headers({"k": "v"}) == [("k", b"v")]


def test_stage_stats_snapshot_and_lag() -> None:
    st = StageStats("infer", "images.decoded")
    st.batch_done(8, 7, 1, 0.5, ["wrong-shape"], {0: 10, 1: 4})
    st.batch_done(4, 4, 0, 0.25, [], {0: 14})
    snap = st.snapshot([0, 1, 2], stall_after_s=60)
    assert snap["lag"] == {"0": None, "1": None, "2": None}  # no fresh measurement yet
    st.lag_measured({0: (14, 20), 1: (4, 4), 2: None})
    snap = st.snapshot([0, 1, 2], stall_after_s=60)
    assert (snap["records_in"], snap["records_out"], snap["dead_letters"]) == (12, 11, 1)
    assert snap["dead_letter_reasons"] == {"wrong-shape": 1}
    assert (snap["batches"], snap["last_batch_size"], snap["max_batch_size"]) == (2, 4, 8)
    assert snap["lag"] == {"0": 6, "1": 0, "2": None}
    assert snap["total_lag"] == 6
    assert snap["images_per_busy_s"] == pytest.approx(12 / 0.75, rel=0.01)
    assert np.isclose(snap["mean_batch_size"], 6.0)
    assert snap["stalled"] is False and snap["oldest_unacked_age_s"] is not None


def test_stall_is_judged_from_held_input_and_waiting_records() -> None:
    st = StageStats("decode", "images.raw")
    t0 = st.started_at
    assert not st.stalled(t0 + 1000, 60)  # nothing held, nothing waiting
    # A batch in hand for longer than the bound: stalled, whatever the lag.
    st.inflight_since = t0
    assert st.stalled(t0 + 61, 60) and not st.stalled(t0 + 59, 60)
    assert st.oldest_unacked_age_s(t0 + 61) == pytest.approx(61)
    st.sends_started()
    assert st.inflight_since is None and st.sending_since == t0
    st.batch_done(1, 1, 0, 0.1, [], {0: 1})
    assert st.sending_since is None and st.oldest_unacked_age_s(t0 + 61) is None
    # Records wait on partition 0 behind a commit that does not move: stalled past the
    # bound, even while partition 1 keeps committing (one stuck partition among others).
    t = t0 + 100
    st.lag_measured({0: (5, 8), 1: (0, 10)}, at=t)
    for i in range(1, 14):
        st.lag_measured({0: (5, 8), 1: (i, 10 + i)}, at=t + 5 * i)
        st.batch_done(1, 1, 0, 0.1, [], {1: i})
    assert st.stuck_partitions(t + 65, 60) == [0]
    assert st.stalled(t + 65, 60) and not st.stalled(t + 55, 60)
    assert st.oldest_unacked_age_s(t + 65) == pytest.approx(65)
    # The commit moves (or the records are all committed): not stalled any more.
    st.lag_measured({0: (6, 8), 1: (13, 23)}, at=t + 70)
    assert not st.stalled(t + 100, 60)
    st.lag_measured({0: (8, 8), 1: (23, 23)}, at=t + 200)
    assert not st.stalled(t + 1000, 60) and st.oldest_unacked_age_s(t + 1000) is None
    # A partition that is no longer ours stops counting.
    st.lag_measured({0: (8, 9)}, at=t + 300)
    st.lag_measured({}, at=t + 400)
    assert not st.stalled(t + 1000, 60)


def test_an_unanswered_probe_or_a_batch_in_sending_is_never_a_stall() -> None:
    st = StageStats("infer", "images.decoded")
    t = st.started_at
    st.lag_measured({0: (5, 8)}, at=t)
    st.lag_measured({0: None}, at=t + 30)  # the broker did not answer
    st.lag_measured({0: (5, 8)}, at=t + 65)
    assert not st.stalled(t + 66, 60)  # observed anew at t + 65
    st.batch_taken()
    st.sends_started()  # bounded by send_timeout_s from here
    sent_at = st.sending_since
    assert sent_at is not None and not st.stalled(sent_at + 100, 60)


def test_a_batch_in_processing_while_the_previous_one_sends_is_judged_alone() -> None:
    st = StageStats("decode", "images.raw")
    st.batch_taken()
    st.sends_started()  # batch 1 awaits its acks...
    first = st.sending_since
    st.batch_taken()  # ...while batch 2 is processed
    second = st.inflight_since
    assert first is not None and second is not None and second >= first
    assert st.stalled(second + 61, 60)  # processing is bounded by the watchdog
    assert st.oldest_unacked_age_s(first + 5) == pytest.approx(5)
    st.sends_started()  # batch 2 done processing, queued behind batch 1's acks
    assert not st.stalled(second + 1000, 60) and st.sending_since == first
    st.batch_done(1, 1, 0, 0.1, [], {0: 1})  # batch 1 acked
    assert st.sending_since == second and st.inflight_since is None
    st.batch_done(1, 1, 0, 0.1, [], {0: 2})
    assert st.sending_since is None and st.oldest_unacked_age_s(second + 1) is None
