"""Result queries at the configured read consistency (LOCAL_QUORUM), for the CLI and tests.

Functions take a driver session and the keyspace; they return plain dicts (JSON-ready:
timestamps as epoch ms). With RF 3 and LOCAL_QUORUM, every function here answers with
any one Cassandra node down, also while the driver has not noticed yet: every statement
is idempotent and runs under infra.cassandra_session.READ_PROFILE (retries on the next
host, speculative execution). Scans page one request at a time and, when a page fails,
ask again from that page's paging state instead of starting over.

One status per image: an id with rows in both `predictions` and `rejections` (a moment
between the two writes, or a replay) shows only the row with the newer write time
(`lookup`, `stats`); `by_label` keeps a hit only while `predictions` still gives the
image that label. Lookups by id run concurrently (one partition per request, not a
multi-partition IN). `count_rows` and `stats` scan whole tables: fine for the demo and
tests, not a production analytics path.
"""

from __future__ import annotations

import datetime as dt
import logging
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from infra.cassandra_session import read_profile_of
from schemas import cql
from schemas.rows import PredictionByLabelRow, PredictionRow, RejectionRow, columns

log = logging.getLogger(__name__)

# Columns read, from the row classes (the DDL's order). The reads leave out `raw_key`
# (rejections): results and the API kept their shape when that column was added.
PREDICTION_COLUMNS = columns(PredictionRow)
BY_LABEL_COLUMNS = columns(PredictionByLabelRow)
REJECTION_COLUMNS = tuple(c for c in columns(RejectionRow) if c != "raw_key")
# The cell whose WRITETIME (microseconds, the record's `USING TIMESTAMP`) dates a row.
WRITE_TIME = "write_time"
_DATED_BY = {cql.PREDICTIONS_TABLE: "label", cql.REJECTIONS_TABLE: "reason"}
DEFAULT_CONCURRENCY = 64
PAGE_SIZE = 1000
# Tries of one page of a scan: the driver already retried inside each try
# (READ_PROFILE); this covers a page whose whole request budget ran out.
PAGE_ATTEMPTS = 3


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return int(value.timestamp() * 1000)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, float):
        return round(value, 6)
    return value


def _row(columns: Sequence[str], row: Any) -> dict[str, Any]:
    return {c: _plain(getattr(row, c)) for c in columns}


def _select(
    columns: Sequence[str], keyspace: str, table: str, where: str = "", dated: bool = False
) -> str:
    cols = ", ".join(columns)
    if dated:
        cols += f", WRITETIME({_DATED_BY[table]}) AS {WRITE_TIME}"
    return f"SELECT {cols} FROM {keyspace}.{table}" + (f" WHERE {where}" if where else "")


# Prepared statements per session: preparing asks every node (a round trip each), which
# doubled a point read's cost in the read API (p99 93 -> 12 ms once cached).
_PREPARED: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], Any]] = weakref.WeakKeyDictionary()


def _prepare(
    session: Any, cql_text: str, consistency: int | None, fetch_size: int | None = None
) -> Any:
    # Consistency None: the read profile's (the configured read level).
    key = (cql_text, consistency, fetch_size)
    try:
        cache = _PREPARED.setdefault(session, {})
    except TypeError:  # a session that cannot be weakly referenced: no cache
        cache = {}
    ps = cache.get(key)
    if ps is not None:
        return ps
    ps = session.prepare(cql_text)
    ps.is_idempotent = True
    if consistency is not None:
        ps.consistency_level = consistency
    if fetch_size is not None:
        ps.fetch_size = fetch_size
    cache[key] = ps
    return ps


def retriable_read_error(exc: BaseException) -> bool:
    """A driver error a later try may not get: timeouts, unavailable, no host, connection."""
    from cassandra import OperationTimedOut, ReadTimeout, Unavailable
    from cassandra.cluster import NoHostAvailable
    from cassandra.connection import ConnectionException

    return isinstance(
        exc, OperationTimedOut | ReadTimeout | Unavailable | NoHostAvailable | ConnectionException
    )


def pages(
    session: Any,
    statement: Any,
    params: Sequence[Any] | None = None,
    attempts: int = PAGE_ATTEMPTS,
    retriable: Callable[[BaseException], bool] = retriable_read_error,
) -> Iterator[list[Any]]:
    """Yield the result one page at a time; each page is its own request under the read
    profile, and a page that fails is asked again from its paging state (at most
    `attempts` tries), so a scan never starts over and never yields a row twice."""
    profile = read_profile_of(session)
    paging_state: bytes | None = None
    while True:
        for attempt in range(1, attempts + 1):
            try:
                rs = session.execute(
                    statement, params, execution_profile=profile, paging_state=paging_state
                )
                break
            except Exception as exc:
                if attempt == attempts or not retriable(exc):
                    raise
                log.warning(
                    "page %s failed (%s: %s); asking again from its paging state",
                    "1" if paging_state is None else "n",
                    type(exc).__name__,
                    exc,
                )
        yield list(rs.current_rows)
        paging_state = rs.paging_state
        if not paging_state:
            return


