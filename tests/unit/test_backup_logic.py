"""Refusals and plans of backup, restore, replay and rebuild (no servers)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from infra.backup.cassandra_state import if_not_exists
from infra.backup.manifest import BackupError, Manifest
from infra.backup.rebuild import host_ids
from infra.backup.replay import parse_time, records_between, refusal, since_backup_offsets
from infra.backup.restore import check_target, check_topology, short_counts
from infra.backup.retention import HOUR_MS, retention_warnings
from infra.backup.settings import BackupSection

NOW = datetime(2026, 12, 1, 15, 0, 0, tzinfo=UTC)


def _manifest(**kw) -> Manifest:
    base = dict(
        backup_id="backup-x",
        tag="backup-x",
        keyspace="vision",
        created_at="",
        created_at_ms=0,
        nodes=["cassandra-1", "cassandra-2", "cassandra-3"],
        schema={"keyspace": "", "tables": {"predictions": "", "rejections": ""}},
    )
    base.update(kw)
    return Manifest(**base)


def test_replay_refuses_live_groups_and_names_members():
    assert refusal({"vision-sink": [], "torchstream": []}) is None
    why = refusal({"vision-sink": ["rdkafka@127.0.0.1", "rdkafka@127.0.0.2"], "torchstream": []})
    assert why is not None
    assert "vision-sink has 2 active members" in why and "rdkafka@127.0.0.2" in why
    assert "torchstream" not in why


def test_since_backup_uses_recorded_offsets_and_earliest_elsewhere():
    m = _manifest(kafka={"groups": {"vision-sink": {"images.predictions": {"0": 40, "1": 7}}}})
    earliest = {"images.predictions": {"0": 0, "1": 0, "2": 3}, "images.decode.dlq": {"0": 0}}
    got = since_backup_offsets(m, "vision-sink", earliest)
    assert got == {"images.predictions": {"0": 40, "1": 7, "2": 3}, "images.decode.dlq": {"0": 0}}
    with pytest.raises(BackupError, match="no offsets of group other"):
        since_backup_offsets(m, "other", earliest)


def test_records_between():
    assert records_between({"t": {"0": 5, "1": 9}}, {"t": {"0": 10, "1": 9}}) == 5


def test_parse_time_forms():
    assert parse_time("1796137200000", NOW) == 1796137200000
    assert parse_time("2026-12-01T14:00:00Z", NOW) == int(NOW.timestamp() * 1000) - HOUR_MS
    assert parse_time("2026-12-01T14:00:00", NOW) == int(NOW.timestamp() * 1000) - HOUR_MS
    assert parse_time("-30m", NOW) == int(NOW.timestamp() * 1000) - HOUR_MS // 2
    assert parse_time("30m", NOW) == parse_time("30m ago", NOW) == parse_time("-30m", NOW)
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time("yesterday", NOW)


def test_restore_refuses_rows_unless_forced():
    check_target("absent", "vision", force=False)
    check_target("empty", "vision", force=False)
    check_target("has rows", "vision", force=True)
    with pytest.raises(BackupError, match="--force"):
        check_target("has rows", "vision", force=False)


def test_restore_refuses_a_changed_topology():
    class N:
        def __init__(self, name: str) -> None:
            self.name = name

    check_topology(_manifest(), [N("cassandra-3"), N("cassandra-1"), N("cassandra-2")])
    with pytest.raises(BackupError, match="bulk loader"):
        check_topology(_manifest(), [N("cassandra-1")])  # type: ignore[list-item]


def test_short_counts_is_a_lower_bound():
    m = _manifest(row_counts={"predictions": 10, "rejections": 2})
    assert short_counts(m, {"predictions": 12, "rejections": 2}) == []
    assert short_counts(m, {"predictions": 9, "rejections": 2}) == [
        "predictions: 9 rows, backup recorded 10"
    ]


def test_retention_warnings():
    assert retention_warnings("images.raw", -1, 24, 10**13, 0) == []
    assert retention_warnings("images.raw", 7 * 24 * HOUR_MS, 24, 100 * HOUR_MS, 90 * HOUR_MS) == []
    short = retention_warnings("images.raw", 30 * HOUR_MS, 24, 100 * HOUR_MS, 90 * HOUR_MS)
    assert len(short) == 1 and "less than two backup intervals" in short[0]
    stale = retention_warnings("images.raw", 72 * HOUR_MS, 24, 200 * HOUR_MS, 100 * HOUR_MS)
    assert len(stale) == 1 and "no longer covers the time since the last backup" in stale[0]


def test_if_not_exists():
    assert if_not_exists("CREATE TABLE ks.t (k int PRIMARY KEY)").startswith(
        "CREATE TABLE IF NOT EXISTS ks.t"
    )
    assert if_not_exists("CREATE KEYSPACE ks WITH x").startswith("CREATE KEYSPACE IF NOT EXISTS ks")
    assert if_not_exists("CREATE TABLE IF NOT EXISTS ks.t") == "CREATE TABLE IF NOT EXISTS ks.t"


def test_topics_follow_the_prefix():
    b = BackupSection(topic_prefix="e2e-1.")
    assert b.raw_topic == "e2e-1.images.raw"
    assert b.result_topics[0] == "e2e-1.images.predictions"
    assert all(t.startswith("e2e-1.") and t.endswith(".dlq") for t in b.result_topics[1:])


def test_host_ids_from_nodetool_status():
    out = """Datacenter: datacenter1
=======================
Status=Up/Down
|/ State=Normal/Leaving/Joining/Moving
--  Address    Load        Tokens  Owns (effective)  Host ID                               Rack
UN  127.0.0.3  273.86 KiB  16      100.0%            b07aab81-12a2-44e4-b341-7c6d3f766cf6  rack1
DN  127.0.0.2  306.44 KiB  16      100.0%            79eaf951-53eb-4cac-b9fc-552e4a4d01ed  rack1
"""
    assert host_ids(out) == {
        "127.0.0.3": ("UN", "b07aab81-12a2-44e4-b341-7c6d3f766cf6"),
        "127.0.0.2": ("DN", "79eaf951-53eb-4cac-b9fc-552e4a4d01ed"),
    }
