"""Relay stages: every input record forwarded unchanged to the stage's output topic.

Selected by `PIPELINE_STREAM__WORKER__RELAY=true` (benchmarks only). The worker then
loads no model and runs no decode or postprocess: each agent moves its input's key,
value and headers to the next topic through the same faust machinery as the real
stages (micro-batching, executor hand-off, sends awaited with acks=all, acks after the
sends), so the transport benchmark measures the real stages' cost of moving events.
"""

from __future__ import annotations

from collections.abc import Sequence

from stream_app.records import InRecord, OutRecord
from stream_app.stages import BaseStage


class RelayStage(BaseStage):
    """In -> out unchanged; a record the consumer refused still becomes a dead letter."""

    def _process(self, batch: Sequence[InRecord]) -> list[OutRecord]:
        return [OutRecord(self.sink, r.key, r.value or b"", list(r.headers)) for r in batch]
