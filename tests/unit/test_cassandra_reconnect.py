"""infra.cassandra_reconnect: when hosts are re-armed (pure schedule, fakes), and the
driver internals it relies on (real cassandra-driver objects, no server)."""

from __future__ import annotations

import gc
import logging
import threading
import time
from typing import Any

import pytest

from infra import cassandra_reconnect as rc
from infra.settings import CassandraSettings

# ---- RearmSchedule (pure) ------------------------------------------------------------


def test_nothing_is_due_before_the_bound() -> None:
    s = rc.RearmSchedule(bound_s=15, max_gap_s=60)
    assert s.due(100.0, ["a"]) == []
    assert s.due(114.9, ["a"]) == []
    assert s.due(115.0, ["a"]) == [("a", 15.0)]


def test_rearms_repeat_with_doubling_gaps_up_to_the_cap() -> None:
    s = rc.RearmSchedule(bound_s=15, max_gap_s=60)
    t = 0.0
    s.due(t, ["a"])  # first seen down
    times = []
    while t < 400:
        t += 1
        if s.due(t, ["a"]):
            times.append(t)
    # 15 s down, then gaps 15, 30, 60, 60, ...
    assert times[:6] == [15, 30, 60, 120, 180, 240]


def test_a_host_seen_up_is_forgotten_and_its_next_outage_starts_from_zero() -> None:
    s = rc.RearmSchedule(bound_s=15, max_gap_s=60)
    s.due(0.0, ["a"])
    assert s.due(15.0, ["a"]) == [("a", 15.0)]
    assert s.due(16.0, []) == []  # up again
    assert s.due(20.0, ["a"]) == []  # down again: a new outage, seen at 20
    assert s.due(34.0, ["a"]) == []
    assert s.due(35.0, ["a"]) == [("a", 15.0)]


def test_keys_are_scheduled_independently() -> None:
    s = rc.RearmSchedule(bound_s=10, max_gap_s=40)
    s.due(0.0, ["a"])
    s.due(5.0, ["a", "b"])
    assert s.due(10.0, ["a", "b"]) == [("a", 10.0)]
    assert s.due(15.0, ["a", "b"]) == [("b", 10.0)]


@pytest.mark.parametrize(("bound", "cap"), [(0, 10), (-1, 10), (20, 10)])
def test_bad_bounds_are_refused(bound: float, cap: float) -> None:
    with pytest.raises(ValueError, match="bound_s"):
        rc.RearmSchedule(bound_s=bound, max_gap_s=cap)


# ---- the watchdog against a fake driver ------------------------------------------------


class FakeHost:
    def __init__(self, address: str, is_up: bool | None = False) -> None:
        self.address = address
        self.is_up = is_up
        self.lock = threading.RLock()
        self._currently_handling_node_up = False

    def __repr__(self) -> str:
        return f"FakeHost({self.address})"


class FakeConn:
    is_defunct = False
    is_closed = False


class FakeControl:
    def __init__(self) -> None:
        self._connection: Any = FakeConn()
        self.reconnects = 0

    def reconnect(self) -> None:
        self.reconnects += 1


class FakeMetadata:
    def __init__(self, hosts: list[FakeHost]) -> None:
        self.hosts = hosts

    def all_hosts(self) -> list[FakeHost]:
        return list(self.hosts)


class FakeProfiles:
    def __init__(self) -> None:
        self.ignored: set[str] = set()

    def distance(self, host: FakeHost) -> int:
        from cassandra.policies import HostDistance

        return HostDistance.IGNORED if host.address in self.ignored else HostDistance.LOCAL


class FakeCluster:
    def __init__(self, hosts: list[FakeHost]) -> None:
        self.metadata = FakeMetadata(hosts)
        self.profile_manager = FakeProfiles()
        self.control_connection = FakeControl()
        self.is_shutdown = False
        self.started: list[tuple[str, bool]] = []

    def _start_reconnector(self, host: FakeHost, is_host_addition: bool) -> None:
        self.started.append((host.address, is_host_addition))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _dog(cluster: FakeCluster, clock: Clock) -> rc.ReconnectWatchdog:
    return rc.ReconnectWatchdog(cluster, bound_s=15, max_gap_s=60, clock=clock)


def test_a_host_down_past_the_bound_gets_a_fresh_reconnector_and_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    down, up = FakeHost("127.0.0.3"), FakeHost("127.0.0.1", is_up=True)
    cluster, clock = FakeCluster([up, down]), Clock()
    dog = _dog(cluster, clock)
    caplog.set_level(logging.WARNING, logger=rc.__name__)
    assert dog.check()
    clock.t += 14
    dog.check()
    assert cluster.started == []
    clock.t += 1
    dog.check()
    assert cluster.started == [("127.0.0.3", False)]
    assert dog.rearmed == 1
    [rec] = [r for r in caplog.records if r.name == rc.__name__]
    assert rec.levelno == logging.WARNING
    assert "127.0.0.3" in rec.getMessage() and "15 s" in rec.getMessage()
    clock.t += 14
    dog.check()
    assert len(cluster.started) == 1  # the next one after another 15 s
    clock.t += 1
    dog.check()
    assert len(cluster.started) == 2


