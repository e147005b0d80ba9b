"""Cassandra-only: the sink's write path alone, no Kafka.

The sink's own pieces (consumers.records.map_record, consumers.statements,
consumers.writer.AsyncWriter) write `count` prediction events (2 rows each) into
`vision_bench` at LOCAL_QUORUM from this process. What it reaches is the ceiling of
the transport's last hop; its CPU split (this client vs the Cassandra nodes) says
whether a faster sink or a lighter write would move that ceiling. `protocol_version`
and `concurrency` let one compare driver settings without touching the sink.
"""

from __future__ import annotations

import time
from typing import Any

from bench import topology
from bench.cpu import CpuMeter, cluster_pids
from bench.stats import throughput
from bench.transport import prediction_event
from consumers.records import KafkaRecord, map_record
from consumers.settings import RetrySettings
from consumers.statements import write_statements
from consumers.writer import AsyncWriter, prepare_writes
from infra.cassandra_session import consistency_level, security_kwargs
from infra.settings import CassandraSettings, PipelineSettings
from schemas import topics
from schemas.raw import now_ms


def session_for(settings: CassandraSettings, protocol_version: int) -> tuple[Any, Any]:
    """Like infra.cassandra_session.connect, with the protocol version as a parameter."""
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(
            DCAwareRoundRobinPolicy(local_dc=settings.local_datacenter)
        ),
        consistency_level=consistency_level(settings.read_consistency),
        request_timeout=settings.request_timeout_s,
    )
    cluster = Cluster(
        contact_points=settings.contact_points,
        port=settings.port,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        protocol_version=protocol_version,
        connect_timeout=10,
        **security_kwargs(settings),  # TLS and the role's login on a secure cluster
    )
    return cluster, cluster.connect()


def run_cassandra_only(
    settings: CassandraSettings,
    count: int,
    concurrency: int = 64,
    protocol_version: int = 5,
    tag: str = "",
    batch_rows: int = 1,
) -> dict[str, Any]:
    """The sink's `AsyncWriter` with `concurrency` requests in flight, each carrying up to
    `batch_rows` rows (1 = a request per row, as the sink did before batching)."""
    cluster, session = session_for(settings, protocol_version)
    try:
        prepared = prepare_writes(
            session,
            write_statements(topology.KEYSPACE),
            consistency_level(settings.write_consistency),
        )
        writer = AsyncWriter(
            session, prepared, concurrency=concurrency, retry=RetrySettings(), batch_rows=batch_rows
        )
        pred_topic = topics.PREDICTIONS
        tag = tag or str(int(time.time()))
        recs = []
        for i in range(count):
            image_id = f"bench-c-{tag}-{i:07d}"
            value, headers = prediction_event(image_id, i, now_ms())
            recs.append(KafkaRecord(pred_topic, 0, i, image_id.encode(), value, headers, now_ms()))
        meter = CpuMeter(cluster_pids())
        meter.sample_background()
        a = meter.snapshot()
        first = now_ms()
        rows = 0
        for rec in recs:
            for w in map_record(rec, pred_topic).writes:
                writer.submit(w, None)
                rows += 1
            if writer.backlog > 4 * concurrency * max(1, batch_rows):
                writer.pump(0.05)
        failed = 0
        while writer.backlog:
            for _, _, failure in writer.pump(0.05):
                failed += failure is not None
        last = now_ms()
        b = meter.snapshot()
        cpu = meter.diff(a, b, count)
        return {
            "events": count,
            "rows": rows,
            "concurrency": concurrency,
            "protocol_version": protocol_version,
            "failed": failed,
            "batch_rows": batch_rows,
            "retries": writer.stats.retries,
            "requests": writer.stats.requests,
            "events_per_s": round(throughput(count, first, last) or 0, 1),
            "rows_per_s": round(throughput(rows, first, last) or 0, 1),
            "cpu": cpu,
        }
    finally:
        cluster.shutdown()


CONFIGS = {
    "rows-c64 (no batching)": {"concurrency": 64},
    "batch32-c16": {"concurrency": 16, "batch_rows": 32},
    "batch32-c64 (the sink's default)": {"concurrency": 64, "batch_rows": 32},
    "batch64-c16": {"concurrency": 16, "batch_rows": 64},
}


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.cassandra_only [--events N] [--rounds R]`: the sink's write path
    alone in several configurations, interleaved round by round (shared machine)."""
    import argparse
    import datetime as dt
    import json
    from pathlib import Path

    from bench.stats import summarize
    from infra.logs import configure

    ap = argparse.ArgumentParser(prog="python -m bench.cassandra_only", description=main.__doc__)
    ap.add_argument("--events", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    configure("ERROR")
    settings = PipelineSettings().cassandra  # the operator's role and TLS, in secure mode too
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in CONFIGS}
    for rnd in range(args.rounds):
        for name, cfg in CONFIGS.items():
            r = run_cassandra_only(settings, args.events, tag=f"{rnd}-{int(time.time())}", **cfg)
            runs[name].append(r)
            print(
                f"round {rnd + 1} {name:<28} {r['events_per_s']:8.1f} events/s  CPU ms/event "
                f"{r['cpu']['cpu_ms_per_item']}",
                flush=True,
            )
    out = {"events": args.events, "rounds": args.rounds, "configs": {}}
    for name, rs in runs.items():
        out["configs"][name] = {
            "events_per_s": summarize([r["events_per_s"] for r in rs]),
            "cassandra_cpu_ms_per_event": summarize(
                [r["cpu"]["cpu_ms_per_item"].get("cassandra", 0) for r in rs]
            ),
            "client_cpu_ms_per_event": summarize(
                [r["cpu"]["cpu_ms_per_item"]["bench"] for r in rs]
            ),
            "runs": rs,
        }
        s = out["configs"][name]
        print(
            f"{name:<28} events/s {s['events_per_s']['median']} [{s['events_per_s']['min']}.."
            f"{s['events_per_s']['max']}]  cassandra CPU ms/event "
            f"{s['cassandra_cpu_ms_per_event']['median']}  client CPU ms/event "
            f"{s['client_cpu_ms_per_event']['median']}"
        )
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    path = results / f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-cassandra-only.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
