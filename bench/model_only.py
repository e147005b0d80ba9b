"""Model-only ceiling: decode + preprocess + forward + postprocess in one process.

The stream app's own functions, on the benchmark's images, in the pipeline's batch
size, under a given torch thread budget. No Kafka, no Avro, no Cassandra: what the
model stages alone can do on this machine.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from bench.images import image_bytes
from bench.stats import summarize

log = logging.getLogger(__name__)


def run_model_only(
    count: int, batch_size: int, threads: int, repetitions: int, top_k: int = 5
) -> dict[str, Any]:
    from stream_app.decode import decode_image
    from stream_app.infer import Inferencer
    from stream_app.model import configure_torch, load_model
    from stream_app.postprocess import top_k as top_k_fn
    from stream_app.settings import StreamSettings

    settings = StreamSettings()
    configure_torch(threads)
    model = load_model(settings.stream.model)
    inf = Inferencer(model)
    blobs = image_bytes(count)
    limits = settings.stream.decode

    def one_pass(data: tuple[bytes, ...]) -> dict[str, float]:
        t = {"decode": 0.0, "infer": 0.0, "postprocess": 0.0}
        for start in range(0, len(data), batch_size):
            t0 = time.perf_counter()
            arrays = [decode_image(b, model.preprocess, limits).pixels for b in data[start : start + batch_size]]
            t1 = time.perf_counter()
            outcomes = inf.run(arrays)
            t2 = time.perf_counter()
            for o in outcomes:
                top_k_fn(np.asarray(o.logits), model.labels, top_k)
            t3 = time.perf_counter()
            t["decode"] += t1 - t0
            t["infer"] += t2 - t1
            t["postprocess"] += t3 - t2
        return t

    one_pass(blobs[: batch_size * 2])  # warm-up: allocator, kernels, Pillow plugins
    rates: list[float] = []
    per_stage: dict[str, list[float]] = {"decode": [], "infer": [], "postprocess": []}
    for rep in range(repetitions):
        start = time.perf_counter()
        t = one_pass(blobs)
        elapsed = time.perf_counter() - start
        rates.append(len(blobs) / elapsed)
        for k, v in t.items():
            per_stage[k].append(v / len(blobs) * 1000.0)
        log.info("model-only rep %d: %.1f images/s", rep + 1, rates[-1])
    return {
        "images": len(blobs),
        "batch_size": batch_size,
        "torch_threads": threads,
        "images_per_s": summarize(rates),
        "ms_per_image": {k: summarize(v) for k, v in per_stage.items()},
        "model": {"name": model.info.name, "version": model.info.version},
    }
