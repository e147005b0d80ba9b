"""Node loss: the clusters keep serving with one node down and take it back.

Each test restores the node it took down, so later tests find a healthy cluster.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, Producer

from infra.kafka_clients import consumer_config, producer_config
from infra.provision import cassandra_session, provision_keyspace

MESSAGES = 60


@pytest.mark.kafka
@pytest.mark.slow
def test_kafka_survives_a_killed_broker_and_takes_it_back(
    kafka_cluster, pipeline_settings, unique_name
):
    topic = kafka_cluster.create_topic(unique_name, partitions=3)
    kafka = pipeline_settings.kafka.model_copy(
        update={"bootstrap_servers": kafka_cluster.get_bootstrap_server()}
    )

    kafka_cluster.kill_node("kafka-2")
    try:
        # The test backend's client settings: TLS + SCRAM as admin on a secure cluster.
        producer = Producer(
            producer_config(
                kafka,
                {"acks": "all", "enable.idempotence": True, "delivery.timeout.ms": 90_000},
            )
        )
        errors: list[str] = []
        delivered: list[int] = []

        def on_delivery(err, msg):
            if err is not None:
                errors.append(str(err))
            else:
                delivered.append(msg.partition())

        for i in range(MESSAGES):
            producer.produce(
                topic, key=str(i).encode(), value=f"v{i}".encode(), on_delivery=on_delivery
            )
            producer.poll(0)
        assert producer.flush(120) == 0
        assert errors == []
        assert len(delivered) == MESSAGES
    finally:
        kafka_cluster.start_node("kafka-2")

    short = kafka_cluster.wait_full_isr([topic], deadline_s=120)
    assert short == {}, f"kafka-2 did not rejoin the ISR: {short}"

    consumer = Consumer(
        consumer_config(
            kafka,
            f"{unique_name}-g",
            {"auto.offset.reset": "earliest", "enable.auto.commit": False},
        )
    )
    consumer.subscribe([topic])
    seen: set[bytes] = set()
    deadline = time.monotonic() + 60
    while len(seen) < MESSAGES and time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is not None and msg.error() is None:
            seen.add(msg.key())
    consumer.close()
    assert len(seen) == MESSAGES
    kafka_cluster.delete_topics([topic])


@pytest.mark.cassandra
@pytest.mark.slow
def test_cassandra_quorum_with_a_killed_node_and_rejoin(
    cassandra_cluster, pipeline_settings, unique_name
):
    from cassandra import ConsistencyLevel
    from cassandra.query import SimpleStatement

    ks = unique_name
    table = f"CREATE TABLE IF NOT EXISTS {ks}.kv (k text PRIMARY KEY, v int)"
    provision_keyspace(pipeline_settings, ks, table_ddl=[table])
    session = cassandra_session(pipeline_settings)
    write = SimpleStatement(
        f"INSERT INTO {ks}.kv (k, v) VALUES (%s, %s)", consistency_level=ConsistencyLevel.QUORUM
    )
    read = SimpleStatement(
        f"SELECT v FROM {ks}.kv WHERE k = %s", consistency_level=ConsistencyLevel.QUORUM
    )
    try:
        cassandra_cluster.kill_node("cassandra-3")
        try:
            for i in range(20):
                session.execute(write, (f"k{i}", i), timeout=30)
            for i in range(20):
                row = session.execute(read, (f"k{i}",), timeout=30).one()
                assert row is not None and row.v == i
        finally:
            cassandra_cluster.start_node("cassandra-3")

        # With the node back, reads at ALL (every replica answers) see every row. A new
        # session: the old one's driver backs off exponentially before reconnecting.
        fresh = cassandra_session(pipeline_settings)
        try:
            read_all = SimpleStatement(
                f"SELECT v FROM {ks}.kv WHERE k = %s", consistency_level=ConsistencyLevel.ALL
            )
            rows = [fresh.execute(read_all, (f"k{i}",), timeout=30).one() for i in range(20)]
        finally:
            fresh.cluster.shutdown()
        assert [r.v for r in rows] == list(range(20))
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=60)
        session.cluster.shutdown()
