"""Which Cassandra nodes a backup covers and where each keeps its data: the local clusters
`python -m infra up` runs (one run dir, one data dir per node, local JMX per node)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from infra.backup.manifest import BackupError
from infra.local import CASSANDRA, LocalCluster
from infra.local.cassandra_node import data_dirs
from infra.local.topology import NodeSpec


@dataclass(frozen=True)
class Node:
    spec: NodeSpec
    data_dir: Path  # Cassandra's data_file_directories entry: <ks>/<table>-<id>/...

    @property
    def name(self) -> str:
        return self.spec.name


def local_nodes(run_dir: Path, require_up: bool = True) -> list[Node]:
    """Every recorded Cassandra node; BackupError naming the first one that is down."""
    lc = LocalCluster(run_dir)
    if not lc.node_count(CASSANDRA):
        raise BackupError(
            f"no local Cassandra cluster recorded in {run_dir}: backup and "
            f"restore work on the nodes `python -m infra up` runs"
        )
    out = [Node(n, data_dirs(lc.dirs(n).data)["data"]) for n in lc.known_nodes(CASSANDRA)]
    if require_up:
        for n in out:
            if lc.pid(n.spec) is None:
                raise BackupError(
                    f"{n.name} is down: backup and restore need every node "
                    f"(python -m infra start-node {n.name})"
                )
    return out


def snapshot_dirs(node: Node, keyspace: str, tag: str) -> dict[str, Path]:
    """{table: its snapshot dir} for the tables that have a snapshot `tag` on this node."""
    out: dict[str, Path] = {}
    for d in sorted((node.data_dir / keyspace).glob(f"*/snapshots/{tag}")):
        table = d.parent.parent.name.rsplit("-", 1)[0]
        if table in out:
            raise BackupError(
                f"{node.name}: two snapshot dirs for {keyspace}.{table}: {out[table]} and {d}"
            )
        out[table] = d
    return out
