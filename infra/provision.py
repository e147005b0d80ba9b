"""Create the pipeline's topics and Cassandra keyspace/tables; idempotent and strict.

An existing topic whose partition count or replication factor differs from its spec, or
a keyspace with another replication, is an error: it is never silently used. Functions
take settings (and an optional topic prefix / keyspace name) so tests can provision
uniquely named copies.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from infra.settings import PipelineSettings

log = logging.getLogger(__name__)

ADMIN_TIMEOUT_S = 30.0
DDL_TIMEOUT_S = 60.0  # schema changes wait for every node's agreement


class ProvisionError(RuntimeError):
    """Existing infrastructure contradicts the specs, or creating it failed."""


class TopicSpecLike(Protocol):
    name: str
    partitions: int
    replication_factor: int

    def configs(self) -> dict[str, str]: ...


@dataclass
class ProvisionReport:
    created_topics: list[str] = field(default_factory=list)
    existing_topics: list[str] = field(default_factory=list)
    updated_configs: list[str] = field(default_factory=list)
    keyspace: str | None = None
    keyspace_created: bool = False
    tables: int = 0
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [
            f"topics: {len(self.created_topics)} created, {len(self.existing_topics)} present"
            + (f", configs updated on {len(self.updated_configs)}" if self.updated_configs else "")
        ]
        if self.keyspace:
            parts.append(
                f"keyspace {self.keyspace}: {'created' if self.keyspace_created else 'present'}"
                f", {self.tables} table statements applied"
            )
        parts += [f"skipped: {s}" for s in self.skipped]
        return "; ".join(parts)


# ---- Kafka ---------------------------------------------------------------------------


def admin_client(settings: PipelineSettings) -> Any:
    from confluent_kafka.admin import AdminClient

    from infra.kafka_clients import admin_config

    return AdminClient(admin_config(settings.kafka))


def registry_topics(settings: PipelineSettings) -> list[TopicSpecLike]:
    from schemas.topics import topic_registry

    return list(topic_registry(settings.kafka.partitions))


def provision_topics(
    settings: PipelineSettings,
    specs: Sequence[TopicSpecLike] | None = None,
    *,
    prefix: str = "",
    report: ProvisionReport | None = None,
) -> ProvisionReport:
    """Create each spec's topic (named prefix + spec.name) or check the existing one."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    report = report or ProvisionReport()
    specs = list(registry_topics(settings) if specs is None else specs)
    admin = admin_client(settings)
    md = admin.list_topics(timeout=ADMIN_TIMEOUT_S)
    wanted = {prefix + s.name: s for s in specs}

    problems: list[str] = []
    existing = [n for n in wanted if n in md.topics]
    for name in existing:
        spec = wanted[name]
        parts = md.topics[name].partitions
        rfs = {len(p.replicas) for p in parts.values()}
        if len(parts) != spec.partitions or rfs != {spec.replication_factor}:
            problems.append(
                f"topic {name} exists with {len(parts)} partitions and replication factor "
                f"{'/'.join(map(str, sorted(rfs))) or '?'}, spec wants {spec.partitions} and "
                f"{spec.replication_factor}"
            )
    if problems:
        raise ProvisionError("; ".join(problems))

    missing = [n for n in wanted if n not in md.topics]
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(
                    n,
                    num_partitions=wanted[n].partitions,
                    replication_factor=wanted[n].replication_factor,
                    config=dict(wanted[n].configs()),
                )
                for n in missing
            ],
            operation_timeout=ADMIN_TIMEOUT_S,
            request_timeout=ADMIN_TIMEOUT_S,
        )
        for name, fut in futures.items():
            try:
                fut.result()
                report.created_topics.append(name)
                log.info("created topic %s", name)
            except KafkaException as e:
                err = e.args[0]
                if getattr(err, "name", lambda: "")() == "TOPIC_ALREADY_EXISTS":
                    existing.append(name)  # raced with another provisioner
                    continue
                raise ProvisionError(f"creating topic {name} failed: {err}") from e

    _sync_configs(admin, {n: wanted[n] for n in existing}, report)
    report.existing_topics += existing
    return report


