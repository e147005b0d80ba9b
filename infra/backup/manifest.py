"""The manifest of one backup: what it holds and how to check that it still does.

A backup is a directory `<backups>/<id>/` with `manifest.json` and the snapshot's sstable
files of every node (`<node>/<keyspace>/<table>/<file>`). The manifest records the snapshot tag
and time, the keyspace schema (CQL), every file with its size and sha256, the row count
per table taken just before the snapshot, and the Kafka offsets at snapshot time.

A backup is complete only once its manifest exists: it is built under `<id>.partial/`
and renamed when the manifest is written. Pure: no driver, no Kafka client, no clock.
`verify()` reads files only, and names every
file that is missing, has the wrong size or the wrong checksum.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
# Backup ids sort by time: backup-20261201T151200Z.
ID_PATTERN = re.compile(r"^backup-\d{8}T\d{6}Z(-\d+)?$")
CHUNK = 1 << 20


class BackupError(RuntimeError):
    """A backup cannot be taken, listed, verified or restored; the message says why."""


@dataclass(frozen=True)
class FileEntry:
    node: str
    table: str
    # Relative to the backup dir: <node>/<keyspace>/<table>/<file>. The last two levels
    # are named as Cassandra names them, as `nodetool import` reads them from the path.
    relpath: str
    size: int
    sha256: str


@dataclass
class Manifest:
    backup_id: str
    tag: str
    keyspace: str
    created_at: str  # ISO 8601, UTC
    created_at_ms: int
    nodes: list[str]
    schema: dict[str, Any]  # {"keyspace": cql, "tables": {name: cql}}
    files: list[FileEntry] = field(default_factory=list)
    row_counts: dict[str, int] = field(default_factory=dict)
    # {"end": {topic: {partition: offset}}, "groups": {group: {topic: {partition: offset}}}}
    kafka: dict[str, Any] = field(default_factory=dict)
    topics: dict[str, Any] = field(default_factory=dict)  # raw / result topic names, groups
    took_s: float = 0.0
    format_version: int = FORMAT_VERSION

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def tables(self) -> list[str]:
        return sorted(self.schema.get("tables", {}))

    def files_of(self, node: str, table: str) -> list[FileEntry]:
        return [f for f in self.files if f.node == node and f.table == table]

    def to_json(self) -> str:
        d = asdict(self)
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = MANIFEST) -> Manifest:
        try:
            d = json.loads(text)
            if d.get("format_version") != FORMAT_VERSION:
                raise BackupError(f"{where}: unknown manifest format {d.get('format_version')!r}")
            d["files"] = [FileEntry(**f) for f in d["files"]]
            return cls(**d)
        except (ValueError, TypeError, KeyError) as exc:
            raise BackupError(f"{where}: not a readable manifest ({exc})") from exc


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def table_dir(backup_dir: Path, node: str, keyspace: str, table: str) -> Path:
    return backup_dir / node / keyspace / table


def write_manifest(backup_dir: Path, manifest: Manifest) -> Path:
    """Written last and atomically: a backup without a manifest is incomplete by design."""
    tmp = backup_dir / (MANIFEST + ".tmp")
    tmp.write_text(manifest.to_json())
    out = backup_dir / MANIFEST
    tmp.replace(out)
    return out


def load_manifest(backup_dir: Path) -> Manifest:
    path = backup_dir / MANIFEST
    if not path.is_file():
        raise BackupError(f"{backup_dir} is incomplete: no {MANIFEST} (interrupted backup?)")
    return Manifest.from_json(path.read_text(), str(path))


def problems(backup_dir: Path, manifest: Manifest, checksums: bool = True) -> list[str]:
    """Every way the files on disk differ from the manifest, one line per file:
    missing, wrong size, wrong sha256, or not listed in the manifest."""
    out: list[str] = []
    listed = set()
    for f in manifest.files:
        p = backup_dir / f.relpath
        listed.add(f.relpath)
        if not p.is_file():
            out.append(f"missing file {f.relpath}")
        elif p.stat().st_size != f.size:
            out.append(
                f"size mismatch {f.relpath}: {p.stat().st_size} bytes, manifest says {f.size}"
            )
        elif checksums and sha256_of(p) != f.sha256:
            out.append(f"checksum mismatch {f.relpath}: sha256 differs from the manifest")
    for node in manifest.nodes:
        for p in sorted((backup_dir / node).rglob("*")) if (backup_dir / node).is_dir() else []:
            rel = p.relative_to(backup_dir).as_posix()
            if p.is_file() and rel not in listed:
                out.append(f"unlisted file {rel}")
    return out


def verify(backup_dir: Path) -> Manifest:
    """The manifest if every file checks out; BackupError naming each bad file otherwise."""
    manifest = load_manifest(backup_dir)
    bad = problems(backup_dir, manifest)
    if bad:
        shown = "; ".join(bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise BackupError(f"backup {manifest.backup_id} is damaged: {shown}")
    return manifest


def list_backups(root: Path) -> list[tuple[str, Manifest | None, str]]:
    """(id, manifest or None, note) for every backup dir under root, oldest first."""
    out: list[tuple[str, Manifest | None, str]] = []
    if not root.is_dir():
        return out
    for d in sorted(p for p in root.iterdir() if p.is_dir() and ID_PATTERN.match(p.name)):
        try:
            out.append((d.name, load_manifest(d), ""))
        except BackupError as exc:
            out.append((d.name, None, str(exc)))
    return out
