"""The `backup`, `restore`, `replay` and `rebuild-node` subcommands of `python -m infra`.

Exit codes: 0 done, 1 refused or failed (one line on stderr saying why and, for a
damaged backup, which file), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

COMMANDS = ("backup", "restore", "replay", "rebuild-node")


def add_parsers(sub: Any) -> None:
    b = sub.add_parser("backup", help="snapshot the result keyspace on every node, with a manifest")
    b.add_argument("--dir", help="backup root (default $PIPELINE_BACKUP__DIR or <run dir>/backups)")
    g = b.add_mutually_exclusive_group()
    g.add_argument("--list", action="store_true", help="list the backups")
    g.add_argument("--verify", metavar="ID", help="re-check a backup's files and checksums")

    r = sub.add_parser("restore", help="load a backup into an absent or empty keyspace")
    r.add_argument("backup_id", metavar="ID")
    r.add_argument("--dir", help="backup root")
    r.add_argument("--force", action="store_true", help="load over a keyspace that holds rows")

    p = sub.add_parser("replay", help="rebuild results from Kafka (the groups must be stopped)")
    p.add_argument("--dir", help="backup root")
    w = p.add_mutually_exclusive_group(required=True)
    w.add_argument("--since-backup", metavar="ID", help="sink group back to the backup's offsets")
    w.add_argument(
        "--from",
        dest="from_time",
        metavar="TIME",
        help="ISO 8601, epoch ms, or a duration ago (30m, 2h, 1d)",
    )
    p.add_argument(
        "--reprocess",
        action="store_true",
        help="re-run the model: move the stream group on images.raw instead",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan, move nothing")

    n = sub.add_parser(
        "rebuild-node",
        help="bring back a Cassandra node whose disk was lost "
        "(removenode, start empty, full repair)",
    )
    n.add_argument("name", help="cassandra-1..3 (stopped, its data dir gone)")
    n.add_argument("--keyspace", action="append", help="repair only these (default: all)")


def _settings(args: argparse.Namespace) -> Any:
    from infra.backup.settings import BackupSettings

    s = BackupSettings()
    if getattr(args, "dir", None):
        s.backup.dir = args.dir
    return s


@contextlib.contextmanager
def _cassandra(settings: Any) -> Iterator[tuple[Any, Any]]:
    from infra import cassandra_session

    cluster, session = cassandra_session.connect(settings.cassandra)
    try:
        yield cluster, session
    finally:
        cluster.shutdown()


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _backup(args: argparse.Namespace, run_dir: Path) -> int:
    from infra.backup import list_backups, take_backup, verify

    s = _settings(args)
    root = s.backup.root(run_dir)
    if args.list:
        rows = list_backups(root)
        if not rows:
            print(f"no backups in {root}")
        for bid, m, note in rows:
            if m is None:
                print(f"{bid}  INCOMPLETE  {note}")
            else:
                rows_txt = ", ".join(f"{t} {n}" for t, n in sorted(m.row_counts.items()))
                print(
                    f"{bid}  {m.created_at}  {m.keyspace}  {len(m.files)} files "
                    f"{_mib(m.total_bytes)}  rows: {rows_txt}"
                )
        return 0
    if args.verify:
        m = verify(root / args.verify)
        print(f"{m.backup_id}: OK, {len(m.files)} files, {_mib(m.total_bytes)}, checksums match")
        return 0
    with _cassandra(s) as (cluster, session):
        res = take_backup(s, run_dir, cluster, session)
    m = res.manifest
    print(
        f"backup {m.backup_id}: {len(m.files)} files, {_mib(m.total_bytes)}, rows "
        f"{m.row_counts}, {m.took_s:.1f}s -> {res.path}"
    )
    for w in res.warnings:
        print(f"WARNING: {w}")
    return 0


def _restore(args: argparse.Namespace, run_dir: Path) -> int:
    from infra.backup import restore

    s = _settings(args)
    with _cassandra(s) as (cluster, session):
        res = restore(s, run_dir, args.backup_id, cluster, session, force=args.force)
    print(
        f"restored {args.backup_id} into {res.manifest.keyspace}: rows {res.row_counts} "
        f"in {res.took_s:.1f}s"
    )
    print(f"next: python -m infra replay --since-backup {args.backup_id}, then start the sink")
    return 0


def _replay(args: argparse.Namespace, run_dir: Path) -> int:
    from infra.backup import BackupError, apply, load_manifest, parse_time, plan

    s = _settings(args)
    if args.since_backup:
        m = load_manifest(s.backup.root(run_dir) / args.since_backup)
        if m.topics.get("sink_group") not in (None, s.backup.sink_group):
            raise BackupError(
                f"backup {m.backup_id} recorded group {m.topics['sink_group']}, "
                f"settings name {s.backup.sink_group}"
            )
        p = plan(s, manifest=m, reprocess=args.reprocess)
    else:
        try:
            at = parse_time(args.from_time, datetime.now(UTC))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        p = plan(s, from_ms=at, reprocess=args.reprocess)
    verb = "would move" if args.dry_run else "moved"
    if not args.dry_run:
        apply(s, p)
    print(
        f"replay: {verb} group {p.group} on {', '.join(sorted(p.offsets))}: "
        f"{p.records} records to read again"
    )
    if not args.dry_run:
        what = "stream workers (with the new model version)" if args.reprocess else "sink"
        print(f"next: start the {what}: python -m orchestration pipeline up")
    return 0


def _rebuild(args: argparse.Namespace, run_dir: Path) -> int:
    from infra.backup.rebuild import rebuild_node

    res = rebuild_node(run_dir, args.name, keyspaces=args.keyspace)
    print(
        f"{res.node} rebuilt in {res.took_s:.1f}s (repair {res.repair_s:.1f}s); "
        f"old identity {res.old_host_id} removed"
    )
    return 0


def run(args: argparse.Namespace, run_dir: Path) -> int:
    from infra.backup import BackupError
    from infra.kafka_retry import KafkaCallFailed

    handlers = {"backup": _backup, "restore": _restore, "replay": _replay, "rebuild-node": _rebuild}
    try:
        return handlers[args.command](args, run_dir)
    except (BackupError, KafkaCallFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
