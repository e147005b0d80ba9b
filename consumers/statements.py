"""The sink's CQL, one statement per row kind; each carries `USING TIMESTAMP ?`.

Upserts end with it; the deletes that keep one status per image (consumers.records)
start with it: `DELETE FROM t USING TIMESTAMP ? WHERE image_id = ?`.

`stored_at` is the coordinator's clock (`toTimestamp(now())`): the time the row was last
written, which a replay moves forward without touching the data columns' timestamps.
"""

from __future__ import annotations

import re

from consumers.records import (
    DELETE_PREDICTION,
    DELETE_REJECTION,
    PREDICTION,
    PREDICTION_BY_LABEL,
    REJECTION,
)
from schemas import cql

_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")

_WRITES = {
    PREDICTION: (
        "INSERT INTO {ks}."
        + cql.PREDICTIONS_TABLE
        + " (image_id, label, class_index, score, top_k,"
        " model_name, model_version, source, content_type, raw_topic, raw_partition, raw_offset,"
        " produced_at, processed_at, stage_ms, stored_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, toTimestamp(now()))"
        " USING TIMESTAMP ?"
    ),
    PREDICTION_BY_LABEL: (
        "INSERT INTO {ks}." + cql.PREDICTIONS_BY_LABEL_TABLE + " (label, image_id, score,"
        " model_name, model_version, source, produced_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
    ),
    REJECTION: (
        "INSERT INTO {ks}." + cql.REJECTIONS_TABLE + " (image_id, stage, reason, error_class,"
        " message, retriable, source, origin_topic, origin_partition, origin_offset,"
        " produced_at, rejected_at, raw_key, stored_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, toTimestamp(now())) USING TIMESTAMP ?"
    ),
    DELETE_REJECTION: (
        "DELETE FROM {ks}." + cql.REJECTIONS_TABLE + " USING TIMESTAMP ? WHERE image_id = ?"
    ),
    DELETE_PREDICTION: (
        "DELETE FROM {ks}." + cql.PREDICTIONS_TABLE + " USING TIMESTAMP ? WHERE image_id = ?"
    ),
}


def write_statements(keyspace: str) -> dict[str, str]:
    """CQL text of every write, by statement name, for `keyspace`."""
    if not _IDENT.match(keyspace):
        raise ValueError(f"keyspace {keyspace!r} is not a valid Cassandra identifier")
    ks = keyspace
    return {name: text.format(ks=ks) for name, text in _WRITES.items()}
