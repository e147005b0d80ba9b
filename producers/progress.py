"""Progress: a tqdm bar on a terminal, plain periodic lines otherwise (logs, CI, pipes)."""

from __future__ import annotations

import sys
import time
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from producers.summary import Summary


class Progress:
    """`update(done, summary)` after each input; `close(summary)` at the end."""

    def __init__(
        self,
        total: int | None = None,
        *,
        stream: IO[str] | None = None,
        interval_s: float = 5.0,
        tty: bool | None = None,
        label: str = "publish",
    ) -> None:
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty() if tty is None else tty
        self._interval = interval_s
        self._total = total
        self._label = label
        self._t0 = time.monotonic()
        self._last = self._t0
        self._bar: Any = None
        self._done = 0
        if self._tty:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, unit="img", desc=label, file=self._stream, dynamic_ncols=True
            )

    def update(self, done: int, summary: Summary) -> None:
        step, self._done = done - self._done, done
        now = time.monotonic()
        if self._bar is not None:
            self._bar.update(step)
            if now - self._last >= 0.5:
                self._bar.set_postfix(
                    ok=summary.delivered, failed=summary.failed, skipped=summary.skipped
                )
                self._last = now
        elif now - self._last >= self._interval:
            self._last = now
            self._stream.write(self.line(done, summary, now - self._t0) + "\n")
            self._stream.flush()

    def line(self, done: int, summary: Summary, elapsed: float) -> str:
        of = f"/{self._total}" if self._total is not None else ""
        rate = summary.delivered / elapsed if elapsed > 0 else 0.0
        return (
            f"{self._label}: {done}{of} sent, {summary.delivered} delivered, "
            f"{summary.failed} failed, {summary.skipped} skipped, "
            f"{summary.bytes / 1e6:.1f} MB, {rate:.1f} images/s"
        )

    def close(self, summary: Summary) -> None:
        if self._bar is not None:
            self._bar.set_postfix(
                ok=summary.delivered, failed=summary.failed, skipped=summary.skipped
            )
            self._bar.close()
            self._bar = None
