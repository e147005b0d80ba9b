"""Infer stage: shape validation, per-record outcomes, and batch bisection."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch

from stream_app.decode import decode_image
from stream_app.errors import InferError
from stream_app.infer import Inferencer
from stream_app.model import LoadedModel, configure_torch, load_model
from stream_app.settings import DecodeSettings, ModelSettings

PHOTOS = Path(os.path.dirname(skimage.data.__file__))
POISON = 7  # pixel value that makes the wrapped model raise


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model(ModelSettings())


@pytest.fixture(scope="module")
def photos(loaded: LoadedModel) -> list[np.ndarray]:
    names = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "camera.png"]
    return [
        decode_image((PHOTOS / n).read_bytes(), loaded.preprocess, DecodeSettings()).pixels
        for n in names
    ]


class PoisonSensitive(torch.nn.Module):
    """The real network, except that it raises when any image in the batch is poisoned
    (first pixel == POISON, recognisable after normalisation), like a model that
    crashes on some inputs. Counts its forward calls."""

    def __init__(self, inner: torch.nn.Module, poisoned_value: float) -> None:
        super().__init__()
        self.inner = inner
        self.poisoned_value = poisoned_value
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        if torch.isclose(x[:, 0, 0, 0], torch.tensor(self.poisoned_value)).any():
            raise RuntimeError("kernel exploded on this input")
        return self.inner(x)


def poisoned(a: np.ndarray) -> np.ndarray:
    b = a.copy()
    b[0, 0, 0] = POISON
    return b


def test_batch_outcomes_match_single_image_calls(
    loaded: LoadedModel, photos: list[np.ndarray]
) -> None:
    inf = Inferencer(loaded)
    batch = inf.run(photos)
    assert [o.ok for o in batch] == [True] * len(photos)
    assert inf.forward_calls == 1
    for a, o in zip(photos, batch, strict=True):
        (single,) = inf.run([a])
        assert o.logits is not None and single.logits is not None
        assert o.logits.dtype == np.float32 and o.logits.shape == (1000,)
        np.testing.assert_allclose(o.logits, single.logits, atol=1e-3)


def test_forward_batches_are_capped(loaded: LoadedModel, photos: list[np.ndarray]) -> None:
    sizes: list[int] = []

    class Sizes(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            sizes.append(x.shape[0])
            return loaded.module(x)

    records = [photos[i % len(photos)] for i in range(10)]
    records[5] = np.zeros((3, 10, 10), np.uint8)  # invalid: never reaches the model
    capped = Inferencer(LoadedModel(Sizes(), loaded.info, loaded.labels), max_forward_batch=4)
    out = capped.run(records)
    assert sizes == [4, 4, 1]
    assert [o.ok for o in out] == [True] * 5 + [False] + [True] * 4
    whole = Inferencer(loaded).run(records)
    for a, b in zip(out, whole, strict=True):
        if a.ok:
            np.testing.assert_allclose(a.logits, b.logits, atol=1e-3)


@pytest.mark.parametrize(
    "bad,detail",
    [
        (np.zeros((3, 200, 200), np.uint8), "shape"),
        (np.zeros((224, 224, 3), np.uint8), "shape"),  # HWC instead of CHW
        (np.zeros((3, 224, 224), np.float32), "uint8"),
        (b"\0" * (3 * 224 * 224), "numpy"),
    ],
)
def test_wrong_shape_fails_alone(
    loaded: LoadedModel, photos: list[np.ndarray], bad: object, detail: str
) -> None:
    inf = Inferencer(loaded)
    out = inf.run([photos[0], bad, photos[1]])
    assert [o.ok for o in out] == [True, False, True]
    assert isinstance(out[1].error, InferError)
    assert out[1].error.reason == "wrong-shape" and detail in out[1].error.message
    assert out[1].error.stage == "infer"
    assert inf.forward_calls == 1  # the bad record never reached the model


def test_bisection_isolates_bad_records(loaded: LoadedModel, photos: list[np.ndarray]) -> None:
    spec = loaded.preprocess
    poisoned_norm = (POISON / 255.0 - spec.mean[0]) / spec.std[0]
    wrapper = PoisonSensitive(loaded.module, poisoned_norm)
    inf = Inferencer(LoadedModel(wrapper, loaded.info, loaded.labels))
    clean = Inferencer(loaded)

    # 16 records, two of them poisoned at positions 3 and 12.
    records = [photos[i % len(photos)] for i in range(16)]
    records[3] = poisoned(records[3])
    records[12] = poisoned(records[12])
    out = inf.run(records)

    assert [i for i, o in enumerate(out) if not o.ok] == [3, 12]
    for i in (3, 12):
        err = out[i].error
        assert err is not None and err.reason == "model-error" and not err.retriable
        assert isinstance(err.__cause__, RuntimeError)
        assert "kernel exploded" in err.message
    expected = clean.run([r for i, r in enumerate(records) if i not in (3, 12)])
    got = [o for i, o in enumerate(out) if i not in (3, 12)]
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_allclose(g.logits, e.logits, atol=1e-3)
    # Bisection, not one-by-one: 16 -> 8+8 -> 4+4 | 4+4 -> 2+2 | 2+2 -> 1+1 | 1+1.
    assert len(wrapper.calls) < 16
    assert wrapper.calls[0] == 16 and sorted(wrapper.calls).count(1) == 4


def test_non_finite_logits_fail_only_their_record(
    loaded: LoadedModel, photos: list[np.ndarray]
) -> None:
    class NanForSecond(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = loaded.module(x).clone()
            out[1, 5] = float("nan")
            return out

    inf = Inferencer(LoadedModel(NanForSecond(), loaded.info, loaded.labels))
    out = inf.run(photos[:3])
    assert [o.ok for o in out] == [True, False, True]
    assert out[1].error is not None and out[1].error.reason == "non-finite"


def test_out_of_memory_is_retriable(loaded: LoadedModel, photos: list[np.ndarray]) -> None:
    class Oom(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise MemoryError("cannot allocate")

    (out,) = Inferencer(LoadedModel(Oom(), loaded.info, loaded.labels)).run(photos[:1])
    assert out.error is not None and out.error.reason == "out-of-memory" and out.error.retriable


def test_inference_runs_without_autograd(loaded: LoadedModel, photos: list[np.ndarray]) -> None:
    seen: list[bool] = []

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.is_inference_mode_enabled())
            return loaded.module(x)

    Inferencer(LoadedModel(Probe(), loaded.info, loaded.labels)).run(photos[:2])
    assert seen == [True]


def test_configure_torch_sets_threads() -> None:
    before = torch.get_num_threads()
    try:
        configure_torch(1)
        assert torch.get_num_threads() == 1
        configure_torch(2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
