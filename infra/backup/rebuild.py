"""Bring back a Cassandra node whose disk was lost: the node comes back empty under a new
identity and a full repair copies every row to it from the two others.

Steps (the node must be down, its data gone):
1. find the lost node's host id in a live peer's `nodetool status`;
2. `nodetool removenode <host id>` on that peer: the ring forgets the dead identity
   (a node starting on the same address with a new identity is refused otherwise);
3. start the node: an empty data dir makes it join with a new host id (the local
   cluster runs `auto_bootstrap: false`, so it streams nothing yet);
4. `nodetool repair --full` on it, every keyspace with RF > 1: it fetches every row.

Why not `replace_address_first_boot`: the replacement bootstraps by streaming, which with
`auto_bootstrap: false` Cassandra only allows as an "unsafe replace" followed by the same
repair; and it needs a JVM flag the local node launcher does not take. With RF 3 on three
nodes every node owns every token range, so the new tokens change nothing for the data.
Reads at LOCAL_QUORUM stay correct during the repair: the empty node and a full one
disagree, and the read merges both.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from infra.backup.manifest import BackupError
from infra.backup.nodes import local_nodes
from infra.backup.nodetool import Nodetool
from infra.local import LocalCluster

log = logging.getLogger(__name__)
# `nodetool status` line: state, address, load (2 words), tokens, owns, host id, rack.
STATUS_LINE = re.compile(r"^([UD][NLJM])\s+(\S+)\s+.*?\s([0-9a-f]{8}-[0-9a-f-]{27})\s+\S+\s*$")


@dataclass
class RebuildResult:
    node: str
    old_host_id: str
    took_s: float
    repair_s: float


def host_ids(status_output: str) -> dict[str, tuple[str, str]]:
    """{address: (state, host id)} from `nodetool status` output."""
    out: dict[str, tuple[str, str]] = {}
    for line in status_output.splitlines():
        m = STATUS_LINE.match(line.strip())
        if m:
            out[m.group(2)] = (m.group(1), m.group(3))
    return out


def rebuild_node(
    run_dir: Path,
    name: str,
    keyspaces: list[str] | None = None,
    timeout_s: float = 900.0,
    start: Callable[[str], None] | None = None,
) -> RebuildResult:
    t0 = time.monotonic()
    lc = LocalCluster(run_dir)
    nodes = {n.name: n for n in local_nodes(run_dir, require_up=False)}
    if name not in nodes:
        raise BackupError(f"{name} is not a Cassandra node of {run_dir}")
    target = nodes[name]
    if lc.pid(target.spec) is not None:
        raise BackupError(
            f"{name} is running: stop it first; rebuild is for a node whose disk is lost"
        )
    if target.data_dir.is_dir() and any(target.data_dir.iterdir()):
        raise BackupError(
            f"{name} still has data in {target.data_dir}: rebuild starts it "
            f"empty; move that away first (a node with its disk intact just "
            f"needs `python -m infra start-node {name}`)"
        )
    peers = [n for n in nodes.values() if n.name != name and lc.pid(n.spec) is not None]
    if not peers:
        raise BackupError(f"no live peer of {name} to repair from")
    tool = Nodetool.locate(run_dir / "backup-work")
    ring = host_ids(tool.run(peers[0].spec, "status"))  # 1
    if target.spec.host not in ring:
        raise BackupError(
            f"{peers[0].name} does not know {target.spec.host}: nothing to remove; start the node"
        )
    state, old_id = ring[target.spec.host]
    if state.startswith("U"):
        raise BackupError(f"{peers[0].name} still sees {name} up; wait until it is marked down")
    tool.run(peers[0].spec, "removenode", "--", old_id, timeout_s=timeout_s)  # 2
    log.info("rebuild: removed %s's old identity %s", name, old_id)
    (start or lc.start_node)(name)  # 3
    t_rep = time.monotonic()
    tool.run(target.spec, "repair", "--full", "--", *(keyspaces or []), timeout_s=timeout_s)  # 4
    repair_s = time.monotonic() - t_rep
    log.info("rebuild: %s repaired in %.1fs", name, repair_s)
    return RebuildResult(name, old_id, time.monotonic() - t0, repair_s)
