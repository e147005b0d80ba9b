"""A watchdog that restarts the Cassandra driver's reconnection where the driver gave up.

cassandra-driver 3.x (checked against 3.29-3.30.1) stops reconnecting to a host for good
in two cases, and leaves the host down in that Cluster forever:

- one reconnection attempt is refused with `AuthenticationFailed`:
  `_HostReconnectionHandler.on_exception` returns False, so the handler is not scheduled
  again, yet it stays attached to the host (`host.is_currently_reconnecting()` stays
  True), so `Cluster.on_down` never starts a new one;
- the reconnection policy's schedule runs out (ExponentialReconnectionPolicy: 64 attempts,
  ~10 min at our 10 s cap): "Will not continue to retry reconnection attempts".

The control connection's `_ControlReconnectionHandler` stops the same ways, and
`ControlConnection.on_up` does nothing. With PasswordAuthenticator (secure mode) a node
that is up but refuses the login for a while (every node's data lost and the roles not
restored yet, a password being rotated, system_auth briefly unreadable) would stay down
in every long-lived session (sink, read API, monitor, test harness); every node: a
NoHostAvailable forever.

`ReconnectWatchdog`, started by infra.cassandra_session.connect() on each Cluster it makes
(setting `cassandra.reconnect_watchdog`, on by default), looks every CHECK_INTERVAL_S;
`RearmSchedule` (pure) decides when: a host (or the control connection) down for
DOWN_BOUND_S gets a fresh reconnector, then again after gaps doubling from DOWN_BOUND_S to
REARM_MAX_GAP_S while it stays down. A driver reconnecting by itself is disturbed no more
than by a restarted backoff schedule. Guarantees: the watchdog stops once the Cluster is
shut down (or garbage), never keeps the interpreter alive (a daemon thread holding only a
weak reference), and logs one WARNING per re-arm naming the address and how long it was
down, never a credential.

The driver internals it touches are all in the "driver seam" section below;
tests/unit/test_cassandra_reconnect.py fails if any of them disappears.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cassandra.cluster import Cluster

log = logging.getLogger(__name__)

# The driver notices a dead connection within ~2 heartbeats (10 s) and retries on its
# own backoff (0.5 s doubling to 10 s, infra.cassandra_session): a host still down after
# DOWN_BOUND_S has seen several attempts, so a fresh reconnector costs nothing when the
# driver was still trying, and ends the outage when it had stopped.
CHECK_INTERVAL_S = 5.0
DOWN_BOUND_S = 15.0
# While a node stays down (a real outage), one WARNING (and one login attempt) a minute.
REARM_MAX_GAP_S = 60.0
CONTROL_CONNECTION = "control connection"


# ---- when to re-arm (pure) -----------------------------------------------------------


@dataclass
class _Outage:
    since: float  # first seen down
    rearms: int = 0
    last_rearm: float | None = None


class RearmSchedule:
    """Which of the keys seen down are due for a fresh reconnector now.

    Who calls me: the watchdog, once per check, with the clock and the keys down now.
    What I change: one outage record per key down; a key seen up is forgotten, so its
    next outage starts from zero. Pure: no driver, no clock of its own."""

    def __init__(self, bound_s: float = DOWN_BOUND_S, max_gap_s: float = REARM_MAX_GAP_S):
        if bound_s <= 0 or max_gap_s < bound_s:
            raise ValueError(f"need 0 < bound_s <= max_gap_s, got {bound_s} and {max_gap_s}")
        self.bound_s = bound_s
        self.max_gap_s = max_gap_s
        self._outages: dict[Any, _Outage] = {}

    def gap_after(self, rearms: int) -> float:
        """Seconds to wait before the next re-arm: DOWN_BOUND_S before the first, then
        doubling, at most max_gap_s."""
        if rearms <= 0:
            return self.bound_s
        return float(min(self.bound_s * 2 ** (rearms - 1), self.max_gap_s))

    def due(self, now: float, down: Iterable[Hashable]) -> list[tuple[Any, float]]:
        """(key, seconds down) for each key to re-arm now; the caller re-arms them all."""
        down_now = set(down)
        for key in [k for k in self._outages if k not in down_now]:
            del self._outages[key]
        out = []
        for key in down_now:
            o = self._outages.setdefault(key, _Outage(since=now))
            start = o.since if o.last_rearm is None else o.last_rearm
            if now - start >= self.gap_after(o.rearms):
                o.rearms += 1
                o.last_rearm = now
                out.append((key, now - o.since))
        return out


# ---- driver seam (cassandra-driver 3.29-3.30.1) ---------------------------------------
# Every private name used here is in DRIVER_INTERNALS and checked by a unit test.

DRIVER_INTERNALS = {
    "cassandra.cluster.Cluster": ("_start_reconnector", "control_connection", "profile_manager"),
    "cassandra.pool.Host": ("_currently_handling_node_up", "lock", "is_up"),
    "cassandra.cluster.ControlConnection": ("_connection", "reconnect"),
}


def down_hosts(cluster: Any) -> list[Any]:
    """Hosts the driver holds down (`is_up is False`; None is "not known yet") that it
    would connect to: an IGNORED host (remote DC) gets no reconnector anyway."""
    from cassandra.policies import HostDistance

    return [
        h
        for h in cluster.metadata.all_hosts()
        if h.is_up is False and cluster.profile_manager.distance(h) != HostDistance.IGNORED
    ]


def rearm_host(cluster: Any, host: Any) -> bool:
    """Start a fresh reconnector for `host` unless it came up meanwhile; whether it did.

    `Cluster._start_reconnector` cancels the host's old handler itself (the one that gave
    up). Under the host's lock, as `Cluster.on_down` decides there too, and not while
    `Cluster.on_up` is opening pools for it (`_currently_handling_node_up`)."""
    with host.lock:
        if cluster.is_shutdown or host.is_up or host._currently_handling_node_up:
            return False
        cluster._start_reconnector(host, is_host_addition=False)
    return True


def control_connection_live(cluster: Any) -> bool:
    """Whether the control connection holds an open connection (it is None while the
    driver reconnects it, or after it gave up)."""
    conn = cluster.control_connection._connection
    return conn is not None and not conn.is_defunct and not conn.is_closed


def rearm_control_connection(cluster: Any) -> None:
    """`ControlConnection.reconnect()` tries every live host once, then (on failure)
    replaces any old handler with a fresh one on the cluster's reconnection policy."""
    cluster.control_connection.reconnect()


