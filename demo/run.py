"""`make demo`: clusters up, pipeline up, ~300 sample photos through it, a report, all down.

Stages print one line each; the wait shows live progress. Everything this run started is
stopped at the end unless KEEP=1 (or --keep). The summary is also written as JSON to
`<run dir>/demo-summary.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from consumers.settings import SinkSettings
from demo.accounting import Accounting, latencies_ms, percentile, wait_accounted
from demo.progress import StageProgress
from infra import cassandra_session, groups
from infra.cassandra_roles import READER, as_role
from infra.kafka_retry import KafkaCallFailed
from infra.logs import configure
from infra.settings import PipelineSettings
from orchestration import api as api_service
from orchestration.readiness import NotReady, start_and_wait
from orchestration.service_facts import stream_group
from orchestration.services import Services, pipeline_specs
from producers.publisher import publish_items
from producers.samples import sample_items
from producers.settings import ProducerSettings
from schemas import topics
from stream_app.settings import StreamSettings

log = logging.getLogger("demo")


def step(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def _infra(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "infra", *args], text=True, capture_output=True)


def clusters_running() -> bool:
    res = _infra("status", "--json")
    if res.returncode != 0:
        return False
    try:
        st = json.loads(res.stdout)
    except json.JSONDecodeError:
        return False
    return st["kafka"]["brokers"] >= 3 and st["cassandra"]["up_nodes"] >= 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    p.add_argument("--variants", type=int, default=60, help="variants per sample photo (5 photos)")
    p.add_argument("--corrupt", type=int, default=6, help="deliberately corrupt images to add")
    p.add_argument("--workers", type=int, default=2, help="stream worker processes")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for accounting")
    p.add_argument(
        "--keep",
        action="store_true",
        default=os.environ.get("KEEP") == "1",
        help="leave clusters and services running (also KEEP=1)",
    )
    p.add_argument("--run-dir", default=os.environ.get("PIPELINE_RUN_DIR", ".run"))
    return p


def progress_topics(decode_infer_fused: bool, postprocess_fused: bool) -> dict[str, str]:
    """Progress column -> the stage topic whose new records it counts. Workers running
    stages fused (the settings the workers started here inherit from this environment)
    never write the topics between those stages: with decode and infer fused (the
    default) an image is decoded and inferred in the same batch, so "inferred" is
    decode's progress too and a "decoded" column would stay at 0; with postprocess fused
    as well, "predicted" (images.predictions) is the first topic written."""
    columns = {} if decode_infer_fused else {"decoded": topics.DECODED}
    if postprocess_fused:
        columns["predicted"] = topics.PREDICTIONS
    else:
        columns["inferred"] = topics.INFERRED
    return columns


def _done(acc: Accounting, produced_at: dict[str, int]) -> tuple[int, int]:
    """Stored/rejected rows written for this run's publication (not an older one)."""
    stored = sum(1 for i, r in acc.stored.items() if (r.get("produced_at") or 0) >= produced_at[i])
    rejected = sum(
        1 for i, r in acc.rejected.items() if (r.get("produced_at") or 0) >= produced_at[i]
    )
    return stored, rejected


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure(os.environ.get("PIPELINE_LOG_LEVEL", "WARNING"))
    run_dir = Path(args.run_dir)
    os.environ.setdefault("PIPELINE_RUN_DIR", str(run_dir))
    t_start = time.monotonic()
    started_clusters = False
    services = Services(run_dir)
    try:
        if clusters_running():
            step("clusters: already up (Kafka 3 brokers, Cassandra 3 nodes)")
            if (r := _infra("provision")).returncode != 0:
                print(r.stdout + r.stderr, file=sys.stderr)
                return 1
        else:
            step("clusters: starting Kafka (3 brokers) and Cassandra (3 nodes), then provisioning")
            started_clusters = True
            if subprocess.run([sys.executable, "-m", "infra", "up"]).returncode != 0:
                print("demo: the clusters did not start (see above)", file=sys.stderr)
                return 1
        sink_settings = SinkSettings()
        # The demo is the operator: group and offset probes run as the admin principal
        # (each service's own principal sees only its topics and group).
        kafka = PipelineSettings().kafka
        step(f"pipeline: starting {args.workers} stream workers and the sink, supervised")
        try:
            start_and_wait(
                services,
                pipeline_specs(workers=args.workers),
                kafka,
                {sink_settings.sink.group_id: 1, stream_group(): args.workers},
                timeout_s=420,  # the sink's 120 s and the workers' 300 s of before
                forget_others=True,  # stopped records of an older layout
            )
        except NotReady as exc:
            print(exc.tails, file=sys.stderr)
            print(f"demo: pipeline not ready: {exc.cause}", file=sys.stderr)
            return 1
        try:  # the live page (read API): a failure to serve it does not stop the demo
            step(f"web page: {api_service.start(services, run_dir).page_url()}")
        except (TimeoutError, OSError) as exc:
            print(f"    web page not available: {exc} (log: {services.log_file('api')})")
        w = StreamSettings().stream.worker
        counted = progress_topics(w.fuse_decode_infer, w.fuse_postprocess)
        before = groups.end_offsets(kafka, list(counted.values()))

        step(f"publish: 5 sample photos x {args.variants} variants + {args.corrupt} corrupt files")
        t_pub = time.time()
        result = publish_items(
            sample_items(repeat=args.variants, corrupt=args.corrupt, seed=int(t_pub)),
            ProducerSettings(),
        )
        s = result.summary
        print(f"    delivered {s.delivered}, failed {s.failed}, skipped {s.skipped}")
        produced_at = dict(result.delivered)
        ids = list(produced_at)

        step("wait: until every image is stored or rejected")
        # Reads as the reader role: the sink's role may only write (secure mode).
        cluster, session = cassandra_session.connect(as_role(sink_settings, READER))
        keyspace = sink_settings.cassandra.keyspace
        prog = StageProgress(len(ids), ["published", *counted, "stored", "rejected"])
        acc, counts = wait_accounted(
            session,
            keyspace,
            ids,
            kafka=kafka,
            counted=counted,
            before=before,
            timeout_s=args.timeout,
            done=lambda a: _done(a, produced_at),
            progress=prog.update,
        )
        prog.close(counts)
        t_end = time.time()
        summary = _summarize(acc, produced_at, ids, t_pub, t_end, s)
        _print_report(acc, summary)
        (run_dir / "demo-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"    summary written to {run_dir / 'demo-summary.json'}")
        cluster.shutdown()
        return 0 if summary["missing"] == 0 and s.failed == 0 else 1
    except KafkaCallFailed as exc:  # already retried until its deadline: one line
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            step(
                "KEEP=1: leaving everything running (`python -m orchestration pipeline down`, `make down`)"
            )
        else:
            step("stop: pipeline services" + (" and clusters" if started_clusters else ""))
            services.stop_all()
            if started_clusters:
                _infra("down")
        print(f"    demo wall time {time.monotonic() - t_start:.0f}s")


def _summarize(
    acc: Accounting,
    produced_at: dict[str, int],
    ids: list[str],
    t_pub: float,
    t_end: float,
    pub: Any,
) -> dict[str, Any]:
    lat = latencies_ms(acc)
    stored_times = [
        r["stored_at"]
        for r in list(acc.stored.values()) + list(acc.rejected.values())
        if r.get("stored_at")
    ]
    span_s = (max(stored_times) / 1000.0 - t_pub) if stored_times else (t_end - t_pub)
    reasons: dict[str, int] = {}
    for r in acc.rejected.values():
        key = f"{r.get('stage')}:{r.get('reason')}"
        reasons[key] = reasons.get(key, 0) + 1
    return {
        "produced": len(ids),
        "stored": len(acc.stored),
        "rejected": len(acc.rejected),
        "missing": len(acc.missing),
        "in_both_tables": len(acc.both),
        "rejections_by_reason": reasons,
        "producer_failed": pub.failed,
        "images_per_s": round(len(ids) / span_s, 2) if span_s > 0 else None,
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "wall_s": round(t_end - t_pub, 1),
    }


def _print_report(acc: Accounting, summary: dict[str, Any]) -> None:
    # One row per sample photo plus a few variants: the table stays readable.
    shown: dict[str, int] = {}
    rows = []
    for image_id, r in sorted(acc.stored.items(), key=lambda kv: kv[1].get("source") or ""):
        source = str(r.get("source") or "")
        base = source.split("/")[1] if "/" in source else source
        if shown.get(base, 0) >= 2:
            continue
        shown[base] = shown.get(base, 0) + 1
        top = ", ".join(f"{lbl} {score:.2f}" for _, lbl, score in (r.get("top_k") or [])[:3])
        rows.append((r.get("source") or image_id[:12], top))
    print("\n  image                          top-3 labels (score)")
    print("  " + "-" * 90)
    for src, top in rows:
        print(f"  {src:<30} {top}")
    if acc.rejected:
        print("\n  rejected                       stage / reason")
        print("  " + "-" * 90)
        for r in list(acc.rejected.values())[:10]:
            print(
                f"  {(r.get('source') or '')[:30]:<30} {r.get('stage')} / {r.get('reason')}: "
                f"{(r.get('message') or '')[:60]}"
            )
    print(
        f"\n  images in {summary['produced']}, stored {summary['stored']}, "
        f"rejected {summary['rejected']}, missing: {summary['missing']}"
    )
    print(f"  rejections by reason: {summary['rejections_by_reason']}")
    p50, p99 = summary["p50_ms"], summary["p99_ms"]
    print(
        f"  throughput {summary['images_per_s']} images/s; produce-to-stored latency "
        f"p50 {p50:.0f} ms, p99 {p99:.0f} ms"
        if p50 is not None
        else "  no latency data"
    )
