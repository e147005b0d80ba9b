"""Stages fused in one agent (worker.fuse_decode_infer, worker.fuse_postprocess): the
same outputs as the stages chained through their topics, minus those topics."""

from __future__ import annotations

import os
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from schemas import codec
from schemas.dead_letter import read_dead_letter
from schemas.raw import raw_headers
from schemas.topics import STAGE_BY_NAME
from stream_app.errors import InferError
from stream_app.fused import FusedStages
from stream_app.infer import Inferencer, InferOutcome
from stream_app.model import LoadedModel, load_model
from stream_app.records import InRecord, OutRecord
from stream_app.settings import DecodeSettings, ModelSettings
from stream_app.stages import DecodeStage, InferStage, PostprocessStage

PHOTOS = Path(os.path.dirname(skimage.data.__file__))
PREFIX = "t."


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model(ModelSettings())


class Poisoned(Inferencer):
    """Fails every all-black image, as a model error would."""

    def run(self, arrays: Sequence[object]) -> list[InferOutcome]:
        outs = super().run(arrays)
        return [
            InferOutcome(None, InferError("model-error", "black image"))
            if isinstance(a, np.ndarray) and not a.any()
            else o
            for a, o in zip(arrays, outs, strict=True)
        ]


def raw(offset: int, key: bytes | None, value: bytes | None) -> InRecord:
    hdrs = raw_headers("image/png", "unit-test", 1_700_000_000_000)
    return InRecord(PREFIX + "images.raw", 1, offset, key, value, hdrs, 1_700_000_000_123)


def chained(
    stages: Sequence[DecodeStage | InferStage | PostprocessStage], batch: list[InRecord]
) -> list[OutRecord]:
    """The unfused path: each stage's outputs through its topic into the next stage."""
    outs = stages[0].process(batch)
    for stage in stages[1:]:
        handed = [
            InRecord(o.topic, 0, i, o.key, o.value, o.headers)
            for i, o in enumerate(outs)
            if not o.dead
        ]
        later = iter(stage.process(handed))
        outs = [o if o.dead else next(later) for o in outs]
    return outs


def three_stages(
    loaded: LoadedModel, inferencer: Inferencer
) -> tuple[DecodeStage, InferStage, PostprocessStage]:
    return (
        DecodeStage(STAGE_BY_NAME["decode"], loaded.preprocess, DecodeSettings(), PREFIX),
        InferStage(STAGE_BY_NAME["infer"], inferencer, loaded.info, PREFIX),
        PostprocessStage(STAGE_BY_NAME["postprocess"], loaded.labels, 5, PREFIX),
    )


def hostile_batch() -> list[InRecord]:
    buf = BytesIO()
    Image.new("RGB", (300, 300)).save(buf, "PNG")
    return [
        raw(0, b"cat", (PHOTOS / "chelsea.png").read_bytes()),
        raw(1, b"empty", b""),
        raw(2, b"coffee", (PHOTOS / "coffee.png").read_bytes()),
        raw(3, b"black", buf.getvalue()),  # decodes, then the model 'fails' on it
        raw(4, b"text", b"just some text"),
    ]


def test_fused_gives_the_chained_stages_outputs(loaded: LoadedModel) -> None:
    decode, infer, _ = three_stages(loaded, Poisoned(loaded, 4))
    fused = FusedStages([decode, infer])
    assert fused.topics == ("t.images.decode.dlq", "t.images.infer.dlq", "t.images.inferred")
    batch = hostile_batch()
    outs = fused.process(batch)
    assert [o.topic for o in outs] == [
        "t.images.inferred", "t.images.decode.dlq", "t.images.inferred",
        "t.images.infer.dlq", "t.images.decode.dlq",
    ]  # fmt: skip
    assert [o.reason for o in outs if o.dead] == ["empty", "model-error", "not-an-image"]
    ref = chained([decode, infer], batch)
    assert [o.topic for o in ref] == [o.topic for o in outs]
    for a, b in zip(outs, ref, strict=True):
        if a.dead:
            continue
        da = codec.decode(codec.INFERENCE, a.value, a.headers)
        db = codec.decode(codec.INFERENCE, b.value, b.headers)
        assert (da["image_id"], da["raw_offset"]) == (db["image_id"], db["raw_offset"])
        np.testing.assert_allclose(da["logits"], db["logits"], atol=1e-5)
    # The infer dead letter names the raw record as its origin and keeps the payload.
    dl = read_dead_letter(outs[3].value, outs[3].headers)
    assert (dl["stage"], dl["reason"], dl["origin_topic"], dl["origin_offset"]) == (
        "infer", "model-error", "t.images.raw", 3,
    )  # fmt: skip
    assert dl["image_id"] and len(dl["payload"]) > 150_000  # the decoded record