def test_hosts_up_unknown_ignored_or_coming_up_are_left_alone() -> None:
    unknown = FakeHost("127.0.0.1", is_up=None)
    ignored = FakeHost("127.0.0.2")
    coming_up = FakeHost("127.0.0.3")
    coming_up._currently_handling_node_up = True
    cluster, clock = FakeCluster([unknown, ignored, coming_up]), Clock()
    cluster.profile_manager.ignored.add("127.0.0.2")
    dog = _dog(cluster, clock)
    dog.check()
    clock.t += 100
    dog.check()
    assert cluster.started == []
    assert dog.rearmed == 0


def test_a_host_that_came_up_between_the_look_and_the_lock_is_not_rearmed() -> None:
    host = FakeHost("127.0.0.3")
    cluster = FakeCluster([host])
    host.is_up = True  # as Cluster.on_up would have set it meanwhile
    assert rc.rearm_host(cluster, host) is False
    assert cluster.started == []


def test_a_dead_control_connection_is_reconnected_past_the_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster, clock = FakeCluster([FakeHost("127.0.0.1", is_up=True)]), Clock()
    dog = _dog(cluster, clock)
    caplog.set_level(logging.WARNING, logger=rc.__name__)
    dog.check()
    cluster.control_connection._connection = None  # gave up
    dog.check()
    clock.t += 15
    dog.check()
    assert cluster.control_connection.reconnects == 1
    assert "control connection down for 15 s" in caplog.text
    defunct = FakeConn()
    defunct.is_defunct = True
    cluster.control_connection._connection = defunct
    clock.t += 15  # still down: next re-arm after another 15 s
    dog.check()
    assert cluster.control_connection.reconnects == 2
    cluster.control_connection._connection = FakeConn()
    clock.t += 100
    dog.check()
    assert cluster.control_connection.reconnects == 2


def test_the_warning_names_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    cluster, clock = FakeCluster([FakeHost("127.0.0.3")]), Clock()
    cluster.auth_provider = "s3cret-password"  # type: ignore[attr-defined]
    dog = _dog(cluster, clock)
    caplog.set_level(logging.DEBUG)
    dog.check()
    clock.t += 15
    cluster.control_connection._connection = None
    dog.check()
    clock.t += 15
    dog.check()
    assert dog.rearmed >= 2
    assert "s3cret" not in caplog.text


def test_a_shut_down_or_collected_cluster_stops_the_checks() -> None:
    cluster, clock = FakeCluster([FakeHost("127.0.0.3")]), Clock()
    dog = _dog(cluster, clock)
    cluster.is_shutdown = True
    clock.t += 100
    assert dog.check() is False
    assert cluster.started == []
    other = FakeCluster([])
    dog2 = _dog(other, clock)
    del other
    gc.collect()
    assert dog2.check() is False


