"""Where a benchmark runs: its own topics, keyspace, consumer groups and services.

Each benchmark uses its own copies of the pipeline topics (prefix `bench.t.` for the
transport, `bench.p.` for the pipeline; same partitions, RF 3, min.insync.replicas 2)
and the keyspace `vision_bench` (same tables, RF 3), so it never mixes with other
people's data on the shared clusters, nor the two benchmarks with each other.
Consumer groups are fixed names: a run resumes where the last one stopped, and waits
until every group has caught up before it publishes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from orchestration.services import ServiceSpec
from schemas import topics

PREFIX = "bench.t."  # transport through bench.relay processes
FAUST_PREFIX = "bench.f."  # transport through the stream workers in relay mode
PIPELINE_PREFIX = "bench.p."
KEYSPACE = "vision_bench"
RELAY_GROUP = "bench-relay-{stage}"
TRANSPORT_SINK_GROUP = "bench-transport-sink"
PIPELINE_SINK_GROUP = "bench-pipeline-sink"
PIPELINE_APP_ID = "bench-torchstream"
FAUST_RELAY_APP_ID = "bench-faust-relay"
FAUST_SINK_GROUP = "bench-faust-sink"
FAUST_WEB_PORT_BASE = 6186
# Topic prefix -> (stream group = Faust app id, sink group) the services there use; on a
# secure cluster the `stream` and `sink` principals are granted exactly these. The relays
# of bench.t. log in as admin, so that prefix's stream group is the pipeline default.
GROUPS: dict[str, tuple[str | None, str]] = {
    PREFIX: (None, TRANSPORT_SINK_GROUP),
    PIPELINE_PREFIX: (PIPELINE_APP_ID, PIPELINE_SINK_GROUP),
    FAUST_PREFIX: (FAUST_RELAY_APP_ID, FAUST_SINK_GROUP),
}


@dataclass(frozen=True)
class Hop:
    stage: str
    source: str
    sink: str
    group: str


def transport_hops(prefix: str = PREFIX) -> list[Hop]:
    return [
        Hop(s.name, prefix + s.source, prefix + s.sink, RELAY_GROUP.format(stage=s.name))
        for s in topics.STAGES
    ]


@dataclass(frozen=True)
class TransportKind:
    """Which stages move the transport benchmark's events: own topics, groups, sink."""

    name: str  # "relay" (bench.relay processes) or "faust" (stream workers, relay mode)
    prefix: str
    sink_group: str

    def stage_groups(self) -> dict[str, list[str]]:
        """Consumer group -> the topics it consumes, for the stages (not the sink)."""
        if self.name == "faust":
            return {FAUST_RELAY_APP_ID: [self.prefix + s.source for s in topics.STAGES]}
        return {h.group: [h.source] for h in transport_hops(self.prefix)}


RELAYS = TransportKind("relay", PREFIX, TRANSPORT_SINK_GROUP)
FAUST = TransportKind("faust", FAUST_PREFIX, FAUST_SINK_GROUP)


def sink_env(prefix: str, group: str, keyspace: str) -> dict[str, str]:
    """Environment that points `python -m consumers sink` at prefixed topics and a keyspace."""
    return {
        "PIPELINE_SINK__GROUP_ID": group,
        "PIPELINE_SINK__PREDICTIONS_TOPIC": prefix + topics.PREDICTIONS,
        "PIPELINE_SINK__DLQ_TOPICS": ",".join(prefix + s.dlq for s in topics.STAGES),
        "PIPELINE_SINK__DEAD_LETTER_TOPIC": prefix + topics.SINK_DLQ,
        "PIPELINE_CASSANDRA__KEYSPACE": keyspace,
    }


def transport_specs(
    sinks: int = 1,
    relays_per_hop: int = 1,
    linger_ms: int | None = None,
    prefix: str = PREFIX,
    keyspace: str = KEYSPACE,
) -> list[ServiceSpec]:
    py = sys.executable
    specs = []
    for hop in transport_hops(prefix):
        argv = [
            py,
            "-m",
            "bench.relay",
            "--source",
            hop.source,
            "--sink",
            hop.sink,
            "--group",
            hop.group,
        ]
        if linger_ms is not None:
            argv += ["--linger-ms", str(linger_ms)]
        specs += [ServiceSpec(f"relay-{hop.stage}-{i}", argv) for i in range(1, relays_per_hop + 1)]
    env = sink_env(prefix, TRANSPORT_SINK_GROUP, keyspace)
    specs += [
        ServiceSpec(f"tsink-{i}", [py, "-m", "consumers", "sink"], env) for i in range(1, sinks + 1)
    ]
    return specs


def _workers_and_sinks(
    names: tuple[str, str],
    workers: int,
    sinks: int,
    web_port_base: int,
    worker_env: dict[str, str],
    prefix: str,
    sink_group: str,
    keyspace: str,
) -> list[ServiceSpec]:
    """`workers` real stream workers (one web port each) and `sinks` real sinks on `prefix`."""
    py = sys.executable
    specs = [
        ServiceSpec(
            f"{names[0]}-{i}",
            [py, "-m", "stream_app", "worker", "--web-port", str(web_port_base + i)],
            {"PIPELINE_STREAM__TOPIC_PREFIX": prefix, **worker_env},
        )
        for i in range(1, workers + 1)
    ]
    senv = sink_env(prefix, sink_group, keyspace)
    specs += [
        ServiceSpec(f"{names[1]}-{i}", [py, "-m", "consumers", "sink"], senv)
        for i in range(1, sinks + 1)
    ]
    return specs


def faust_transport_specs(
    workers: int = 2,
    sinks: int = 1,
    run_dir: str = ".run/bench",
    keyspace: str = KEYSPACE,
) -> list[ServiceSpec]:
    """The real stream workers in relay mode (no model) and the real sink on bench.f.*."""
    env = {
        "PIPELINE_STREAM__WORKER__APP_ID": FAUST_RELAY_APP_ID,
        "PIPELINE_STREAM__WORKER__DATA_DIR": f"{run_dir}/stream_app",
        "PIPELINE_STREAM__WORKER__RELAY": "true",
    }
    return _workers_and_sinks(
        ("frelay", "fsink"), workers, sinks, FAUST_WEB_PORT_BASE, env,
        FAUST_PREFIX, FAUST_SINK_GROUP, keyspace,
    )  # fmt: skip


def pipeline_specs(
    workers: int = 2,
    sinks: int = 1,
    web_port_base: int = 6166,
    run_dir: str = ".run/bench",
    prefix: str = PIPELINE_PREFIX,
    keyspace: str = KEYSPACE,
) -> list[ServiceSpec]:
    """The real stream workers and sink, pointed at the bench topics and keyspace."""
    env = {
        "PIPELINE_STREAM__WORKER__APP_ID": PIPELINE_APP_ID,
        "PIPELINE_STREAM__WORKER__DATA_DIR": f"{run_dir}/stream_app",
    }
    return _workers_and_sinks(
        ("worker", "psink"), workers, sinks, web_port_base, env,
        prefix, PIPELINE_SINK_GROUP, keyspace,
    )  # fmt: skip


def web_ports(workers: int, web_port_base: int = 6166) -> list[int]:
    return [web_port_base + i for i in range(1, workers + 1)]
