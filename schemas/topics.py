"""The topic registry, in pipeline order: each topic's name, sizing and contract.

`python -m infra provision` creates exactly these topics; services look names up here
instead of spelling them, so a renamed topic changes in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

RAW = "images.raw"
DECODED = "images.decoded"
INFERRED = "images.inferred"
PREDICTIONS = "images.predictions"

DECODE_DLQ = "images.decode.dlq"
INFER_DLQ = "images.infer.dlq"
POSTPROCESS_DLQ = "images.postprocess.dlq"
# The sink's own dead letters: rows Cassandra refused for good.
SINK_DLQ = "images.sink.dlq"

DEFAULT_PARTITIONS = 6
REPLICATION_FACTOR = 3
MIN_INSYNC_REPLICAS = 2
# A raw topic holds whole image files; 10 MiB fits photos and leaves headroom for headers.
RAW_MAX_MESSAGE_BYTES = 10 * 1024 * 1024
# Decoded tensors are 3x224x224 uint8 (~150 KB); logits are 4 KB.
TENSOR_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
SMALL_MAX_MESSAGE_BYTES = 1024 * 1024
# 7 days: seven times the default backup interval (24 h).
DEFAULT_RETENTION_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    key: str
    value: str
    max_message_bytes: int
    replication_factor: int = REPLICATION_FACTOR
    min_insync_replicas: int = MIN_INSYNC_REPLICAS
    dlq: str | None = None
    # Which stage reads this topic (None for the final or dead-letter topics).
    stage: str | None = None
    # How long records are kept. Replay and rebuild from Kafka reach back this far, so it
    # must exceed the backup interval (docs/backup.md; `infra backup` warns otherwise).
    retention_ms: int = DEFAULT_RETENTION_MS

    def configs(self) -> dict[str, str]:
        """Topic-level configs for creation and for drift checks."""
        return {
            "min.insync.replicas": str(self.min_insync_replicas),
            "max.message.bytes": str(self.max_message_bytes),
            # Never elect a stale replica: that could silently drop acked records.
            "unclean.leader.election.enable": "false",
            "cleanup.policy": "delete",
            "retention.ms": str(self.retention_ms),
        }


@dataclass(frozen=True)
class Stage:
    """One processing hop: reads `source`, writes `sink`, dead-letters to `dlq`."""

    name: str
    source: str
    sink: str
    dlq: str


STAGES: tuple[Stage, ...] = (
    Stage("decode", RAW, DECODED, DECODE_DLQ),
    Stage("infer", DECODED, INFERRED, INFER_DLQ),
    Stage("postprocess", INFERRED, PREDICTIONS, POSTPROCESS_DLQ),
)
STAGE_BY_NAME = {s.name: s for s in STAGES}
DLQ_TOPICS: tuple[str, ...] = (DECODE_DLQ, INFER_DLQ, POSTPROCESS_DLQ, SINK_DLQ)


def topic_registry(
    partitions: int = DEFAULT_PARTITIONS,
    raw_max_message_bytes: int = RAW_MAX_MESSAGE_BYTES,
    replication_factor: int = REPLICATION_FACTOR,
    min_insync_replicas: int = MIN_INSYNC_REPLICAS,
    retention_ms: int = DEFAULT_RETENTION_MS,
) -> list[TopicSpec]:
    """Every pipeline topic, in pipeline order, each stage's DLQ after its output.

    Services build it from their Kafka settings (`infra.settings.KafkaSettings.topics()`),
    so provisioning, producers, stages and the sink agree on every topic's sizing."""
    specs = _registry(partitions, raw_max_message_bytes)
    return [
        replace(
            t,
            replication_factor=replication_factor,
            min_insync_replicas=min_insync_replicas,
            retention_ms=retention_ms,
        )
        for t in specs
    ]


def _registry(partitions: int, raw_max_message_bytes: int) -> list[TopicSpec]:
    p = partitions
    dead = dict(key="image id (utf-8)", value="avro:DeadLetter", partitions=p)
    # A dead letter carries the original payload, so it must fit the largest input.
    dead_bytes = raw_max_message_bytes + SMALL_MAX_MESSAGE_BYTES
    return [
        TopicSpec(
            RAW,
            p,
            "image id (utf-8)",
            "image file bytes",
            raw_max_message_bytes,
            dlq=DECODE_DLQ,
            stage="decode",
        ),
        TopicSpec(DECODE_DLQ, max_message_bytes=dead_bytes, **dead),  # type: ignore[arg-type]
        TopicSpec(
            DECODED,
            p,
            "image id (utf-8)",
            "avro:DecodedImage",
            TENSOR_MAX_MESSAGE_BYTES,
            dlq=INFER_DLQ,
            stage="infer",
        ),
        TopicSpec(INFER_DLQ, max_message_bytes=dead_bytes, **dead),  # type: ignore[arg-type]
        TopicSpec(
            INFERRED,
            p,
            "image id (utf-8)",
            "avro:Inference",
            SMALL_MAX_MESSAGE_BYTES,
            dlq=POSTPROCESS_DLQ,
            stage="postprocess",
        ),
        TopicSpec(POSTPROCESS_DLQ, max_message_bytes=dead_bytes, **dead),  # type: ignore[arg-type]
        TopicSpec(
            PREDICTIONS,
            p,
            "image id (utf-8)",
            "avro:Prediction",
            SMALL_MAX_MESSAGE_BYTES,
            dlq=SINK_DLQ,
            stage="sink",
        ),
        TopicSpec(SINK_DLQ, max_message_bytes=dead_bytes, **dead),  # type: ignore[arg-type]
    ]


def topic_names(partitions: int = DEFAULT_PARTITIONS) -> list[str]:
    return [t.name for t in topic_registry(partitions)]
