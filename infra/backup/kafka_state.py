"""The Kafka side of backup and replay: end offsets, group offsets and members, offsets
for a time, topic retention, and moving a stopped group's offsets.

Every admin call goes through infra.kafka_retry (a leader or coordinator move is retried
within a deadline, then fails as one line). Offsets are {topic: {partition: offset}} with
string partition keys, as stored in the manifest's JSON.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, OffsetSpec, ResourceType

from infra.kafka_clients import admin_config
from infra.kafka_retry import Deadline, call, check_metadata
from infra.settings import KafkaSettings

Offsets = dict[str, dict[str, int]]
REQUEST_S = 10.0


def admin(settings: KafkaSettings) -> AdminClient:
    return AdminClient(admin_config(settings))


def _t(dl: Deadline) -> float:
    return max(0.5, min(REQUEST_S, dl.left()))


def partitions(adm: AdminClient, topics: list[str], dl: Deadline) -> list[TopicPartition]:
    def once() -> Any:
        md = adm.list_topics(timeout=_t(dl))
        check_metadata(md, topics)
        return md

    md = call(once, f"metadata of {', '.join(topics)}", deadline=dl)
    return [TopicPartition(t, p) for t in topics for p in sorted(md.topics[t].partitions)]


def _list_offsets(
    adm: AdminClient, spec: dict[TopicPartition, OffsetSpec], what: str, dl: Deadline
) -> Offsets:
    def once() -> Any:
        futs = adm.list_offsets(spec, request_timeout=_t(dl))
        return {tp: f.result(timeout=_t(dl)).offset for tp, f in futs.items()}

    res = call(once, what, deadline=dl)
    out: Offsets = {}
    for tp, off in res.items():
        out.setdefault(tp.topic, {})[str(tp.partition)] = int(off)
    return out


def end_offsets(adm: AdminClient, topics: list[str], dl: Deadline) -> Offsets:
    tps = partitions(adm, topics, dl)
    return _list_offsets(
        adm, {tp: OffsetSpec.latest() for tp in tps}, f"end offsets of {', '.join(topics)}", dl
    )


def offsets_for_time(adm: AdminClient, topics: list[str], at_ms: int, dl: Deadline) -> Offsets:
    """The first offset at or after `at_ms` per partition; the end offset where no record
    is that recent (the broker answers -1 there)."""
    tps = partitions(adm, topics, dl)
    at = _list_offsets(
        adm,
        {tp: OffsetSpec.for_timestamp(at_ms) for tp in tps},
        f"offsets at {at_ms} of {', '.join(topics)}",
        dl,
    )
    end = end_offsets(adm, topics, dl)
    return {
        t: {p: (o if o >= 0 else end[t][p]) for p, o in parts.items()} for t, parts in at.items()
    }


def committed(
    adm: AdminClient, kafka: KafkaSettings, group: str, topics: list[str], dl: Deadline
) -> Offsets:
    """The group's committed offsets on `topics` (partitions it never committed: absent).
    Asked through a consumer (infra.groups), not the admin client: see committed_offsets."""
    from infra.groups import committed_offsets

    tps = [(tp.topic, tp.partition) for tp in partitions(adm, topics, dl)]
    got = committed_offsets(kafka, group, tps, REQUEST_S, dl)
    out: Offsets = {}
    for (topic, partition), offset in sorted(got.items()):
        if offset >= 0:
            out.setdefault(topic, {})[str(partition)] = int(offset)
    return out


def members(adm: AdminClient, group: str, dl: Deadline) -> list[str]:
    """One line per active member of the group (client id @ host); empty when stopped."""

    def once() -> Any:
        return adm.describe_consumer_groups([group], request_timeout=_t(dl))[group].result(
            timeout=_t(dl)
        )

    desc = call(once, f"describe group {group}", deadline=dl)
    return [f"{m.client_id}@{m.host.lstrip('/')}" for m in desc.members]


def retention_ms(adm: AdminClient, topic: str, dl: Deadline) -> int:
    """The topic's retention.ms (-1: kept forever)."""
    res = ConfigResource(ResourceType.TOPIC, topic)

    def once() -> Any:
        return adm.describe_configs([res], request_timeout=_t(dl))[res].result(timeout=_t(dl))

    configs = call(once, f"configs of {topic}", deadline=dl)
    return int(configs["retention.ms"].value)


def alter_offsets(adm: AdminClient, group: str, offsets: Offsets, dl: Deadline) -> None:
    """Set a stopped group's offsets (Kafka refuses while the group has members)."""
    tps = [
        TopicPartition(t, int(p), o)
        for t, parts in sorted(offsets.items())
        for p, o in sorted(parts.items(), key=lambda kv: int(kv[0]))
    ]

    def once() -> Any:
        req = ConsumerGroupTopicPartitions(group, tps)
        res = adm.alter_consumer_group_offsets([req], request_timeout=_t(dl))[group].result(
            timeout=_t(dl)
        )
        for tp in res.topic_partitions:
            if tp.error is not None:
                raise KafkaException(tp.error)
        return res

    call(once, f"alter offsets of group {group}", deadline=dl)
