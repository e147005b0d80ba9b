"""Model-only baseline: the best layout of decode + preprocess + forward + top-k, no Kafka.

The stream app's own functions (`decode_image`, `load_model`, `Inferencer`, `top_k`)
on the benchmark's images, run by worker processes of this module. A layout is
processes x torch threads per process x batch size x model runtime (the runtimes the
stream app's settings offer: eager, and M's frozen TorchScript once it exists). The
search runs every layout of a small grid on the same images, skipping those with more
threads than cores, and keeps the fastest: that is the baseline "pipeline ÷ model-only"
divides by, so the ratio compares the pipeline with the best this machine does.

Images are split between the processes (i::processes, as the pipeline's partitions
split them between workers); a pass starts in all processes at once and its rate is
images / wall time of the slowest. CPU is each process's own utime+stime (all threads).

`ModelOnly.one_rep()` is one pass of the winning layout; `python -m bench` interleaves
these passes with the pipeline's bursts, so both see the same background load.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import subprocess
import sys
import time
import typing
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.stats import summarize

log = logging.getLogger(__name__)
STAGES = ("decode", "infer", "postprocess")
# Setting names of the model's runtime in the stream app (model or infer section);
# whichever exists is searched, so the grid follows what stream_app offers.
RUNTIME_FIELD, CHANNELS_LAST_FIELD = "runtime", "channels_last"


@dataclass(frozen=True)
class Variant:
    """A model runtime as stream_app settings select it: a name and its PIPELINE_ env."""

    name: str
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Layout:
    processes: int
    threads: int
    batch: int
    variant: Variant = field(default_factory=lambda: Variant("settings"))

    @property
    def label(self) -> str:
        return f"{self.variant.name} p{self.processes} t{self.threads} b{self.batch}"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["variant"] = {"name": self.variant.name, "env": dict(self.variant.env)}
        return d


def grid(
    processes: Iterable[int],
    threads: Iterable[int],
    batches: Iterable[int],
    variants: Sequence[Variant],
    cores: int,
) -> tuple[list[Layout], list[dict[str, Any]]]:
    """Every layout of the grid whose processes x threads fit the cores, and the skipped
    ones with the reason (oversubscribed threads only lose on a CPU-bound load)."""
    keep: list[Layout] = []
    skipped: list[dict[str, Any]] = []
    for v in variants:
        for p in sorted(set(processes)):
            for t in sorted(set(threads)):
                for b in sorted(set(batches)):
                    lay = Layout(p, t, b, v)
                    if p * t > cores:
                        skipped.append(
                            {"layout": lay.label, "reason": f"{p * t} threads > {cores} cores"}
                        )
                    else:
                        keep.append(lay)
    return keep, skipped


def choose_best(cells: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The cell with the highest median images/s; ties go to less CPU per image."""
    measured = [c for c in cells if c.get("images_per_s", {}).get("median")]
    if not measured:
        raise ValueError("no layout of the grid produced a measurement")
    return max(
        measured,
        key=lambda c: (
            c["images_per_s"]["median"],
            -(c.get("cpu_ms_per_image", {}).get("median") or 0.0),
        ),
    )


def runtime_variants(env_prefix: str = "PIPELINE_STREAM__") -> list[Variant]:
    """The model runtimes the stream app's settings offer, as env overrides.

    First the environment's own settings (the new defaults, or what the caller
    exported), named after what they select. If a `runtime` setting exists (stream.model
    or stream.infer), also every other value of it: eager in contiguous memory (today's
    path), the others with channels-last if that setting exists (the memory order
    oneDNN's depthwise kernels prefer). A variant equal to the settings' is not repeated.
    """
    from pydantic import BaseModel

    from stream_app import settings as ss

    sections: dict[str, type[BaseModel]] = {"MODEL": ss.ModelSettings, "INFER": ss.InferSettings}
    where = {
        name: sec
        for name in (RUNTIME_FIELD, CHANNELS_LAST_FIELD)
        for sec, cls in sections.items()
        if name in cls.model_fields
    }
    if RUNTIME_FIELD not in where:
        return [Variant("settings")]
    current = ss.StreamSettings().stream

    def value(name: str) -> Any:
        return getattr(getattr(current, where[name].lower()), name)

    def label(runtime: str, cl: bool) -> str:
        return runtime + ("+cl" if cl else "")

    key = f"{env_prefix}{where[RUNTIME_FIELD]}__{RUNTIME_FIELD.upper()}"
    cl_key = (
        f"{env_prefix}{where[CHANNELS_LAST_FIELD]}__{CHANNELS_LAST_FIELD.upper()}"
        if CHANNELS_LAST_FIELD in where
        else None
    )
    mine = label(value(RUNTIME_FIELD), bool(cl_key and value(CHANNELS_LAST_FIELD)))
    out = [Variant(mine)]
    annotation = sections[where[RUNTIME_FIELD]].model_fields[RUNTIME_FIELD].annotation
    for v in (a for a in typing.get_args(annotation) if isinstance(a, str)):
        cl = v != "eager" and cl_key is not None
        if label(v, cl) == mine:
            continue
        env = ((key, v),) + (((cl_key, str(cl).lower()),) if cl_key else ())
        out.append(Variant(label(v, cl), env))
    return out


