"""The stream workers against the real Kafka cluster.

Each test gets its own set of pipeline topics (registry sizing, a unique prefix via
PIPELINE_STREAM__TOPIC_PREFIX) and its own consumer group, and runs real worker
processes (`python -m stream_app worker`). Readiness is polled on the workers'
/health/ view; nothing waits on fixed sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
import skimage.data
from cluster_backends import security_env
from confluent_kafka import Consumer, Producer
from PIL import Image

from infra.groups import end_offsets
from infra.kafka_clients import consumer_config, producer_config
from infra.settings import KafkaSettings
from schemas import codec
from schemas.dead_letter import read_dead_letter
from schemas.raw import headers_dict, raw_headers, sniff_content_type
from schemas.topics import (
    DECODE_DLQ,
    DECODED,
    INFER_DLQ,
    INFERRED,
    POSTPROCESS_DLQ,
    PREDICTIONS,
    topic_registry,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = Path(os.path.dirname(skimage.data.__file__))
CATS = {281, 282, 283, 284, 285}
ESPRESSO, CUP = 967, 968


def photo(name: str) -> bytes:
    return (PHOTOS / name).read_bytes()


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    end = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health/", timeout=2) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return None

    def assigned(self) -> dict[str, list[int]]:
        h = self.health() or {"stages": []}
        return {s["stage"]: s["assigned_partitions"] for s in h["stages"]}

    def tail(self, n: int = 40) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-n:])

    def notable(self, n: int = 40) -> str:
        """The log lines that explain a stall or a lost record: warnings and worse, the
        watchdog, rebalances and seeks, and the last health line of each stage."""
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        keys = ("WARN", "ERROR", "CRITICAL", "watchdog", "assigned", "revoked", "Seek")
        picked = [x for x in lines if any(k in x for k in keys)][-n:]
        last_health = {
            x.split("health ", 1)[1].split(":", 1)[0]: x for x in lines if "health " in x
        }
        return "\n".join(picked + sorted(last_health.values()))


@dataclass
class Pipeline:
    """A private set of pipeline topics plus the workers running on them."""

    kafka: Any
    prefix: str
    tmp: Path
    bootstrap: str
    app_id: str
    workers: list[Worker] = field(default_factory=list)
    _next_port: int = 0

    @property
    def settings(self) -> KafkaSettings:
        """The test's own clients: the admin principal on a secure cluster."""
        kafka: KafkaSettings = self.kafka.backend.settings().kafka
        return kafka.model_copy(update={"bootstrap_servers": self.bootstrap})

    def env(self, **extra: str) -> dict[str, str]:
        e = dict(os.environ)
        e.update(security_env(self.kafka.backend.security()))  # the clusters' mode, not the default
        e.update(
            PIPELINE_KAFKA__BOOTSTRAP_SERVERS=self.bootstrap,
            PIPELINE_STREAM__TOPIC_PREFIX=self.prefix,
            PIPELINE_STREAM__WORKER__APP_ID=self.app_id,
            PIPELINE_STREAM__WORKER__DATA_DIR=str(self.tmp / "data"),
            PIPELINE_STREAM__WORKER__HEALTH_LOG_INTERVAL_S="5",
            **extra,
        )
        return e

    def start_worker(self, *args: str, port: int | None = None, **env: str) -> Worker:
        """`python -m stream_app worker` (or, with args, e.g. `workers -n 2`)."""
        port = port or free_port()
        log = self.tmp / f"worker-{port}.log"
        cmd = list(args) or ["worker"]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "stream_app", *cmd, "--web-port", str(port)],
                cwd=ROOT, env=self.env(**env), stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        w = Worker(proc, port, log)
        self.workers.append(w)
        return w

    def wait_assigned(self, workers: list[Worker], timeout: float = 120.0) -> None:
        """Until, for every stage, the workers together own all partitions. Fused workers
        (worker.fuse_decode_infer, the default) run decode and infer in decode's agent and
        still keep an infer agent on images.decoded, so the need is the same either way."""
        parts = {t.name: t.partitions for t in topic_registry()}
        need = {"decode": parts["images.raw"], "infer": parts["images.decoded"],
                "postprocess": parts["images.inferred"]}  # fmt: skip

        def ready() -> bool:
            for w in workers:
                if w.proc.poll() is not None:
                    raise AssertionError(f"worker exited with {w.proc.returncode}:\n{w.tail()}")
            owned: dict[str, set[int]] = defaultdict(set)
            for w in workers:
                a = w.assigned()
                if not all(a.get(s) for s in need) and len(workers) <= 6:
                    return False
                for s, ps in a.items():
                    owned[s] |= set(ps)
            return all(len(owned[s]) == n for s, n in need.items())

        wait_for("workers to own every partition", ready, timeout)

    def produce(self, items: list[tuple[str | None, bytes | None]]) -> dict[str, tuple[int, int]]:
        """Publish raw records; returns key -> (partition, offset) of each keyed one."""
        p = Producer(producer_config(self.settings))
        landed: dict[str, tuple[int, int]] = {}

        def delivered(err: Any, msg: Any) -> None:
            if err is None and msg.key() is not None:
                landed[msg.key().decode()] = (msg.partition(), msg.offset())

        for key, data in items:
            ctype = sniff_content_type(data or b"") or "application/octet-stream"
            p.produce(
                self.prefix + "images.raw", key=key, value=data,
                headers=raw_headers(ctype, "integration-test"), on_delivery=delivered,
            )  # fmt: skip
            p.poll(0)
        assert p.flush(60) == 0, "raw records not delivered"
        return landed

    def decoded_written(self) -> int:
        """Records ever written to this pipeline's images.decoded."""
        return self.written(DECODED)

    def written(self, name: str) -> int:
        """Records ever written to this pipeline's topic `name`."""
        topic = self.prefix + name
        return end_offsets(self.settings, [topic])[topic]

    def stop(self) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        for w in self.workers:
            try:
                w.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()