def _wait(cond: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_the_thread_is_a_daemon_and_ends_when_the_cluster_shuts_down() -> None:
    host = FakeHost("127.0.0.3")
    cluster = FakeCluster([host])
    dog = rc.watch(cluster, check_interval_s=0.01, bound_s=0.05, max_gap_s=0.05)
    assert rc.watchdog_of(cluster) is dog
    assert dog._thread.daemon
    assert _wait(lambda: len(cluster.started) >= 2), "the thread did not re-arm the host"
    cluster.is_shutdown = True
    assert _wait(lambda: not dog.running), "the thread outlived the cluster"


def test_a_failing_check_is_logged_and_the_thread_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = FakeCluster([FakeHost("127.0.0.3")])
    calls = {"n": 0}
    real = cluster.metadata.all_hosts

    def flaky() -> list[FakeHost]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("metadata busy")
        return real()

    cluster.metadata.all_hosts = flaky  # type: ignore[method-assign]
    caplog.set_level(logging.WARNING, logger=rc.__name__)
    dog = rc.watch(cluster, check_interval_s=0.01, bound_s=0.05, max_gap_s=0.05)
    try:
        assert _wait(lambda: len(cluster.started) >= 1)
        assert "check failed: RuntimeError('metadata busy')" in caplog.text
    finally:
        dog.stop()
    assert _wait(lambda: not dog.running)


def test_the_setting_is_on_by_default_and_can_be_turned_off() -> None:
    assert CassandraSettings().reconnect_watchdog is True
    assert (
        CassandraSettings.model_validate({"reconnect_watchdog": "false"}).reconnect_watchdog
        is False
    )


# ---- the driver seam: fails when a driver upgrade moves what the watchdog relies on ----


def _real_cluster(address: str = "127.0.0.9") -> Any:
    """A driver Cluster that never connects (nothing listens there; a re-armed
    reconnector would wait a minute before its first try)."""
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import ConstantReconnectionPolicy, WhiteListRoundRobinPolicy

    return Cluster(
        contact_points=[address],
        protocol_version=5,
        reconnection_policy=ConstantReconnectionPolicy(60),
        execution_profiles={
            EXEC_PROFILE_DEFAULT: ExecutionProfile(
                load_balancing_policy=WhiteListRoundRobinPolicy([address])
            )
        },
    )


def _real_host(address: str = "127.0.0.9") -> Any:
    from cassandra.policies import SimpleConvictionPolicy
    from cassandra.pool import Host

    return Host(address, SimpleConvictionPolicy, datacenter="datacenter1", rack="rack1")


def test_every_driver_internal_the_watchdog_touches_still_exists() -> None:
    import inspect

    from cassandra.cluster import Cluster, ControlConnection

    cluster = _real_cluster()
    try:
        objects = {
            "cassandra.cluster.Cluster": cluster,
            "cassandra.pool.Host": _real_host(),
            "cassandra.cluster.ControlConnection": cluster.control_connection,
        }
        assert isinstance(cluster.control_connection, ControlConnection)
        for owner, names in rc.DRIVER_INTERNALS.items():
            for name in names:
                assert hasattr(objects[owner], name), (
                    f"{owner}.{name} is gone (driver upgrade?): revisit infra.cassandra_reconnect"
                )
        params = inspect.signature(Cluster._start_reconnector).parameters
        assert list(params) == ["self", "host", "is_host_addition"]
    finally:
        cluster.shutdown()


def test_the_driver_still_gives_up_after_a_refused_login() -> None:
    """The behaviour the watchdog exists for (cassandra-driver 3.30.1). If this fails, the
    driver now retries after AuthenticationFailed: check whether the watchdog is still
    needed (it also covers a spent reconnection schedule)."""
    from cassandra import AuthenticationFailed
    from cassandra.connection import ConnectionException
    from cassandra.pool import _HostReconnectionHandler

    class Scheduler:
        def __init__(self) -> None:
            self.scheduled: list[float] = []

        def schedule(self, delay: float, fn: Any) -> None:
            self.scheduled.append(delay)

    def handler_after(exc: Exception) -> tuple[Any, Scheduler]:
        host, sched = _real_host(), Scheduler()

        def factory() -> Any:
            raise exc

        h = _HostReconnectionHandler(
            host, factory, False, None, None, sched, iter([1.0, 2.0]),
            host.get_and_set_reconnection_handler, new_handler=None,
        )  # fmt: skip
        host.get_and_set_reconnection_handler(h)
        h.run()
        return host, sched

    host, sched = handler_after(ConnectionException("refused"))
    assert sched.scheduled == [1.0]  # an ordinary failure is retried
    host, sched = handler_after(AuthenticationFailed("Bad credentials"))
    assert sched.scheduled == []  # never retried ...
    assert host.is_currently_reconnecting()  # ... yet still attached: on_down starts none


def test_rearm_replaces_a_stuck_handler_with_a_scheduled_one_on_the_real_driver() -> None:
    cluster = _real_cluster()
    try:
        host = _real_host()
        host.set_down()

        class Stuck:
            cancelled = False

            def cancel(self) -> None:
                self.cancelled = True

        stuck = Stuck()
        host.get_and_set_reconnection_handler(stuck)
        assert rc.down_hosts(cluster) == []  # the cluster does not know this host
        assert rc.rearm_host(cluster, host) is True
        assert stuck.cancelled
        fresh = host._reconnection_handler
        assert fresh is not None and fresh is not stuck and not fresh._cancelled
        assert rc.control_connection_live(cluster) is False  # never connected
    finally:
        cluster.shutdown()


# ---- the hook in infra.cassandra_session.connect ---------------------------------------


class _ConnectingCluster(FakeCluster):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__([])

    def connect(self, keyspace: str | None = None) -> str:
        return "session"


@pytest.mark.parametrize("enabled", [True, False])
def test_connect_attaches_a_watchdog_unless_turned_off(
    monkeypatch: pytest.MonkeyPatch, enabled: bool
) -> None:
    import cassandra.cluster

    from infra import cassandra_session

    monkeypatch.setattr(cassandra.cluster, "Cluster", _ConnectingCluster)
    settings = CassandraSettings(reconnect_watchdog=enabled)
    cluster, session = cassandra_session.connect(settings)
    try:
        dog = rc.watchdog_of(cluster)
        assert (dog is not None and dog.running) is enabled
    finally:
        cluster.is_shutdown = True
        if dog is not None:
            dog.stop()
