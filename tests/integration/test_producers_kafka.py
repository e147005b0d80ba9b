"""The image publisher against the real 3-broker cluster: exact accounting, broker loss.

Needs the `kafka_cluster` and `pipeline_settings` fixtures (tests/conftest.py). The topic
images.raw is shared with other tests, so every test reads from the end offsets
recorded before it published and keeps only records with its own ids.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from infra.groups import partition_end_offsets  # leader moves retried (kafka_retry)
from infra.kafka_clients import admin_config, consumer_config
from producers import Item, ProducerSettings, Summary, publish_items
from producers.samples import sample_items
from producers.synthetic import synthetic_items
from schemas import topics
from schemas.raw import parse_raw, sniff_content_type

pytestmark = pytest.mark.kafka


@pytest.fixture
def settings(kafka_cluster: Any, pipeline_settings: Any) -> ProducerSettings:
    kafka = pipeline_settings.kafka.model_copy(
        update={"bootstrap_servers": kafka_cluster.get_bootstrap_server()}
    )
    return ProducerSettings(kafka=kafka)


def _consumer(settings: ProducerSettings) -> Consumer:
    return Consumer(
        consumer_config(
            settings.kafka, f"test-producers-{uuid.uuid4().hex}", {"enable.auto.commit": False}
        )
    )


def end_offsets(settings: ProducerSettings, topic: str = topics.RAW) -> dict[int, int]:
    return partition_end_offsets(settings.kafka, topic, timeout_s=30)


def read_back(
    settings: ProducerSettings,
    start: dict[int, int],
    ids: set[str],
    topic: str = topics.RAW,
    timeout_s: float = 120.0,
) -> list[Any]:
    """Every record of `topic` between `start` and the current end whose key is in `ids`."""
    end = end_offsets(settings, topic)
    todo = {p: e for p, e in end.items() if e > start.get(p, 0)}
    c = _consumer(settings)
    found = []
    try:
        c.assign([TopicPartition(topic, p, start.get(p, 0)) for p in todo])
        deadline = time.monotonic() + timeout_s
        while todo and time.monotonic() < deadline:
            msg = c.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            if msg.key() is not None and msg.key().decode("utf-8", "replace") in ids:
                found.append(msg)
            if msg.offset() + 1 >= todo.get(msg.partition(), 0):
                todo.pop(msg.partition(), None)
        assert not todo, f"partitions not read to their end within {timeout_s}s: {todo}"
    finally:
        c.close()
    return found


def test_every_published_image_is_one_record_with_key_value_and_headers(settings) -> None:
    seed = uuid.uuid4().int & (2**63 - 1)
    tag = uuid.uuid4().hex[:12]
    items: list[Item] = [*synthetic_items(12, (224, 224), seed)]
    items += [*synthetic_items(3, (96, 64), seed + 1, fmt="PNG")]
    items += [*synthetic_items(2, (96, 64), seed + 2, fmt="WEBP")]
    # Sample variants and corrupt files (published as they are), skipping the fixed originals.
    items += list(sample_items(repeat=2, corrupt=4, seed=seed))[5:]
    items.append(
        Item(next(synthetic_items(1, (32, 32), seed + 3)).data, "supplied", image_id=f"it-{tag}")
    )
    start = end_offsets(settings)
    result = publish_items(items, settings)
    s = result.summary
    assert (s.delivered, s.failed, s.skipped) == (len(items), 0, 0), s.format_text()
    ids = {i for i, _ in result.delivered}
    assert len(ids) == len(items)
    assert f"it-{tag}" in ids

    records = read_back(settings, start, ids)
    assert len(records) == len(items), "each image exactly once"
    by_id = {r.image_id: r for r in result.records}
    by_data = {it.data: it for it in items}
    for msg in records:
        raw = parse_raw(msg.key(), msg.value(), msg.headers(), msg.timestamp()[1])
        sent = by_id[raw.image_id]
        item = by_data[raw.data]  # the value is the file's bytes, unchanged
        assert raw.image_id == (item.image_id or sent.image_id)
        assert raw.content_type == sniff_content_type(item.data)
        assert raw.source == item.source
        assert raw.produced_at_ms == sent.produced_at_ms
        assert (msg.partition(), msg.offset()) == (sent.partition, sent.offset)
        assert [k for k, _ in msg.headers()] == ["content-type", "source", "produced-at"]


def _isr_complete(settings: ProducerSettings, topic: str) -> bool:
    admin = AdminClient(admin_config(settings.kafka))
    md = admin.list_topics(topic, timeout=10)
    parts = md.topics[topic].partitions.values()
    return bool(parts) and all(len(p.isrs) == len(p.replicas) == 3 for p in parts)


def _wait(probe, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if probe():
                return
        except Exception as exc:  # the cluster is recovering: keep probing
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"{what} not reached within {timeout_s}s (last error: {last})")


def _restart(kafka_cluster: Any, name: str) -> None:
    """start_node, tolerating a concurrent restart of the same node by another test
    session on the shared cluster (its port is then taken by the new process); the
    caller's full-ISR probe proves the broker is back either way."""
    try:
        kafka_cluster.start_node(name)
    except Exception as exc:
        if "already in use" not in str(exc):
            raise


