"""Model-only, one change at a time: the step table of issue 16 without Kafka.

  python -m bench.model_steps [--images 64] [--rounds 3] [--processes 2] [--threads 1]

Each step adds one change of the stream app's settings (or of the batch size): from
today's path (`bench/paths.py`) to the new defaults, then candidates on top of those. Every step runs
in its own `bench.model_only` pool (processes x threads, as the pipeline's workers);
the pools stay up and the rounds go step by step, round by round, so all steps see the
same background load. Reported per step: images/s and CPU ms per image (all processes'
utime+stime; less load-dependent than the rate on a shared machine), median over the
rounds. Writes bench/results/<UTC stamp>-model-steps.json and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from bench.model_only import STAGES, ModelPool, Variant
from bench.paths import OLD_PATH_ENV
from bench.stats import ratio, summarize

RESULTS = Path(__file__).resolve().parent / "results"
M = "PIPELINE_STREAM__MODEL__"


def steps(old_batch: int = 4, new_batch: int = 1) -> list[tuple[str, dict[str, str], int]]:
    """(name, settings env, batch size) per step. The first five add one change each,
    from today's path to the new defaults (frozen TorchScript, channels-last, padding
    folded into the convolutions, oneDNN Graph fusion); the last two add one more change
    to the defaults, each a candidate the defaults left off."""
    today = dict(OLD_PATH_ENV)
    frozen = {**today, M + "RUNTIME": "frozen"}
    cl = {**frozen, M + "CHANNELS_LAST": "true"}
    fold = {**cl, M + "FOLD_PADDING": "true"}
    onednn = {**fold, M + "RUNTIME": "onednn"}
    draft = {**onednn, "PIPELINE_STREAM__DECODE__JPEG_DRAFT": "true"}
    return [
        (f"today: eager, contiguous, full-size decode, batch {old_batch}", today, old_batch),
        ("+ frozen TorchScript", frozen, old_batch),
        ("+ channels-last", cl, old_batch),
        ("+ padding folded into the convolutions", fold, old_batch),
        ("+ oneDNN Graph fusion (= the new defaults)", onednn, old_batch),
        ("defaults + JPEG draft decode (not default)", draft, old_batch),
        (f"defaults + batch {new_batch} (not default)", onednn, new_batch),
    ]


def run(
    images: int, rounds: int, processes: int, threads: int, old_batch: int, new_batch: int
) -> dict[str, Any]:
    plan = steps(old_batch, new_batch)
    pools: dict[tuple[tuple[str, str], ...], ModelPool] = {}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in plan}
    try:
        for _, env, _ in plan:
            key = tuple(sorted(env.items()))
            if key not in pools:
                pools[key] = ModelPool(processes, threads, Variant("step", key), images)
        for _name, env, batch in plan:  # warm-up of each shape
            pools[tuple(sorted(env.items()))].run(batch, limit=batch)
        for _ in range(rounds):
            for name, env, batch in plan:
                runs[name].append(pools[tuple(sorted(env.items()))].run(batch))
    finally:
        for pool in pools.values():
            pool.close()
    rows: list[dict[str, Any]] = []
    for name, env, batch in plan:
        rs = runs[name]
        rows.append(
            {
                "step": name,
                "env": env,
                "batch": batch,
                "images_per_s": summarize([r["images_per_s"] for r in rs]),
                "cpu_ms_per_image": summarize([r["cpu_ms_per_image"] for r in rs]),
                "ms_per_image": {
                    s: summarize([r["ms_per_image"][s] for r in rs])["median"] for s in STAGES
                },
            }
        )
    first = rows[0]["images_per_s"]["median"]
    for row in rows:
        row["x_today"] = ratio(row["images_per_s"]["median"], first)
    return {
        "images": images,
        "rounds": rounds,
        "processes": processes,
        "threads": threads,
        "steps": rows,
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.model_steps",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--old-batch", type=int, default=4)
    ap.add_argument("--new-batch", type=int, default=1)
    ap.add_argument("--tag", default="model-steps")
    a = ap.parse_args(argv)
    out = run(a.images, a.rounds, a.processes, a.threads, a.old_batch, a.new_batch)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{stamp}-{a.tag}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\n  {'step':<52}{'images/s':>22}  {'CPU ms/image':>14}  x today")
    for r in out["steps"]:
        ips, cpu = r["images_per_s"], r["cpu_ms_per_image"]
        print(
            f"  {r['step']:<52}{ips['median']:8.1f} [{ips['min']:.1f}..{ips['max']:.1f}]"
            f"  {cpu['median']:14.1f}  {r['x_today']}"
        )
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
