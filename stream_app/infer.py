"""Infer stage: uint8 C x H x W arrays -> float32 logits, one outcome per record.

Inputs are validated one by one (a wrong-shaped record fails alone). The valid ones run
as one batch under torch.inference_mode; if the model raises on the batch, the batch is
split in halves recursively until the failing records are isolated, so one poison
record costs O(log n) extra forward passes and never the rest of the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from stream_app.errors import InferError
from stream_app.metrics import forward_timer
from stream_app.model import LoadedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferOutcome:
    logits: np.ndarray | None  # float32 [num_classes] when ok
    error: InferError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Inferencer:
    """Runs a loaded model over batches. Not thread-safe: use one per executor thread."""

    def __init__(self, model: LoadedModel, max_forward_batch: int | None = None) -> None:
        """`max_forward_batch`: largest batch given to one forward pass (None: all).
        On small CPUs big batches are slower per image (activations spill out of
        cache), so a micro-batch of 16 may run as 4 passes of 4."""
        if max_forward_batch is not None and max_forward_batch < 1:
            raise ValueError("max_forward_batch must be >= 1")
        self.max_forward_batch = max_forward_batch
        self.model = model
        spec = model.preprocess
        self.input_shape = spec.input_shape
        # (x / 255 - mean) / std  ==  x * scale + bias
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._scale = 1.0 / (255.0 * std)
        self._bias = -mean / std
        self._format = torch.channels_last if model.channels_last else torch.contiguous_format
        self.forward_calls = 0

    def to_tensor(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """Validated uint8 arrays -> one normalised float32 N x C x H x W batch, in the
        model's memory order: one uint8 stack (the arrays may be read-only views of the
        records' bytes), one float batch normalised in place."""
        batch = torch.empty(
            (len(arrays), *self.input_shape), dtype=torch.float32, memory_format=self._format
        )
        batch.copy_(torch.from_numpy(np.stack(arrays)))
        return batch.mul_(self._scale).add_(self._bias)

    def validate(self, array: object) -> None:
        if not isinstance(array, np.ndarray):
            raise InferError("wrong-shape", f"expected a numpy array, got {type(array).__name__}")
        if array.dtype != np.uint8:
            raise InferError("wrong-shape", f"expected uint8 pixels, got {array.dtype}")
        if array.shape != self.input_shape:
            raise InferError(
                "wrong-shape", f"expected shape {self.input_shape}, got {tuple(array.shape)}"
            )

    def forward(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Logits float32 [N, classes] for valid arrays; raises whatever the model raises."""
        self.forward_calls += 1
        with torch.inference_mode(), forward_timer(len(arrays)):
            out = self.model.module(self.to_tensor(arrays))
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != len(arrays):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InferError("model-error", f"model returned {shape} for a batch of {len(arrays)}")
        return out.to(torch.float32).numpy()

    def run(self, arrays: Sequence[object]) -> list[InferOutcome]:
        """One outcome per input, in order."""
        outcomes: list[InferOutcome | None] = [None] * len(arrays)
        valid: list[int] = []
        for i, a in enumerate(arrays):
            try:
                self.validate(a)
                valid.append(i)
            except InferError as err:
                outcomes[i] = InferOutcome(None, err)
        step = self.max_forward_batch or max(1, len(valid))
        for start in range(0, len(valid), step):
            self._run_split(arrays, valid[start : start + step], outcomes)
        return [o for o in outcomes if o is not None]

    def _run_split(
        self, arrays: Sequence[object], idx: list[int], outcomes: list[InferOutcome | None]
    ) -> None:
        batch = [arrays[i] for i in idx]
        try:
            logits = self.forward(batch)  # type: ignore[arg-type]
        except Exception as exc:
            if len(idx) == 1:
                outcomes[idx[0]] = InferOutcome(None, _model_error(exc))
                return
            log.warning(
                "model failed on a batch of %d (%s: %s); splitting to isolate the bad records",
                len(idx),
                type(exc).__name__,
                exc,
            )
            mid = len(idx) // 2
            self._run_split(arrays, idx[:mid], outcomes)
            self._run_split(arrays, idx[mid:], outcomes)
            return
        finite = np.isfinite(logits).all(axis=1)
        for row, i in enumerate(idx):
            if finite[row]:
                outcomes[i] = InferOutcome(np.ascontiguousarray(logits[row]))
            else:
                outcomes[i] = InferOutcome(
                    None, InferError("non-finite", "model produced NaN or infinite logits")
                )


def _model_error(exc: Exception) -> InferError:
    if isinstance(exc, InferError):
        return exc
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return InferError(
            "out-of-memory", f"{type(exc).__name__}: {exc}", retriable=True, cause=exc
        )
    return InferError("model-error", f"{type(exc).__name__}: {exc}", cause=exc)
