"""Model settings and loading: packaged Lite0 vs a user's TorchScript model."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from pydantic import ValidationError

from stream_app.decode import decode_image
from stream_app.errors import ModelLoadError
from stream_app.infer import Inferencer
from stream_app.model import LoadedModel, load_model
from stream_app.postprocess import top_k
from stream_app.settings import DecodeSettings, ModelSettings, StreamSettings

PHOTOS = Path(os.path.dirname(skimage.data.__file__))


@pytest.fixture(scope="module")
def lite0() -> LoadedModel:
    # Eager: the reference the frozen runtimes are compared with, and a module that can
    # be traced and saved (an optimised frozen graph holds ops that do not serialise).
    return load_model(ModelSettings(runtime="eager", channels_last=False))


@pytest.fixture(scope="module")
def scripted(lite0: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Lite0 traced to TorchScript, with its labels upper-cased: a 'user model'."""
    d = tmp_path_factory.mktemp("usermodel")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
        traced = torch.jit.trace(lite0.module, torch.zeros(1, 3, 224, 224))
        torch.jit.save(traced, str(d / "mine.pt"))
    (d / "labels.txt").write_text("\n".join(label.upper() for label in lite0.labels) + "\n")
    return d / "mine.pt", d / "labels.txt"


def test_torchscript_model_with_own_labels_and_normalisation(
    lite0: LoadedModel, scripted: tuple[Path, Path]
) -> None:
    path, labels = scripted
    settings = ModelSettings(
        kind="torchscript",
        torchscript_path=path,
        labels_path=labels,
        input_size=224,
        resize_size=256,
        mean=(127 / 255,) * 3,
        std=(128 / 255,) * 3,
        version="7",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        user = load_model(settings)
    assert (user.info.name, user.info.version, user.info.num_classes) == ("mine", "7", 1000)
    data = (PHOTOS / "coffee.png").read_bytes()
    arr = decode_image(data, user.preprocess, DecodeSettings()).pixels
    (out,) = Inferencer(user).run([arr])
    (ref,) = Inferencer(lite0).run([arr])
    assert out.logits is not None and ref.logits is not None
    np.testing.assert_allclose(out.logits, ref.logits, atol=1e-4)
    assert top_k(out.logits, user.labels, 1)[0].label == "ESPRESSO"


def test_torchscript_defaults_to_imagenet_normalisation_and_file_digest(
    scripted: tuple[Path, Path],
) -> None:
    path, labels = scripted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        user = load_model(
            ModelSettings(kind="torchscript", torchscript_path=path, labels_path=labels)
        )
    assert user.preprocess.mean == (0.485, 0.456, 0.406)
    assert user.preprocess.resize_size == 256
    assert len(user.info.version) == 12 and int(user.info.version, 16) >= 0


def test_label_count_must_match_model_output(scripted: tuple[Path, Path], tmp_path: Path) -> None:
    path, _ = scripted
    few = tmp_path / "few.txt"
    few.write_text("a\nb\nc\n")
    with (
        warnings.catch_warnings(),
        pytest.raises(ModelLoadError, match=r"expected \(1, 3\)"),
    ):
        warnings.simplefilter("ignore", FutureWarning)
        load_model(ModelSettings(kind="torchscript", torchscript_path=path, labels_path=few))


def test_missing_or_garbage_torchscript_file(tmp_path: Path) -> None:
    labels = tmp_path / "l.txt"
    labels.write_text("x\n")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(
            ModelSettings(
                kind="torchscript", torchscript_path=tmp_path / "no.pt", labels_path=labels
            )
        )
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with warnings.catch_warnings(), pytest.raises(ModelLoadError, match="cannot load"):
        warnings.simplefilter("ignore", FutureWarning)
        load_model(ModelSettings(kind="torchscript", torchscript_path=junk, labels_path=labels))


def test_settings_validation() -> None:
    with pytest.raises(ValidationError, match="torchscript_path"):
        ModelSettings(kind="torchscript")
    with pytest.raises(ValidationError, match="fixed preprocessing"):
        ModelSettings(mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValidationError, match="resize_size"):
        ModelSettings(
            kind="torchscript",
            torchscript_path="m.pt",
            labels_path="l.txt",
            input_size=300,
            resize_size=256,
        )


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_STREAM__MODEL__KIND", "torchscript")
    monkeypatch.setenv("PIPELINE_STREAM__MODEL__TORCHSCRIPT_PATH", "/models/m.pt")
    monkeypatch.setenv("PIPELINE_STREAM__MODEL__LABELS_PATH", "/models/labels.txt")
    monkeypatch.setenv("PIPELINE_STREAM__INFER__TORCH_THREADS", "2")
    monkeypatch.setenv("PIPELINE_STREAM__POSTPROCESS__TOP_K", "3")
    s = StreamSettings()
    assert s.stream.model.kind == "torchscript"
    assert s.stream.model.torchscript_path == Path("/models/m.pt")
    assert s.stream.infer.torch_threads == 2 and s.stream.postprocess.top_k == 3


def test_torch_free_modules_do_not_import_torch() -> None:
    code = (
        "import sys, stream_app, stream_app.decode, stream_app.postprocess, stream_app.settings;"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == "False"
