"""The Cassandra DDL: rendered statements checked structurally (no CQL parser installed).

tests/integration/test_producers_contracts.py runs the same statements on the real
3-node cluster (marked `cassandra`).
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from schemas import cql, rows

CQL_TYPES = re.compile(
    r"^(text|int|bigint|float|double|boolean|timestamp|blob|uuid|timeuuid"
    r"|list<.+>|map<.+>|set<.+>|frozen<.+>)$"
)
TABLE_RE = re.compile(
    r"^CREATE TABLE IF NOT EXISTS (?P<ks>\w+)\.(?P<table>\w+) \((?P<body>.*)\)"
    r"(?: WITH (?P<options>.*))?$",
    re.DOTALL,
)


def _balanced(s: str) -> bool:
    pairs = {")": "(", ">": "<", "}": "{"}
    stack: list[str] = []
    for ch in re.sub(r"'[^']*'", "''", s):
        if ch in "(<{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack and s.count("'") % 2 == 0


def _split_columns(body: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in body:
        depth += ch in "(<"
        depth -= ch in ")>"
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return [p for p in parts if p]


def parse_table(stmt: str) -> tuple[str, str, dict[str, str], list[str]]:
    m = TABLE_RE.match(" ".join(stmt.split()).replace("( ", "(").replace(" )", ")"))
    assert m, stmt
    columns: dict[str, str] = {}
    pk: list[str] = []
    for part in _split_columns(m["body"]):
        if part.startswith("PRIMARY KEY"):
            pk = re.findall(r"\w+", part.removeprefix("PRIMARY KEY"))
            continue
        name, ctype = part.split(" ", 1)
        if ctype.endswith(" PRIMARY KEY"):
            ctype = ctype.removesuffix(" PRIMARY KEY")
            pk = [name]
        ctype = ctype.replace(" ", "")
        assert CQL_TYPES.match(ctype), f"{m['table']}.{name}: unknown type {ctype}"
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", name), name
        assert name not in columns, f"duplicate column {name}"
        columns[name] = ctype
    return m["ks"], m["table"], columns, pk


def test_keyspace_ddl_renders_network_topology_rf() -> None:
    stmt = cql.keyspace_ddl("vision_test", replication_factor=3, datacenter="dc-1")
    flat = " ".join(stmt.split())
    assert flat == (
        "CREATE KEYSPACE IF NOT EXISTS vision_test WITH replication = "
        "{'class': 'NetworkTopologyStrategy', 'dc-1': 3} AND durable_writes = true"
    )
    assert _balanced(stmt)
    assert ";" not in stmt and "--" not in stmt


def test_keyspace_ddl_defaults() -> None:
    assert "'datacenter1': 3" in cql.keyspace_ddl("vision")


def test_table_ddl_one_statement_per_table_in_order() -> None:
    stmts = cql.table_ddl("vision")
    assert [parse_table(s)[1] for s in stmts] == list(cql.TABLES)
    for s in stmts:
        assert _balanced(s), s
        assert ";" not in s and "{" not in s and "--" not in s
        assert parse_table(s)[0] == "vision"


def test_table_keys() -> None:
    tables = {t: (cols, pk) for _, t, cols, pk in map(parse_table, cql.table_ddl("vision"))}
    assert tables[cql.PREDICTIONS_TABLE][1] == ["image_id"]
    assert tables[cql.REJECTIONS_TABLE][1] == ["image_id"]
    assert tables[cql.PREDICTIONS_BY_LABEL_TABLE][1] == ["label", "image_id"]
    for cols, pk in tables.values():
        assert set(pk) <= set(cols)


def test_tables_hold_what_the_records_carry() -> None:
    """Every fact the sink must store has a column (lineage, timing, failure reason)."""
    tables = {t: cols for _, t, cols, _ in map(parse_table, cql.table_ddl("vision"))}
    pred = tables[cql.PREDICTIONS_TABLE]
    for col in (
        "label",
        "score",
        "top_k",
        "model_name",
        "model_version",
        "source",
        "raw_topic",
        "raw_partition",
        "raw_offset",
        "produced_at",
        "processed_at",
        "stage_ms",
    ):
        assert col in pred, col
    rej = tables[cql.REJECTIONS_TABLE]
    for col in (
        "stage",
        "reason",
        "error_class",
        "message",
        "origin_topic",
        "origin_partition",
        "origin_offset",
        "produced_at",
        "rejected_at",
    ):
        assert col in rej, col
    assert pred["raw_offset"] == rej["origin_offset"] == "bigint"


def _ddl_tables() -> dict[str, dict[str, str]]:
    return {t: cols for _, t, cols, _ in map(parse_table, cql.table_ddl("vision"))}


def _mismatch(row_type: type, ddl_columns: dict[str, str]) -> list[str]:
    """Where the row class and the DDL differ: by position, name and CQL type."""
    fields = [(n, t.replace(" ", "")) for n, t in rows.column_types(row_type).items()]
    ddl = list(ddl_columns.items())
    out = [
        f"#{i}: field {f} vs DDL {d}"
        for i, (f, d) in enumerate(zip(fields, ddl, strict=False))
        if f != d
    ]
    if len(fields) != len(ddl):
        out.append(f"{len(fields)} fields vs {len(ddl)} DDL columns")
    return out


def test_each_row_class_is_its_tables_columns_in_order_with_their_types() -> None:
    tables = _ddl_tables()
    assert sorted(r.TABLE for r in rows.ROW_TYPES) == sorted(cql.TABLES)
    for row_type in rows.ROW_TYPES:
        assert _mismatch(row_type, tables[row_type.TABLE]) == [], row_type.__name__


def test_two_swapped_columns_are_caught() -> None:
    # The same fields as RejectionRow with two text columns swapped (what would once
    # have gone in silently): the comparison above must name both positions.
    fields = [(f.name, f.type, f) for f in dataclasses.fields(rows.RejectionRow)]
    fields[2], fields[3] = fields[3], fields[2]  # reason <-> error_class
    swapped = dataclasses.make_dataclass("Swapped", fields, frozen=True)
    swapped.__module__ = rows.__name__  # its annotations resolve in schemas.rows
    found = _mismatch(swapped, _ddl_tables()[cql.REJECTIONS_TABLE])
    assert len(found) == 2 and found[0].startswith("#2:") and found[1].startswith("#3:")


def test_coordinator_filled_columns_take_no_value() -> None:
    for row_type in (rows.PredictionRow, rows.RejectionRow):
        assert rows.server_value(row_type, "stored_at") == "toTimestamp(now())"
        assert "stored_at" not in rows.bound_columns(row_type)
        assert rows.server_value(row_type, "image_id") is None


@pytest.mark.parametrize("bad", ["", "1abc", "vision-test", "vision;drop", "a" * 49, "vision\n"])
def test_invalid_keyspace_names_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        cql.keyspace_ddl(bad)
    with pytest.raises(ValueError):
        cql.table_ddl(bad)


@pytest.mark.parametrize("bad", ["", "dc'1", "dc}1", "dc 1"])
def test_invalid_datacenter_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        cql.keyspace_ddl("vision", datacenter=bad)


def test_invalid_replication_factor_rejected() -> None:
    with pytest.raises(ValueError):
        cql.keyspace_ddl("vision", replication_factor=0)
