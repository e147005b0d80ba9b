"""One frozen dataclass per Cassandra table the sink writes (schemas/ddl/vision.cql).

A row class IS its table's column list: its fields, in order, are the table's columns
in the DDL's order, and each field's annotation names the column's CQL type
(`Text`, `Int`, ...). The sink's INSERTs (consumers.statements) and the reads
(consumers.queries) are built from these fields, and rows are built by keyword, so a
column is never written by its position. tests/unit/test_schemas_cql.py parses the DDL
and fails when a name, a type or the order differs.

They live in schemas/, next to the DDL they describe: they are pure contracts (no driver,
no consumer logic); how a Kafka record becomes a row stays in consumers.records.

A column the coordinator fills (`stored_at = toTimestamp(now())`) is a field too, so the
order stays the DDL's, but it takes no value: `bound_columns` leaves it out and
`server_value` gives the CQL expression the INSERT uses for it.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from schemas import cql


@dataclass(frozen=True)
class CqlType:
    """The CQL type of a column, as the DDL file spells it."""

    name: str


Text = Annotated[str, CqlType("text")]
OptionalText = Annotated[str | None, CqlType("text")]
Int = Annotated[int, CqlType("int")]
BigInt = Annotated[int, CqlType("bigint")]
Float = Annotated[float, CqlType("float")]
Boolean = Annotated[bool, CqlType("boolean")]
# Epoch milliseconds (the driver binds an int to a timestamp as ms); None is a null cell.
Timestamp = Annotated[int | None, CqlType("timestamp")]
TopK = Annotated[
    list[tuple[int, str, float]], CqlType("frozen<list<frozen<tuple<int, text, float>>>>")
]
StageMs = Annotated[dict[str, int], CqlType("map<text, bigint>")]

_SERVER_VALUE = "cql_server_value"


def _coordinator_time() -> Any:
    """A column the coordinator stamps (`toTimestamp(now())`): a replay moves it forward
    without touching the data columns' write times."""
    return dataclasses.field(
        default=None, init=False, metadata={_SERVER_VALUE: "toTimestamp(now())"}
    )


@dataclass(frozen=True)
class PredictionRow:
    """`predictions`: one row per image, the latest prediction with its lineage."""

    TABLE: ClassVar[str] = cql.PREDICTIONS_TABLE

    image_id: Text
    label: Text
    class_index: Int
    score: Float
    top_k: TopK
    model_name: Text
    model_version: Text
    source: Text
    content_type: Text
    raw_topic: Text
    raw_partition: Int
    raw_offset: BigInt
    produced_at: Timestamp
    processed_at: Timestamp
    stored_at: Timestamp = _coordinator_time()
    stage_ms: StageMs = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class PredictionByLabelRow:
    """`predictions_by_label`: the query path of images by their top-1 label."""

    TABLE: ClassVar[str] = cql.PREDICTIONS_BY_LABEL_TABLE

    label: Text
    image_id: Text
    score: Float
    model_name: Text
    model_version: Text
    source: Text
    produced_at: Timestamp


@dataclass(frozen=True)
class RejectionRow:
    """`rejections`: one row per rejected image, which stage refused it and why."""

    TABLE: ClassVar[str] = cql.REJECTIONS_TABLE

    image_id: Text
    stage: Text
    reason: Text
    error_class: Text
    message: Text
    retriable: Boolean
    source: Text
    origin_topic: Text
    origin_partition: Int
    origin_offset: BigInt
    produced_at: Timestamp
    rejected_at: Timestamp
    stored_at: Timestamp = _coordinator_time()
    # The key's escaped bytes when it is no valid image id; None otherwise.
    raw_key: OptionalText = None


Row = PredictionRow | PredictionByLabelRow | RejectionRow
ROW_TYPES: tuple[type[Row], ...] = (PredictionRow, PredictionByLabelRow, RejectionRow)


def columns(row_type: type[Row]) -> tuple[str, ...]:
    """Every column of the table, in the DDL's order."""
    return tuple(f.name for f in dataclasses.fields(row_type))


def column_types(row_type: type[Row]) -> dict[str, str]:
    """Column -> CQL type, from each field's annotation."""
    hints = typing.get_type_hints(row_type, include_extras=True)
    out: dict[str, str] = {}
    for f in dataclasses.fields(row_type):
        meta = [m for m in getattr(hints[f.name], "__metadata__", ()) if isinstance(m, CqlType)]
        if len(meta) != 1:
            raise TypeError(f"{row_type.__name__}.{f.name} names no CQL type")
        out[f.name] = meta[0].name
    return out


def server_value(row_type: type[Row], column: str) -> str | None:
    """The CQL expression the coordinator fills `column` with; None for a bound column."""
    for f in dataclasses.fields(row_type):
        if f.name == column:
            value = f.metadata.get(_SERVER_VALUE)
            return None if value is None else str(value)
    raise KeyError(f"{row_type.__name__} has no column {column!r}")


_BOUND: dict[type, tuple[str, ...]] = {}


def bound_columns(row_type: type[Row]) -> tuple[str, ...]:
    """The columns a write binds a value to (all but those the coordinator fills)."""
    bound = _BOUND.get(row_type)
    if bound is None:  # once per class: this is on the sink's path for every row
        bound = tuple(c for c in columns(row_type) if server_value(row_type, c) is None)
        _BOUND[row_type] = bound
    return bound


def bound_values(row: Row) -> tuple[Any, ...]:
    """The row's values for `bound_columns`, in that order."""
    return tuple(getattr(row, c) for c in bound_columns(type(row)))
