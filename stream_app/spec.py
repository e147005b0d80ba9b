"""Torch-free description of a loaded model: what it is and what input it expects.

Decode and postprocess need these facts but must not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass


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
