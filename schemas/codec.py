"""Avro encoding of the pipeline's records, with the schema name and version in headers.

Schemas live next to this module as `avro/<Name>.v<N>.avsc`. A writer always uses the
newest version; a reader resolves the writer's version (named in the headers) against
the newest one, so records written by an older service still decode.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import fastavro

from schemas.raw import headers_dict

H_SCHEMA_NAME = "schema-name"
H_SCHEMA_VERSION = "schema-version"

DECODED_IMAGE = "DecodedImage"
INFERENCE = "Inference"
PREDICTION = "Prediction"
DEAD_LETTER = "DeadLetter"


class SchemaError(ValueError):
    """A record that cannot be decoded under its contract; `reason` is a short code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SchemaVersion:
    name: str
    version: int
    parsed: Any  # fastavro's parsed schema


@cache
def _catalog() -> dict[str, dict[int, SchemaVersion]]:
    found: dict[str, dict[int, SchemaVersion]] = {}
    for entry in resources.files("schemas").joinpath("avro").iterdir():
        fname = entry.name
        if not fname.endswith(".avsc"):
            continue
        name, vpart, _ = fname.rsplit(".", 2)
        version = int(vpart.lstrip("v"))
        raw = json.loads(entry.read_text())
        found.setdefault(name, {})[version] = SchemaVersion(
            name, version, fastavro.parse_schema(raw, named_schemas={})
        )
    return found


def schema_names() -> list[str]:
    return sorted(_catalog())


def versions(name: str) -> list[int]:
    return sorted(_catalog()[name])


def schema(name: str, version: int | None = None) -> SchemaVersion:
    try:
        by_version = _catalog()[name]
    except KeyError:
        raise SchemaError("unknown-schema", f"no Avro schema named {name!r}") from None
    v = max(by_version) if version is None else version
    try:
        return by_version[v]
    except KeyError:
        raise SchemaError(
            "unknown-schema-version", f"{name} has no version {v} (known: {sorted(by_version)})"
        ) from None


def encode(
    name: str, record: dict[str, Any], version: int | None = None
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Serialize `record` with the newest (or given) version; returns value and headers."""
    sv = schema(name, version)
    buf = io.BytesIO()
    try:
        fastavro.schemaless_writer(buf, sv.parsed, record)
    except Exception as exc:  # missing field, wrong type: name the field, not fastavro's internals
        raise SchemaError(
            "invalid-record", f"{name} v{sv.version}: {_why_invalid(sv, record, exc)}"
        ) from exc
    headers = [(H_SCHEMA_NAME, name.encode()), (H_SCHEMA_VERSION, str(sv.version).encode())]
    return buf.getvalue(), headers


def decode(
    name: str, value: bytes | None, headers: Iterable[tuple[str, Any]] | dict[str, str] | None
) -> dict[str, Any]:
    """Deserialize a `name` record written under the version its headers name."""
    h = headers if isinstance(headers, dict) else headers_dict(headers)
    got = h.get(H_SCHEMA_NAME)
    if got != name:
        raise SchemaError("wrong-schema", f"expected a {name} record, headers say {got!r}")
    try:
        writer_version = int(h.get(H_SCHEMA_VERSION, ""))
    except ValueError:
        raise SchemaError(
            "bad-schema-version", f"header {H_SCHEMA_VERSION}={h.get(H_SCHEMA_VERSION)!r}"
        ) from None
    writer = schema(name, writer_version)
    reader = schema(name)
    if not value:
        raise SchemaError("empty-record", f"{name} record has no value")
    buf = io.BytesIO(value)
    try:
        record: dict[str, Any] = fastavro.schemaless_reader(buf, writer.parsed, reader.parsed)  # type: ignore[assignment]
    except Exception as exc:  # fastavro raises a zoo of types on garbage input
        raise SchemaError(
            "undecodable", f"{name} v{writer_version}: {type(exc).__name__}: {exc}"
        ) from exc
    if buf.tell() != len(value):
        # Schemaless Avro has no framing: leftover bytes mean the value is not this record.
        raise SchemaError(
            "undecodable",
            f"{name} v{writer_version}: {len(value) - buf.tell()} trailing bytes after the record",
        )
    return record


def _why_invalid(sv: SchemaVersion, record: Any, exc: Exception) -> str:
    if not isinstance(record, dict):
        return f"record must be a dict, got {type(record).__name__}"
    try:
        from fastavro.validation import ValidationError, validate

        validate(record, sv.parsed, raise_errors=True)
    except ValidationError as verr:
        return f"invalid record: {verr}"
    except Exception:  # noqa: BLE001 - fall back to the writer's own error below
        pass
    return f"{type(exc).__name__}: {exc}"
