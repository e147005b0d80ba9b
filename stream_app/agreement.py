"""Same answers, measured: the configured model step against today's fp32 eager path.

  python -m stream_app.agreement [--min-images 500] [--json]

`sample_images` builds a fixed set of >= 500 encoded images offline from the photos
scikit-image ships (the only real photos the installed packages hold), as variants a
producer could plausibly send: crops, flips, rotations, rescales up to 3 x (so JPEG
draft mode has something to skip) and re-encodings (JPEG quality 95/75/50, PNG).
The set is deterministic: same list, same bytes, on every run.

`check_agreement` decodes and classifies every image twice, with today's path
(`TODAY`: full-size decode, eager fp32 module, contiguous memory, forward batches of 4)
and with the given settings, and reports how often the top-1 class is the same, listing
every image where it is not. The bar of issue 16 is `AGREEMENT_BAR` (99.5 %). Images
either path refuses count as differing unless both refuse them for the same reason.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from stream_app.decode import decode_image
from stream_app.errors import DecodeError
from stream_app.infer import Inferencer
from stream_app.model import LoadedModel, load_model
from stream_app.postprocess import top_k
from stream_app.settings import DecodeSettings, InferSettings, ModelSettings, StreamSection

AGREEMENT_BAR = 0.995

# Today's path (before issue 16), as settings.
TODAY = StreamSection(
    model=ModelSettings(runtime="eager", channels_last=False, fold_padding=False),
    decode=DecodeSettings(jpeg_draft=False),
    infer=InferSettings(max_forward_batch=4),
)

# Natural photos and photo-like scans shipped in skimage/data; the synthetic test
# patterns (chessboard, phantom, text) are left out: no ImageNet class fits them, so
# their top-1 is a coin toss between near-equal scores and measures nothing.
PHOTOS = (
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "camera.png",
    "coins.png",
    "moon.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "ihc.png",
    "cell.png",
)

# (name, transform) pairs; each is applied to every photo, then re-scaled and encoded.
_GEOMETRY = ("full", "hflip", "rot90", "rot270", "tilt+8", "tilt-8", "crop-a", "crop-b", "crop-c")
_ENCODINGS = (
    ("jpeg95", "JPEG", 95),
    ("jpeg75", "JPEG", 75),
    ("jpeg50", "JPEG", 50),
    ("png", "PNG", 0),
)
_SCALES = (1.0, 2.0, 0.75, 3.0)


def skimage_data_dir() -> Path:
    import skimage.data

    return Path(os.path.dirname(skimage.data.__file__))


def sample_images(min_count: int = 500) -> list[tuple[str, bytes]]:
    """At least `min_count` (name, encoded image) pairs, deterministic."""
    out: list[tuple[str, bytes]] = []
    rounds = 0
    while len(out) < min_count:
        out.extend(_variants(rounds))
        rounds += 1
    return out


def _variants(round_: int) -> Iterator[tuple[str, bytes]]:
    root = skimage_data_dir()
    rng = np.random.default_rng(1600 + round_)
    for photo in PHOTOS:
        with Image.open(root / photo) as src:
            base = src.convert("RGB") if src.mode not in ("RGB", "L") else src.copy()
        for g_i, geometry in enumerate(_GEOMETRY):
            im = _geometry(base, geometry, rng)
            scale = _SCALES[(g_i + round_) % len(_SCALES)]
            if scale != 1.0:
                size = (max(16, round(im.width * scale)), max(16, round(im.height * scale)))
                im = im.resize(size, Image.Resampling.LANCZOS)
            for tag, fmt, quality in _ENCODINGS:
                buf = io.BytesIO()
                if fmt == "JPEG":
                    im.save(buf, fmt, quality=quality)
                else:
                    im.save(buf, fmt, compress_level=1)
                name = f"r{round_}/{photo}/{geometry}/x{scale:g}/{tag}"
                yield name, buf.getvalue()


def _geometry(im: Image.Image, how: str, rng: np.random.Generator) -> Image.Image:
    if how == "full":
        return im
    if how == "hflip":
        return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if how == "rot90":
        return im.transpose(Image.Transpose.ROTATE_90)
    if how == "rot270":
        return im.transpose(Image.Transpose.ROTATE_270)
    if how.startswith("tilt"):
        return im.rotate(float(how[4:]), Image.Resampling.BICUBIC, fillcolor=0)
    # A random crop keeping 50-90 % of each side.
    w, h = im.size
    cw, ch = (int(w * rng.uniform(0.5, 0.9)), int(h * rng.uniform(0.5, 0.9)))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return im.crop((x, y, x + cw, y + ch))


@dataclass(frozen=True)
class Answer:
    label: str  # top-1 label, or "refused:<reason>"
    score: float


@dataclass(frozen=True)
class Difference:
    image: str
    today: Answer
    new: Answer


@dataclass
class AgreementReport:
    images: int
    agreeing: int
    seconds: float
    differing: list[Difference] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        return self.agreeing / self.images if self.images else 0.0

    @property
    def meets_bar(self) -> bool:
        return self.images >= 500 and self.fraction >= AGREEMENT_BAR

    def to_dict(self) -> dict[str, object]:
        return {
            "images": self.images,
            "agreeing": self.agreeing,
            "fraction": round(self.fraction, 5),
            "bar": AGREEMENT_BAR,
            "meets_bar": self.meets_bar,
            "seconds": round(self.seconds, 1),
            "differing": [asdict(d) for d in self.differing],
        }


class _Path:
    """One decode + forward + top-1 configuration."""

    def __init__(self, section: StreamSection, model: LoadedModel | None = None) -> None:
        self.model = model or load_model(section.model)
        self.decode = section.decode
        self.inferencer = Inferencer(self.model, section.infer.max_forward_batch)

    def answers(self, images: list[tuple[str, bytes]]) -> list[Answer]:
        answers: list[Answer | None] = [None] * len(images)
        arrays, where = [], []
        for i, (_, data) in enumerate(images):
            try:
                arrays.append(decode_image(data, self.model.preprocess, self.decode).pixels)
                where.append(i)
            except DecodeError as exc:
                answers[i] = Answer(f"refused:{exc.reason}", 0.0)
        for i, outcome in zip(where, self.inferencer.run(arrays), strict=True):
            if outcome.logits is None:
                answers[i] = Answer(f"refused:{outcome.error}", 0.0)
                continue
            best = top_k(outcome.logits, self.model.labels, 1)[0]
            answers[i] = Answer(best.label, float(best.score))
        return [a for a in answers if a is not None]


def check_agreement(
    new: StreamSection,
    today: StreamSection = TODAY,
    images: list[tuple[str, bytes]] | None = None,
    chunk: int = 64,
) -> AgreementReport:
    """Top-1 of `new` vs `today` over `images` (default: `sample_images()`)."""
    started = time.perf_counter()
    images = images if images is not None else sample_images()
    old_path, new_path = _Path(today), _Path(new)
    report = AgreementReport(images=len(images), agreeing=0, seconds=0.0)
    for start in range(0, len(images), chunk):  # bounded memory: decoded chunks only
        part = images[start : start + chunk]
        for (name, _), a, b in zip(
            part, old_path.answers(part), new_path.answers(part), strict=True
        ):
            if a.label == b.label:
                report.agreeing += 1
            else:
                report.differing.append(Difference(name, a, b))
    report.seconds = time.perf_counter() - started
    return report


def main(argv: list[str] | None = None) -> int:
    from stream_app.model import configure_torch
    from stream_app.settings import StreamSettings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--min-images", type=int, default=500)
    args = ap.parse_args(argv)
    settings = StreamSettings()
    configure_torch(settings.stream.infer.torch_threads)
    report = check_agreement(settings.stream, images=sample_images(args.min_images))
    print(json.dumps(report.to_dict(), indent=2))
    return 0 if report.meets_bar else 1


if __name__ == "__main__":
    sys.exit(main())
