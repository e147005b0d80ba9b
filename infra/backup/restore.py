"""`infra restore ID`: put a backup back into the cluster, as named steps.

1. verify every file against the manifest (refuse, naming the file, before touching the
cluster); 2. the cluster's nodes are the backup's nodes and all up (a changed topology
needs the bulk loader: refused, see docs/backup.md); 3. the keyspace is absent or empty
(else refused unless `force`); 4. recreate the schema from the manifest; 5. `nodetool
import --copy-data` each node's files into that node (the backup stays intact); 6. count
the rows at LOCAL_QUORUM and fail unless every table holds at least what the manifest
recorded (the counts were read just before the snapshot: see snapshot.py).

A failure after step 4 leaves a partly restored keyspace and says so; run it again with
`--force` (imports are idempotent: same cells, same timestamps).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.backup import cassandra_state
from infra.backup.manifest import BackupError, Manifest, table_dir, verify
from infra.backup.nodes import Node, local_nodes
from infra.backup.nodetool import Nodetool
from infra.backup.settings import BackupSettings

log = logging.getLogger(__name__)


@dataclass
class RestoreResult:
    manifest: Manifest
    row_counts: dict[str, int]
    took_s: float


def check_topology(manifest: Manifest, nodes: list[Node]) -> None:
    have = sorted(n.name for n in nodes)
    if have != sorted(manifest.nodes):
        raise BackupError(
            f"backup {manifest.backup_id} was taken on {', '.join(sorted(manifest.nodes))} but "
            f"the cluster has {', '.join(have)}: a changed topology needs the bulk loader "
            f"(sstableloader), which this command does not run; see docs/backup.md"
        )


def check_target(state: str, keyspace: str, force: bool) -> None:
    if state == "has rows" and not force:
        raise BackupError(
            f"keyspace {keyspace} exists and holds rows: restore only fills an "
            f"absent or empty keyspace; pass --force to load the backup over it "
            f"(newer cells win by write time)"
        )


def short_counts(manifest: Manifest, counts: dict[str, int]) -> list[str]:
    """Tables holding fewer rows than the manifest recorded, as messages."""
    return [
        f"{t}: {counts.get(t, 0)} rows, backup recorded {want}"
        for t, want in sorted(manifest.row_counts.items())
        if counts.get(t, 0) < want
    ]


def _import_node(
    tool: Nodetool, node: Node, manifest: Manifest, backup_dir: Path, timeout_s: float
) -> None:
    for table in manifest.tables():
        if not manifest.files_of(node.name, table):
            continue
        src = table_dir(backup_dir, node.name, manifest.keyspace, table)
        tool.run(
            node.spec,
            "import",
            "--copy-data",
            "--",
            manifest.keyspace,
            table,
            str(src),
            timeout_s=timeout_s,
        )
        log.info("restore: %s: imported %s.%s", node.name, manifest.keyspace, table)


def restore(
    settings: BackupSettings,
    run_dir: Path,
    backup_id: str,
    cluster: Any,
    session: Any,
    force: bool = False,
) -> RestoreResult:
    t0 = time.monotonic()
    backup_dir = settings.backup.root(run_dir) / backup_id
    if not backup_dir.is_dir():
        raise BackupError(
            f"no backup {backup_id} in {backup_dir.parent} (see `infra backup --list`)"
        )
    manifest = verify(backup_dir)  # 1
    nodes = local_nodes(run_dir)  # 2
    check_topology(manifest, nodes)
    ks = manifest.keyspace
    check_target(cassandra_state.keyspace_state(cluster, session, ks), ks, force)  # 3
    cassandra_state.create_schema(session, manifest.schema)  # 4
    if settings.cassandra.auth is not None:  # a dropped table lost its grants: give them back
        from infra.cassandra_roles import grant_tables

        grant_tables(session, ks)
    tool = Nodetool.locate(run_dir / "backup-work")
    timeout = settings.backup.nodetool_timeout_s
    with ThreadPoolExecutor(len(nodes)) as pool:  # 5
        futs = [pool.submit(_import_node, tool, n, manifest, backup_dir, timeout) for n in nodes]
        errors = [f.exception() for f in futs if f.exception() is not None]
    if errors:
        raise BackupError(
            f"restore of {backup_id} is incomplete (keyspace {ks} holds part of "
            f"it; fix the cause and rerun with --force): {errors[0]}"
        )
    counts = cassandra_state.row_counts(session, ks, manifest.tables())  # 6
    short = short_counts(manifest, counts)
    if short:
        raise BackupError(f"restore of {backup_id} is incomplete: {'; '.join(short)}")
    took = time.monotonic() - t0
    log.info("restored %s into %s: rows %s in %.1fs", backup_id, ks, counts, took)
    return RestoreResult(manifest, counts, took)
