"""The sink's CQL, one statement per row kind; each carries `USING TIMESTAMP ?`.

Upserts are built from the row classes in schemas.rows (columns in field order, a `?`
per bound column) and end with `USING TIMESTAMP ?`; the deletes that keep one status per
image (consumers.records) start with it: `DELETE FROM t USING TIMESTAMP ? WHERE image_id = ?`.

`stored_at` is the coordinator's clock (`toTimestamp(now())`): the time the row was last
written, which a replay moves forward without touching the data columns' timestamps.
"""

from __future__ import annotations

from consumers.records import DELETE_PREDICTION, DELETE_REJECTION, UPSERT_OF
from schemas import cql
from schemas.rows import Row, columns, server_value


def insert_cql(row_type: type[Row], keyspace: str) -> str:
    """`INSERT INTO ks.table (every column) VALUES (? or the coordinator's value) USING TIMESTAMP ?`."""
    cols = columns(row_type)
    values = ", ".join(server_value(row_type, c) or "?" for c in cols)
    return (
        f"INSERT INTO {keyspace}.{row_type.TABLE} ({', '.join(cols)})"
        f" VALUES ({values}) USING TIMESTAMP ?"
    )


def _delete_cql(keyspace: str, table: str) -> str:
    return f"DELETE FROM {keyspace}.{table} USING TIMESTAMP ? WHERE image_id = ?"


def write_statements(keyspace: str) -> dict[str, str]:
    """CQL text of every write, by statement name, for `keyspace`."""
    ks = cql.check_ident("keyspace", keyspace)
    out = {name: insert_cql(row_type, ks) for row_type, name in UPSERT_OF.items()}
    out[DELETE_REJECTION] = _delete_cql(ks, cql.REJECTIONS_TABLE)
    out[DELETE_PREDICTION] = _delete_cql(ks, cql.PREDICTIONS_TABLE)
    return out
