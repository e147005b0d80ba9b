"""A live progress display: one redrawn line on a terminal, a line every few seconds otherwise."""

from __future__ import annotations

import sys
import time


class StageProgress:
    def __init__(self, total: int, stages: list[str], plain_every_s: float = 5.0) -> None:
        self.total = total
        self.stages = stages
        self.tty = sys.stderr.isatty()
        self.plain_every_s = plain_every_s
        self._last_plain = 0.0
        self._started = time.monotonic()

    def _line(self, counts: dict[str, int]) -> str:
        done = counts.get("stored", 0) + counts.get("rejected", 0)
        width = 24
        filled = int(width * min(done, self.total) / max(1, self.total))
        bar = "#" * filled + "." * (width - filled)
        parts = "  ".join(f"{s} {counts.get(s, 0):>4}" for s in self.stages)
        return f"[{bar}] {done}/{self.total}  {parts}  {time.monotonic() - self._started:5.1f}s"

    def update(self, counts: dict[str, int], force: bool = False) -> None:
        line = self._line(counts)
        if self.tty:
            sys.stderr.write("\r" + line + "\x1b[K")
            sys.stderr.flush()
        elif force or time.monotonic() - self._last_plain >= self.plain_every_s:
            self._last_plain = time.monotonic()
            print(line, file=sys.stderr, flush=True)

    def close(self, counts: dict[str, int]) -> None:
        self.update(counts, force=True)
        if self.tty:
            sys.stderr.write("\n")
