"""Kafka principals and their ACLs: who may do what on a secure cluster.

One SCRAM user per service, each with least privilege (deny is the default:
allow.everyone.if.no.acl.found=false):
- producer: write (and describe) the raw topic, nothing else;
- stream: read each stage's source, write its output and dead-letter topic, its consumer
  group, and Faust's own `<app id>-` topics (leader, changelogs: create/read/write);
- sink: read the predictions and the stages' dead letters, write the sink's dead-letter
  topic, its consumer group;
- admin: a super user (brokers' super.users); it runs this module.
Topic names come from schemas.topics (with the pipeline's topic prefix); group ids from
the caller, by default the pipeline's (infra.backup.settings, the one infra-side place
that names them). Applying is idempotent: users are upserted with the password in
their secret file, ACLs that exist already are left as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.security import (
    KAFKA_PRODUCER,
    KAFKA_SINK,
    KAFKA_STREAM,
    ensure_secret,
    mask,
)
from schemas import topics

log = logging.getLogger(__name__)

SCRAM_ITERATIONS = 8192
SERVICE_PRINCIPALS = (KAFKA_PRODUCER, KAFKA_STREAM, KAFKA_SINK)
ADMIN_TIMEOUT_S = 30.0


class AclError(RuntimeError):
    """Creating a user or an ACL failed."""


@dataclass(frozen=True)
class Grant:
    """Allow `principal` the `operations` on one resource (a Kafka ACL per operation)."""

    principal: str
    resource: str  # "topic" | "group" | "cluster" | "transactional_id"
    name: str
    operations: tuple[str, ...]
    prefixed: bool = False

    def describe(self) -> str:
        pattern = "prefix " if self.prefixed else ""
        ops = ",".join(o.lower() for o in self.operations)
        return f"User:{self.principal} {ops} on {self.resource} {pattern}{self.name!r}"


def pipeline_grants(
    topic_prefix: str = "",
    stream_group: str | None = None,
    sink_group: str | None = None,
) -> list[Grant]:
    """Every ACL the three services need, for the pipeline's topic prefix and groups.
    `stream_group` is also Faust's app id, the prefix of its own topics."""
    from infra.backup.settings import DEFAULT_SINK_GROUP, DEFAULT_STREAM_GROUP

    stream_group = stream_group or DEFAULT_STREAM_GROUP
    sink_group = sink_group or DEFAULT_SINK_GROUP
    p = topic_prefix
    read, write = ("READ", "DESCRIBE"), ("WRITE", "DESCRIBE")
    grants = [Grant(KAFKA_PRODUCER, "topic", p + topics.RAW, write)]
    for stage in topics.STAGES:
        grants += [
            Grant(KAFKA_STREAM, "topic", p + stage.source, read),
            Grant(KAFKA_STREAM, "topic", p + stage.sink, write),
            Grant(KAFKA_STREAM, "topic", p + stage.dlq, write),
        ]
    grants += [
        Grant(KAFKA_STREAM, "group", stream_group, read),
        Grant(
            KAFKA_STREAM,
            "topic",
            f"{stream_group}-",
            ("CREATE", "READ", "WRITE", "DESCRIBE", "DESCRIBE_CONFIGS"),
            prefixed=True,
        ),
    ]
    sink_reads = [topics.PREDICTIONS, *(s.dlq for s in topics.STAGES)]
    grants += [Grant(KAFKA_SINK, "topic", p + t, read) for t in sink_reads]
    grants += [
        Grant(KAFKA_SINK, "topic", p + topics.SINK_DLQ, write),
        Grant(KAFKA_SINK, "group", sink_group, read),
    ]
    return grants


def acl_bindings(grants: Iterable[Grant]) -> list[Any]:
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    kinds = {
        "topic": ResourceType.TOPIC,
        "group": ResourceType.GROUP,
        "cluster": ResourceType.BROKER,
        "transactional_id": ResourceType.TRANSACTIONAL_ID,
    }
    out = []
    seen: set[tuple[str, str, str, bool, str]] = set()
    for g in grants:
        pattern = ResourcePatternType.PREFIXED if g.prefixed else ResourcePatternType.LITERAL
        for op in g.operations:
            # A topic one stage writes and the next reads gets DESCRIBE twice: once is enough.
            key = (g.principal, g.resource, g.name, g.prefixed, op)
            if key in seen:
                continue
            seen.add(key)
            out.append(
                AclBinding(
                    kinds[g.resource],
                    g.name,
                    pattern,
                    f"User:{g.principal}",
                    "*",
                    AclOperation[op],
                    AclPermissionType.ALLOW,
                )
            )
    return out


def upsert_users(admin: Any, passwords: dict[str, str], timeout: float = ADMIN_TIMEOUT_S) -> None:
    """Create or update SCRAM-SHA-512 users (admin: a confluent_kafka AdminClient)."""
    from confluent_kafka.admin import (
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
    futures = admin.alter_user_scram_credentials(
        [UserScramCredentialUpsertion(u, info, pw.encode()) for u, pw in passwords.items()],
        request_timeout=timeout,
    )
    for user, fut in futures.items():
        try:
            fut.result()
        except Exception as e:  # KafkaException: name the user, never the password
            raise AclError(f"creating Kafka user {user} failed: {mask(str(e))}") from None
    log.info("kafka users up to date: %s", ", ".join(sorted(passwords)))


def create_acls(admin: Any, grants: Sequence[Grant], timeout: float = ADMIN_TIMEOUT_S) -> int:
    bindings = acl_bindings(grants)
    futures = admin.create_acls(bindings, request_timeout=timeout)
    for binding, fut in futures.items():
        try:
            fut.result()
        except Exception as e:
            raise AclError(f"creating ACL {binding} failed: {e}") from None
    log.info("kafka ACLs in place: %d bindings for %d grants", len(bindings), len(grants))
    return len(bindings)


def provision_principals(
    admin: Any,
    secrets_dir: Path,
    *,
    topic_prefix: str = "",
    stream_group: str | None = None,
    sink_group: str | None = None,
) -> list[Grant]:
    """The services' users (passwords from their secret files, made if absent) and the
    pipeline's ACLs. Returns the grants applied."""
    upsert_users(admin, {u: ensure_secret(secrets_dir, "kafka", u) for u in SERVICE_PRINCIPALS})
    grants = pipeline_grants(topic_prefix, stream_group, sink_group)
    create_acls(admin, grants)
    return grants
