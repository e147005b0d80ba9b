"""Readiness and completion probes with deadlines (never fixed sleeps).

Kafka probes go through infra.groups, whose every admin/metadata call is retried by
infra.kafka_retry (leader and coordinator moves); an error that retrying cannot fix ends
the wait at once as KafkaCallFailed instead of spinning until the deadline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from infra import groups
from infra.kafka_retry import KafkaCallFailed
from infra.settings import KafkaSettings
from orchestration.services import Services

log = logging.getLogger(__name__)
T = TypeVar("T")
POLL_S = 0.25


class ServiceDied(RuntimeError):
    pass


def check_alive(services: Services, names: list[str]) -> None:
    """Raise (with their log tails) if any of `names` is no longer running."""
    dead = [n for n in names if services.pid(n) is None]
    if dead:
        tails = "\n".join(f"--- {n} ---\n{services.tail(n, 30)}" for n in dead)
        raise ServiceDied(f"service(s) {dead} exited:\n{tails}")


def wait_groups_ready(
    kafka: KafkaSettings,
    wanted: dict[str, int],
    timeout_s: float,
    alive: Callable[[], None] | None = None,
) -> None:
    """Every group Stable with its members holding partitions."""
    deadline = time.monotonic() + timeout_s
    for group, members in wanted.items():
        while True:
            if alive is not None:
                alive()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"group {group} not ready within {timeout_s:.0f}s")
            try:
                groups.wait_for_group(kafka, group, members, timeout_s=min(left, 10.0))
                break
            except TimeoutError:
                continue


def wait_caught_up(
    kafka: KafkaSettings,
    lags: dict[str, list[str]],
    timeout_s: float,
    alive: Callable[[], None] | None = None,
    progress: Callable[[dict[str, int]], None] | None = None,
) -> float:
    """Poll until every group's committed lag on its topics is 0; returns seconds waited."""
    start = time.monotonic()
    deadline = start + timeout_s
    last: dict[str, int] = {}
    while True:
        if alive is not None:
            alive()
        try:
            last = {
                g: groups.group_lag(kafka, g, t, deadline_s=max(1.0, deadline - time.monotonic()))[
                    "total"
                ]
                for g, t in lags.items()
            }
        except KafkaCallFailed as exc:
            # Retriable errors were retried inside group_lag (kafka_retry); what is left is
            # either out of time (polled again until our deadline) or not retriable (raised).
            if not exc.retriable:
                raise
            log.debug("lag probe failed: %s", exc)
        else:
            if progress is not None:
                progress(last)
            if all(v == 0 for v in last.values()):
                return time.monotonic() - start
        if time.monotonic() > deadline:
            raise TimeoutError(f"groups not caught up within {timeout_s:.0f}s: lag {last}")
        time.sleep(POLL_S)


def poll_until(
    fn: Callable[[], bool], timeout_s: float, what: str, every_s: float = POLL_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while not fn():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done within {timeout_s:.0f}s")
        time.sleep(every_s)


def liveness(services: Services, names: list[str]) -> Callable[[], None]:
    """A probe for the wait functions: raises ServiceDied when one of `names` is gone."""
    return lambda: check_alive(services, names)


def retrying(fn: Callable[[], T], timeout_s: float = 120.0, what: str = "probe") -> T:
    """Call `fn` until it returns without a Kafka/timeout error (brokers restart under us)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - KafkaException, TimeoutError, driver errors
            if time.monotonic() > deadline:
                raise
            log.warning("%s failed (%s); retrying", what, exc)
            time.sleep(1.0)


def quiet(fn: Callable[[], bool]) -> Callable[[], bool]:
    """A completion probe whose transient errors mean "not yet" (ServiceDied still raises)."""

    def probe() -> bool:
        try:
            return fn()
        except ServiceDied:
            raise
        except Exception as exc:  # noqa: BLE001
            log.warning("completion probe failed (%s); will retry", exc)
            return False

    return probe
