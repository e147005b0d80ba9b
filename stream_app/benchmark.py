"""Throughput of each processing stage on this machine (no Kafka).

  python -m stream_app.benchmark [--seconds 3] [--batch-sizes 1,8,16,32] [--threads 1,2]

Images are the photos shipped with scikit-image (decode measures their mix of sizes:
451x300 .. 640x427 PNG/JPEG).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import skimage.data
import torch

from stream_app.decode import decode_image
from stream_app.infer import Inferencer
from stream_app.model import configure_torch, load_model
from stream_app.postprocess import top_k
from stream_app.settings import StreamSettings

PHOTOS = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"]


def rate(fn: Callable[[], int], seconds: float) -> dict[str, float]:
    """Items per wall-clock second of `fn` (which returns how many items it did), and
    items per CPU second of this process (robust to other load on the machine)."""
    fn()  # warm up
    n, start, cpu0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        n += fn()
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    return {"per_s": round(n / wall, 1), "per_cpu_s": round(n / cpu, 1) if cpu > 0 else 0.0}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--batch-sizes", default="1,8,16,32")
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args(argv)
    settings = StreamSettings()
    model = load_model(settings.stream.model)
    root = Path(os.path.dirname(skimage.data.__file__))
    blobs = [(root / p).read_bytes() for p in PHOTOS]
    results: dict[str, object] = {"torch": torch.__version__, "cpus": os.cpu_count()}

    def decode_all() -> int:
        for b in blobs:
            decode_image(b, model.preprocess, settings.stream.decode)
        return len(blobs)

    configure_torch(1)
    results["load_avg_1m_before"] = round(os.getloadavg()[0], 2)
    results["decode_images"] = rate(decode_all, args.seconds)
    arrays = [decode_image(b, model.preprocess, settings.stream.decode).pixels for b in blobs]
    inf = Inferencer(model)  # no chunking: each measured batch is one forward pass
    infer: dict[str, dict[str, float]] = {}
    for threads in (int(t) for t in args.threads.split(",")):
        configure_torch(threads)
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            batch = [arrays[i % len(arrays)] for i in range(bs)]

            def run_batch(batch: list[np.ndarray] = batch) -> int:
                return len(inf.run(batch))

            infer[f"threads={threads} batch={bs}"] = rate(run_batch, args.seconds)
    results["infer_images"] = infer
    logits = [o.logits for o in inf.run(arrays)]
    k = settings.stream.postprocess.top_k

    def post_all() -> int:
        for lg in logits:
            top_k(np.asarray(lg), model.labels, k)
        return len(logits)

    results["postprocess_images"] = rate(post_all, args.seconds)
    results["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
