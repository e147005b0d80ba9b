"""Who is in the local clusters: node names, kinds, addresses and ports.

Kafka nodes are combined broker+controller processes on 127.0.0.1 with distinct ports;
Cassandra nodes use the same ports on distinct loopback addresses 127.0.0.N.

`PIPELINE_INFRA_INSTANCE=k` (default 0) shifts a whole second set of clusters out of the
way of the first: Kafka and JMX ports by 1000·k, Cassandra to 127.0.0.(3k+1..3k+3). Use it
with its own run dir (PIPELINE_RUN_DIR) to run, say, a secure cluster beside a plaintext
one; clients find it through PIPELINE_KAFKA__BOOTSTRAP_SERVERS and
PIPELINE_CASSANDRA__CONTACT_POINTS (or the test backend, which asks this module).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

KAFKA = "kafka"
CASSANDRA = "cassandra"
KINDS = (KAFKA, CASSANDRA)
MAX_NODES = 3

KAFKA_HOST = "127.0.0.1"
KAFKA_BROKER_PORT_BASE = 19091  # kafka-1 -> 19092
KAFKA_CONTROLLER_PORT_BASE = 19191  # kafka-1 -> 19192
CASSANDRA_NATIVE_PORT = 9042
CASSANDRA_STORAGE_PORT = 7000
CASSANDRA_JMX_PORT_BASE = 7099  # cassandra-1 -> 7199, -2 -> 7299, -3 -> 7399
INSTANCE_ENV = "PIPELINE_INFRA_INSTANCE"
MAX_INSTANCE = 9


def instance() -> int:
    """Which set of clusters this process addresses (read at call time, not import)."""
    raw = os.environ.get(INSTANCE_ENV, "").strip() or "0"
    if not raw.isdigit() or int(raw) > MAX_INSTANCE:
        raise ValueError(f"{INSTANCE_ENV}={raw!r}: use an integer 0..{MAX_INSTANCE}")
    return int(raw)


@dataclass(frozen=True)
class NodeSpec:
    name: str
    kind: str
    index: int  # 1-based
    host: str
    port: int  # the client port: Kafka broker listener or CQL native port
    ports: dict[str, int] = field(default_factory=dict)  # every port it binds, by role

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def kafka_node(i: int) -> NodeSpec:
    shift = 1000 * instance()
    broker = KAFKA_BROKER_PORT_BASE + shift + i
    controller = KAFKA_CONTROLLER_PORT_BASE + shift + i
    return NodeSpec(
        name=f"kafka-{i}",
        kind=KAFKA,
        index=i,
        host=KAFKA_HOST,
        port=broker,
        ports={"broker": broker, "controller": controller},
    )


def cassandra_node(i: int) -> NodeSpec:
    k = instance()
    return NodeSpec(
        name=f"cassandra-{i}",
        kind=CASSANDRA,
        index=i,
        host=f"127.0.0.{3 * k + i}",
        port=CASSANDRA_NATIVE_PORT,
        ports={
            "native": CASSANDRA_NATIVE_PORT,
            "storage": CASSANDRA_STORAGE_PORT,
            "jmx": CASSANDRA_JMX_PORT_BASE + 1000 * k + 100 * i,
        },
    )


def nodes(kind: str, count: int) -> list[NodeSpec]:
    if kind not in KINDS:
        raise ValueError(f"unknown node kind {kind!r}")
    if not 1 <= count <= MAX_NODES:
        raise ValueError(f"{kind} node count must be 1..{MAX_NODES}, got {count}")
    make = kafka_node if kind == KAFKA else cassandra_node
    return [make(i) for i in range(1, count + 1)]


def parse_name(name: str) -> tuple[str, int]:
    """'kafka-2' -> ('kafka', 2); ValueError for anything else."""
    kind, sep, idx = name.partition("-")
    if not sep or kind not in KINDS or not idx.isdigit() or not 1 <= int(idx) <= MAX_NODES:
        raise ValueError(
            f"unknown node {name!r}: use kafka-1..{MAX_NODES} or cassandra-1..{MAX_NODES}"
        )
    return kind, int(idx)


def node_by_name(name: str) -> NodeSpec:
    kind, i = parse_name(name)
    return kafka_node(i) if kind == KAFKA else cassandra_node(i)


def kafka_bootstrap(count: int) -> str:
    return ",".join(n.address for n in nodes(KAFKA, count))


def cassandra_contact_points(count: int) -> list[str]:
    return [n.host for n in nodes(CASSANDRA, count)]
