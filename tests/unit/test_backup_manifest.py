"""Manifest, checksums and listing of backups (infra.backup.manifest): files only."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.backup.manifest import (
    BackupError,
    FileEntry,
    Manifest,
    list_backups,
    load_manifest,
    problems,
    sha256_of,
    verify,
    write_manifest,
)
from infra.backup.snapshot import copy_hashed, new_id


def _backup(root: Path, bid: str = "backup-20261201T150000Z") -> tuple[Path, Manifest]:
    d = root / bid
    files = []
    for node in ("cassandra-1", "cassandra-2"):
        t = d / node / "vision" / "predictions"
        t.mkdir(parents=True)
        for name, body in (
            ("oa-1-big-Data.db", b"data-" + node.encode() * 50),
            ("oa-1-big-TOC.txt", b"toc"),
        ):
            (t / name).write_bytes(body)
            files.append(
                FileEntry(
                    node,
                    "predictions",
                    f"{node}/vision/predictions/{name}",
                    len(body),
                    sha256_of(t / name),
                )
            )
    m = Manifest(
        backup_id=bid,
        tag=bid,
        keyspace="vision",
        created_at="2026-12-01T15:00:00+00:00",
        created_at_ms=1_796_137_200_000,
        nodes=["cassandra-1", "cassandra-2"],
        schema={
            "keyspace": "CREATE KEYSPACE vision ...",
            "tables": {"predictions": "CREATE TABLE ..."},
        },
        files=files,
        row_counts={"predictions": 7},
    )
    write_manifest(d, m)
    return d, m


def test_round_trip_and_verify_ok(tmp_path):
    d, m = _backup(tmp_path)
    assert load_manifest(d) == m
    assert verify(d).total_bytes == m.total_bytes > 0
    assert problems(d, m) == []


def test_flipped_byte_is_named(tmp_path):
    d, m = _backup(tmp_path)
    victim = d / m.files[0].relpath
    data = bytearray(victim.read_bytes())
    data[3] ^= 0x01
    victim.write_bytes(bytes(data))
    with pytest.raises(BackupError, match=f"checksum mismatch {m.files[0].relpath}"):
        verify(d)


def test_missing_truncated_and_unlisted_files_are_named(tmp_path):
    d, m = _backup(tmp_path)
    (d / m.files[0].relpath).unlink()
    (d / m.files[1].relpath).write_bytes(b"t")
    (d / "cassandra-2" / "vision" / "predictions" / "stray.db").write_bytes(b"x")
    found = problems(d, m)
    assert f"missing file {m.files[0].relpath}" in found
    assert any(p.startswith(f"size mismatch {m.files[1].relpath}") for p in found)
    assert "unlisted file cassandra-2/vision/predictions/stray.db" in found
    with pytest.raises(BackupError, match="missing file"):
        verify(d)


def test_no_manifest_means_incomplete(tmp_path):
    (tmp_path / "backup-20261201T150000Z").mkdir()
    with pytest.raises(BackupError, match="incomplete"):
        verify(tmp_path / "backup-20261201T150000Z")


def test_unreadable_manifest(tmp_path):
    d = tmp_path / "backup-20261201T150000Z"
    d.mkdir()
    (d / "manifest.json").write_text('{"format_version": 99}')
    with pytest.raises(BackupError, match="unknown manifest format"):
        load_manifest(d)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(BackupError, match="not a readable manifest"):
        load_manifest(d)


def test_list_shows_complete_and_incomplete_oldest_first(tmp_path):
    _backup(tmp_path, "backup-20261201T160000Z")
    _backup(tmp_path, "backup-20261201T150000Z")
    (tmp_path / "backup-20261201T170000Z").mkdir()
    (tmp_path / "backup-20261201T180000Z.partial").mkdir()  # in progress: not listed
    rows = list_backups(tmp_path)
    assert [r[0] for r in rows] == [
        "backup-20261201T150000Z",
        "backup-20261201T160000Z",
        "backup-20261201T170000Z",
    ]
    assert rows[2][1] is None and "incomplete" in rows[2][2]


def test_new_id_never_reuses_a_dir(tmp_path):
    from datetime import UTC, datetime

    now = datetime(2026, 12, 1, 15, 0, 0, tzinfo=UTC)
    first = new_id(tmp_path, now)
    (tmp_path / first).mkdir()
    second = new_id(tmp_path, now)
    assert first == "backup-20261201T150000Z" and second == first + "-2"


def test_copy_hashed_matches_file(tmp_path):
    src = tmp_path / "a"
    src.write_bytes(bytes(range(256)) * 9000)
    assert copy_hashed(src, tmp_path / "b") == sha256_of(src) == sha256_of(tmp_path / "b")