class _Watch:
    """A progress sink that lets the test see live counts."""

    def __init__(self) -> None:
        self.delivered = 0
        self.cond = threading.Condition()

    def update(self, done: int, summary: Summary) -> None:
        with self.cond:
            self.delivered = summary.delivered
            self.cond.notify_all()

    def close(self, summary: Summary) -> None:
        self.update(0, summary)


@pytest.mark.slow
def test_killing_a_broker_mid_publish_loses_nothing(kafka_cluster, settings) -> None:
    _wait(lambda: _isr_complete(settings, topics.RAW), 120, "full ISR before the test")
    n = 600
    items = list(synthetic_items(n, (224, 224), uuid.uuid4().int & (2**63 - 1)))
    paced = settings.model_copy(
        update={"producer": settings.producer.model_copy(update={"rate": 100.0})}
    )
    start = end_offsets(settings)
    watch = _Watch()
    out: dict[str, Any] = {}
    worker = threading.Thread(
        target=lambda: out.setdefault("result", publish_items(items, paced, progress=watch)),  # type: ignore[arg-type]
        daemon=True,
    )
    worker.start()
    killed = False
    try:
        with watch.cond:
            assert watch.cond.wait_for(lambda: watch.delivered >= 100, timeout=60), "no progress"
        kafka_cluster.kill_node("kafka-2")
        killed = True
        worker.join(timeout=300)
        assert not worker.is_alive(), "publish did not finish within 300 s"
    finally:
        if killed:
            _restart(kafka_cluster, "kafka-2")
            _wait(lambda: _isr_complete(settings, topics.RAW), 180, "kafka-2 back in every ISR")
    result = out["result"]
    s = result.summary
    assert (s.delivered, s.failed, s.skipped) == (n, 0, 0), s.format_text()
    ids = {i for i, _ in result.delivered}
    assert len(ids) == n
    records = read_back(settings, start, ids)
    assert sorted(r.key().decode() for r in records) == sorted(ids), "every image exactly once"


@pytest.mark.slow
def test_largest_accepted_image_fits_the_broker_and_one_byte_more_is_skipped(settings) -> None:
    """The producer's size check against the real topic limit, with incompressible bytes
    (lz4 may grow them): what it lets through the broker accepts; the rest it skips."""
    from producers.publisher import record_size
    from schemas.raw import raw_headers

    limit = settings.kafka.max_message_bytes
    source = f"size-{uuid.uuid4().hex[:8]}"
    key = "0" * 64
    headers = raw_headers("image/jpeg", source, 1_700_000_000_000)
    fits = limit - (record_size(key.encode(), b"", headers))
    rnd = np.random.default_rng().integers(0, 256, fits, dtype=np.uint8).tobytes()
    largest = b"\xff\xd8\xff" + rnd[3:]
    too_big = largest + b"\x00"
    start = end_offsets(settings)
    result = publish_items([Item(largest, source), Item(too_big, source)], settings)
    s = result.summary
    assert (s.delivered, s.failed, s.skipped) == (1, 0, 1), s.format_text()
    assert s.skips[0].reason == "too-large"
    records = read_back(settings, start, {result.delivered[0][0]})
    assert len(records) == 1 and records[0].value() == largest
