"""Consumer-group probes: who is in a group, and how far behind it is.

Used as readiness probes (a service is ready when its group is Stable with its members
holding partitions) and for progress and lag displays. Every admin and metadata call here
goes through infra.kafka_retry: a leader move or coordinator change during a probe is
retried with backoff inside the probe's deadline, and what still fails ends as one
KafkaCallFailed (one line), never a bare KafkaException.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from infra.kafka_clients import admin_config, consumer_config
from infra.kafka_retry import DEFAULT_DEADLINE_S, Deadline, KafkaCallFailed, call, check_metadata
from infra.settings import KafkaSettings

# One request never waits longer than this, so a retry can go to the new leader.
MIN_REQUEST_S = 0.5
# The group id of the consumers that only ask metadata and watermarks (never joined).
WATERMARK_GROUP = "probe-watermarks"
# How long one admin client retries describing a group before a fresh one asks.
DESCRIBE_ATTEMPT_S = 10.0

# Probe clients are made per probe and closed after it. Kept for the process's life
# (tried once), they went stale when a broker restarted: a never-subscribed consumer does
# not refresh its partition leaders or its group coordinator, and kept asking the old ones
# (NOT_LEADER_FOR_PARTITION, NOT_COORDINATOR) for minutes, so readiness waits timed out.


def _admin(settings: KafkaSettings) -> AdminClient:
    return AdminClient(admin_config(settings))


def _new_consumer(settings: KafkaSettings, group: str) -> Consumer:
    return Consumer(
        consumer_config(settings, group_id=group, overrides={"enable.auto.commit": False})
    )


@dataclass(frozen=True)
class GroupState:
    group: str
    state: str
    members: int
    assigned_partitions: int


def _request_timeout(timeout_s: float, deadline: Deadline) -> float:
    return max(MIN_REQUEST_S, min(timeout_s, deadline.left()))


def describe_group(
    admin: AdminClient,
    group: str,
    timeout_s: float = 10.0,
    deadline: Deadline | float = DEFAULT_DEADLINE_S,
) -> GroupState:
    dl = deadline if isinstance(deadline, Deadline) else Deadline(deadline)

    def once() -> Any:
        t = _request_timeout(timeout_s, dl)
        return admin.describe_consumer_groups([group], request_timeout=t)[group].result(timeout=t)

    desc = call(once, f"describe group {group}", deadline=dl)
    assigned = sum(len(m.assignment.topic_partitions) for m in desc.members if m.assignment)
    state = getattr(desc.state, "name", str(desc.state))
    return GroupState(group, state, len(desc.members), assigned)


def wait_for_group(
    settings: KafkaSettings,
    group: str,
    min_members: int,
    timeout_s: float = 120.0,
    min_partitions: int = 1,
) -> GroupState:
    """Poll until `group` is Stable with at least `min_members` members holding partitions.

    Raises TimeoutError when it is not by `timeout_s` (also when the cluster kept failing
    retriably), KafkaCallFailed for an error that retrying cannot fix."""
    admin = _admin(settings)
    deadline = Deadline(timeout_s)
    last: GroupState | None = None
    err: Exception | None = None
    while not deadline.passed():
        try:
            # Retried for a while, then by a fresh client (below).
            attempt_s = max(MIN_REQUEST_S, min(DESCRIBE_ATTEMPT_S, deadline.left()))
            last = describe_group(admin, group, deadline=attempt_s)
            err = None
            if (
                last.state.upper() == "STABLE"
                and last.members >= min_members
                and last.assigned_partitions >= min_partitions
            ):
                return last
        except KafkaCallFailed as exc:
            if not exc.retriable:
                raise
            err = exc
            # A client that met a moved coordinator may keep asking the old one
            # (NOT_COORDINATOR for minutes after a broker SIGKILL): ask with a fresh one.
            admin = _admin(settings)
        time.sleep(min(0.5, deadline.left()))
    raise TimeoutError(
        f"consumer group {group!r} not ready within {timeout_s:.0f}s "
        f"(want {min_members} members; last seen {last}; last error {err})"
    )


def _high_watermarks(
    consumer: Consumer, topics: list[str], timeout_s: float, deadline: Deadline
) -> dict[tuple[str, int], int]:
    """High watermark of every partition of `topics`, each call retried within `deadline`."""

    def metadata() -> Any:
        md = consumer.list_topics(timeout=_request_timeout(timeout_s, deadline))
        check_metadata(md, topics)
        return md

    md = call(metadata, f"metadata of {', '.join(topics)}", deadline=deadline)
    out: dict[tuple[str, int], int] = {}
    for t in topics:
        for p in sorted(md.topics[t].partitions):
            tp = TopicPartition(t, p)

            def watermarks(tp: TopicPartition = tp) -> tuple[int, int]:
                return consumer.get_watermark_offsets(
                    tp, timeout=_request_timeout(timeout_s, deadline)
                )

            out[(t, p)] = call(watermarks, f"watermark offsets of {t}[{p}]", deadline=deadline)[1]
    return out


def end_offsets(
    settings: KafkaSettings,
    topics: list[str],
    timeout_s: float = 10.0,
    deadline_s: float = DEFAULT_DEADLINE_S,
) -> dict[str, int]:
    """Sum of high watermarks per topic (records ever written, minus none deleted)."""
    with Prober(settings) as probe:
        return probe.end_offsets(topics, timeout_s, deadline_s)


def partition_end_offsets(
    settings: KafkaSettings,
    topic: str,
    timeout_s: float = 10.0,
    deadline_s: float = DEFAULT_DEADLINE_S,
) -> dict[int, int]:
    """High watermark of each partition of `topic` (for read-backs: where new records start)."""
    with Prober(settings) as probe:
        highs = probe.high_watermarks([topic], timeout_s, Deadline(deadline_s))
    return {p: high for (_t, p), high in highs.items()}


def committed_offsets(
    settings: KafkaSettings,
    group: str,
    partitions: list[tuple[str, int]],
    timeout_s: float,
    deadline: Deadline,
) -> dict[tuple[str, int], int]:
    """The group's committed offset of each of `partitions` (negative: none yet), asked
    through a consumer, not AdminClient.list_consumer_group_offsets: librdkafka 2.16's
    admin client dereferences its absent consumer-group handle when that response
    carries a coordinator error (SIGSEGV in rd_kafka_handle_OffsetFetch -> rd_kafka_cgrp_op,
    seen right after new groups formed on a secure cluster)."""
    with Prober(settings) as probe:
        return probe.committed(group, partitions, timeout_s, deadline)


def _lag(
    group: str, highs: dict[tuple[str, int], int], done: dict[tuple[str, int], int]
) -> dict[str, Any]:
    lag: dict[str, int] = {}
    for (t, p), high in highs.items():
        pos = done.get((t, p), -1)
        lag[f"{t}[{p}]"] = high - pos if pos >= 0 else high
    return {"group": group, "total": sum(lag.values()), "partitions": lag}


def _sum_by_topic(topics: list[str], highs: dict[tuple[str, int], int]) -> dict[str, int]:
    out = dict.fromkeys(topics, 0)
    for (t, _p), high in highs.items():
        out[t] += high
    return out


def group_lag(
    settings: KafkaSettings,
    group: str,
    topics: list[str],
    timeout_s: float = 10.0,
    deadline_s: float = DEFAULT_DEADLINE_S,
) -> dict[str, Any]:
    """Per-partition lag of `group` on `topics`: high watermark minus committed offset."""
    with Prober(settings) as probe:
        return probe.group_lag(group, topics, timeout_s, deadline_s)


class Prober:
    """end_offsets and group_lag for a caller that asks every second or more (a bench
    polling for completion), with its clients kept for at most `max_age_s`.

    On a secure cluster each new client is a TLS handshake and a SCRAM login per broker
    it talks to: a bench asking through fresh clients opened ~16 per second, and that
    load was measured as the pipeline's. A call that fails closes its client, and no
    client outlives `max_age_s`, so a stale leader or coordinator (see above) costs one
    failed probe, not minutes."""

    def __init__(self, settings: KafkaSettings, max_age_s: float = 30.0) -> None:
        self.settings = settings
        self.max_age_s = max_age_s
        self._clients: dict[str, tuple[float, Consumer]] = {}

    @contextlib.contextmanager
    def _client(self, group: str) -> Iterator[Consumer]:
        born, c = self._clients.pop(group, (0.0, None))
        if c is not None and time.monotonic() - born > self.max_age_s:
            c.close()
            c = None
        if c is None:
            born = time.monotonic()
            c = _new_consumer(self.settings, group)
        try:
            yield c
        except BaseException:
            c.close()
            raise
        self._clients[group] = (born, c)

    def high_watermarks(
        self, topics: list[str], timeout_s: float, deadline: Deadline
    ) -> dict[tuple[str, int], int]:
        """Asked by a consumer that never joins a group."""
        with self._client(WATERMARK_GROUP) as c:
            return _high_watermarks(c, topics, timeout_s, deadline)

    def end_offsets(
        self, topics: list[str], timeout_s: float = 10.0, deadline_s: float = DEFAULT_DEADLINE_S
    ) -> dict[str, int]:
        return _sum_by_topic(topics, self.high_watermarks(topics, timeout_s, Deadline(deadline_s)))

    def group_lag(
        self,
        group: str,
        topics: list[str],
        timeout_s: float = 10.0,
        deadline_s: float = DEFAULT_DEADLINE_S,
    ) -> dict[str, Any]:
        deadline = Deadline(deadline_s)
        highs = self.high_watermarks(topics, timeout_s, deadline)
        return _lag(group, highs, self.committed(group, sorted(highs), timeout_s, deadline))

    def committed(
        self, group: str, partitions: list[tuple[str, int]], timeout_s: float, deadline: Deadline
    ) -> dict[tuple[str, int], int]:
        """See committed_offsets. A consumer with the group's id that never subscribes asks
        the group's committed offsets (OffsetFetch) without joining it."""
        wanted = [TopicPartition(t, p) for t, p in partitions]
        with self._client(group) as consumer:

            def once() -> Any:
                res = consumer.committed(wanted, timeout=_request_timeout(timeout_s, deadline))
                for tp in res:
                    if tp.error is not None:
                        raise KafkaException(tp.error)
                return res

            res = call(once, f"committed offsets of group {group}", deadline=deadline)
        return {(tp.topic, tp.partition): tp.offset for tp in res}

    def close(self) -> None:
        while self._clients:
            _group, (_born, c) = self._clients.popitem()
            c.close()

    def __enter__(self) -> Prober:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
