"""Kafka-agnostic record envelopes the stages consume and produce.

The faust agents convert events to `InRecord` and send each `OutRecord`; the stage
logic in between never sees faust, so it is unit-testable without a broker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Header = tuple[str, bytes]


def normalize_headers(
    headers: Iterable[tuple[str, Any]] | Mapping[str, Any] | None,
) -> list[Header]:
    """Kafka headers as a list of (str, bytes), keeping repeats and order."""
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: list[Header] = []
    for k, v in items:
        if v is None:
            out.append((str(k), b""))
        elif isinstance(v, bytes | bytearray | memoryview):
            out.append((str(k), bytes(v)))
        else:
            out.append((str(k), str(v).encode()))
    return out


@dataclass(frozen=True)
class InRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[Header] = field(default_factory=list)
    timestamp_ms: int | None = None
    # Set when the consumer could not hand this record over as it is (its batch inflated
    # past the bound): the reason its dead letter gets. Key and value are then unknown.
    refused: str | None = None

    @property
    def where(self) -> str:
        return f"{self.topic}/{self.partition}@{self.offset}"


@dataclass(frozen=True)
class OutRecord:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[Header]
    dead: bool = False  # True: a dead letter for the stage's DLQ
    reason: str = ""  # for dead letters: the error reason
