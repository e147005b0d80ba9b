"""Postprocess: softmax + top-k with labels (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from stream_app.errors import PostprocessError
from stream_app.labels import load_labels
from stream_app.postprocess import softmax, top_k

LABELS = [f"class-{i}" for i in range(10)]


def test_softmax_is_stable_and_normalised() -> None:
    p = softmax(np.array([1000.0, 1000.0, -1000.0], np.float32))
    np.testing.assert_allclose(p, [0.5, 0.5, 0.0], atol=1e-12)
    rows = softmax(np.random.default_rng(0).normal(size=(4, 7)))
    np.testing.assert_allclose(rows.sum(axis=1), 1.0)


def test_top_k_orders_by_score_with_labels() -> None:
    logits = np.array([0, 5, 1, 9, 3, 2, 8, 0, 0, 0], np.float32)
    got = top_k(logits, LABELS, 3)
    assert [c.class_index for c in got] == [3, 6, 1]
    assert [c.label for c in got] == ["class-3", "class-6", "class-1"]
    x = logits.astype(np.float64)
    expected = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    for c in got:
        assert c.score == pytest.approx(float(expected[c.class_index]), rel=1e-9)
    assert isinstance(got[0].score, float) and isinstance(got[0].class_index, int)


def test_top_k_ties_break_by_lower_index_and_k_is_capped() -> None:
    got = top_k(np.zeros(10, np.float32), LABELS, 20)
    assert [c.class_index for c in got] == list(range(10))
    assert sum(c.score for c in got) == pytest.approx(1.0)


def test_bad_logits_raise_postprocess_errors() -> None:
    with pytest.raises(PostprocessError) as info:
        top_k(np.zeros(9, np.float32), LABELS, 3)
    assert info.value.reason == "wrong-shape" and info.value.stage == "postprocess"
    with pytest.raises(PostprocessError) as info:
        top_k(np.zeros((2, 10), np.float32), LABELS, 3)
    assert info.value.reason == "wrong-shape"
    bad = np.zeros(10, np.float32)
    bad[4] = np.nan
    with pytest.raises(PostprocessError) as info:
        top_k(bad, LABELS, 3)
    assert info.value.reason == "non-finite"


def test_shipped_imagenet_labels() -> None:
    labels = load_labels()
    assert len(labels) == 1000
    assert labels[0] == "tench" and labels[283] == "Persian cat" and labels[968] == "cup"
    assert all(label == label.strip() and label for label in labels)


def test_label_file_validation(tmp_path) -> None:
    p = tmp_path / "labels.txt"
    p.write_text("a\nb\n\n")
    assert load_labels(p) == ["a", "b"]
    p.write_text("a\n\nb\n")
    with pytest.raises(ValueError, match="blank"):
        load_labels(p)
    p.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_labels(p)
