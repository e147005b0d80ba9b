"""Class-name files: one label per line, line number = class index."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

IMAGENET_RESOURCE = "imagenet_classes.txt"


def load_labels(path: str | Path | None = None) -> list[str]:
    """Labels from `path`, or the ImageNet-1k names shipped in stream_app/data."""
    if path is None:
        text = resources.files("stream_app").joinpath("data", IMAGENET_RESOURCE).read_text("utf-8")
        where = f"stream_app/data/{IMAGENET_RESOURCE}"
    else:
        text = Path(path).read_text("utf-8")
        where = str(path)
    labels = text.splitlines()
    # Tolerate one trailing blank line from editors, nothing else.
    while labels and not labels[-1].strip():
        labels.pop()
    if not labels:
        raise ValueError(f"label file {where} is empty")
    blank = [i for i, label in enumerate(labels) if not label.strip()]
    if blank:
        raise ValueError(
            f"label file {where} has blank labels at lines {[i + 1 for i in blank[:5]]}"
        )
    return [label.strip() for label in labels]
