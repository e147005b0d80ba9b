"""Producer settings: the shared Kafka section plus a `producer` section.

Env: PIPELINE_PRODUCER__RATE=50, PIPELINE_PRODUCER__SOURCE=cam-7,
PIPELINE_KAFKA__BOOTSTRAP_SERVERS=... Built in `main()` and passed down.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field, field_validator

from infra.security import KAFKA_PRODUCER
from infra.settings import PipelineSettings
from schemas import topics


class ProducerSection(BaseModel):
    # Images per second; 0 publishes as fast as the brokers acknowledge.
    rate: float = Field(default=0.0, ge=0.0)
    # The `source` header for every image; None: each image's own (file path, sample name).
    source: str | None = None
    topic: str = topics.RAW
    # How long to wait for outstanding delivery reports on exit before counting them failed.
    flush_timeout_s: float = Field(default=120.0, gt=0)
    # Plain progress lines (non-TTY) every this many seconds.
    progress_interval_s: float = Field(default=5.0, gt=0)
    # librdkafka overrides for this producer only, over infra.kafka_clients defaults.
    client_overrides: dict[str, Any] = Field(default_factory=dict)
    # Seed for samples/synthetic variants: same seed, same bytes, same ids.
    seed: int = 0

    @field_validator("source")
    @classmethod
    def _printable(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(ord(c) < 32 for c in v)):
            raise ValueError("source must be non-empty printable text")
        return v


class ProducerSettings(PipelineSettings):
    kafka_principal: ClassVar[str] = KAFKA_PRODUCER

    producer: ProducerSection = Field(default_factory=ProducerSection)
