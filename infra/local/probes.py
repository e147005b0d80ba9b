"""Readiness probes that ask the servers themselves, plus a deadline poller."""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def poll_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.5,
    abort: Callable[[], str | None] | None = None,
) -> T | None:
    """Call probe until it returns a truthy value or timeout; return it (None on timeout).

    abort() is checked each round; a non-empty string stops polling by raising
    RuntimeError with that text (e.g. 'kafka-2 exited').
    """
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if abort is not None:
            why = abort()
            if why:
                raise RuntimeError(why)
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def kafka_broker_ids(
    bootstrap: str, timeout: float = 3.0, client_conf: dict[str, Any] | None = None
) -> set[int]:
    """Ids of the brokers that the cluster metadata lists (empty if unreachable).
    `client_conf` adds connection settings (TLS and SCRAM for a secure cluster)."""
    from confluent_kafka.admin import AdminClient

    conf: dict[str, Any] = {
        **(client_conf or {}),
        "bootstrap.servers": bootstrap,
        "socket.connection.setup.timeout.ms": 2000,
        "log_level": 0,
        "logger": log,
    }
    admin = AdminClient(conf)
    try:
        md = admin.list_topics(timeout=timeout)
    except Exception as e:  # KafkaException: not reachable yet
        log.debug("kafka metadata from %s failed: %s", bootstrap, e)
        return set()
    return set(md.brokers)


# A CQL v4 OPTIONS request: version, flags, stream id, opcode 0x05, body length 0.
_CQL_OPTIONS = struct.pack(">BBhBi", 0x04, 0, 1, 0x05, 0)
_CQL_SUPPORTED = 0x06


def cql_answers(
    host: str, port: int = 9042, timeout: float = 1.0, ssl_context: ssl.SSLContext | None = None
) -> bool:
    """True if a CQL server on host:port answers OPTIONS with SUPPORTED (over TLS when
    ssl_context is given: a secure node refuses plaintext). OPTIONS needs no login, so
    this works before any role exists."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            raw.settimeout(timeout)
            s = raw if ssl_context is None else ssl_context.wrap_socket(raw, server_hostname=host)
            s.sendall(_CQL_OPTIONS)
            header = b""
            while len(header) < 9:
                chunk = s.recv(9 - len(header))
                if not chunk:
                    return False
                header += chunk
    except OSError:  # ssl.SSLError included
        return False
    version, _flags, _stream, opcode, _length = struct.unpack(">BBhBi", header)
    return version & 0x80 == 0x80 and opcode == _CQL_SUPPORTED


def cassandra_ring_healthy(
    hosts: list[str],
    port: int = 9042,
    timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    auth_provider: Any = None,
) -> str:
    """'' if each of hosts (the live nodes) lists the others in system.peers_v2, sees them
    all alive as coordinator, and all agree on the schema version; else the reason.
    A secure cluster needs ssl_context and a login (any role may read the system tables)."""
    from cassandra import ConsistencyLevel
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import WhiteListRoundRobinPolicy
    from cassandra.query import SimpleStatement

    profile = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy(hosts))
    cluster = Cluster(
        contact_points=hosts,
        port=port,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        protocol_version=5,
        connect_timeout=timeout,
        control_connection_timeout=timeout,
        ssl_context=ssl_context,
        auth_provider=auth_provider,
    )
    try:
        if auth_provider is None:
            session = cluster.connect()
        else:  # a first boot's logins are refused until the roles exist: retried by callers
            from infra.cassandra_roles import expected_login_failures

            with expected_login_failures():
                session = cluster.connect()
        by_addr = {h.address: h for h in cluster.metadata.all_hosts()}
        # connect() can return before the pool of every host is open.
        pools_by = time.monotonic() + timeout
        while time.monotonic() < pools_by and not all(
            h in session.get_pool_state() for h in by_addr.values() if h.address in hosts
        ):
            time.sleep(0.1)
        # system_distributed has RF 3: a range read at ONE/TWO/THREE (one per live node)
        # succeeds only if the coordinator sees every other live node as alive.
        level = (ConsistencyLevel.ONE, ConsistencyLevel.TWO, ConsistencyLevel.THREE)[
            min(len(hosts), 3) - 1
        ]
        all_read = SimpleStatement(
            "SELECT * FROM system_distributed.repair_history LIMIT 1", consistency_level=level
        )
        versions: dict[str, str] = {}
        for addr in hosts:
            host = by_addr.get(addr)
            if host is None or not host.is_up:
                return f"{addr} is not reachable over CQL"
            local = session.execute(
                "SELECT schema_version FROM system.local", host=host, timeout=timeout
            ).one()
            versions[addr] = str(local.schema_version)
            peers = {
                str(r.peer)
                for r in session.execute(
                    "SELECT peer FROM system.peers_v2", host=host, timeout=timeout
                )
            }
            missing = sorted(set(hosts) - {addr} - peers)
            if missing:
                return f"{addr} does not list {', '.join(missing)} in system.peers_v2"
            try:
                session.execute(all_read, host=host, timeout=timeout)
            except Exception as e:
                return f"{addr} does not see all live nodes up: {type(e).__name__}: {e}"
        if len(set(versions.values())) > 1:
            # A node that missed schema changes while down must catch up before it serves.
            counts = {v: list(versions.values()).count(v) for v in versions.values()}
            odd_first = sorted(versions.items(), key=lambda av: (counts[av[1]], av[0]))
            return "schema versions differ: " + ", ".join(f"{a}={v[:8]}" for a, v in odd_first)
        return ""
    except Exception as e:
        return f"CQL connection failed: {type(e).__name__}: {e}"
    finally:
        cluster.shutdown()
