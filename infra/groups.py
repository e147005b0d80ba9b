"""Consumer-group probes: who is in a group, and how far behind it is.

Used as readiness probes (a service is ready when its group is Stable with its members
holding partitions) and for progress and lag displays.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from infra.kafka_clients import admin_config, consumer_config
from infra.settings import KafkaSettings


@dataclass(frozen=True)
class GroupState:
    group: str
    state: str
    members: int
    assigned_partitions: int


def describe_group(admin: AdminClient, group: str, timeout_s: float = 10.0) -> GroupState:
    fut = admin.describe_consumer_groups([group], request_timeout=timeout_s)[group]
    desc = fut.result(timeout=timeout_s)
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
    """Poll until `group` is Stable with at least `min_members` members holding partitions."""
    admin = AdminClient(admin_config(settings))
    deadline = time.monotonic() + timeout_s
    last: GroupState | None = None
    err: Exception | None = None
    while time.monotonic() < deadline:
        try:
            last = describe_group(admin, group)
            err = None
            if (
                last.state.upper() == "STABLE"
                and last.members >= min_members
                and last.assigned_partitions >= min_partitions
            ):
                return last
        except (KafkaException, TimeoutError) as exc:
            err = exc
        time.sleep(0.5)
    raise TimeoutError(
        f"consumer group {group!r} not ready within {timeout_s:.0f}s "
        f"(want {min_members} members; last seen {last}; last error {err})"
    )


def end_offsets(settings: KafkaSettings, topics: list[str], timeout_s: float = 10.0) -> dict[str, int]:
    """Sum of high watermarks per topic (records ever written, minus none deleted)."""
    from confluent_kafka import Consumer

    c = Consumer(consumer_config(settings, group_id="probe-watermarks", overrides={"enable.auto.commit": False}))
    try:
        out: dict[str, int] = {}
        md = c.list_topics(timeout=timeout_s)
        for t in topics:
            total = 0
            for p in md.topics[t].partitions:
                _, high = c.get_watermark_offsets(TopicPartition(t, p), timeout=timeout_s)
                total += high
            out[t] = total
        return out
    finally:
        c.close()


def group_lag(settings: KafkaSettings, group: str, topics: list[str], timeout_s: float = 10.0) -> dict[str, Any]:
    """Per-partition lag of `group` on `topics`: high watermark minus committed offset."""
    from confluent_kafka import Consumer

    admin = AdminClient(admin_config(settings))
    req = ConsumerGroupTopicPartitions(group)
    committed = admin.list_consumer_group_offsets([req], request_timeout=timeout_s)[group].result(timeout=timeout_s)
    done = {(tp.topic, tp.partition): tp.offset for tp in committed.topic_partitions}
    c = Consumer(consumer_config(settings, group_id="probe-lag", overrides={"enable.auto.commit": False}))
    try:
        md = c.list_topics(timeout=timeout_s)
        lag: dict[str, int] = {}
        for t in topics:
            for p in md.topics[t].partitions:
                _, high = c.get_watermark_offsets(TopicPartition(t, p), timeout=timeout_s)
                pos = done.get((t, p), -1)
                lag[f"{t}[{p}]"] = high - pos if pos >= 0 else high
        return {"group": group, "total": sum(lag.values()), "partitions": lag}
    finally:
        c.close()
