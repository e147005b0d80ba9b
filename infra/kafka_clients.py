"""The one place that assembles librdkafka configs for producers, consumers and admins.

Layers, later wins: our safe defaults, the caller's overrides, the user's passthrough
`client_config` from settings, then connection settings. Clients are built by the
caller (confluent_kafka.Producer(cfg)), so this module stays free of side effects.
"""

from __future__ import annotations

from typing import Any

from infra.security import mask
from infra.settings import KafkaSettings

# Durability first: every record acknowledged by the in-sync replicas, no duplicates
# from retries, and order kept per partition. The one definition for every producer:
# the stream workers' aiokafka producers take it under aiokafka's names
# (DURABILITY_AIOKAFKA, stream_app/faust_seam.py).
DURABILITY: dict[str, Any] = {"acks": "all", "enable.idempotence": True}
DURABILITY_AIOKAFKA: dict[str, Any] = {k.replace(".", "_"): v for k, v in DURABILITY.items()}

PRODUCER_DEFAULTS: dict[str, Any] = {
    **DURABILITY,
    "max.in.flight.requests.per.connection": 5,
    "retries": 2147483647,
    "delivery.timeout.ms": 120_000,
    "compression.type": "lz4",
    "linger.ms": 10,
    "batch.size": 1_048_576,
    "queue.buffering.max.kbytes": 262_144,
}

CONSUMER_DEFAULTS: dict[str, Any] = {
    "auto.offset.reset": "earliest",
    # Offsets are stored by the application after the side effect succeeded, then
    # committed in the background: at-least-once without a commit per message.
    "enable.auto.commit": True,
    "enable.auto.offset.store": False,
    "auto.commit.interval.ms": 1000,
    "partition.assignment.strategy": "cooperative-sticky",
    "session.timeout.ms": 45_000,
    "max.poll.interval.ms": 300_000,
    "fetch.max.bytes": 52_428_800,
    "max.partition.fetch.bytes": 10_485_760 + 1_048_576,
}

ADMIN_DEFAULTS: dict[str, Any] = {}


def _connection(settings: KafkaSettings) -> dict[str, Any]:
    conf: dict[str, Any] = {"bootstrap.servers": settings.bootstrap_servers}
    if settings.auth is not None:
        # Secure mode: TLS verified against the CA (hostnames too), SCRAM as this
        # service's principal; the password is read from its file only now.
        conf.update(
            {
                "security.protocol": "SASL_SSL",
                "sasl.mechanism": settings.auth.mechanism,
                "sasl.username": settings.auth.principal,
                "sasl.password": settings.auth.secret(),
                "ssl.ca.location": str(settings.auth.ca_file),
                "ssl.endpoint.identification.algorithm": "https",
            }
        )
    if settings.sasl_password is not None:
        conf["sasl.password"] = settings.sasl_password.get_secret_value()
    return conf


def _layer(
    defaults: dict[str, Any], overrides: dict[str, Any] | None, settings: KafkaSettings
) -> dict[str, Any]:
    conf = dict(defaults)
    conf.update(overrides or {})
    conf.update(settings.client_config)
    conf.update(_connection(settings))
    return conf


def producer_config(
    settings: KafkaSettings, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    conf = _layer(PRODUCER_DEFAULTS, overrides, settings)
    # A producer must accept the largest record the topics accept, plus protocol overhead.
    conf.setdefault("message.max.bytes", settings.max_message_bytes + 65_536)
    return conf


def consumer_config(
    settings: KafkaSettings, group_id: str, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    conf = _layer(CONSUMER_DEFAULTS, overrides, settings)
    conf["group.id"] = group_id
    return conf


def admin_config(
    settings: KafkaSettings, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    return _layer(ADMIN_DEFAULTS, overrides, settings)


def masked(conf: dict[str, Any]) -> dict[str, Any]:
    """A config safe to log (infra.security.mask: the one masking rule)."""
    out: dict[str, Any] = mask(conf)
    return out
