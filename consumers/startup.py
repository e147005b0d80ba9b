"""Checks the sink runs once at start against the live cluster, before it consumes.

Each refuses to start (ConsistencyConfigError) on what no record could get past: a
keyspace whose replication and the configured levels do not overlap (W + R <= RF), or
missing tables or columns. They read the schema only; they change nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from consumers.consistency import (
    ConsistencyConfigError,
    Overlap,
    keyspace_replication,
    require_overlap,
)
from consumers.settings import SinkSettings
from schemas import cql

log = logging.getLogger(__name__)


def check_startup_consistency(session: Any, settings: SinkSettings) -> Overlap:
    """Refuse to start unless the keyspace's actual RF and the configured levels give W+R>RF."""
    cs = settings.cassandra
    replication = keyspace_replication(session, cs.keyspace)
    overlap = require_overlap(
        replication, cs.local_datacenter, cs.write_consistency, cs.read_consistency
    )
    if overlap.rf != cs.replication_factor:
        log.warning(
            "keyspace %s has RF %d in %s, settings say %d; checked against the actual RF",
            cs.keyspace,
            overlap.rf,
            overlap.scope,
            cs.replication_factor,
        )
    log.info("consistency check passed: %s", overlap.reason)
    return overlap


def check_tables(session: Any, keyspace: str) -> None:
    """Refuse to start without the tables; warn about a top_k column replays would corrupt."""
    rows = session.execute(
        "SELECT table_name, column_name, type FROM system_schema.columns WHERE keyspace_name = %s",
        (keyspace,),
    )
    columns = {(r.table_name, r.column_name): r.type for r in rows}
    tables = {t for t, _ in columns}
    missing = [t for t in cql.TABLES if t not in tables]
    if missing:
        raise ConsistencyConfigError(
            f"keyspace {keyspace!r} lacks table(s) {missing}; provision it first "
            "(python -m infra provision)"
        )
    absent = [f"{t}.{c}" for t, c, _type in cql.ADDED_COLUMNS if (t, c) not in columns]
    if absent:
        raise ConsistencyConfigError(
            f"keyspace {keyspace!r} lacks column(s) {absent}; provision it again "
            "(python -m infra provision adds them)"
        )
    top_k = columns.get((cql.PREDICTIONS_TABLE, "top_k"), "")
    if top_k.startswith("list<"):
        log.warning(
            "%s.%s.top_k is a non-frozen list (%s): a replayed prediction appends its "
            "classes again. Recreate the table from schemas/ddl/vision.cql (frozen list)",
            keyspace,
            cql.PREDICTIONS_TABLE,
            top_k,
        )
