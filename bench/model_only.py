"""Model-only ceiling: decode + preprocess + forward + postprocess in one process.

The stream app's own functions, on the benchmark's images, in the pipeline's batch
size, under a given torch thread budget. No Kafka, no Avro, no Cassandra: what the
model stages alone can do on this machine.

`ModelOnly.one_rep()` is one pass over the images; `python -m bench` interleaves these
passes with the pipeline's bursts, so both see the same background load (the machine
is shared) and their ratio is taken pair by pair.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np

from bench.images import image_bytes
from bench.stats import summarize

log = logging.getLogger(__name__)
STAGES = ("decode", "infer", "postprocess")


class ModelOnly:
    def __init__(self, count: int, batch_size: int, threads: int, top_k: int = 5) -> None:
        from stream_app.decode import decode_image
        from stream_app.infer import Inferencer
        from stream_app.model import configure_torch, load_model
        from stream_app.postprocess import top_k as top_k_fn
        from stream_app.settings import StreamSettings

        settings = StreamSettings()
        configure_torch(threads)
        self.model = load_model(settings.stream.model)
        self._decode, self._top_k = decode_image, top_k_fn
        self._inf = Inferencer(self.model)
        self._limits = settings.stream.decode
        self.blobs = image_bytes(count)
        self.batch_size, self.threads, self.k = batch_size, threads, top_k
        self.rates: list[float] = []
        self.cpu_ms: list[float] = []  # this process's CPU (all threads) per image
        self.ms: dict[str, list[float]] = {s: [] for s in STAGES}
        self._pass(self.blobs[: batch_size * 2])  # warm-up: allocator, kernels, Pillow plugins

    def _pass(self, data: tuple[bytes, ...]) -> dict[str, float]:
        t = dict.fromkeys(STAGES, 0.0)
        for start in range(0, len(data), self.batch_size):
            t0 = time.perf_counter()
            arrays = [
                self._decode(b, self.model.preprocess, self._limits).pixels
                for b in data[start : start + self.batch_size]
            ]
            t1 = time.perf_counter()
            outcomes = self._inf.run(arrays)
            t2 = time.perf_counter()
            for o in outcomes:
                self._top_k(np.asarray(o.logits), self.model.labels, self.k)
            t3 = time.perf_counter()
            t["decode"] += t1 - t0
            t["infer"] += t2 - t1
            t["postprocess"] += t3 - t2
        return t

    def one_rep(self) -> float:
        """One pass over all images; returns images/s (and records per-stage ms/image)."""
        c0, start = _cpu_s(), time.perf_counter()
        t = self._pass(self.blobs)
        rate = len(self.blobs) / (time.perf_counter() - start)
        self.rates.append(rate)
        self.cpu_ms.append((_cpu_s() - c0) / len(self.blobs) * 1000.0)
        for k, v in t.items():
            self.ms[k].append(v / len(self.blobs) * 1000.0)
        log.info("model-only pass: %.1f images/s", rate)
        return rate

    def result(self) -> dict[str, Any]:
        return {
            "images": len(self.blobs),
            "batch_size": self.batch_size,
            "torch_threads": self.threads,
            "images_per_s": summarize(self.rates),
            "ms_per_image": {k: summarize(v) for k, v in self.ms.items()},
            "cpu_ms_per_image": summarize(self.cpu_ms),
            "model": {"name": self.model.info.name, "version": self.model.info.version},
        }


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def run_model_only(
    count: int, batch_size: int, threads: int, repetitions: int, top_k: int = 5
) -> dict[str, Any]:
    m = ModelOnly(count, batch_size, threads, top_k)
    for _ in range(repetitions):
        m.one_rep()
    return m.result()
