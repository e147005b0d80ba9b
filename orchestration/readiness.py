"""Start services and wait until they are ready; on failure, say why with their log tails.

The one "start, wait, show tails" of the pipeline CLI, the demo and the bench. Ready
means: every consumer group named is Stable with its members holding partitions
(infra.groups, whose Kafka calls retry leader and coordinator moves), probed with a
deadline, never a fixed sleep. While waiting, every started service must stay up: a
supervisor that gave up ends the wait at once instead of at the deadline.

Whatever stops the wait (the deadline, a service gone, a Kafka call that failed past its
retries) is raised as `NotReady`, whose message carries the cause and the last lines of
each service's log, so every caller prints the same diagnosis.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from infra import groups
from infra.kafka_retry import KafkaCallFailed
from infra.settings import KafkaSettings
from orchestration.services import Services, ServiceSpec

# One group probe never runs longer than this, so a dead service is noticed between probes.
PROBE_WINDOW_S = 10.0
TAIL_LINES = 20


class NotReady(RuntimeError):
    """The services did not become ready. `cause` is the one-line reason, `tails` each
    service's state and log tail; str() holds both."""

    def __init__(self, cause: str, tails: str) -> None:
        super().__init__(f"{cause}\n{tails}" if tails else cause)
        self.cause = cause
        self.tails = tails


def start_all(
    services: Services, specs: Sequence[ServiceSpec], forget_others: bool = False
) -> None:
    """Start each spec (one already running is left as it is). With `forget_others`,
    stopped records of services not in `specs` (an older layout) are dropped first, so
    status does not report them."""
    if forget_others:
        for name in set(services.names()) - {s.name for s in specs}:
            services.forget(name)
    for spec in specs:
        services.start(spec)


def tails(services: Services, names: Sequence[str] | None = None, lines: int = TAIL_LINES) -> str:
    """`--- name (state) log` and the last `lines` of each service's log."""
    return "\n".join(
        f"--- {st.name} ({st.state}) {st.log}\n{services.tail(st.name, lines)}"
        for st in services.status()
        if names is None or st.name in names
    )


def wait_ready(
    services: Services,
    names: Sequence[str],
    kafka: KafkaSettings,
    wanted: Mapping[str, int],
    timeout_s: float,
    tail_lines: int = TAIL_LINES,
) -> None:
    """Until every group of `wanted` (group id -> members) is ready, while each service
    of `names` stays up. Raises NotReady with the tails of `names`."""
    deadline = time.monotonic() + timeout_s
    try:
        for group, members in wanted.items():
            last = ""
            while True:
                dead = [n for n in names if services.pid(n) is None]
                if dead:
                    raise NotReady(f"service(s) {dead} exited", tails(services, names, tail_lines))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"group {group!r} not ready within {timeout_s:.0f}s; last probe: {last}"
                    )
                try:
                    groups.wait_for_group(
                        kafka, group, members, timeout_s=min(left, PROBE_WINDOW_S)
                    )
                    break
                except TimeoutError as exc:  # this window's; the deadline decides
                    last = str(exc)
    except (TimeoutError, KafkaCallFailed) as exc:  # KafkaCallFailed: already one line
        raise NotReady(str(exc), tails(services, names, tail_lines)) from exc


def start_and_wait(
    services: Services,
    specs: Sequence[ServiceSpec],
    kafka: KafkaSettings,
    wanted: Mapping[str, int],
    timeout_s: float,
    *,
    forget_others: bool = False,
    tail_lines: int = TAIL_LINES,
    on_started: Callable[[], object] | None = None,
) -> None:
    """`start_all`, then `on_started` (e.g. publish scrape targets), then `wait_ready`
    on the started services."""
    start_all(services, specs, forget_others=forget_others)
    if on_started is not None:
        on_started()
    wait_ready(services, [s.name for s in specs], kafka, wanted, timeout_s, tail_lines)