# -- worker processes --------------------------------------------------------------------
# Each is `python -m bench.model_only --serve ...`, spoken to by JSON lines on stdin and
# stdout (a fresh interpreter: no torch state inherited, and no dependence on how the
# parent's main module was started).


def _serve(threads: int, count: int, index: int, procs: int) -> None:
    """A model-only worker: load the model as a stream worker would, then run passes."""
    out = sys.stdout
    sys.stdout = sys.stderr  # library prints must not corrupt the protocol

    def send(*msg: Any) -> None:
        out.write(json.dumps(msg) + "\n")
        out.flush()

    try:
        import numpy as np

        from bench.images import image_bytes
        from stream_app.decode import decode_image
        from stream_app.infer import Inferencer
        from stream_app.model import configure_torch, load_model
        from stream_app.postprocess import top_k
        from stream_app.settings import StreamSettings

        settings = StreamSettings()
        configure_torch(threads)
        model = load_model(settings.stream.model)
        inf = Inferencer(model)  # the whole batch in one forward pass: batch = the layout's
        limits, k = settings.stream.decode, settings.stream.postprocess.top_k
        blobs = image_bytes(count)[index::procs]
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises
        send("error", f"{type(exc).__name__}: {exc}")
        return
    send("ready", {"model": model.info.name, "version": model.info.version})
    for line in sys.stdin:
        msg = json.loads(line)
        if msg[0] == "stop":
            return
        _, batch, limit = msg
        data = blobs[:limit] if limit else blobs
        t = dict.fromkeys(STAGES, 0.0)
        c0 = _cpu_s()
        for start in range(0, len(data), batch):
            t0 = time.perf_counter()
            arrays = [
                decode_image(b, model.preprocess, limits).pixels
                for b in data[start : start + batch]
            ]
            t1 = time.perf_counter()
            outcomes = inf.run(arrays)
            t2 = time.perf_counter()
            for o in outcomes:
                top_k(np.asarray(o.logits), model.labels, k)
            t3 = time.perf_counter()
            t["decode"] += t1 - t0
            t["infer"] += t2 - t1
            t["postprocess"] += t3 - t2
        send("done", len(data), t, _cpu_s() - c0)


def _cpu_s() -> float:
    tm = os.times()
    return tm.user + tm.system


