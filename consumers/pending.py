"""What the sink keeps per consumed record until its offset may count, and its counters.

`PendingRecord` is one record from the moment it is consumed until it is finished: its
rows acknowledged by Cassandra and, if it is refused, its dead letter delivered. The
sink loop, the committer and the dead-letter writer all hold the same object; only the
loop changes its write state, only the dead-letter writer its dead-letter state.
"""

from __future__ import annotations

from dataclasses import dataclass

from consumers.offsets import TP
from consumers.records import KafkaRecord, Mapped
from consumers.writer import WriteFailed


@dataclass(eq=False)
class PendingRecord:
    rec: KafkaRecord
    mapped: Mapped
    remaining: int
    failure: WriteFailed | None = None
    # Set once its rows were refused and the last-resort rejection row was submitted.
    fallback: bool = False
    # Set when its partition was released: late outcomes for it are ignored.
    cancelled: bool = False
    dlq_attempts: int = 0
    # Set after the dead-letter topic refused the dead letter as too large.
    dlq_truncate: bool = False

    @property
    def tp(self) -> TP:
        return (self.rec.topic, self.rec.partition)


@dataclass
class SinkCounters:
    """What the sink has done so far (read by its health line and its metrics)."""

    records: int = 0
    predictions: int = 0
    rejections: int = 0
    refused: int = 0
    dead_lettered: int = 0
    commits: int = 0