class Results:
    """Reads the predictions and dead-letter topics of a pipeline."""

    def __init__(self, pipe: Pipeline, group: str) -> None:
        self.consumer = Consumer(
            consumer_config(pipe.settings, group, {"enable.auto.offset.store": True})
        )
        self.topics = {
            pipe.prefix + t: t for t in (PREDICTIONS, DECODE_DLQ, INFER_DLQ, POSTPROCESS_DLQ)
        }
        self.consumer.subscribe(list(self.topics))
        self.predictions: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.dead: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.dead_headers: dict[str, dict[str, str]] = {}

    def poll(self, seconds: float = 1.0) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            m = self.consumer.poll(0.2)
            if m is None or m.error():
                continue
            h = headers_dict(m.headers())
            key = (m.key() or b"").decode()
            if self.topics[m.topic()] == PREDICTIONS:
                self.predictions[key].append(codec.decode(codec.PREDICTION, m.value(), h))
            else:
                self.dead[key].append(read_dead_letter(m.value(), h))
                self.dead_headers[key] = h

    def wait_all(
        self, ids: set[str], timeout: float, progress: Callable[[], None] | None = None
    ) -> None:
        def done() -> bool:
            self.poll(1.0)
            if progress:
                progress()
            return ids <= set(self.predictions) | set(self.dead)

        try:
            wait_for(f"{len(ids)} results", done, timeout, every=0)
        except AssertionError:
            missing = sorted(ids - set(self.predictions) - set(self.dead))
            raise AssertionError(f"no result for {len(missing)} ids: {missing[:10]}") from None

    def close(self) -> None:
        self.consumer.close()


def read_results(
    pipe: Pipeline,
    group: str,
    ids: set[str],
    timeout: float,
    progress: Callable[[], None] | None = None,
) -> Results:
    """Read the pipeline's outputs until every id has one (or timeout), then close."""
    results = Results(pipe, group)
    try:
        results.wait_all(ids, timeout, progress)
    finally:
        results.close()
    return results


def free_port(consecutive: int = 1) -> int:
    """A port p such that p .. p+consecutive-1 are free now."""
    import socket

    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + consecutive > 65535:
            continue
        try:
            socks = []
            for p in range(base + 1, base + consecutive):
                t = socket.socket()
                socks.append(t)
                t.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    raise RuntimeError("no free port range")


