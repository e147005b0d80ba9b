"""Per-partition contiguous done-watermarks: which offset may be committed. Pure.

Writes finish out of order; an offset may be stored only when every record before it in
its partition is done. `track` each offset in consumption order, `done` it when its side
effects are acknowledged; `advanced()` yields the partitions whose commit position (the
next offset to read: last contiguous done offset + 1) moved since the last call.
Offsets need not be consecutive (compaction, transaction markers leave gaps).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

TP = tuple[str, int]


class _Partition:
    __slots__ = ("order", "done", "position", "reported")

    def __init__(self) -> None:
        self.order: deque[int] = deque()  # tracked, not yet contiguous-done, ascending
        self.done: set[int] = set()  # done but behind an unfinished offset
        self.position: int | None = None  # commit position: next offset to read
        self.reported: int | None = None


class WatermarkTracker:
    def __init__(self) -> None:
        self._parts: dict[TP, _Partition] = {}

    def track(self, tp: TP, offset: int) -> None:
        p = self._parts.setdefault(tp, _Partition())
        if p.order and offset <= p.order[-1]:
            raise ValueError(f"{tp}: offset {offset} tracked after {p.order[-1]} (not ascending)")
        if p.position is not None and offset < p.position:
            raise ValueError(f"{tp}: offset {offset} is behind the done position {p.position}")
        p.order.append(offset)

    def done(self, tp: TP, offset: int) -> None:
        """Mark `offset` done; unknown partitions (revoked, forgotten) are ignored."""
        p = self._parts.get(tp)
        if p is None:
            return
        if not p.order or offset < p.order[0]:
            return  # already behind the watermark (duplicate ack)
        if offset != p.order[0]:
            p.done.add(offset)
            return
        p.order.popleft()
        p.position = offset + 1
        while p.order and p.order[0] in p.done:
            off = p.order.popleft()
            p.done.discard(off)
            p.position = off + 1

    def position(self, tp: TP) -> int | None:
        """Next offset to read after everything contiguous-done, or None if nothing is."""
        p = self._parts.get(tp)
        return None if p is None else p.position

    def pending(self, tp: TP | None = None) -> int:
        """Tracked offsets not yet behind the watermark (in one partition or all)."""
        if tp is not None:
            p = self._parts.get(tp)
            return 0 if p is None else len(p.order)
        return sum(len(p.order) for p in self._parts.values())

    def advanced(self, tps: Iterable[TP] | None = None) -> dict[TP, int]:
        """Commit positions that moved since the last call (for these partitions, or all)."""
        out: dict[TP, int] = {}
        keys = list(self._parts) if tps is None else [tp for tp in tps if tp in self._parts]
        for tp in keys:
            p = self._parts[tp]
            if p.position is not None and p.position != p.reported:
                out[tp] = p.position
                p.reported = p.position
        return out

    def positions(self, tps: Iterable[TP] | None = None) -> dict[TP, int]:
        keys = list(self._parts) if tps is None else [tp for tp in tps if tp in self._parts]
        return {tp: pos for tp in keys if (pos := self._parts[tp].position) is not None}

    def forget(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self._parts.pop(tp, None)

    def partitions(self) -> list[TP]:
        return list(self._parts)
