"""`infra backup`: a cluster-wide backup of the result keyspace, as named steps.

1. every node up; 2. retention check (warnings); 3. Kafka offsets: the sink and stream
groups' committed offsets, then the end offsets of images.raw and the result topics;
4. schema and row counts (LOCAL_QUORUM); 5. `nodetool snapshot -t <id>` on every node
(it flushes the memtables first); 6. copy the snapshot's sstables out, hashing as it
copies; 7. `nodetool clearsnapshot` on every node, also when a step failed; 8. manifest,
then rename `<id>.partial` to `<id>`.

Why this order: the group offsets are read before the snapshot, so every record below
them was acknowledged by a quorum before the flush and is in at least two nodes' files;
`replay --since-backup` rewrites everything from those offsets on. The row counts are
read before the snapshot too, so with the sink still writing the files hold at least
that many rows (restore checks >=), and exactly that many once the pipeline is idle.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from infra.backup import cassandra_state, kafka_state
from infra.backup.manifest import (
    BackupError,
    FileEntry,
    Manifest,
    list_backups,
    table_dir,
    write_manifest,
)
from infra.backup.nodes import Node, local_nodes, snapshot_dirs
from infra.backup.nodetool import Nodetool
from infra.backup.retention import retention_warnings
from infra.backup.settings import BackupSettings
from infra.kafka_retry import Deadline

log = logging.getLogger(__name__)

# Snapshot files Cassandra writes next to the sstables; the manifest holds the schema.
NOT_SSTABLES = {"manifest.json", "schema.cql"}
KAFKA_DEADLINE_S = 60.0


@dataclass
class BackupResult:
    manifest: Manifest
    path: Path
    warnings: list[str] = field(default_factory=list)


def new_id(root: Path, now: datetime) -> str:
    base = "backup-" + now.strftime("%Y%m%dT%H%M%SZ")
    bid, n = base, 1
    while (root / bid).exists() or (root / f"{bid}.partial").exists():
        n += 1
        bid = f"{base}-{n}"
    return bid


def copy_hashed(src: Path, dst: Path) -> str:
    """Copy src to dst and return the sha256 of the bytes written (one read)."""
    h = hashlib.sha256()
    with src.open("rb") as fi, dst.open("wb") as fo:
        while chunk := fi.read(1 << 20):
            h.update(chunk)
            fo.write(chunk)
    shutil.copystat(src, dst)
    return h.hexdigest()


def kafka_offsets(settings: BackupSettings) -> dict[str, Any]:
    b = settings.backup
    adm = kafka_state.admin(settings.kafka)
    dl = Deadline(KAFKA_DEADLINE_S)
    groups = {
        b.sink_group: kafka_state.committed(adm, settings.kafka, b.sink_group, b.result_topics, dl),
        b.stream_group: kafka_state.committed(
            adm, settings.kafka, b.stream_group, [b.raw_topic], dl
        ),
    }
    end = kafka_state.end_offsets(adm, [b.raw_topic, *b.result_topics], dl)
    return {"groups": groups, "end": end}


def check_retention(settings: BackupSettings, root: Path, now_ms: int) -> list[str]:
    b = settings.backup
    adm = kafka_state.admin(settings.kafka)
    ret = kafka_state.retention_ms(adm, b.raw_topic, Deadline(KAFKA_DEADLINE_S))
    done = [
        m
        for _, m, _ in list_backups(root)
        if m is not None and m.keyspace == settings.cassandra.keyspace
    ]
    last = max((m.created_at_ms for m in done), default=None)
    warnings = retention_warnings(b.raw_topic, ret, b.interval_hours, now_ms, last)
    for w in warnings:
        log.warning("%s", w)
    return warnings


def _copy_node(node: Node, keyspace: str, tag: str, out: Path) -> list[FileEntry]:
    entries: list[FileEntry] = []
    for table, src in snapshot_dirs(node, keyspace, tag).items():
        dst = table_dir(out, node.name, keyspace, table)
        dst.mkdir(parents=True, exist_ok=True)
        for f in sorted(p for p in src.iterdir() if p.is_file() and p.name not in NOT_SSTABLES):
            digest = copy_hashed(f, dst / f.name)
            entries.append(
                FileEntry(
                    node.name,
                    table,
                    (dst / f.name).relative_to(out).as_posix(),
                    f.stat().st_size,
                    digest,
                )
            )
    return entries


def take_backup(
    settings: BackupSettings, run_dir: Path, cluster: Any, session: Any
) -> BackupResult:
    """Run the steps above; the cluster's snapshots are cleared whatever happens."""
    t0 = time.monotonic()
    ks = settings.cassandra.keyspace
    root = settings.backup.root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    nodes = local_nodes(run_dir)  # 1
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    warnings = check_retention(settings, root, now_ms)  # 2
    bid = new_id(root, now)
    kafka = kafka_offsets(settings)  # 3
    try:
        schema = cassandra_state.schema_of(cluster, ks)  # 4
    except LookupError as exc:
        raise BackupError(f"nothing to back up: {exc}") from exc
    counts = cassandra_state.row_counts(session, ks, sorted(schema["tables"]))
    tool = Nodetool.locate(run_dir / "backup-work")
    partial = root / f"{bid}.partial"
    partial.mkdir()
    snapped: list[Node] = []
    try:
        for n in nodes:  # 5
            tool.run(
                n.spec,
                "snapshot",
                "--tag",
                bid,
                "--",
                ks,
                timeout_s=settings.backup.nodetool_timeout_s,
            )
            snapped.append(n)
        files = [e for n in nodes for e in _copy_node(n, ks, bid, partial)]  # 6
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        for n in snapped:  # 7
            with contextlib.suppress(BackupError):
                tool.run(n.spec, "clearsnapshot", "--tag", bid, "--", ks)
    manifest = Manifest(
        backup_id=bid,
        tag=bid,
        keyspace=ks,
        created_at=now.isoformat(),
        created_at_ms=now_ms,
        nodes=[n.name for n in nodes],
        schema=schema,
        files=files,
        row_counts=counts,
        kafka=kafka,
        topics={
            "raw": settings.backup.raw_topic,
            "results": settings.backup.result_topics,
            "sink_group": settings.backup.sink_group,
            "stream_group": settings.backup.stream_group,
        },
        took_s=round(time.monotonic() - t0, 3),
    )
    write_manifest(partial, manifest)  # 8
    final = root / bid
    partial.rename(final)
    log.info(
        "backup %s: %d files, %d bytes, rows %s in %.1fs",
        bid,
        len(files),
        manifest.total_bytes,
        counts,
        manifest.took_s,
    )
    return BackupResult(manifest, final, warnings)
