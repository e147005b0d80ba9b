"""Settings of the Cassandra sink: the shared Kafka/Cassandra sections plus a `sink` section.

Env: PIPELINE_SINK__GROUP_ID, PIPELINE_SINK__CONCURRENCY, PIPELINE_SINK__RETRY__MAX_BACKOFF_S,
PIPELINE_SINK__DLQ_TOPICS=images.decode.dlq,images.infer.dlq ... The keyspace is
PIPELINE_CASSANDRA__KEYSPACE. Topic names default to the registry in schemas.topics.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import NoDecode

from infra.settings import PipelineSettings
from schemas import topics

STAGE_DLQS: tuple[str, ...] = tuple(s.dlq for s in topics.STAGES)


class RetrySettings(BaseModel):
    """Backoff for transient Cassandra errors (Unavailable, timeouts, no host, ...).

    They are retried forever, with no attempt limit to set: a Cassandra outage stalls the
    sink (lag grows, the health line shows the retries) instead of dead-lettering good
    records and committing past them, which would leave their images without a row.
    """

    # A leftover `max_attempts` (an older release's limit) fails at start, not silently.
    model_config = ConfigDict(extra="forbid")

    initial_backoff_s: float = Field(default=0.1, gt=0)
    max_backoff_s: float = Field(default=5.0, gt=0)
    multiplier: float = Field(default=2.0, ge=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> RetrySettings:
        if self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("retry.max_backoff_s must be >= retry.initial_backoff_s")
        return self


class SinkSection(BaseModel):
    group_id: str = "vision-sink"
    predictions_topic: str = topics.PREDICTIONS
    # Comma-separated or a JSON list in the environment.
    dlq_topics: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(STAGE_DLQS))
    # Where the sink sends what it cannot store (undecodable, refused by Cassandra).
    dead_letter_topic: str = topics.SINK_DLQ
    # Cassandra requests in flight at once.
    concurrency: int = Field(default=64, ge=1, le=4096)
    # Rows per request: what is queued when a request slot frees goes as one UNLOGGED
    # batch of up to this many rows and about `write_batch_bytes` (1 = a request per
    # row). Batches only fill under load, so they add no latency at a low rate.
    write_batch_rows: int = Field(default=32, ge=1, le=1000)
    # Keep well below Cassandra's batch_size_fail_threshold (50 KiB by default).
    write_batch_bytes: int = Field(default=20_000, ge=256, le=1_000_000)
    # Messages taken per consume() call.
    batch_size: int = Field(default=500, ge=1, le=100_000)
    # Records consumed but not yet acknowledged; above this the sink pauses its partitions.
    max_pending_records: int = Field(default=5000, ge=1)
    poll_timeout_s: float = Field(default=0.2, gt=0)
    health_interval_s: float = Field(default=10.0, gt=0)
    # How long shutdown and rebalance wait for in-flight writes before giving up on them
    # (what is not acknowledged by then is not committed and will be read again).
    drain_timeout_s: float = Field(default=30.0, gt=0)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    # Passthrough librdkafka settings for the sink's consumer only.
    consumer_config: dict[str, Any] = Field(default_factory=dict)

    @field_validator("dlq_topics", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            if v.lstrip().startswith("["):
                return json.loads(v)
            return [t.strip() for t in v.split(",") if t.strip()]
        return v

    def topics(self) -> list[str]:
        return [self.predictions_topic, *self.dlq_topics]


class SinkSettings(PipelineSettings):
    sink: SinkSection = Field(default_factory=SinkSection)
