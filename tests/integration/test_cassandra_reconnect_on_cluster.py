"""A long-lived session gets a node back after that node refused its login for a while
(issue 13 follow-up, infra.cassandra_reconnect), on the real secure cluster.

cassandra-driver 3.x gives up reconnecting to a host for good after one attempt fails
with AuthenticationFailed. Here a session logs in as a temporary role, the role's
password changes, one node restarts and refuses the session's next login there, the
password comes back, and the session must use that node again within a deadline.

Restarts one Cassandra node: run alone, under the shared lock. Skipped on a plaintext
cluster. To see the driver's own behaviour, run it with
PIPELINE_CASSANDRA__RECONNECT_WATCHDOG=false: the node then stays down and the test fails.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from infra import cassandra_reconnect as rc
from infra import cassandra_roles as roles
from infra.cassandra_session import connect
from infra.local.topology import node_by_name
from infra.settings import CassandraSettings, PipelineSettings

pytestmark = [pytest.mark.cassandra, pytest.mark.slow]

WATCHDOG_ENV = "PIPELINE_CASSANDRA__RECONNECT_WATCHDOG"
# The watchdog re-arms a host at most REARM_MAX_GAP_S apart and looks every
# CHECK_INTERVAL_S; the rest covers the node's credentials cache (2 s), the handshake and
# opening the pool.
BACK_WITHIN_S = rc.REARM_MAX_GAP_S + 2 * rc.CHECK_INTERVAL_S + 30


def _watchdog_enabled() -> bool:
    """The setting as the environment gives it (this test builds its settings by hand)."""
    raw = os.environ.get(WATCHDOG_ENV)
    fields = {} if raw is None else {"reconnect_watchdog": raw}
    return CassandraSettings.model_validate(fields).reconnect_watchdog


def _until(cond: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll `cond` until true; the seconds it took. Fails with `what` at the deadline."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            pytest.fail(f"{what} (waited {timeout_s:.0f} s)")
        time.sleep(0.2)
    return time.monotonic() - t0


class RefusedLogins:
    """Records every connection the driver opened that the server refused with
    AuthenticationFailed (address, when), through a subclass of the Cluster's own
    connection class: new pools and reconnectors build their connections from it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.refused: list[tuple[str, float]] = []

    def install(self, cluster: Any) -> None:
        from cassandra import AuthenticationFailed

        recorder = self
        base = cluster.connection_class

        class Recording(base):  # type: ignore[misc, valid-type]
            @classmethod
            def factory(cls, endpoint: Any, timeout: float, *args: Any, **kwargs: Any) -> Any:
                try:
                    return super().factory(endpoint, timeout, *args, **kwargs)
                except AuthenticationFailed:
                    with recorder._lock:
                        recorder.refused.append((endpoint.address, time.monotonic()))
                    raise

        cluster.connection_class = Recording

    def since(self, address: str, t0: float) -> int:
        with self._lock:
            return sum(1 for a, t in self.refused if a == address and t >= t0)


@pytest.fixture
def admin(secure: PipelineSettings, cassandra_cluster: Any) -> Iterator[Any]:
    cluster, session = connect(secure.cassandra)
    try:
        yield session
    finally:
        cluster.shutdown()


@pytest.fixture
def temp_role(admin: Any) -> Iterator[tuple[str, str]]:
    """(role, password) of a login role made for this test and dropped after it; visible
    on every replica of system_auth before the test logs in with it."""
    from cassandra import ConsistencyLevel
    from cassandra.query import SimpleStatement

    role, password = f"reconnect_{uuid.uuid4().hex[:10]}", secrets.token_urlsafe(24)
    admin.execute(roles.create_role(role, password), timeout=roles.DDL_TIMEOUT_S)
    everywhere = SimpleStatement(
        "SELECT role FROM system_auth.roles WHERE role = %s", consistency_level=ConsistencyLevel.ALL
    )
    try:
        _until(
            lambda: admin.execute(everywhere, (role,), timeout=30).one() is not None,
            60,
            f"role {role} not on every system_auth replica",
        )
        yield role, password
    finally:
        admin.execute(f"DROP ROLE IF EXISTS {role}", timeout=roles.DDL_TIMEOUT_S)


