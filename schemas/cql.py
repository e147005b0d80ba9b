"""The Cassandra DDL, rendered for a keyspace name, datacenter and replication factor."""

from __future__ import annotations

import re
from importlib import resources

PREDICTIONS_TABLE = "predictions"
PREDICTIONS_BY_LABEL_TABLE = "predictions_by_label"
REJECTIONS_TABLE = "rejections"
TABLES = (PREDICTIONS_TABLE, PREDICTIONS_BY_LABEL_TABLE, REJECTIONS_TABLE)

# Columns added after the first release: (table, column, CQL type). `CREATE TABLE IF NOT
# EXISTS` leaves an existing table as it is, so provisioning adds these when missing.
ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = ((REJECTIONS_TABLE, "raw_key", "text"),)

_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")
# Datacenter names go inside a quoted map key: no quotes or braces.
_DATACENTER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_ident(kind: str, value: str) -> str:
    """`value` if it is a valid unquoted Cassandra identifier (e.g. a keyspace name)."""
    if not _IDENT.fullmatch(value):
        raise ValueError(f"{kind} {value!r} is not a valid Cassandra identifier")
    return value


def _statements(keyspace: str, replication_factor: int, datacenter: str) -> list[str]:
    text = resources.files("schemas").joinpath("ddl", "vision.cql").read_text()
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    if not _DATACENTER.fullmatch(datacenter):
        raise ValueError(f"datacenter {datacenter!r} is not a valid datacenter name")
    if int(replication_factor) < 1:
        raise ValueError(f"replication_factor must be >= 1, got {replication_factor}")
    rendered = text.format(
        keyspace=check_ident("keyspace", keyspace),
        datacenter=datacenter,
        replication_factor=int(replication_factor),
    )
    return [s.strip() for s in rendered.split(";") if s.strip()]


def keyspace_ddl(
    keyspace: str, replication_factor: int = 3, datacenter: str = "datacenter1"
) -> str:
    """`CREATE KEYSPACE IF NOT EXISTS` with NetworkTopologyStrategy {datacenter: rf}."""
    return _statements(keyspace, replication_factor, datacenter)[0]


def table_ddl(keyspace: str) -> list[str]:
    """`CREATE TABLE IF NOT EXISTS` for every table in TABLES, in that order."""
    return _statements(keyspace, 3, "datacenter1")[1:]


def add_column_ddl(keyspace: str, table: str, column: str, cql_type: str) -> str:
    """`ALTER TABLE ... ADD` for one of ADDED_COLUMNS."""
    if (table, column, cql_type) not in ADDED_COLUMNS:
        raise ValueError(f"{table}.{column} {cql_type} is not a known added column")
    return f"ALTER TABLE {check_ident('keyspace', keyspace)}.{table} ADD {column} {cql_type}"
