"""Decode and infer in one agent (`PIPELINE_STREAM__WORKER__FUSE_DECODE_INFER=true`).

The decoded pixels (150,528 bytes per image, written to three replicas and fetched
again) then never cross the brokers: a raw record is decoded and its pixels handed to
the model in the same batch. The topology stays what docs/contracts.md describes for
everything a reader sees: results go to images.inferred, decode failures to
images.decode.dlq, infer failures to images.infer.dlq, each with its stage's reason, and
every input still yields exactly one output. images.decoded is simply not written.

An infer dead letter made here names the raw record (images.raw, partition, offset) as
its origin, since the decoded record it carries as payload was never in Kafka.

No torch here: the InferStage (and its Inferencer) is built by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence

from stream_app.records import InRecord, OutRecord
from stream_app.stages import DecodeStage, InferStage


class DecodeInferStage:
    """images.raw -> images.inferred, through DecodeStage then InferStage in memory."""

    def __init__(self, decode: DecodeStage, infer: InferStage) -> None:
        self.decode = decode
        self.infer = infer
        self.name = "decode"
        # Every topic this processor writes (the agent opens a producer topic for each).
        self.topics = (decode.dlq, infer.sink, infer.dlq)

    def process(self, batch: Sequence[InRecord]) -> list[OutRecord]:
        """One output per input, in order: the inference, or the dead letter of the
        stage that failed."""
        decoded = self.decode.process(batch)
        out: list[OutRecord | None] = [None] * len(batch)
        handed: list[InRecord] = []
        where: list[int] = []
        for i, (rec, d) in enumerate(zip(batch, decoded, strict=True)):
            if d.dead:
                out[i] = d
                continue
            handed.append(
                InRecord(
                    topic=rec.topic,
                    partition=rec.partition,
                    offset=rec.offset,
                    key=d.key,
                    value=d.value,
                    headers=list(d.headers),
                    timestamp_ms=rec.timestamp_ms,
                )
            )
            where.append(i)
        for i, o in zip(where, self.infer.process(handed), strict=True):
            out[i] = o
        return [o for o in out if o is not None]

    def refused(self, rec: InRecord, error: BaseException) -> OutRecord:
        """The bare dead letter of a raw record whose output the broker refused."""
        return self.decode.refused(rec, error)
