"""Cassandra session factory: token-aware, DC-aware, consistency from settings."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from infra.settings import CassandraSettings

if TYPE_CHECKING:
    from cassandra.cluster import Cluster, Session

log = logging.getLogger(__name__)


def consistency_level(name: str) -> int:
    from cassandra import ConsistencyLevel

    return int(getattr(ConsistencyLevel, name.upper()))


def connect(settings: CassandraSettings, keyspace: str | None = None) -> tuple[Cluster, Session]:
    """Open a cluster connection; reads default to the configured read consistency."""
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import (
        DCAwareRoundRobinPolicy,
        ExponentialReconnectionPolicy,
        TokenAwarePolicy,
    )

    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(
            DCAwareRoundRobinPolicy(local_dc=settings.local_datacenter)
        ),
        consistency_level=consistency_level(settings.read_consistency),
        request_timeout=settings.request_timeout_s,
    )
    auth = None
    if settings.username and settings.password is not None:
        auth = PlainTextAuthProvider(settings.username, settings.password.get_secret_value())
    cluster = Cluster(
        contact_points=settings.contact_points,
        port=settings.port,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        auth_provider=auth,
        protocol_version=5,
        # The default backoff grows to minutes: a restarted node would sit unused.
        reconnection_policy=ExponentialReconnectionPolicy(0.5, 10.0),
        connect_timeout=10,
    )
    session = cluster.connect(keyspace)
    log.info("connected to Cassandra %s (keyspace %s)", settings.contact_points, keyspace)
    return cluster, session
