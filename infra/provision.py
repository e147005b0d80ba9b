"""Create the pipeline's topics and Cassandra keyspace/tables; idempotent and strict.

An existing topic whose partition count or replication factor differs from its spec, or
a keyspace with another replication, is an error: it is never silently used. Functions
take settings (and an optional topic prefix / keyspace name) so tests can provision
uniquely named copies.
"""

from __future__ import annotations

import logging
import time
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
    """What provisioning needs of schemas.topics.TopicSpec."""

    @property
    def name(self) -> str: ...

    @property
    def partitions(self) -> int: ...

    @property
    def replication_factor(self) -> int: ...

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
    return list(settings.kafka.topics())


def provision_topics(
    settings: PipelineSettings,
    specs: Sequence[TopicSpecLike] | None = None,
    *,
    prefix: str = "",
    report: ProvisionReport | None = None,
    stream_group: str | None = None,
    sink_group: str | None = None,
) -> ProvisionReport:
    """Create each spec's topic (named prefix + spec.name) or check the existing one.
    Secure mode: also the services' Kafka users and their ACLs on these topics and on
    the given groups (default: the pipeline's), see infra.kafka_acls."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    report = report or ProvisionReport()
    specs = list(registry_topics(settings) if specs is None else specs)
    admin = admin_client(settings)
    md = _kafka(lambda: admin.list_topics(timeout=ADMIN_TIMEOUT_S), "list topics")
    wanted = {prefix + s.name: s for s in specs}

    existing = [n for n in wanted if n in md.topics]
    _check_shapes(md, {n: wanted[n] for n in existing})

    missing = [n for n in wanted if n not in md.topics]
    raced: list[str] = []
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
                    raced.append(name)  # metadata was stale, or another provisioner won
                    continue
                raise ProvisionError(f"creating topic {name} failed: {err}") from e
        # Return only once the topics are usable, and check the shape of those we lost to.
        md = _await_topics(admin, missing)
        _check_shapes(md, {n: wanted[n] for n in raced})
        existing += raced

    _sync_configs(admin, {n: wanted[n] for n in existing}, report)
    report.existing_topics += existing
    if settings.kafka.auth is not None:
        from infra.kafka_acls import provision_principals

        provision_principals(
            admin,
            settings.security.resolved_secrets_dir(),
            topic_prefix=prefix,
            stream_group=stream_group,
            sink_group=sink_group,
        )
    return report


def _check_shapes(md: Any, specs: dict[str, TopicSpecLike]) -> None:
    """Raise ProvisionError for every topic whose partitions or RF differ from its spec."""
    problems: list[str] = []
    for name, spec in specs.items():
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


def _await_topics(admin: Any, names: list[str], timeout: float = ADMIN_TIMEOUT_S) -> Any:
    """Poll metadata until every topic in names has a leader on every partition."""
    deadline = time.monotonic() + timeout
    while True:
        md = _kafka(lambda: admin.list_topics(timeout=timeout), "list topics")
        pending = [
            n
            for n in names
            if n not in md.topics
            or md.topics[n].error is not None
            or any(p.leader < 0 for p in md.topics[n].partitions.values())
        ]
        if not pending:
            return md
        if time.monotonic() > deadline:
            raise ProvisionError(f"topics not ready after {timeout:.0f}s: {', '.join(pending)}")
        time.sleep(0.2)


def _kafka(fn: Any, what: str, retriable: Any = None) -> Any:
    """A Kafka admin/metadata call through infra.kafka_retry (leader and controller moves
    retried); what still fails becomes a one-line ProvisionError."""
    from infra.kafka_retry import KafkaCallFailed, call, is_retriable

    try:
        return call(fn, what, deadline=ADMIN_TIMEOUT_S, retriable=retriable or is_retriable)
    except KafkaCallFailed as e:
        raise ProvisionError(str(e)) from e


def _describe_topic_configs(
    admin: Any, name: str, timeout: float = ADMIN_TIMEOUT_S
) -> dict[str, str]:
    """A topic's configs; retried while a broker's metadata does not know the topic yet."""
    from confluent_kafka.admin import ConfigResource, ResourceType

    from infra.kafka_retry import is_retriable, kafka_error

    def unknown_yet(e: BaseException) -> bool:
        err = kafka_error(e)
        return is_retriable(e) or (err is not None and err.name() == "UNKNOWN_TOPIC_OR_PART")

    res = ConfigResource(ResourceType.TOPIC, name)
    configs = _kafka(
        lambda: admin.describe_configs([res], request_timeout=timeout)[res].result(),
        f"describe topic {name}",
        retriable=unknown_yet,
    )
    return {k: v.value for k, v in configs.items()}


def _sync_configs(admin: Any, specs: dict[str, TopicSpecLike], report: ProvisionReport) -> None:
    """Bring the topic-level configs of existing topics in line with their specs."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    if not specs:
        return
    for name, spec in specs.items():
        current = _describe_topic_configs(admin, name)
        want = {k: str(v) for k, v in spec.configs().items()}
        diff = {k: v for k, v in want.items() if current.get(k) != v}
        if not diff:
            continue
        entries = [
            ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in diff.items()
        ]
        target = ConfigResource(ResourceType.TOPIC, name, incremental_configs=entries)
        for fut in admin.incremental_alter_configs([target]).values():
            fut.result()
        report.updated_configs.append(name)
        log.info("topic %s: updated configs %s", name, sorted(diff))


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
            log.info(
                "created keyspace %s (RF %d in %s)", ks, c.replication_factor, c.local_datacenter
            )
        statements = list(cql.table_ddl(ks) if table_ddl is None else table_ddl)
        for stmt in statements:
            session.execute(stmt, timeout=DDL_TIMEOUT_S)
        add_missing_columns(session, ks)
        if c.auth is not None:  # secure mode: the sink and reader roles get these tables
            from infra.cassandra_roles import grant_tables

            grant_tables(session, ks)
        report.keyspace = ks
        report.tables += len(statements)
        if not session.cluster.control_connection.wait_for_schema_agreement(
            wait_time=DDL_TIMEOUT_S
        ):
            raise ProvisionError(f"schema of keyspace {ks} did not reach agreement")
    finally:
        session.cluster.shutdown()
    return report


def add_missing_columns(session: Any, keyspace: str) -> list[str]:
    """`ALTER TABLE ... ADD` each schemas.cql.ADDED_COLUMNS column an existing table lacks
    (`CREATE TABLE IF NOT EXISTS` leaves a table from an older release as it was)."""
    from schemas import cql

    rows = session.execute(
        "SELECT table_name, column_name FROM system_schema.columns WHERE keyspace_name = %s",
        (keyspace,),
        timeout=DDL_TIMEOUT_S,
    )
    present = {(r.table_name, r.column_name) for r in rows}
    tables = {t for t, _ in present}
    added = []
    for table, column, cql_type in cql.ADDED_COLUMNS:
        if table in tables and (table, column) not in present:
            session.execute(
                cql.add_column_ddl(keyspace, table, column, cql_type), timeout=DDL_TIMEOUT_S
            )
            added.append(f"{table}.{column}")
            log.info("keyspace %s: added column %s.%s %s", keyspace, table, column, cql_type)
    return added


def provision(
    settings: PipelineSettings,
    *,
    kafka: bool = True,
    cassandra: bool = True,
    topic_prefix: str = "",
    keyspace: str | None = None,
    allow_missing_schemas: bool = False,
    stream_group: str | None = None,
    sink_group: str | None = None,
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
            provision_topics(
                settings,
                specs,
                prefix=topic_prefix,
                report=report,
                stream_group=stream_group,
                sink_group=sink_group,
            )
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
