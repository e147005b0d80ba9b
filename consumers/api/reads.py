"""What the routes read from Cassandra, at the session's read consistency (LOCAL_QUORUM).

Lookups, stats and rejection lists go through `consumers.queries` (shared with the CLI;
fault-tolerant there: READ_PROFILE retries and speculative execution). One query is the API's own: a page of
`predictions_by_label` after a given image id (the clustering key), which `queries`
does not offer; its hits are checked against `predictions` like `queries.by_label`.
Every function here is blocking (the driver's sync API): the routes run them in threads.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from typing import Any

from consumers import queries
from infra.cassandra_session import read_profile_of
from schemas import cql


def image(session: Any, keyspace: str, image_id: str) -> dict[str, Any] | None:
    """One status per image (`queries.lookup`: the newer of its prediction and rejection)."""
    found = queries.lookup(session, [image_id], keyspace=keyspace)
    if image_id in found.predictions:
        row, status = found.predictions[image_id], "prediction"
    elif image_id in found.rejections:
        row, status = found.rejections[image_id], "rejected"
    else:
        return None
    row = {k: v for k, v in row.items() if k != queries.WRITE_TIME}
    return {**row, "image_id": image_id, "status": status}


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return int(value.timestamp() * 1000)
    if isinstance(value, float):
        return round(value, 6)
    return value


class LabelPages:
    """Pages of images by top-1 label, ordered by image id; prepared statements per keyspace."""

    def __init__(self, session: Any, keyspace: str) -> None:
        cols = ", ".join(queries.BY_LABEL_COLUMNS)
        table = f"{keyspace}.{cql.PREDICTIONS_BY_LABEL_TABLE}"
        self._session = session
        self._keyspace = keyspace
        # The retries and speculative execution every read of `queries` runs under.
        self._profile = read_profile_of(session)
        self._first = session.prepare(f"SELECT {cols} FROM {table} WHERE label = ? LIMIT ?")
        self._after = session.prepare(
            f"SELECT {cols} FROM {table} WHERE label = ? AND image_id > ? LIMIT ?"
        )
        for ps in (self._first, self._after):
            ps.is_idempotent = True

    def page(
        self, label: str, after: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to `limit` current hits after image id `after`, and the id to continue from.

        The continuation is the last index row read (not the last hit kept), so a page
        that loses stale index rows to verification still moves forward; None at the end.
        """
        if after is None:
            rows = list(
                self._session.execute(self._first, (label, limit), execution_profile=self._profile)
            )
        else:
            rows = list(
                self._session.execute(
                    self._after, (label, after, limit), execution_profile=self._profile
                )
            )
        hits = [{c: _plain(getattr(r, c)) for c in queries.BY_LABEL_COLUMNS} for r in rows]
        nxt = hits[-1]["image_id"] if len(rows) == limit else None
        if not hits:
            return [], None
        current = queries.fetch_predictions(
            self._session, [h["image_id"] for h in hits], keyspace=self._keyspace
        )
        return [h for h in hits if current.get(h["image_id"], {}).get("label") == label], nxt


class Cached:
    """A blocking read reused for `ttl_s` (whole-table scans that the page polls).

    One caller refreshes at a time; the others wait for that result instead of
    starting their own scan.
    """

    def __init__(self, ttl_s: float, read: Callable[[], Any]) -> None:
        self._ttl = ttl_s
        self._read = read
        self._lock = threading.Lock()
        self._value: Any = None
        self._at = -1e18

    def get(self) -> Any:
        with self._lock:
            if time.monotonic() - self._at >= self._ttl:
                self._value = self._read()
                self._at = time.monotonic()
            return self._value


def rejections_sorted(session: Any, keyspace: str) -> list[dict[str, Any]]:
    """Every rejection, newest first (a full scan via `queries`; the API caches it)."""
    return queries.list_rejections(session, keyspace=keyspace, limit=2**31 - 1)


def stats(session: Any, keyspace: str, newest: int = 12) -> dict[str, Any]:
    return queries.stats(session, keyspace=keyspace, newest=newest)