@pytest.fixture
def pipeline(kafka_cluster: Any, unique_name: str, tmp_path: Path) -> Iterator[Pipeline]:
    prefix = f"{unique_name}."
    names = []
    for t in topic_registry():
        kafka_cluster.create_topic(
            prefix + t.name, t.partitions, t.replication_factor, **t.configs()
        )
        names.append(prefix + t.name)
    # Secure mode: the stream principal may use these topics and this app id's group.
    kafka_cluster.backend.grant_pipeline(prefix, stream_group=f"stream-{unique_name}")
    pipe = Pipeline(
        kafka_cluster,
        prefix,
        tmp_path,
        kafka_cluster.get_bootstrap_server(),
        f"stream-{unique_name}",
    )
    try:
        yield pipe
    finally:
        pipe.stop()
        for w in pipe.workers:
            print(
                f"--- worker :{w.port} exit={w.proc.returncode}\n{w.notable()}\n...\n{w.tail(15)}"
            )
        kafka_cluster.delete_topics(names)


def direct_top5(names: list[str]) -> dict[str, list[tuple[int, float]]]:
    """Top-5 of the packaged model called directly (one image per forward pass)."""
    import numpy as np
    import torch
    from PIL import Image

    from stream_app.model import load_model
    from stream_app.settings import ModelSettings

    net = load_model(ModelSettings()).module
    out = {}
    for name in names:
        im = Image.open(PHOTOS / name).convert("RGB")
        w, h = im.size
        s = 256 / min(w, h)
        im = im.resize((max(256, round(w * s)), max(256, round(h * s))), Image.Resampling.BICUBIC)
        left, top = (im.width - 224) // 2, (im.height - 224) // 2
        x = (np.asarray(im.crop((left, top, left + 224, top + 224)), np.float32) - 127.0) / 128.0
        with torch.no_grad():
            probs = torch.softmax(net(torch.from_numpy(x.transpose(2, 0, 1).copy())[None]), 1)[0]
        top = torch.topk(probs, 5)
        out[name] = [(int(i), float(v)) for v, i in zip(top.values, top.indices, strict=True)]
    return out


def truncated_png() -> bytes:
    return photo("chelsea.png")[:4000]


def bomb_png() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(bytes(64)))
        + chunk(b"IEND", b"")
    )


def test_photos_in_predictions_out(pipeline: Pipeline, unique_name: str) -> None:
    w = pipeline.start_worker()
    pipeline.wait_assigned([w])
    names = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"]
    items = [(f"{n}-{i}", photo(n)) for i in range(3) for n in names]
    pipeline.produce(items)
    results = read_results(pipeline, f"{unique_name}-read", {k for k, _ in items}, timeout=240)
    assert not results.dead, results.dead
    for key, _ in items:
        preds = results.predictions[key]
        first = preds[0]
        top3 = {c["class_index"] for c in first["top_k"][:3]}
        if key.startswith("chelsea"):
            assert top3 & CATS, first["top_k"]
        if key.startswith("coffee"):
            assert top3 & {ESPRESSO, CUP}, first["top_k"]
        assert first["model_name"] == "efficientnet-lite0"
        assert first["raw_topic"] == pipeline.prefix + "images.raw"
        assert len(first["top_k"]) == 5
        # Re-deliveries (if any) carry the same answer.
        for p in preds[1:]:
            assert [c["class_index"] for c in p["top_k"]] == [
                c["class_index"] for c in first["top_k"]
            ]
    # Same photo, same prediction, whichever batch it was in.
    by_photo = defaultdict(set)
    for key, _ in items:
        p = results.predictions[key][0]
        by_photo[key.rsplit("-", 1)[0]].add(
            (p["top_k"][0]["class_index"], round(p["top_k"][0]["score"], 4))
        )
    assert all(len(v) == 1 for v in by_photo.values()), by_photo
    # Invariant 4: what came out of Kafka equals the model called directly on the photo.
    direct = direct_top5(names)
    for key, _ in items:
        got = results.predictions[key][0]["top_k"]
        want = direct[key.rsplit("-", 1)[0]]
        assert got[0]["class_index"] == want[0][0]
        for g, (idx, score) in zip(got, want, strict=True):
            assert g["class_index"] == idx and abs(g["score"] - score) < 1e-4
    health = w.health()
    assert health is not None
    stages = {s["stage"]: s for s in health["stages"]}
    # Whichever agent wrote them (fused by default: decode's), every prediction counts.
    predicted = sum(
        s["records_out_by_topic"].get(pipeline.prefix + PREDICTIONS, 0) for s in stages.values()
    )
    assert predicted >= len(items)
    assert stages["decode"]["dead_letters"] == 0


