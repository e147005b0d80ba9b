"""Postprocess stage: logits -> softmax -> top-k (class index, label, score).

numpy only (no torch): softmax in float64 for stable scores, reported as float.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from stream_app.errors import PostprocessError


class ScoredClass(NamedTuple):
    class_index: int
    label: str
    score: float


def softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(logits: np.ndarray, labels: Sequence[str], k: int) -> list[ScoredClass]:
    """The k most probable classes of one image's logits, best first."""
    arr = np.asarray(logits)
    if arr.ndim != 1 or arr.shape[0] != len(labels):
        raise PostprocessError(
            "wrong-shape", f"expected {len(labels)} logits, got shape {tuple(arr.shape)}"
        )
    if not np.isfinite(arr).all():
        raise PostprocessError("non-finite", "logits contain NaN or infinity")
    if k < 1:
        raise ValueError("k must be >= 1")
    probs = softmax(arr)
    k = min(k, probs.shape[0])
    part = np.argpartition(-probs, k - 1)[:k]
    # Highest score first; ties broken by the lower class index (deterministic).
    order = part[np.lexsort((part, -probs[part]))]
    return [ScoredClass(int(i), labels[int(i)], float(probs[i])) for i in order]
