"""The Cassandra side of backup and restore over CQL: the keyspace's schema as CQL, row
counts per table, and whether a keyspace is absent, empty or holds rows.

Counts are read at the session's consistency (LOCAL_QUORUM by default), so a row counted
here was acknowledged by a quorum of replicas and is in at least two nodes' snapshots.
"""

from __future__ import annotations

from typing import Any

from cassandra.query import SimpleStatement

COUNT_TIMEOUT_S = 120.0
SCHEMA_WAIT_S = 60.0


def schema_of(cluster: Any, keyspace: str) -> dict[str, Any]:
    """{"keyspace": CREATE KEYSPACE cql, "tables": {name: CREATE TABLE cql}}."""
    cluster.refresh_schema_metadata()
    ks = cluster.metadata.keyspaces.get(keyspace)
    if ks is None:
        raise LookupError(f"keyspace {keyspace} does not exist")
    return {
        "keyspace": ks.as_cql_query(),
        "tables": {name: t.as_cql_query() for name, t in sorted(ks.tables.items())},
    }


def if_not_exists(cql: str) -> str:
    """CREATE KEYSPACE|TABLE x -> CREATE KEYSPACE|TABLE IF NOT EXISTS x."""
    for kind in ("KEYSPACE", "TABLE"):
        head = f"CREATE {kind} "
        if cql.startswith(head) and not cql.startswith(head + "IF NOT EXISTS"):
            return head + "IF NOT EXISTS " + cql[len(head) :]
    return cql


def create_schema(session: Any, schema: dict[str, Any]) -> None:
    session.execute(if_not_exists(schema["keyspace"]), timeout=SCHEMA_WAIT_S)
    for cql in schema["tables"].values():
        session.execute(if_not_exists(cql), timeout=SCHEMA_WAIT_S)
    if not session.cluster.control_connection.wait_for_schema_agreement(wait_time=SCHEMA_WAIT_S):
        raise RuntimeError(
            f"the nodes did not agree on the restored schema within {SCHEMA_WAIT_S:.0f}s"
        )


def count_rows(session: Any, keyspace: str, table: str) -> int:
    stmt = SimpleStatement(f"SELECT count(*) FROM {keyspace}.{table}", fetch_size=5000)
    return int(session.execute(stmt, timeout=COUNT_TIMEOUT_S).one()[0])


def row_counts(session: Any, keyspace: str, tables: list[str]) -> dict[str, int]:
    return {t: count_rows(session, keyspace, t) for t in tables}


def keyspace_state(cluster: Any, session: Any, keyspace: str) -> str:
    """'absent', 'empty' (tables without rows) or 'has rows'."""
    cluster.refresh_schema_metadata()
    ks = cluster.metadata.keyspaces.get(keyspace)
    if ks is None:
        return "absent"
    for t in ks.tables:
        stmt = SimpleStatement(f"SELECT * FROM {keyspace}.{t} LIMIT 1")
        if session.execute(stmt, timeout=COUNT_TIMEOUT_S).one() is not None:
            return "has rows"
    return "empty"