# worker.fuse_decode_infer and fuse_postprocess (issue 16): "false" is the unfused layout,
# set explicitly.
@pytest.mark.parametrize("fused", ["false", "true"])
def test_corrupt_inputs_go_to_the_dlq_and_good_ones_around_them_are_predicted(
    pipeline: Pipeline, unique_name: str, fused: str
) -> None:
    w = pipeline.start_worker(
        PIPELINE_STREAM__WORKER__FUSE_DECODE_INFER=fused,
        PIPELINE_STREAM__WORKER__FUSE_POSTPROCESS=fused,
    )
    pipeline.wait_assigned([w])
    bad: dict[str, tuple[bytes | None, str]] = {
        "bad-empty": (b"", "empty"),
        "bad-null": (None, "empty"),  # a tombstone: no value at all
        "bad-text": (b"this is a text file, not an image\n" * 10, "not-an-image"),
        "bad-random": (bytes(range(256)) * 8, "not-an-image"),
        "bad-trunc-png": (truncated_png(), "truncated"),
        "bad-trunc-jpg": (photo("rocket.jpg")[:20_000], "truncated"),
        "bad-bomb": (bomb_png(), "decompression-bomb"),
    }
    items: list[tuple[str | None, bytes | None]] = []
    good = []
    for i, (key, (data, _)) in enumerate(bad.items()):
        items.append((f"good-{i}", photo("coffee.png")))
        good.append(f"good-{i}")
        items.append((key, data))
    items.append(("good-last", photo("chelsea.png")))
    good.append("good-last")
    items.append((None, photo("chelsea.png")))  # no key: breaks the raw contract
    pipeline.produce(items)

    results = read_results(
        pipeline, f"{unique_name}-read", set(good) | set(bad) | {""}, timeout=240
    )
    for key, (data, reason) in bad.items():
        assert key not in results.predictions
        letter = results.dead[key][0]
        assert letter["reason"] == reason, (key, letter["reason"], letter["error_message"])
        assert letter["stage"] == "decode" and letter["error_class"] == "DecodeError"
        assert letter["payload"] == (data or b"")  # the original bytes, unchanged
        assert letter["origin_topic"] == pipeline.prefix + "images.raw"
        assert letter["payload_headers"]["source"] == "integration-test"
        h = results.dead_headers[key]
        assert h["error-reason"] == reason and h["stage"] == "decode"
        assert int(h["origin-offset"]) == letter["origin_offset"]
    assert results.dead[""][0]["reason"] == "missing-key"
    for key in good:
        assert key not in results.dead
        assert results.predictions[key][0]["top_k"][0]["class_index"] in {ESPRESSO, *CATS}
    # Unfused, every decoded image crossed images.decoded and images.inferred (at least
    # once); fused, none did.
    if fused == "true":
        assert pipeline.decoded_written() == 0 and pipeline.written(INFERRED) == 0
    else:
        assert pipeline.decoded_written() >= len(good)
        assert pipeline.written(INFERRED) >= len(good)