# ---- the watchdog ----------------------------------------------------------------------


class ReconnectWatchdog:
    """One daemon thread per Cluster: `check()` every `check_interval_s` until the Cluster
    is shut down or gone.

    Who calls me: infra.cassandra_session.connect() (`watch()`); tests call `check()`.
    What I change: the driver's reconnection handlers of hosts (and of the control
    connection) down longer than the schedule allows; nothing else."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        check_interval_s: float = CHECK_INTERVAL_S,
        bound_s: float = DOWN_BOUND_S,
        max_gap_s: float = REARM_MAX_GAP_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._cluster = weakref.ref(cluster)
        self._interval = check_interval_s
        self._clock = clock
        self._hosts = RearmSchedule(bound_s, max_gap_s)
        self._control = RearmSchedule(bound_s, max_gap_s)
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"cassandra-reconnect-watchdog-{id(cluster):x}", daemon=True
        )
        self.rearmed = 0  # re-arms so far (hosts and control connection), for tests

    def start(self) -> ReconnectWatchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def check(self) -> bool:
        """One look: re-arm what is due. False once the Cluster is shut down or gone."""
        cluster = self._cluster()
        if cluster is None or cluster.is_shutdown:
            return False
        now = self._clock()
        for host, down_s in self._hosts.due(now, down_hosts(cluster)):
            if rearm_host(cluster, host):
                self.rearmed += 1
                log.warning(
                    "Cassandra host %s down for %.0f s: starting a fresh reconnection (the "
                    "driver stops retrying after a refused login or a spent backoff)",
                    host.address,
                    down_s,
                )
        live = control_connection_live(cluster)
        for _, down_s in self._control.due(now, [] if live else [CONTROL_CONNECTION]):
            self.rearmed += 1
            log.warning("Cassandra control connection down for %.0f s: reconnecting it", down_s)
            rearm_control_connection(cluster)
        return True

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                if not self.check():
                    return
            except Exception as exc:  # noqa: BLE001 - the next check tries again
                log.warning("Cassandra reconnect watchdog check failed: %r", exc)
                log.debug("watchdog check failure", exc_info=True)


_WATCHDOGS: weakref.WeakKeyDictionary[Any, ReconnectWatchdog] = weakref.WeakKeyDictionary()


def watch(cluster: Cluster, **kwargs: Any) -> ReconnectWatchdog:
    """Start a watchdog on `cluster` (see the module docstring); kwargs as ReconnectWatchdog."""
    dog = ReconnectWatchdog(cluster, **kwargs).start()
    _WATCHDOGS[cluster] = dog
    return dog


def watchdog_of(cluster: Cluster) -> ReconnectWatchdog | None:
    """The watchdog `watch()` started on `cluster`, if any."""
    return _WATCHDOGS.get(cluster)
