"""Settings shared by every service: Kafka and Cassandra connection sections.

Each service subclasses `PipelineSettings` with its own section (producer, stream,
sink). Settings are built in a service's `main()` and passed down; nothing here reads
the environment at import time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from infra.cassandra_roles import ADMIN as CASSANDRA_ADMIN
from infra.cassandra_roles import CassandraAuth, cassandra_auth
from infra.security import KAFKA_ADMIN, KafkaAuth, SecuritySettings, mask
from schemas.topics import TopicSpec, topic_registry

# Defaults match the local clusters that `python -m infra up` starts.
DEFAULT_BOOTSTRAP = "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094"
DEFAULT_CONTACT_POINTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
CONSISTENCY_LEVELS = (
    "ONE",
    "TWO",
    "THREE",
    "QUORUM",
    "LOCAL_QUORUM",
    "EACH_QUORUM",
    "ALL",
    "LOCAL_ONE",
)


class KafkaSettings(BaseModel):
    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    # One partition count for every pipeline topic: up to this many workers share a stage.
    partitions: int = Field(default=6, ge=1)
    replication_factor: int = Field(default=3, ge=1)
    min_insync_replicas: int = Field(default=2, ge=1)
    # Largest raw image the pipeline accepts (topic max.message.bytes and producer limit).
    max_message_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    # How long every pipeline topic keeps records: the reach of replay and rebuild from
    # Kafka, so keep it well above the backup interval (PIPELINE_BACKUP__INTERVAL_HOURS).
    retention_hours: float = Field(default=168.0, gt=0)
    # Passthrough librdkafka settings, applied over our defaults (e.g. security).
    client_config: dict[str, str] = Field(default_factory=dict)
    sasl_password: SecretStr | None = None
    # Filled from the security section by PipelineSettings (never from the environment).
    auth: KafkaAuth | None = Field(default=None, exclude=True)

    @field_validator("min_insync_replicas")
    @classmethod
    def _isr_fits(cls, v: int, info: Any) -> int:
        rf = info.data.get("replication_factor", 3)
        if v > rf:
            raise ValueError(f"min_insync_replicas={v} exceeds replication_factor={rf}")
        return v

    def bootstrap_list(self) -> list[str]:
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]

    def topics(self) -> list[TopicSpec]:
        """The topic registry sized by these settings: the one source of every topic's
        partitions, replication, min ISR and max.message.bytes."""
        return topic_registry(
            partitions=self.partitions,
            raw_max_message_bytes=self.max_message_bytes,
            replication_factor=self.replication_factor,
            min_insync_replicas=self.min_insync_replicas,
            retention_ms=int(self.retention_hours * 3600 * 1000),
        )


class CassandraSettings(BaseModel):
    # NoDecode: the env value "a,b,c" is split by the validator below, JSON lists work too.
    contact_points: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_CONTACT_POINTS)
    )
    port: int = 9042
    local_datacenter: str = "datacenter1"
    keyspace: str = "vision"
    replication_factor: int = Field(default=3, ge=1)
    write_consistency: str = "LOCAL_QUORUM"
    read_consistency: str = "LOCAL_QUORUM"
    request_timeout_s: float = 10.0
    # Restart the driver's reconnection to a node it gave up on (a refused login, a spent
    # backoff): infra.cassandra_reconnect. Off only to show what happens without it.
    reconnect_watchdog: bool = True
    # Secure mode: the role to log in as (unset: the service's own), its password (wins
    # over the file) or a file holding it (unset: <secrets dir>/cassandra/<role>).
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    # Filled from the security section by PipelineSettings (never from the environment).
    auth: CassandraAuth | None = Field(default=None, exclude=True)

    @field_validator("write_consistency", "read_consistency")
    @classmethod
    def _known_level(cls, v: str) -> str:
        v = v.upper()
        if v not in CONSISTENCY_LEVELS:
            raise ValueError(
                f"unknown consistency level {v!r}; use one of {', '.join(CONSISTENCY_LEVELS)}"
            )
        return v

    @field_validator("contact_points", mode="before")
    @classmethod
    def _split_points(cls, v: Any) -> Any:
        return split_list(v)


def split_list(v: Any) -> Any:
    """A list setting from the environment: "a,b,c" or a JSON list; other values pass.

    For `Annotated[list[str], NoDecode]` fields, as a `mode="before"` validator."""
    if isinstance(v, str):
        if v.lstrip().startswith("["):
            return json.loads(v)
        return [p.strip() for p in v.split(",") if p.strip()]
    return v


class PipelineSettings(BaseSettings):
    """Base of every service's settings: env prefix PIPELINE_, nested with __."""

    model_config = SettingsConfigDict(
        env_prefix="PIPELINE_", env_nested_delimiter="__", extra="ignore"
    )

    # The Kafka principal of this service; each service's settings name their own.
    kafka_principal: ClassVar[str] = KAFKA_ADMIN
    # The Cassandra role of this service (infra.cassandra_roles); each service names its own.
    cassandra_role: ClassVar[str] = CASSANDRA_ADMIN

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    cassandra: CassandraSettings = Field(default_factory=CassandraSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _kafka_auth(self) -> PipelineSettings:
        # A KafkaSettings handed over with its auth already resolved (e.g. the test
        # backend's, for the cluster it found) keeps it.
        if self.kafka.auth is None:
            self.kafka.auth = self.security.kafka_auth(self.kafka_principal)
        return self

    @model_validator(mode="after")
    def _cassandra_auth(self) -> PipelineSettings:
        c = self.cassandra
        c.auth = cassandra_auth(
            self.security,
            self.cassandra_role,
            username=c.username,
            password=c.password,
            password_file=c.password_file,
        )
        return self

    def masked(self) -> dict[str, Any]:
        """A dict safe to log: secrets show as '**********'."""
        masked: dict[str, Any] = mask(self.model_dump(mode="json"))
        return masked