def nan_on_black_model(tmp: Path) -> dict[str, str]:
    """Worker env selecting a small TorchScript classifier (10 classes) whose logits are NaN
    for an all-black image: the infer stage makes those dead letters (non-finite) after
    decode succeeded, an infer failure a real worker meets on real records."""
    import torch

    class NanOnBlack(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = self.fc(x.mean(dim=(2, 3)))
            # Black, ImageNet-normalised, is about -2 in every channel; photos are far above.
            black = x.mean(dim=(1, 2, 3)) < -1.9
            return torch.where(black[:, None], torch.full_like(logits, float("nan")), logits)

    path = tmp / "nan_on_black.pt"
    torch.jit.save(torch.jit.script(NanOnBlack().eval()), str(path))
    labels = tmp / "labels.txt"
    labels.write_text("".join(f"class-{i}\n" for i in range(10)))
    return {
        "PIPELINE_STREAM__MODEL__KIND": "torchscript",
        "PIPELINE_STREAM__MODEL__TORCHSCRIPT_PATH": str(path),
        "PIPELINE_STREAM__MODEL__LABELS_PATH": str(labels),
    }


def black_png() -> bytes:
    buf = BytesIO()
    Image.new("RGB", (320, 240)).save(buf, "PNG")
    return buf.getvalue()


def test_fused_by_default_every_image_ends_once_with_both_stages_dead_letters(
    pipeline: Pipeline, unique_name: str, tmp_path: Path
) -> None:
    """The default worker (fuse_decode_infer and fuse_postprocess unset) decodes, infers
    and postprocesses in one agent: every image ends as predictions or dead letters
    (never both), decode and infer failures each go to their stage's DLQ naming the raw
    record, and images.decoded and images.inferred stay empty. Then a decode-only worker
    joins the group: it runs unfused, and what it writes to images.decoded is inferred
    and postprocessed by the fused worker's own infer and postprocess agents, not
    stranded."""
    model = nan_on_black_model(tmp_path)
    env = pipeline.env()
    assert "PIPELINE_STREAM__WORKER__FUSE_DECODE_INFER" not in env, "not the default"
    assert "PIPELINE_STREAM__WORKER__FUSE_POSTPROCESS" not in env, "not the default"
    w = pipeline.start_worker(**model)
    pipeline.wait_assigned([w])
    items: list[tuple[str | None, bytes | None]] = []
    for i in range(4):
        items += [(f"good-{i}", photo("coffee.png")), (f"black-{i}", black_png())]
    items += [("bad-text", b"not an image at all\n" * 20), ("bad-trunc", truncated_png())]
    landed = pipeline.produce(items)
    ids = {k for k, _ in items if k}
    results = read_results(pipeline, f"{unique_name}-read", ids, timeout=240)

    failing = {f"black-{i}": ("infer", "non-finite") for i in range(4)}
    failing.update({"bad-text": ("decode", "not-an-image"), "bad-trunc": ("decode", "truncated")})
    for key in ids:  # one outcome per image: results of one kind only
        assert (key in results.predictions) != (key in results.dead), key
        assert (key in results.dead) == (key in failing), key
    for key in ids - set(failing):
        assert len(results.predictions[key][0]["top_k"]) == 5
    for key, (stage, reason) in failing.items():
        letter = results.dead[key][0]
        assert (letter["stage"], letter["reason"]) == (stage, reason), (key, letter["reason"])
        assert results.dead_headers[key]["stage"] == stage
        # Fused, an infer dead letter's origin is the raw record: images.decoded never saw it.
        assert letter["origin_topic"] == pipeline.prefix + "images.raw"
        assert (letter["origin_partition"], letter["origin_offset"]) == landed[key]
        assert letter["payload"]  # decode: the raw bytes; infer: the decoded record
    assert pipeline.decoded_written() == 0
    assert pipeline.written(INFERRED) == 0

    def stage_health(x: Worker) -> dict[str, dict[str, Any]]:
        return {s["stage"]: s for s in (x.health() or {"stages": []})["stages"]}

    # The health view counts a batch just after its outputs are acknowledged.
    wait_for(
        "decode's health to count every raw record",
        lambda: stage_health(w)["decode"]["records_in"] >= len(items),
        timeout=30,
    )
    assert stage_health(w)["infer"]["records_in"] == 0
    assert stage_health(w)["postprocess"]["records_in"] == 0

    # A decode-only worker beside the fused one: unfused, it writes images.decoded.
    d = pipeline.start_worker(PIPELINE_STREAM__WORKER__STAGES='["decode"]', **model)
    raw_parts = {t.name: t.partitions for t in topic_registry()}["images.raw"]

    def shared() -> dict[str, list[int]] | None:
        for x in (w, d):
            if x.proc.poll() is not None:
                raise AssertionError(f"worker exited with {x.proc.returncode}:\n{x.tail()}")
        mine, its = d.assigned().get("decode"), w.assigned()
        if not mine or set(mine) | set(its.get("decode", [])) != set(range(raw_parts)):
            return None
        return {"decode-only": mine, **its}

    owned = wait_for("the decode-only worker to share images.raw", shared, timeout=120)
    later: list[tuple[str | None, bytes | None]] = [
        (f"mixed-{i}", photo("coffee.png")) for i in range(12)
    ]
    later.append(("mixed-black", black_png()))
    landed = pipeline.produce(later)
    via_decode_only = [k for k, (part, _) in landed.items() if part in owned["decode-only"]]
    assert via_decode_only, f"no record landed on the decode-only worker's partitions {owned}"
    later_ids = {k for k, _ in later if k}
    results = read_results(pipeline, f"{unique_name}-read-2", later_ids, timeout=240)
    assert {k for k in later_ids if k != "mixed-black"} <= set(results.predictions)
    assert results.dead["mixed-black"][0]["reason"] == "non-finite"
    assert pipeline.decoded_written() >= len(via_decode_only)
    wait_for(
        "the fused worker's infer agent to count what came through images.decoded",
        lambda: stage_health(w)["infer"]["records_in"] >= len(via_decode_only),
        timeout=30,
    )
    # Its inferences crossed images.inferred into the fused worker's postprocess agent
    # (the black image stops at infer, as a dead letter).
    inferred = [k for k in via_decode_only if k != "mixed-black"]
    assert pipeline.written(INFERRED) >= len(inferred)
    wait_for(
        "the fused worker's postprocess agent to count what came through images.inferred",
        lambda: stage_health(w)["postprocess"]["records_in"] >= len(inferred),
        timeout=30,
    )


def test_sigkill_one_of_two_workers_mid_stream_loses_nothing(
    pipeline: Pipeline, unique_name: str
) -> None:
    small_batches = {"PIPELINE_STREAM__WORKER__BATCH_SIZE": "4"}
    a = pipeline.start_worker(**small_batches)
    b = pipeline.start_worker(**small_batches)
    pipeline.wait_assigned([a, b])
    names = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"]
    # Enough work to still be mid-stream at a poll: with the padding folded into the
    # convolutions, two workers stored 48 images between two polls once.
    items = [(f"k{i:03d}", photo(names[i % 4])) for i in range(144)]
    ids = {k for k, _ in items}
    pipeline.produce(items)

    results = Results(pipeline, f"{unique_name}-read")
    killed: list[int] = []

    def kill_when_busy() -> None:
        # Mid-stream: some results out, many still to go, and the victim has work.
        if killed or not (4 <= len(results.predictions) <= len(ids) - 12):
            return
        h = a.health()
        if h and any(s["records_in"] > 0 for s in h["stages"]):
            os.kill(a.proc.pid, signal.SIGKILL)
            killed.append(len(results.predictions))

    try:
        results.wait_all(ids, timeout=420, progress=kill_when_busy)
    finally:
        results.close()
    assert killed, "the stream finished before a worker could be killed mid-stream"
    assert a.proc.wait(timeout=10) == -signal.SIGKILL
    assert b.proc.poll() is None, "the surviving worker died"
    assert not results.dead, {k: v[0]["reason"] for k, v in results.dead.items()}
    assert ids <= set(results.predictions)
    print(f"killed after {killed[0]} of {len(ids)} predictions; "
          f"{sum(len(v) for v in results.predictions.values()) - len(ids)} re-deliveries")  # fmt: skip


def test_a_partition_nobody_committed_is_read_from_its_start_after_the_workers_seek(
    pipeline: Pipeline, unique_name: str
) -> None:
    """Faust drops the records it fetched while a rebalance is under way and then seeks
    to the committed offsets. aiokafka's seek_to_committed leaves a partition with no
    committed offset where it is, after those records: in CI the survivor of a SIGKILL
    was never handed 5 records of the dead worker's partition. The worker's seek
    (faust_seam) puts such a partition back at its start."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.helpers import create_ssl_context

    from stream_app.faust_seam import seek_to_committed_or_reset

    landed = pipeline.produce([(f"n{i:02d}", b"not an image") for i in range(12)])
    per_partition = Counter(part for part, _ in landed.values())
    tps = [TopicPartition(pipeline.prefix + "images.raw", p) for p in per_partition]
    s = pipeline.settings
    auth: dict[str, Any] = {}
    if s.auth is not None:
        auth = dict(
            security_protocol="SASL_SSL",
            sasl_mechanism=s.auth.mechanism,
            sasl_plain_username=s.auth.principal,
            sasl_plain_password=s.auth.secret(),
            ssl_context=create_ssl_context(cafile=str(s.auth.ca_file)),
        )

    async def positions_after(seek: Callable[[Any], Any]) -> dict[int, int]:
        """Read every record (no commit), seek, and report where each partition stands."""
        c = AIOKafkaConsumer(
            bootstrap_servers=pipeline.bootstrap, group_id=f"{unique_name}-seek",
            enable_auto_commit=False, auto_offset_reset="earliest", **auth,
        )  # fmt: skip
        await c.start()
        try:
            c.assign(tps)
            got, deadline = 0, time.monotonic() + 60
            while got < len(landed) and time.monotonic() < deadline:
                got += sum(len(v) for v in (await c.getmany(timeout_ms=1000)).values())
            assert got == len(landed), f"read {got} of {len(landed)} records"
            await seek(c)
            return {tp.partition: await c.position(tp) for tp in tps}
        finally:
            await c.stop()

    # aiokafka alone: every partition stays after the records it had fetched.
    assert asyncio.run(positions_after(lambda c: c.seek_to_committed())) == dict(per_partition)
    reset = asyncio.run(positions_after(lambda c: seek_to_committed_or_reset(c, "earliest")))
    assert reset == {p: 0 for p in per_partition}


# Once (CI, before the supervisor and watchdog of issue 11) a record decoded after the
# restart was never picked up by infer (infer in=5, decode out=6, health lag 0 from a stale
# high-water mark). Records are produced both during the rebalance the kill starts and
# after the replacement, so the test crosses that window; strict since it passed 3 of 3
# runs under the lock. A recurrence is what the worker's stall watchdog (exit 76) and the
# supervisor's restart are for: the failure message carries both workers' stage health.
def test_workers_supervisor_restarts_a_killed_worker(pipeline: Pipeline, unique_name: str) -> None:
    base = free_port(consecutive=2)
    sup = pipeline.start_worker("workers", "-n", "2", port=base)
    children = [
        Worker(sup.proc, base, sup.log),
        Worker(sup.proc, base + 1, sup.log),
    ]

    def pids() -> list[int] | None:
        hs = [c.health() for c in children]
        return [h["pid"] for h in hs] if all(hs) else None  # type: ignore[index]

    first = wait_for("both supervised workers to serve /health/", pids, timeout=180)
    pipeline.wait_assigned(children)
    os.kill(first[0], signal.SIGKILL)
    during = [(f"d{i}", photo("coffee.png")) for i in range(6)]
    pipeline.produce(during)  # while the group rebalances around the dead worker

    def replaced() -> bool:
        now = pids()
        return bool(now) and now[0] != first[0] and now[1] == first[1]  # type: ignore[index]

    wait_for("the supervisor to restart the killed worker", replaced, timeout=120)
    assert sup.proc.poll() is None
    after = [(f"s{i}", photo("coffee.png")) for i in range(6)]
    pipeline.produce(after)
    ids = {k for k, _ in during + after}
    try:
        results = read_results(pipeline, f"{unique_name}-read", ids, timeout=240)
    except AssertionError as exc:
        health = [{s["stage"]: {k: s.get(k) for k in ("records_in", "records_out", "lag")}
                   for s in (c.health() or {"stages": []})["stages"]} for c in children]  # fmt: skip
        raise AssertionError(f"{exc}\nworker stage health: {health}\n{sup.tail(60)}") from None
    assert ids <= set(results.predictions)
    assert "giving up on" not in sup.log.read_text(errors="replace"), "a worker crash-looped"
    sup.proc.send_signal(signal.SIGTERM)
    assert sup.proc.wait(timeout=90) == 0
    assert all(c.health() is None for c in children), "a worker outlived its supervisor"