def _by_ids(
    session: Any,
    keyspace: str,
    table: str,
    columns: Sequence[str],
    ids: Iterable[str],
    consistency: int | None,
    concurrency: int,
    dated: bool = False,
) -> dict[str, dict[str, Any]]:
    """Each id's row, read concurrently; ids whose read failed retriably (the driver's
    own retries and speculation used up) are asked again, at most PAGE_ATTEMPTS tries."""
    from cassandra.concurrent import execute_concurrent_with_args

    pending = list(dict.fromkeys(ids))
    if not pending:
        return {}
    ps = _prepare(session, _select(columns, keyspace, table, "image_id = ?", dated), consistency)
    cols = (*columns, WRITE_TIME) if dated else columns
    out: dict[str, dict[str, Any]] = {}
    for attempt in range(1, PAGE_ATTEMPTS + 1):
        results = execute_concurrent_with_args(
            session,
            ps,
            [(i,) for i in pending],
            concurrency=concurrency,
            raise_on_first_error=False,
            execution_profile=read_profile_of(session),
        )
        failed: list[str] = []
        for (ok, rows), image_id in zip(results, pending, strict=True):
            if not ok:
                if attempt == PAGE_ATTEMPTS or not retriable_read_error(rows):
                    raise rows
                failed.append(image_id)
                continue
            for row in rows:
                out[image_id] = _row(cols, row)
        if not failed:
            break
        log.warning(
            "%d reads of %s.%s failed (e.g. %s); asking again",
            len(failed),
            keyspace,
            table,
            failed[0],
        )
        pending = failed
    return out