def _sync_configs(admin: Any, specs: dict[str, TopicSpecLike], report: ProvisionReport) -> None:
    """Bring the topic-level configs of existing topics in line with their specs."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    if not specs:
        return
    resources = [ConfigResource(ResourceType.TOPIC, n) for n in specs]
    described = admin.describe_configs(resources, request_timeout=ADMIN_TIMEOUT_S)
    for res, fut in described.items():
        current = {k: v.value for k, v in fut.result().items()}
        want = {k: str(v) for k, v in specs[res.name].configs().items()}
        diff = {k: v for k, v in want.items() if current.get(k) != v}
        if not diff:
            continue
        entries = [ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
                   for k, v in diff.items()]
        admin.incremental_alter_configs(
            [ConfigResource(ResourceType.TOPIC, res.name, incremental_configs=entries)]
        )[ConfigResource(ResourceType.TOPIC, res.name)].result()
        report.updated_configs.append(res.name)
        log.info("topic %s: updated configs %s", res.name, sorted(diff))


# ---- Cassandra -----------------------------------------------------------------------


def cassandra_session(settings: PipelineSettings) -> Any:
    from infra.cassandra_session import connect

    _cluster, session = connect(settings.cassandra)
    return session


def keyspace_replication(session: Any, keyspace: str) -> dict[str, str] | None:
    row = session.execute(
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
        (keyspace,),
        timeout=DDL_TIMEOUT_S,
    ).one()
    return dict(row.replication) if row else None


def replication_matches(current: dict[str, str], datacenter: str, rf: int) -> bool:
    strategy = current.get("class", "").rsplit(".", 1)[-1]
    return strategy == "NetworkTopologyStrategy" and current.get(datacenter) == str(rf)


def provision_keyspace(
    settings: PipelineSettings,
    keyspace: str | None = None,
    *,
    table_ddl: Iterable[str] | None = None,
    report: ProvisionReport | None = None,
) -> ProvisionReport:
    """Create the keyspace (NetworkTopologyStrategy, dc: RF) and the schemas.cql tables."""
    from schemas import cql

    report = report or ProvisionReport()
    c = settings.cassandra
    ks = keyspace or c.keyspace
    session = cassandra_session(settings)
    try:
        current = keyspace_replication(session, ks)
        if current is not None and not replication_matches(
            current, c.local_datacenter, c.replication_factor
        ):
            raise ProvisionError(
                f"keyspace {ks} exists with replication {current}, wanted "
                f"NetworkTopologyStrategy {{{c.local_datacenter!r}: {c.replication_factor}}}"
            )
        if current is None:
            session.execute(
                cql.keyspace_ddl(ks, c.replication_factor, c.local_datacenter),
                timeout=DDL_TIMEOUT_S,
            )
            report.keyspace_created = True
            log.info("created keyspace %s (RF %d in %s)", ks, c.replication_factor,
                     c.local_datacenter)
        statements = list(cql.table_ddl(ks) if table_ddl is None else table_ddl)
        for stmt in statements:
            session.execute(stmt, timeout=DDL_TIMEOUT_S)
        report.keyspace = ks
        report.tables += len(statements)
        if not session.cluster.control_connection.wait_for_schema_agreement():
            raise ProvisionError(f"schema of keyspace {ks} did not reach agreement")
    finally:
        session.cluster.shutdown()
    return report


def provision(
    settings: PipelineSettings,
    *,
    kafka: bool = True,
    cassandra: bool = True,
    topic_prefix: str = "",
    keyspace: str | None = None,
    allow_missing_schemas: bool = False,
) -> ProvisionReport:
    """Provision topics and/or keyspace. With allow_missing_schemas, a not yet present
    schemas.topics / schemas.cql module is reported as skipped instead of raising."""
    report = ProvisionReport()
    if kafka:
        try:
            specs = registry_topics(settings)
        except ImportError as e:
            if not allow_missing_schemas:
                raise ProvisionError(f"topic registry unavailable: {e}") from e
            report.skipped.append(f"topics ({e})")
        else:
            provision_topics(settings, specs, prefix=topic_prefix, report=report)
    if cassandra:
        try:
            from schemas import cql  # noqa: F401
            _ = cql.keyspace_ddl, cql.table_ddl
        except (ImportError, AttributeError) as e:
            if not allow_missing_schemas:
                raise ProvisionError(f"CQL schema unavailable: {e}") from e
            report.skipped.append(f"keyspace ({e})")
        else:
            provision_keyspace(settings, keyspace, report=report)
    return report
