"""Cassandra session factory: token-aware, DC-aware, consistency from settings, and the
one execution profile every read runs under (READ_PROFILE).

`connect()` registers READ_PROFILE on the Cluster. A read under it (marked idempotent,
which speculative execution and retries require) does not notice one node dying:

- retries: a server read timeout, an unavailable answer, or a connection error on the
  coordinator is retried once more on the next host (READ_MAX_RETRIES bounds it);
- speculative execution: if no answer came after READ_SPECULATIVE_DELAY_S, the same
  request goes to the next coordinator too, and the first answer wins;
- one request timeout (READ_REQUEST_TIMEOUT_S) covers the attempts: long enough for a
  server read timeout (5 s) plus one retry, short enough for a person at a terminal.

In secure mode (`settings.auth` set) every connection is TLS, trusting only the
configured CA with the node's address checked against its certificate, and logs in with
the service's role (infra.cassandra_roles). Writes keep the default profile (the sink has
its own retry logic). The driver also
learns fast that a node is gone or back: connection heartbeats on idle connections and a
short reconnection backoff.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from infra.settings import CassandraSettings

if TYPE_CHECKING:
    from cassandra.cluster import Cluster, ExecutionProfile, Session

log = logging.getLogger(__name__)

READ_PROFILE = "reads"
# Attempts beyond the first after an error answer (read timeout, unavailable,
# connection error): with RF 3 and one node down, the next coordinator answers.
READ_MAX_RETRIES = 2
# Measured on the local 3-node cluster (2 shared cores, 200 reads per setting per phase,
# /tmp measurement described in docs/consumers.md): healthy point reads p50 1.6 ms,
# p99 10-30 ms, max 20-110 ms. 50 ms is past the healthy p99, so a second coordinator is
# asked for ~1% of reads, and a read stuck on a coordinator that died (or hangs) before
# the driver noticed costs ~50 ms instead of a request timeout.
READ_SPECULATIVE_DELAY_S = 0.05
# One speculative execution: with one of three nodes down the query plan holds two
# hosts, so a second one would find none. Speculation and retries draw from the same
# plan: if both coordinators time out server-side (a table without speculative_retry;
# seen once in the measurement as NoHostAvailable), the driver has no host left to retry
# on, and consumers.queries asks again with a fresh plan (per id, per page).
READ_SPECULATIVE_EXECUTIONS = 1
# Covers a server-side read timeout (read_request_timeout 5 s) and one retry.
READ_REQUEST_TIMEOUT_S = 12.0
# Idle connections are probed this often; a node that stops answering (not only one
# whose sockets close) is taken out of the query plans within ~2 intervals.
HEARTBEAT_INTERVAL_S = 5
HEARTBEAT_TIMEOUT_S = 5


def consistency_level(name: str) -> int:
    from cassandra import ConsistencyLevel

    return int(getattr(ConsistencyLevel, name.upper()))


def read_retry_policy(max_retries: int = READ_MAX_RETRIES) -> Any:
    """A RetryPolicy for reads only: error answers are retried on the next host."""
    from cassandra.policies import RetryPolicy

    class ReadRetryPolicy(RetryPolicy):
        """Retries read timeouts, unavailable and request errors on the next host, at
        most `max_retries` times; never retries a write."""

        def _next(self, retry_num: int, consistency: Any) -> tuple[int, Any]:
            if retry_num < max_retries:
                return self.RETRY_NEXT_HOST, consistency
            return self.RETHROW, None

        def on_read_timeout(
            self,
            query: Any,
            consistency: Any,
            required_responses: int,
            received_responses: int,
            data_retrieved: bool,
            retry_num: int,
        ) -> tuple[int, Any]:
            return self._next(retry_num, consistency)

        def on_unavailable(
            self,
            query: Any,
            consistency: Any,
            required_replicas: int,
            alive_replicas: int,
            retry_num: int,
        ) -> tuple[int, Any]:
            return self._next(retry_num, consistency)

        def on_request_error(
            self, query: Any, consistency: Any, error: Any, retry_num: int
        ) -> tuple[int, Any]:
            return self._next(retry_num, consistency)

        def on_write_timeout(self, *args: Any, **kwargs: Any) -> tuple[int, Any]:
            return self.RETHROW, None

    return ReadRetryPolicy()


def _load_balancing(settings: CassandraSettings) -> Any:
    from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

    return TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=settings.local_datacenter))


def read_profile(settings: CassandraSettings) -> ExecutionProfile:
    """The execution profile of every read (see the module docstring)."""
    from cassandra.cluster import ExecutionProfile
    from cassandra.policies import ConstantSpeculativeExecutionPolicy

    return ExecutionProfile(
        load_balancing_policy=_load_balancing(settings),
        retry_policy=read_retry_policy(),
        consistency_level=consistency_level(settings.read_consistency),
        request_timeout=READ_REQUEST_TIMEOUT_S,
        speculative_execution_policy=ConstantSpeculativeExecutionPolicy(
            READ_SPECULATIVE_DELAY_S, READ_SPECULATIVE_EXECUTIONS
        ),
    )


def read_profile_of(session: Any) -> Any:
    """READ_PROFILE if the session's cluster has it, else the default profile (a session
    some test opened by hand): queries run either way."""
    from cassandra.cluster import EXEC_PROFILE_DEFAULT

    profiles = getattr(
        getattr(getattr(session, "cluster", None), "profile_manager", None), "profiles", {}
    )
    return READ_PROFILE if READ_PROFILE in profiles else EXEC_PROFILE_DEFAULT


def security_kwargs(settings: CassandraSettings) -> dict[str, Any]:
    """`ssl_context` and `auth_provider` for a driver `Cluster(...)`: TLS trusting the CA
    plus the role's login in secure mode; a plain login if username and password are set;
    else nothing. For code that builds its own Cluster (a probe pinned to one node)."""
    from cassandra.auth import PlainTextAuthProvider

    if settings.auth is not None:
        return {
            "ssl_context": settings.auth.ssl_context(),
            "auth_provider": settings.auth.auth_provider(),
        }
    if settings.username and settings.password is not None:
        return {
            "auth_provider": PlainTextAuthProvider(
                settings.username, settings.password.get_secret_value()
            )
        }
    return {}


def connect(settings: CassandraSettings, keyspace: str | None = None) -> tuple[Cluster, Session]:
    """Open a cluster connection; reads default to the configured read consistency, and
    READ_PROFILE is registered for the queries."""
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import ExponentialReconnectionPolicy

    profile = ExecutionProfile(
        load_balancing_policy=_load_balancing(settings),
        consistency_level=consistency_level(settings.read_consistency),
        request_timeout=settings.request_timeout_s,
    )
    cluster = Cluster(
        contact_points=settings.contact_points,
        port=settings.port,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile, READ_PROFILE: read_profile(settings)},
        **security_kwargs(settings),
        protocol_version=5,
        # The default backoff grows to minutes: a restarted node would sit unused.
        reconnection_policy=ExponentialReconnectionPolicy(0.5, 10.0),
        idle_heartbeat_interval=HEARTBEAT_INTERVAL_S,
        idle_heartbeat_timeout=HEARTBEAT_TIMEOUT_S,
        connect_timeout=10,
    )
    session = cluster.connect(keyspace)
    if settings.reconnect_watchdog:  # the driver gives up on a node after a refused login
        from infra.cassandra_reconnect import watch

        watch(cluster)
    log.info(
        "connected to Cassandra %s (keyspace %s, %s)",
        settings.contact_points,
        keyspace,
        f"TLS, role {settings.auth.role}" if settings.auth else "plaintext",
    )
    return cluster, session
