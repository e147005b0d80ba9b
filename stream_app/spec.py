"""Torch-free description of a loaded model: what it is and what input it expects.

Decode and postprocess need these facts but must not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stream_app.settings import ModelSettings


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes a model input.

    Resize the shorter side to `resize_size` (bicubic), center-crop `input_size` square,
    then (in infer) scale to [0, 1] and normalise per channel: (x - mean) / std.
    """

    input_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.input_size < 1 or self.resize_size < self.input_size:
            raise ValueError(
                f"need 1 <= input_size <= resize_size, got {self.input_size}, {self.resize_size}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ValueError(f"mean/std must be 3 values, std > 0: {self.mean}, {self.std}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.input_size, self.input_size)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    num_classes: int
    preprocess: PreprocessSpec


# EfficientNet-Lite was trained in TensorFlow with inputs (x - 127) / 128 on a 0..255
# scale (efficientnet_lite_builder MEAN_RGB/STDDEV_RGB), not ImageNet mean/std, and the
# converted PyTorch weights keep that convention. Eval crop of the reference code:
# centre 224 of the image resized so that 224 / (224 + 32) of it remains: shorter side
# 256. On a [0, 1] scale:
LITE0_PREPROCESS = PreprocessSpec(
    input_size=224, resize_size=256, mean=(127.0 / 255.0,) * 3, std=(128.0 / 255.0,) * 3
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess_for(model: ModelSettings) -> PreprocessSpec:
    """The input a configured model expects, known without loading it (or torch)."""
    if model.kind == "efficientnet-lite0":
        return LITE0_PREPROCESS
    size = model.input_size or 224
    return PreprocessSpec(
        input_size=size,
        resize_size=model.resize_size or max(size, int(round(size / 0.875))),
        mean=model.mean or IMAGENET_MEAN,
        std=model.std or IMAGENET_STD,
    )
