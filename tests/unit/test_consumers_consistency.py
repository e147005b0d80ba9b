import pytest

from consumers.consistency import (
    ConsistencyConfigError,
    Replication,
    check_overlap,
    require_overlap,
)

NTS3 = {"class": "org.apache.cassandra.locator.NetworkTopologyStrategy", "datacenter1": "3"}


def test_local_quorum_both_ways_overlaps_at_rf3():
    o = check_overlap(NTS3, "datacenter1", "LOCAL_QUORUM", "LOCAL_QUORUM")
    assert o.ok and (o.write, o.read, o.rf) == (2, 2, 3)


@pytest.mark.parametrize(
    ("write", "read", "ok"),
    [
        ("ONE", "LOCAL_QUORUM", False),  # 1 + 2 = 3, not > 3
        ("LOCAL_ONE", "LOCAL_ONE", False),
        ("LOCAL_QUORUM", "ONE", False),
        ("ALL", "ONE", True),
        ("ONE", "ALL", True),
        ("QUORUM", "QUORUM", True),
        ("TWO", "TWO", True),
        ("local_quorum", "local_quorum", True),  # case-insensitive
    ],
)
def test_levels_against_rf3(write, read, ok):
    assert check_overlap(NTS3, "datacenter1", write, read).ok is ok


def test_actual_rf_counts_not_the_configured_one():
    # Same levels, but the keyspace was created with RF 5: 3 + 3 > 5 still, RF 4 -> 3+3>4.
    rf1 = {"class": "NetworkTopologyStrategy", "datacenter1": "1"}
    assert check_overlap(rf1, "datacenter1", "LOCAL_ONE", "LOCAL_ONE").ok  # 1 + 1 > 1
    rf4 = {"class": "NetworkTopologyStrategy", "datacenter1": "4"}
    o = check_overlap(rf4, "datacenter1", "LOCAL_QUORUM", "LOCAL_ONE")
    assert not o.ok and (o.write, o.read, o.rf) == (3, 1, 4)


def test_simple_strategy():
    simple = {"class": "org.apache.cassandra.locator.SimpleStrategy", "replication_factor": "3"}
    assert check_overlap(simple, "datacenter1", "LOCAL_QUORUM", "LOCAL_QUORUM").ok
    assert not check_overlap(simple, "datacenter1", "ONE", "ONE").ok


def test_keyspace_without_replicas_in_local_dc_is_refused():
    o = check_overlap(
        {"class": "NetworkTopologyStrategy", "dc2": "3"},
        "datacenter1",
        "LOCAL_QUORUM",
        "LOCAL_QUORUM",
    )
    assert not o.ok and "no replicas in the local datacenter" in o.reason


def test_level_needing_more_replicas_than_exist_is_refused():
    rf2 = {"class": "NetworkTopologyStrategy", "datacenter1": "2"}
    o = check_overlap(rf2, "datacenter1", "THREE", "ONE")
    assert not o.ok and "needs 3 replicas" in o.reason


def test_multi_dc_mixed_levels_counted_across_the_cluster():
    two_dcs = {"class": "NetworkTopologyStrategy", "dc1": "3", "dc2": "3"}
    # Both local: judged in dc1 (2 + 2 > 3).
    assert check_overlap(two_dcs, "dc1", "LOCAL_QUORUM", "LOCAL_QUORUM").ok
    # LOCAL_QUORUM write (2 in dc1) + QUORUM read (4 of 6): 6 is not > 6.
    o = check_overlap(two_dcs, "dc1", "LOCAL_QUORUM", "QUORUM")
    assert not o.ok and (o.write, o.read, o.rf) == (2, 4, 6)
    # EACH_QUORUM write (2 + 2) + QUORUM read (4): 8 > 6.
    assert check_overlap(two_dcs, "dc1", "EACH_QUORUM", "QUORUM").ok


def test_require_overlap_explains_the_refusal():
    with pytest.raises(ConsistencyConfigError) as info:
        require_overlap(NTS3, "datacenter1", "ONE", "LOCAL_QUORUM")
    msg = str(info.value)
    assert "ONE (1 replicas)" in msg and "LOCAL_QUORUM (2 replicas)" in msg and "<= RF 3" in msg


def test_replication_parsing_of_transient_factors():
    r = Replication.from_system_schema({"class": "NetworkTopologyStrategy", "dc1": "3/1"})
    assert r.local("dc1") == 3 and r.total == 3
