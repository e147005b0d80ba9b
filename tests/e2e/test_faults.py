"""Invariants 1-3 under SIGKILL: nothing produced is lost when a part dies mid-stream.

Each test streams 500 images, kills something once a fifth of them are stored, brings
it back, and then requires every id in exactly one of predictions or rejections, all
readable at LOCAL_QUORUM with one Cassandra node down. A killed worker or sink process
is brought back by its supervisor (infra/supervisor.py), not by the test.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from e2e_harness import WORKERS, assert_accounted

from orchestration.services import WORKERS_SERVICE
from producers.synthetic import synthetic_items
from schemas.image_id import content_id

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.slow]

N_IMAGES = 500
# Paced so the stream is still flowing when the fault hits.
PUBLISH_RATE = 60.0


def _stream_with_fault(
    pipeline,
    kafka_cluster,
    cassandra_cluster,
    seed: int,
    fault: Callable[[], None],
    recover: Callable[[], None],
) -> None:
    items = list(synthetic_items(N_IMAGES, (160, 120), seed=seed))
    thread, results = pipeline.publish_in_background(_paced(items, PUBLISH_RATE))
    # The ids are content hashes: known before delivery, so progress can be polled now.
    ids = [content_id(it.data) for it in items]
    pipeline.wait_accounted(ids, timeout_s=300, at_least=N_IMAGES // 5)
    fault()
    thread.join(timeout=600)
    assert not thread.is_alive(), "publisher did not finish"
    summary = results[0].summary
    assert summary.failed == 0, f"producer failures: {summary.failures[:3]}"
    assert {i for i, _ in results[0].delivered} == set(ids)
    recover()
    acc = pipeline.wait_accounted(ids)
    assert_accounted(acc, ids, pipeline.diagnose)
    # Invariant 3: every result readable at LOCAL_QUORUM with any one node down.
    victim = "cassandra-2"
    cassandra_cluster.kill_node(victim)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                acc2 = pipeline.account(ids)
                break
            except Exception:  # the driver notices the dead node on the first failures
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        assert_accounted(acc2, ids, pipeline.diagnose)
    finally:
        cassandra_cluster.start_node(victim)


def _paced(items, rate: float):
    t0 = time.monotonic()
    for i, it in enumerate(items):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield it


def test_kafka_broker_sigkill(healthy, kafka_cluster, cassandra_cluster):
    _stream_with_fault(
        healthy,
        kafka_cluster,
        cassandra_cluster,
        seed=101,
        fault=lambda: kafka_cluster.kill_node("kafka-2"),
        recover=lambda: kafka_cluster.start_node("kafka-2"),
    )


def test_cassandra_node_sigkill(healthy, kafka_cluster, cassandra_cluster):
    _stream_with_fault(
        healthy,
        kafka_cluster,
        cassandra_cluster,
        seed=102,
        fault=lambda: cassandra_cluster.kill_node("cassandra-3"),
        recover=lambda: cassandra_cluster.start_node("cassandra-3"),
    )


def _kill_supervised(
    pipeline, service: str, count: int
) -> tuple[Callable[[], None], Callable[[], None]]:
    """SIGKILL one process a supervisor runs; recovery is the supervisor's restart."""
    killed: list[int] = []
    supervisor: list[int | None] = []

    def fault() -> None:
        supervisor.append(pipeline.services.pid(service))
        killed.append(pipeline.services.kill_child(service, 0))

    def recover() -> None:
        pipeline.services.wait_child_replaced(service, killed[0], count, timeout_s=120)
        assert pipeline.services.pid(service) == supervisor[0], "the supervisor itself was replaced"
        pipeline.wait_ready()

    return fault, recover


def test_stream_worker_sigkill(healthy, kafka_cluster, cassandra_cluster):
    fault, recover = _kill_supervised(healthy, WORKERS_SERVICE, WORKERS)
    _stream_with_fault(
        healthy, kafka_cluster, cassandra_cluster, seed=103, fault=fault, recover=recover
    )


def test_sink_sigkill(healthy, kafka_cluster, cassandra_cluster):
    fault, recover = _kill_supervised(healthy, "sink-1", 1)
    _stream_with_fault(
        healthy, kafka_cluster, cassandra_cluster, seed=104, fault=fault, recover=recover
    )


def test_broker_and_cassandra_node_sigkill_together(healthy, kafka_cluster, cassandra_cluster):
    def fault() -> None:
        kafka_cluster.kill_node("kafka-3")
        cassandra_cluster.kill_node("cassandra-1")

    def recover() -> None:
        kafka_cluster.start_node("kafka-3")
        cassandra_cluster.start_node("cassandra-1")

    _stream_with_fault(
        healthy, kafka_cluster, cassandra_cluster, seed=105, fault=fault, recover=recover
    )
