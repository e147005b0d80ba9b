"""Run the Kafka and Cassandra clusters as local processes (no Docker).

Services never import this package; `python -m infra` and the tests do.
"""

from infra.local.cluster import LocalCluster
from infra.local.errors import InfraError
from infra.local.layout import resolve_run_dir
from infra.local.topology import (
    CASSANDRA,
    KAFKA,
    NodeSpec,
    cassandra_contact_points,
    kafka_bootstrap,
    node_by_name,
)

__all__ = [
    "CASSANDRA",
    "KAFKA",
    "InfraError",
    "LocalCluster",
    "NodeSpec",
    "cassandra_contact_points",
    "kafka_bootstrap",
    "node_by_name",
    "resolve_run_dir",
]