class ModelPool:
    """`processes` model-only workers with `threads` torch threads each, one runtime."""

    def __init__(
        self, processes: int, threads: int, variant: Variant, count: int, timeout_s: float = 300.0
    ) -> None:
        self.timeout_s = timeout_s
        self.count = count
        self.procs: list[subprocess.Popen[str]] = []
        env = {**os.environ, **dict(variant.env)}
        try:
            for i in range(processes):
                argv = [sys.executable, "-m", "bench.model_only", "--serve"]
                argv += [str(threads), str(count), str(i), str(processes)]
                self.procs.append(
                    subprocess.Popen(
                        argv, env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE
                    )
                )
            self.info = [self._recv(p, "ready") for p in self.procs][0][0]
        except BaseException:
            self.close()
            raise

    def _recv(self, proc: subprocess.Popen[str], want: str) -> list[Any]:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], self.timeout_s)
        if not ready:
            raise TimeoutError(f"model-only worker gave no {want!r} within {self.timeout_s:.0f}s")
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"model-only worker exited (code {proc.wait(10)}); see its stderr")
        msg = json.loads(line)
        if msg[0] == "error":
            raise RuntimeError(f"model-only worker failed: {msg[1]}")
        if msg[0] != want:
            raise RuntimeError(f"model-only worker sent {msg[0]!r}, expected {want!r}")
        return list(msg[1:])

    def _send(self, proc: subprocess.Popen[str], *msg: Any) -> None:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(msg) + "\n")
        proc.stdin.flush()

    def run(self, batch: int, limit: int | None = None) -> dict[str, Any]:
        """One pass in all processes at once: images/s, CPU ms/image, ms/image per stage."""
        start = time.perf_counter()
        for p in self.procs:
            self._send(p, "pass", batch, limit)
        replies = [self._recv(p, "done") for p in self.procs]
        wall = time.perf_counter() - start
        n = sum(r[0] for r in replies)
        return {
            "images": n,
            "images_per_s": n / wall,
            "cpu_ms_per_image": sum(r[2] for r in replies) / n * 1000.0,
            # stage seconds of all processes over all images: CPU-ish ms per image
            "ms_per_image": {s: sum(r[1][s] for r in replies) / n * 1000.0 for s in STAGES},
        }

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(OSError, ValueError):
                self._send(p, "stop")
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def search(
    count: int,
    processes: Iterable[int] = (1, 2),
    threads: Iterable[int] = (1, 2),
    batches: Iterable[int] = (1, 2, 4, 16),
    variants: Sequence[Variant] | None = None,
    reps: int = 1,
    cores: int | None = None,
) -> dict[str, Any]:
    """Every layout of the grid on the same `count` images, `reps` passes each (the
    passes of one pool alternate their batch sizes); returns the cells and the winner."""
    variants = list(variants or runtime_variants())
    layouts, skipped = grid(processes, threads, batches, variants, cores or os.cpu_count() or 1)
    cells: dict[Layout, list[dict[str, Any]]] = {lay: [] for lay in layouts}
    pools = sorted({(lay.variant, lay.processes, lay.threads) for lay in layouts}, key=str)
    started = time.perf_counter()
    failures: list[dict[str, str]] = []
    for variant, p, t in pools:
        mine = [
            lay for lay in layouts if (lay.variant, lay.processes, lay.threads) == (variant, p, t)
        ]
        try:
            pool = ModelPool(p, t, variant, count)
        except Exception as exc:  # noqa: BLE001 - a runtime that does not build is recorded
            failures.append({"layout": f"{variant.name} p{p} t{t}", "error": str(exc)})
            log.warning("model-only grid: %s p%d t%d failed: %s", variant.name, p, t, exc)
            continue
        try:
            for lay in mine:  # warm-up: kernels of each batch shape, allocator, plugins
                pool.run(lay.batch, limit=lay.batch)
            for _ in range(reps):
                for lay in mine:
                    cells[lay].append(pool.run(lay.batch))
        finally:
            pool.close()
        top = max(
            (summarize([r["images_per_s"] for r in cells[lay]])["median"] or 0.0, lay.label)
            for lay in mine
        )
        log.info(
            "model-only grid: %s p%d t%d: best %s at %.1f images/s",
            variant.name,
            p,
            t,
            top[1],
            top[0],
        )
    rows = [
        {
            "layout": lay.as_dict(),
            "label": lay.label,
            "images_per_s": summarize([r["images_per_s"] for r in runs]),
            "cpu_ms_per_image": summarize([r["cpu_ms_per_image"] for r in runs]),
            "ms_per_image": {
                s: summarize([r["ms_per_image"][s] for r in runs])["median"] for s in STAGES
            },
        }
        for lay, runs in cells.items()
        if runs
    ]
    best = choose_best(rows)
    return {
        "images": count,
        "reps": reps,
        "cells": rows,
        "skipped": skipped,
        "failed": failures,
        "winner": best["label"],
        "winner_layout": best["layout"],
        "wall_s": round(time.perf_counter() - started, 1),
    }


def layout_from(d: dict[str, Any]) -> Layout:
    v = d["variant"]
    return Layout(
        d["processes"],
        d["threads"],
        d["batch"],
        Variant(v["name"], tuple(sorted(v["env"].items()))),
    )


class ModelOnly:
    """The winning layout, kept running for passes interleaved with the pipeline's."""

    def __init__(
        self, count: int, layout: Layout, search_result: dict[str, Any] | None = None
    ) -> None:
        self.layout = layout
        self.search_result = search_result
        self.pool = ModelPool(layout.processes, layout.threads, layout.variant, count)
        self.pool.run(layout.batch, limit=layout.batch)  # warm-up
        self.count = count
        self.rates: list[float] = []
        self.cpu_ms: list[float] = []  # all processes' CPU (all threads) per image
        self.ms: dict[str, list[float]] = {s: [] for s in STAGES}

    def one_rep(self) -> float:
        """One pass over all images; returns images/s (and records per-stage ms/image)."""
        r = self.pool.run(self.layout.batch)
        self.rates.append(r["images_per_s"])
        self.cpu_ms.append(r["cpu_ms_per_image"])
        for k, v in r["ms_per_image"].items():
            self.ms[k].append(v)
        log.info("model-only pass (%s): %.1f images/s", self.layout.label, r["images_per_s"])
        return float(r["images_per_s"])

    def close(self) -> None:
        self.pool.close()

    def result(self) -> dict[str, Any]:
        return {
            "images": self.count,
            "layout": self.layout.as_dict(),
            "label": self.layout.label,
            "batch_size": self.layout.batch,
            "processes": self.layout.processes,
            "torch_threads": self.layout.threads,
            "runtime": self.layout.variant.name,
            "images_per_s": summarize(self.rates),
            "ms_per_image": {k: summarize(v) for k, v in self.ms.items()},
            "cpu_ms_per_image": summarize(self.cpu_ms),
            "model": self.pool.info,
            "grid": self.search_result,
        }


if __name__ == "__main__":
    if sys.argv[1:2] != ["--serve"] or len(sys.argv) != 6:
        sys.exit("usage: python -m bench.model_only --serve THREADS COUNT INDEX PROCESSES")
    _serve(*(int(a) for a in sys.argv[2:6]))
