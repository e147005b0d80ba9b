"""Consecutive stages run as one agent (`PIPELINE_STREAM__WORKER__FUSE_DECODE_INFER`,
`PIPELINE_STREAM__WORKER__FUSE_POSTPROCESS`).

What one stage would write to the next stage's topic is handed to that stage in memory,
in the same batch: fused decode and infer keep the decoded pixels (150,528 bytes per
image, written to three replicas and fetched again) off the brokers, and fused infer
and postprocess do the same for the logits (4 KB per image, and one more Faust hop of
consume, decode, encode and produce per image). The topology stays what
docs/contracts.md describes for everything a reader sees: the last stage's outputs go to
its usual topic, and each stage's failures to its own dead-letter topic with its
stage's reason; every input still yields exactly one output. The topics between fused
stages are simply not written.

A dead letter of a later stage names the record the chain read (e.g. images.raw,
partition, offset) as its origin, since the intermediate record it carries as payload
was never in Kafka.

No torch here: the stages (and the InferStage's Inferencer) are built by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from stream_app.records import InRecord, OutRecord


class ChainLink(Protocol):
    name: str
    sink: str
    dlq: str

    def process(self, batch: Sequence[InRecord]) -> list[OutRecord]: ...

    def refused(self, rec: InRecord, error: BaseException, topic: str = "") -> OutRecord: ...


class FusedStages:
    """The first stage's source -> the last stage's sink, through every stage in memory."""

    def __init__(self, stages: Sequence[ChainLink]) -> None:
        if len(stages) < 2:
            raise ValueError("fusing needs at least two stages")
        self.stages = tuple(stages)
        self.name = stages[0].name
        # Every topic this processor writes (the agent opens a producer topic for each).
        self.topics = tuple(s.dlq for s in stages) + (stages[-1].sink,)

    def process(self, batch: Sequence[InRecord]) -> list[OutRecord]:
        """One output per input, in order: the last stage's output, or the dead letter of
        the stage that failed."""
        out: list[OutRecord | None] = [None] * len(batch)
        where = list(range(len(batch)))
        todo = list(batch)
        for stage in self.stages[:-1]:
            handed: list[InRecord] = []
            kept: list[int] = []
            for i, rec, o in zip(where, todo, stage.process(todo), strict=True):
                if o.dead:
                    out[i] = o
                    continue
                # The next stage reads this output as if fetched from the topic between
                # them, at the position of the record the chain read.
                handed.append(replace(rec, key=o.key, value=o.value, headers=list(o.headers)))
                kept.append(i)
            todo, where = handed, kept
        for i, o in zip(where, self.stages[-1].process(todo), strict=True):
            out[i] = o
        return [o for o in out if o is not None]

    def refused(self, rec: InRecord, error: BaseException, topic: str = "") -> OutRecord:
        """The bare dead letter of a read record whose output to `topic` the broker
        refused, from the stage that wrote that output (a refused prediction is
        postprocess's, as it would be unfused)."""
        for stage in reversed(self.stages):
            if topic in (stage.sink, stage.dlq):
                return stage.refused(rec, error, topic)
        return self.stages[0].refused(rec, error, topic)
