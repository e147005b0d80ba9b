import pytest

from consumers.offsets import WatermarkTracker

TP0 = ("images.predictions", 0)
TP1 = ("images.predictions", 1)


def test_out_of_order_acks_never_store_past_an_unacknowledged_offset():
    t = WatermarkTracker()
    for off in range(5):
        t.track(TP0, off)
    t.done(TP0, 3)
    t.done(TP0, 1)
    assert t.position(TP0) is None and t.advanced() == {}
    t.done(TP0, 0)
    assert t.advanced() == {TP0: 2}  # 0 and 1 done, 2 is not
    t.done(TP0, 2)
    assert t.advanced() == {TP0: 4}  # 3 was already done
    assert t.pending(TP0) == 1
    t.done(TP0, 4)
    assert t.advanced() == {TP0: 5} and t.pending() == 0


def test_advanced_reports_each_move_once_and_partitions_are_independent():
    t = WatermarkTracker()
    t.track(TP0, 10)
    t.track(TP1, 7)
    t.track(TP1, 8)
    t.done(TP1, 8)
    t.done(TP0, 10)
    assert t.advanced() == {TP0: 11}
    assert t.advanced() == {}
    t.done(TP1, 7)
    assert t.advanced([TP1]) == {TP1: 9}
    assert t.positions() == {TP0: 11, TP1: 9}


def test_gaps_in_offsets_are_fine():
    t = WatermarkTracker()
    for off in (3, 7, 20):
        t.track(TP0, off)
    t.done(TP0, 20)
    t.done(TP0, 3)
    assert t.position(TP0) == 4
    t.done(TP0, 7)
    assert t.position(TP0) == 21


def test_duplicate_and_unknown_acks_are_ignored():
    t = WatermarkTracker()
    t.track(TP0, 0)
    t.done(TP0, 0)
    t.done(TP0, 0)
    t.done(TP1, 5)  # never tracked (e.g. revoked)
    assert t.positions() == {TP0: 1} and t.pending() == 0


def test_tracking_must_be_ascending():
    t = WatermarkTracker()
    t.track(TP0, 5)
    with pytest.raises(ValueError):
        t.track(TP0, 5)
    t.done(TP0, 5)
    with pytest.raises(ValueError):
        t.track(TP0, 2)


def test_forget_drops_a_revoked_partition():
    t = WatermarkTracker()
    t.track(TP0, 0)
    t.track(TP0, 1)
    t.forget([TP0])
    t.done(TP0, 0)
    assert t.position(TP0) is None and t.pending() == 0
    t.track(TP0, 1)  # reassigned later: starts fresh from the committed offset
    t.done(TP0, 1)
    assert t.position(TP0) == 2
