"""Result queries at the configured read consistency (LOCAL_QUORUM), for the CLI and tests.

Functions take a driver session and the keyspace; they return plain dicts (JSON-ready:
timestamps as epoch ms). With RF 3 and LOCAL_QUORUM, every function here answers with
any one Cassandra node down. Lookups by id run concurrently (one partition per request,
not a multi-partition IN). `count_rows` and `stats` scan whole tables with paging: fine
for the demo and tests, not a production analytics path.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from schemas import cql

PREDICTION_COLUMNS = (
    "image_id", "label", "class_index", "score", "top_k", "model_name", "model_version",
    "source", "content_type", "raw_topic", "raw_partition", "raw_offset", "produced_at",
    "processed_at", "stored_at", "stage_ms",
)
BY_LABEL_COLUMNS = ("label", "image_id", "score", "model_name", "model_version", "source",
                    "produced_at")
REJECTION_COLUMNS = (
    "image_id", "stage", "reason", "error_class", "message", "retriable", "source",
    "origin_topic", "origin_partition", "origin_offset", "produced_at", "rejected_at",
    "stored_at",
)
DEFAULT_CONCURRENCY = 64
PAGE_SIZE = 1000


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


def _statement(cql_text: str, consistency: int | None) -> Any:
    from cassandra.query import SimpleStatement

    return SimpleStatement(cql_text, consistency_level=consistency, fetch_size=PAGE_SIZE)


def _prepare(session: Any, cql_text: str, consistency: int | None) -> Any:
    # Consistency None: the session's default profile (the configured read level).
    ps = session.prepare(cql_text)
    ps.is_idempotent = True
    if consistency is not None:
        ps.consistency_level = consistency
    return ps


def _by_ids(session: Any, keyspace: str, table: str, columns: Sequence[str], ids: Iterable[str],
            consistency: int | None, concurrency: int) -> dict[str, dict[str, Any]]:
    from cassandra.concurrent import execute_concurrent_with_args

    unique = list(dict.fromkeys(ids))
    if not unique:
        return {}
    ps = _prepare(session,
                  f"SELECT {', '.join(columns)} FROM {keyspace}.{table} WHERE image_id = ?",
                  consistency)
    results = execute_concurrent_with_args(session, ps, [(i,) for i in unique],
                                           concurrency=concurrency, raise_on_first_error=True)
    out: dict[str, dict[str, Any]] = {}
    for (_ok, rows), image_id in zip(results, unique, strict=True):
        for row in rows:
            out[image_id] = _row(columns, row)
    return out


def fetch_predictions(session: Any, ids: Iterable[str], *, keyspace: str,
                      consistency: int | None = None,
                      concurrency: int = DEFAULT_CONCURRENCY) -> dict[str, dict[str, Any]]:
    """The stored prediction of each id that has one (missing ids are absent)."""
    return _by_ids(session, keyspace, cql.PREDICTIONS_TABLE, PREDICTION_COLUMNS, ids,
                   consistency, concurrency)


def fetch_rejections(session: Any, ids: Iterable[str], *, keyspace: str,
                     consistency: int | None = None,
                     concurrency: int = DEFAULT_CONCURRENCY) -> dict[str, dict[str, Any]]:
    """The stored rejection of each id that has one (missing ids are absent)."""
    return _by_ids(session, keyspace, cql.REJECTIONS_TABLE, REJECTION_COLUMNS, ids,
                   consistency, concurrency)


def by_label(session: Any, label: str, *, keyspace: str, limit: int = 100,
             consistency: int | None = None, verify: bool = True) -> list[dict[str, Any]]:
    """Images whose top-1 label is `label`, from predictions_by_label (ordered by image id).

    predictions_by_label is an index: when an image's label changes (a newer model, or an
    older record replayed under another label), its row under the other label stays. With
    `verify` (default) each hit is checked against the predictions table and kept only if
    that is still its label, so the answer can hold fewer than `limit` rows.
    """
    ps = _prepare(session,
                  f"SELECT {', '.join(BY_LABEL_COLUMNS)} FROM {keyspace}."
                  f"{cql.PREDICTIONS_BY_LABEL_TABLE} WHERE label = ? LIMIT ?", consistency)
    rows = [_row(BY_LABEL_COLUMNS, r) for r in session.execute(ps, (label, int(limit)))]
    if not verify or not rows:
        return rows
    current = fetch_predictions(session, [r["image_id"] for r in rows], keyspace=keyspace,
                                consistency=consistency)
    return [r for r in rows if current.get(r["image_id"], {}).get("label") == label]


def _scan(session: Any, keyspace: str, table: str, columns: Sequence[str],
          consistency: int | None) -> Iterable[Any]:
    return session.execute(
        _statement(f"SELECT {', '.join(columns)} FROM {keyspace}.{table}", consistency)
    )


def list_rejections(session: Any, *, keyspace: str, limit: int = 100,
                    consistency: int | None = None) -> list[dict[str, Any]]:
    """The newest `limit` rejections (by rejected_at), from a full scan."""
    rows = [_row(REJECTION_COLUMNS, r)
            for r in _scan(session, keyspace, cql.REJECTIONS_TABLE, REJECTION_COLUMNS, consistency)]
    rows.sort(key=lambda r: r["rejected_at"] or 0, reverse=True)
    return rows[:limit]


def count_rows(session: Any, table: str, *, keyspace: str,
               consistency: int | None = None) -> int:
    """Rows in `table` (a paged scan of the key column; COUNT(*) times out on big tables)."""
    if table not in cql.TABLES:
        raise ValueError(f"unknown table {table!r}; one of {cql.TABLES}")
    return sum(1 for _ in _scan(session, keyspace, table, ("image_id",), consistency))


def all_ids(session: Any, table: str, *, keyspace: str, consistency: int | None = None) -> set[str]:
    if table not in cql.TABLES:
        raise ValueError(f"unknown table {table!r}; one of {cql.TABLES}")
    return {r.image_id for r in _scan(session, keyspace, table, ("image_id",), consistency)}


def stats(session: Any, *, keyspace: str, newest: int = 10,
          consistency: int | None = None) -> dict[str, Any]:
    """Counts by label, rejections by reason and stage, and the newest results."""
    labels: Counter[str] = Counter()
    latest: list[dict[str, Any]] = []
    cols = ("image_id", "label", "score", "model_name", "processed_at")
    for r in _scan(session, keyspace, cql.PREDICTIONS_TABLE, cols, consistency):
        labels[r.label] += 1
        latest.append(_row(cols, r))
    latest.sort(key=lambda r: r["processed_at"] or 0, reverse=True)
    reasons: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    for r in _scan(session, keyspace, cql.REJECTIONS_TABLE, ("image_id", "stage", "reason"),
                   consistency):
        reasons[r.reason] += 1
        stages[r.stage] += 1
    return {
        "predictions": sum(labels.values()),
        "rejections": sum(reasons.values()),
        "by_label": dict(labels.most_common()),
        "rejections_by_reason": dict(reasons.most_common()),
        "rejections_by_stage": dict(stages.most_common()),
        "newest": latest[:newest],
    }