class BadLogits(Poisoned):
    """Gives NaN logits for the coffee photo, so postprocess refuses it as non-finite."""

    def run(self, arrays: Sequence[object]) -> list[InferOutcome]:
        outs = super().run(arrays)
        for n, o in enumerate(outs):
            if o.logits is not None and int(np.argmax(o.logits)) == COFFEE_TOP1:
                outs[n] = InferOutcome(np.full_like(o.logits, np.nan), None)
        return outs


COFFEE_TOP1 = 967  # espresso, the coffee photo's top-1


def test_three_fused_stages_give_the_chained_stages_outputs(loaded: LoadedModel) -> None:
    decode, infer, post = three_stages(loaded, BadLogits(loaded, 4))
    fused = FusedStages([decode, infer, post])
    assert fused.name == "decode"
    assert fused.topics == (
        "t.images.decode.dlq", "t.images.infer.dlq", "t.images.postprocess.dlq",
        "t.images.predictions",
    )  # fmt: skip
    batch = hostile_batch()
    outs = fused.process(batch)
    assert [o.topic for o in outs] == [
        "t.images.predictions", "t.images.decode.dlq", "t.images.postprocess.dlq",
        "t.images.infer.dlq", "t.images.decode.dlq",
    ]  # fmt: skip
    assert [o.reason for o in outs if o.dead] == [
        "empty",
        "non-finite",
        "model-error",
        "not-an-image",
    ]
    ref = chained([decode, infer, post], batch)
    assert [(o.topic, o.reason) for o in ref] == [(o.topic, o.reason) for o in outs]
    got = codec.decode(codec.PREDICTION, outs[0].value, outs[0].headers)
    want = codec.decode(codec.PREDICTION, ref[0].value, ref[0].headers)
    assert got["image_id"] == want["image_id"] and got["raw_offset"] == 0
    assert [c["class_index"] for c in got["top_k"]] == [c["class_index"] for c in want["top_k"]]
    assert got["top_k"][0]["label"] and len(got["top_k"]) == 5
    # postprocess's dead letter names the raw record and keeps the inference as payload.
    dl = read_dead_letter(outs[2].value, outs[2].headers)
    assert (dl["stage"], dl["reason"], dl["origin_topic"], dl["origin_offset"]) == (
        "postprocess", "non-finite", "t.images.raw", 2,
    )  # fmt: skip
    assert dl["image_id"] and len(dl["payload"]) > 4000  # the Inference record, 1000 logits


def test_fusing_needs_two_stages(loaded: LoadedModel) -> None:
    decode, _, _ = three_stages(loaded, Poisoned(loaded, 4))
    with pytest.raises(ValueError, match="two stages"):
        FusedStages([decode])


def test_a_refused_output_is_the_dead_letter_of_the_stage_that_wrote_it(
    loaded: LoadedModel,
) -> None:
    """The broker refusing a prediction makes it postprocess's bare dead letter, as it
    would be unfused; a refused infer dead letter stays infer's."""
    fused = FusedStages(three_stages(loaded, Poisoned(loaded, 4)))
    rec = raw(7, b"cat", (PHOTOS / "chelsea.png").read_bytes())
    too_big = RuntimeError("MESSAGE_TOO_LARGE")
    for topic, stage in [
        ("t.images.predictions", "postprocess"),
        ("t.images.postprocess.dlq", "postprocess"),
        ("t.images.infer.dlq", "infer"),
        ("t.images.decode.dlq", "decode"),
    ]:
        out = fused.refused(rec, too_big, topic)
        dl = read_dead_letter(out.value, out.headers)
        assert (out.topic, dl["stage"], dl["reason"]) == (
            f"t.images.{stage}.dlq", stage, "output-too-large",
        ), topic  # fmt: skip
        assert (dl["origin_topic"], dl["origin_offset"], dl["payload"]) == ("t.images.raw", 7, b"")