def _login_settings(secure: PipelineSettings, role: str, password: str) -> CassandraSettings:
    auth = secure.cassandra.auth
    assert auth is not None
    as_role = dataclasses.replace(
        auth,
        role=role,
        password=SecretStr(password),
        password_file=auth.password_file.with_name(role),  # not read: the password is set
    )
    return secure.cassandra.model_copy(
        update={"auth": as_role, "reconnect_watchdog": _watchdog_enabled()}
    )


def _victim(cassandra_cluster: Any, cluster: Any) -> tuple[str, Any]:
    """The last node that does not hold the session's control connection (so only the
    restarted node's pool is at stake), and the driver's Host for it."""
    by_address = {h.address: h for h in cluster.metadata.all_hosts()}
    control = cluster.get_control_connection_host()
    for name in reversed(cassandra_cluster.node_names()):
        host = by_address.get(node_by_name(name).host)
        if host is None:
            pytest.skip(f"cannot map node {name} to a driver host on this backend")
        if host != control:
            return name, host
    pytest.fail("every node holds the control connection?")


def _coordinator_address(session: Any, host: Any, within_s: float = 60.0) -> str:
    """The node's own rpc_address, from a query sent to `host` only. On a cluster that
    has just started, a node can be marked down for a moment after the session saw it
    up (gossip settling): such a refusal is retried until `within_s`."""
    from cassandra.cluster import NoHostAvailable

    deadline = time.monotonic() + within_s
    while True:
        try:
            rs = session.execute("SELECT rpc_address FROM system.local", host=host, timeout=30)
            break
        except NoHostAvailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)
    assert rs.response_future.coordinator_host == host
    return str(rs.one().rpc_address)


def test_a_node_that_refused_the_login_is_used_again_once_the_login_works(
    secure: PipelineSettings,
    cassandra_cluster: Any,
    admin: Any,
    temp_role: tuple[str, str],
) -> None:
    role, good = temp_role
    settings = _login_settings(secure, role, good)
    cluster, session = connect(settings)
    victim: str | None = None
    try:
        assert (rc.watchdog_of(cluster) is not None) is settings.reconnect_watchdog
        hosts = list(cluster.metadata.all_hosts())
        _until(lambda: all(h.is_up for h in hosts), 60, "not every host up in the new session")
        logins = RefusedLogins()
        logins.install(cluster)
        victim, host = _victim(cassandra_cluster, cluster)
        assert _coordinator_address(session, host) == host.address

        # The role's password changes: open connections stay, the next login is refused.
        admin.execute(
            roles.set_password(role, secrets.token_urlsafe(24)), timeout=roles.DDL_TIMEOUT_S
        )
        cassandra_cluster.stop_node(victim)
        _until(lambda: host.is_up is False, 60, f"the driver never marked {victim} down")
        started_at = time.monotonic()
        cassandra_cluster.start_node(victim)  # returns once the node answers CQL
        _until(
            lambda: logins.since(host.address, started_at) > 0,
            120,
            f"the driver never tried to log in to {victim} after it came back",
        )
        assert host.is_up is False, "a refused login, yet the host is up"

        admin.execute(roles.set_password(role, good), timeout=roles.DDL_TIMEOUT_S)
        took = _until(
            lambda: bool(host.is_up),
            BACK_WITHIN_S,
            f"{victim} ({host.address}) still down in the session although it accepts the "
            f"login again; refused logins there: {logins.since(host.address, started_at)}; "
            f"watchdog {'on' if settings.reconnect_watchdog else 'off'}",
        )
        print(f"\n{victim} back in the session {took:.1f} s after the password was restored")
        assert _coordinator_address(session, host) == host.address
    finally:
        cluster.shutdown()
        if victim is not None:  # leave every node up
            for name in cassandra_cluster.node_names():
                cassandra_cluster.start_node(name)