def fetch_predictions(
    session: Any,
    ids: Iterable[str],
    *,
    keyspace: str,
    consistency: int | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> dict[str, dict[str, Any]]:
    """The stored prediction of each id that has one (missing ids are absent)."""
    return _by_ids(
        session, keyspace, cql.PREDICTIONS_TABLE, PREDICTION_COLUMNS, ids, consistency, concurrency
    )


def fetch_rejections(
    session: Any,
    ids: Iterable[str],
    *,
    keyspace: str,
    consistency: int | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> dict[str, dict[str, Any]]:
    """The stored rejection of each id that has one (missing ids are absent)."""
    return _by_ids(
        session, keyspace, cql.REJECTIONS_TABLE, REJECTION_COLUMNS, ids, consistency, concurrency
    )


@dataclass
class Lookup:
    """One status per asked id: a prediction, a rejection, or missing.

    `shadowed` holds the ids that had rows in both tables; each shows only its newer row
    (by write time; a tie goes to the prediction, the later stage)."""

    predictions: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejections: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    shadowed: set[str] = field(default_factory=set)


def resolve(
    ids: Sequence[str], preds: dict[str, dict[str, Any]], rejs: dict[str, dict[str, Any]]
) -> Lookup:
    """Pure: the one status of each id from the rows of both tables (with write_time)."""
    out = Lookup()
    for i in dict.fromkeys(ids):
        p, r = preds.get(i), rejs.get(i)
        if p is not None and r is not None:
            out.shadowed.add(i)
            if (p.get(WRITE_TIME) or 0) >= (r.get(WRITE_TIME) or 0):
                r = None
            else:
                p = None
        if p is not None:
            out.predictions[i] = p
        elif r is not None:
            out.rejections[i] = r
        else:
            out.missing.append(i)
    return out


def lookup(
    session: Any,
    ids: Iterable[str],
    *,
    keyspace: str,
    consistency: int | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> Lookup:
    """The one status of each id (both tables read, the newer row wins)."""
    wanted = list(dict.fromkeys(ids))
    preds, rejs = (
        _by_ids(session, keyspace, table, cols, wanted, consistency, concurrency, dated=True)
        for table, cols in (
            (cql.PREDICTIONS_TABLE, PREDICTION_COLUMNS),
            (cql.REJECTIONS_TABLE, REJECTION_COLUMNS),
        )
    )
    return resolve(wanted, preds, rejs)


def by_label(
    session: Any,
    label: str,
    *,
    keyspace: str,
    limit: int = 100,
    consistency: int | None = None,
    verify: bool = True,
) -> list[dict[str, Any]]:
    """Up to `limit` images whose top-1 label is `label`, ordered by image id.

    predictions_by_label is an index: when an image's label changes (a newer model, or an
    older record replayed under another label) or a rejection replaces its prediction,
    its row under the old label can stay. With `verify` (default) each hit is checked
    against `predictions` and kept only if that still gives it `label`; pages are read
    until `limit` verified rows are found or the label has no more rows.
    """
    if limit <= 0:
        return []
    ps = _prepare(
        session,
        _select(BY_LABEL_COLUMNS, keyspace, cql.PREDICTIONS_BY_LABEL_TABLE, "label = ?"),
        consistency,
        fetch_size=min(max(limit, 10), PAGE_SIZE),
    )
    out: list[dict[str, Any]] = []
    for page in pages(session, ps, (label,)):
        hits = [_row(BY_LABEL_COLUMNS, r) for r in page]
        if verify and hits:
            current = fetch_predictions(
                session, [h["image_id"] for h in hits], keyspace=keyspace, consistency=consistency
            )
            hits = [h for h in hits if current.get(h["image_id"], {}).get("label") == label]
        out += hits[: limit - len(out)]
        if len(out) >= limit:
            break
    return out


def _scan(
    session: Any,
    keyspace: str,
    table: str,
    columns: Sequence[str],
    consistency: int | None,
    dated: bool = False,
) -> Iterator[Any]:
    ps = _prepare(
        session, _select(columns, keyspace, table, dated=dated), consistency, fetch_size=PAGE_SIZE
    )
    for page in pages(session, ps):
        yield from page


def list_rejections(
    session: Any, *, keyspace: str, limit: int = 100, consistency: int | None = None
) -> list[dict[str, Any]]:
    """The newest `limit` rejections (by rejected_at), from a full scan."""
    rows = [
        _row(REJECTION_COLUMNS, r)
        for r in _scan(session, keyspace, cql.REJECTIONS_TABLE, REJECTION_COLUMNS, consistency)
    ]
    rows.sort(key=lambda r: r["rejected_at"] or 0, reverse=True)
    return rows[:limit]


def count_rows(session: Any, table: str, *, keyspace: str, consistency: int | None = None) -> int:
    """Rows in `table` (a paged scan of the key column; COUNT(*) times out on big tables)."""
    if table not in cql.TABLES:
        raise ValueError(f"unknown table {table!r}; one of {cql.TABLES}")
    return sum(1 for _ in _scan(session, keyspace, table, ("image_id",), consistency))


def all_ids(session: Any, table: str, *, keyspace: str, consistency: int | None = None) -> set[str]:
    if table not in cql.TABLES:
        raise ValueError(f"unknown table {table!r}; one of {cql.TABLES}")
    return {r.image_id for r in _scan(session, keyspace, table, ("image_id",), consistency)}


STATS_PREDICTION_COLUMNS = ("image_id", "label", "score", "model_name", "processed_at")
STATS_REJECTION_COLUMNS = ("image_id", "stage", "reason")


def summarize(
    predictions: Iterable[dict[str, Any]], rejections: Iterable[dict[str, Any]], newest: int = 10
) -> dict[str, Any]:
    """Pure: the stats of both tables' scanned rows, each id counted once (newer row wins)."""
    preds = {p["image_id"]: p for p in predictions}
    rejs = {r["image_id"]: r for r in rejections}
    one = resolve([*preds, *rejs], preds, rejs)
    labels = Counter(p["label"] for p in one.predictions.values())
    reasons = Counter(r["reason"] for r in one.rejections.values())
    stages = Counter(r["stage"] for r in one.rejections.values())
    latest = sorted(one.predictions.values(), key=lambda r: r["processed_at"] or 0, reverse=True)
    return {
        "predictions": len(one.predictions),
        "rejections": len(one.rejections),
        "by_label": dict(labels.most_common()),
        "rejections_by_reason": dict(reasons.most_common()),
        "rejections_by_stage": dict(stages.most_common()),
        "newest": [{c: r[c] for c in STATS_PREDICTION_COLUMNS} for r in latest[:newest]],
        "in_both_tables": len(one.shadowed),
    }


def stats(
    session: Any, *, keyspace: str, newest: int = 10, consistency: int | None = None
) -> dict[str, Any]:
    """Counts by label, rejections by reason and stage, and the newest results."""
    cols_p = (*STATS_PREDICTION_COLUMNS, WRITE_TIME)
    cols_r = (*STATS_REJECTION_COLUMNS, WRITE_TIME)
    preds = (
        _row(cols_p, r)
        for r in _scan(
            session,
            keyspace,
            cql.PREDICTIONS_TABLE,
            STATS_PREDICTION_COLUMNS,
            consistency,
            dated=True,
        )
    )
    rejs = [
        _row(cols_r, r)
        for r in _scan(
            session,
            keyspace,
            cql.REJECTIONS_TABLE,
            STATS_REJECTION_COLUMNS,
            consistency,
            dated=True,
        )
    ]
    return summarize(list(preds), rejs, newest)
