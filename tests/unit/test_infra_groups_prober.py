"""infra.groups.Prober: probe clients kept across calls, but never past their age and
never after a failed call (a client asking a stale leader must not be asked again)."""

from __future__ import annotations

from typing import Any

import pytest

from infra import groups
from infra.settings import KafkaSettings


class FakeConsumer:
    made: list[FakeConsumer] = []

    def __init__(self, config: dict[str, Any]) -> None:
        self.group = config["group.id"]
        self.closed = False
        FakeConsumer.made.append(self)

    def close(self) -> None:
        self.closed = True

    def committed(self, wanted: list[Any], timeout: float) -> list[Any]:
        assert not self.closed
        for tp in wanted:
            tp.offset = 4
        return wanted


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> Any:
    FakeConsumer.made = []
    clock = [0.0]
    fail = [False]
    monkeypatch.setattr(groups, "Consumer", FakeConsumer)
    monkeypatch.setattr(groups.time, "monotonic", lambda: clock[0])

    def highs(c: FakeConsumer, topics: list[str], *_: Any) -> dict[tuple[str, int], int]:
        assert not c.closed, "asked through a closed client"
        if fail[0]:
            raise groups.KafkaCallFailed("watermarks", RuntimeError("NOT_LEADER"), 3, 1.0, True)
        return {(t, p): 10 for t in topics for p in range(2)}

    monkeypatch.setattr(groups, "_high_watermarks", highs)
    p = groups.Prober(KafkaSettings(), max_age_s=30.0)
    return p, clock, fail


def test_clients_are_kept_across_calls_and_closed_at_the_end(probe: Any) -> None:
    p, _clock, _fail = probe
    for _ in range(5):
        assert p.end_offsets(["t"]) == {"t": 20}
        assert p.group_lag("g", ["t"])["total"] == 12
    assert sorted(c.group for c in FakeConsumer.made) == ["g", groups.WATERMARK_GROUP]
    p.close()
    assert all(c.closed for c in FakeConsumer.made)


def test_a_client_past_its_age_is_replaced(probe: Any) -> None:
    p, clock, _fail = probe
    p.end_offsets(["t"])
    clock[0] = 31.0
    p.end_offsets(["t"])
    first, second = FakeConsumer.made
    assert first.closed and not second.closed


def test_a_failed_call_closes_its_client_and_the_next_call_makes_a_new_one(probe: Any) -> None:
    p, _clock, fail = probe
    p.end_offsets(["t"])
    fail[0] = True
    with pytest.raises(groups.KafkaCallFailed):
        p.end_offsets(["t"])
    fail[0] = False
    assert p.end_offsets(["t"]) == {"t": 20}
    first, second = FakeConsumer.made
    assert first.closed and not second.closed
