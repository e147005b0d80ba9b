"""Settings of the Cassandra sink: the shared Kafka/Cassandra sections plus a `sink` section.

Env: PIPELINE_SINK__GROUP_ID, PIPELINE_SINK__CONCURRENCY, PIPELINE_SINK__RETRY__MAX_BACKOFF_S,
PIPELINE_SINK__DLQ_TOPICS=images.decode.dlq,images.infer.dlq ... The keyspace is
PIPELINE_CASSANDRA__KEYSPACE. Topic names default to the registry in schemas.topics.
"""

from __future__ import annotations

import warnings
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from infra.cassandra_roles import SINK as CASSANDRA_SINK
from infra.security import KAFKA_SINK
from infra.settings import PipelineSettings, split_list
from schemas import topics

# The sink section's old name of consume_max_messages.
DEPRECATED_BATCH_SIZE = "batch_size"

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
    # Messages taken per consume() call (not a write batch: see write_batch_rows).
    # Was `batch_size` (PIPELINE_SINK__BATCH_SIZE), still read with a warning.
    consume_max_messages: int = Field(default=500, ge=1, le=100_000)
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
        return split_list(v)

    @model_validator(mode="before")
    @classmethod
    def _renamed_batch_size(cls, data: Any) -> Any:
        # `batch_size` meant a consume() size here and a micro-batch in stream_app; users
        # may have set the old name, so it is read once more, with a warning.
        if not isinstance(data, dict) or DEPRECATED_BATCH_SIZE not in data:
            return data
        data = dict(data)
        old = data.pop(DEPRECATED_BATCH_SIZE)
        if "consume_max_messages" in data and str(data["consume_max_messages"]) != str(old):
            raise ValueError(
                "sink.batch_size (PIPELINE_SINK__BATCH_SIZE) is the old name of "
                "sink.consume_max_messages; both are set, to different values: keep the new one"
            )
        warnings.warn(
            "PIPELINE_SINK__BATCH_SIZE (sink.batch_size) is deprecated: it is "
            "PIPELINE_SINK__CONSUME_MAX_MESSAGES now (messages per consume() call)",
            FutureWarning,
            stacklevel=2,
        )
        data["consume_max_messages"] = old
        return data

    def topics(self) -> list[str]:
        return [self.predictions_topic, *self.dlq_topics]


class SinkSettings(PipelineSettings):
    kafka_principal: ClassVar[str] = KAFKA_SINK
    cassandra_role: ClassVar[str] = CASSANDRA_SINK  # MODIFY on the result tables only

    sink: SinkSection = Field(default_factory=SinkSection)


# The sink's metrics endpoint (served by consumers.metrics); here so orchestration can
# read its port without importing the metrics code.
DEFAULT_PORT = 9464


class MetricsSection(BaseModel):
    enabled: bool = True
    # Loopback by default: the endpoint has no authentication.
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)


class SinkMetricsSettings(BaseSettings):
    """`PIPELINE_METRICS__*`; built in the sink's main() like the sink's own settings."""

    model_config = SettingsConfigDict(
        env_prefix="PIPELINE_", env_nested_delimiter="__", extra="ignore"
    )
    metrics: MetricsSection = Field(default_factory=MetricsSection)
