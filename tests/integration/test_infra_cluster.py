"""The local clusters as a user sees them: status, provisioned topics and keyspace."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from cluster_backends import REPO_ROOT, NativeBackend, TopicSpec
from confluent_kafka.admin import ConfigResource, ResourceType

from infra.local.topology import node_by_name
from infra.provision import (
    ProvisionError,
    cassandra_session,
    keyspace_replication,
    provision_keyspace,
    provision_topics,
    registry_topics,
)


@pytest.mark.cluster
def test_status_shows_six_nodes_up(kafka_cluster, cassandra_cluster, cluster_backend):
    if not isinstance(cluster_backend, NativeBackend):
        pytest.skip("`python -m infra status` describes the native clusters only")
    env = dict(os.environ, PIPELINE_RUN_DIR=str(cluster_backend.cluster.run_dir))
    out = subprocess.run(
        [sys.executable, "-m", "infra", "status", "--json"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    status = json.loads(out.stdout)
    names = {n["name"]: n for n in status["nodes"]}
    assert sorted(names) == sorted(kafka_cluster.node_names() + cassandra_cluster.node_names())
    assert {n["state"] for n in status["nodes"]} == {"up"}, status
    assert all(isinstance(n["pid"], int) for n in status["nodes"])
    # The topology's addresses (PIPELINE_INFRA_INSTANCE=1 moves them: 127.0.0.5, 20092).
    assert names["cassandra-2"]["address"] == node_by_name("cassandra-2").address
    assert names["kafka-1"]["address"] == node_by_name("kafka-1").address
    assert status["kafka"] == {"brokers": 3}
    assert status["cassandra"] == {"up_nodes": 3}


@pytest.mark.kafka
def test_provisioned_topics_have_rf3_full_isr_and_min_isr_2(
    kafka_cluster, pipeline_settings, unique_name
):
    specs = registry_topics(pipeline_settings)
    prefix = f"{unique_name}."
    report = provision_topics(pipeline_settings, specs, prefix=prefix)
    names = [prefix + s.name for s in specs]
    assert sorted(report.created_topics) == sorted(names)

    admin = kafka_cluster.admin()
    assert kafka_cluster.wait_full_isr(names) == {}
    md = admin.list_topics(timeout=10)
    for spec in specs:
        parts = md.topics[prefix + spec.name].partitions
        assert len(parts) == pipeline_settings.kafka.partitions
        assert {len(p.replicas) for p in parts.values()} == {3}
    resources = [ConfigResource(ResourceType.TOPIC, n) for n in names]
    for res, fut in admin.describe_configs(resources).items():
        configs = fut.result()
        assert configs["min.insync.replicas"].value == "2", res.name

    # Idempotent: a second run creates nothing.
    again = provision_topics(pipeline_settings, specs, prefix=prefix)
    assert again.created_topics == [] and sorted(again.existing_topics) == sorted(names)
    kafka_cluster.delete_topics(names)


@pytest.mark.kafka
def test_provision_refuses_a_topic_with_the_wrong_shape(
    kafka_cluster, pipeline_settings, unique_name
):
    provision_topics(pipeline_settings, [TopicSpec(unique_name, partitions=2)])
    with pytest.raises(ProvisionError, match=f"{unique_name} exists with 2 partitions"):
        provision_topics(pipeline_settings, [TopicSpec(unique_name, partitions=3)])
    with pytest.raises(ProvisionError, match="replication factor"):
        provision_topics(
            pipeline_settings, [TopicSpec(unique_name, partitions=2, replication_factor=2)]
        )
    kafka_cluster.delete_topics([unique_name])


@pytest.mark.kafka
def test_provision_updates_drifted_topic_configs(kafka_cluster, pipeline_settings, unique_name):
    provision_topics(pipeline_settings, [TopicSpec(unique_name, extra={"retention.ms": "3600000"})])
    report = provision_topics(
        pipeline_settings, [TopicSpec(unique_name, extra={"retention.ms": "7200000"})]
    )
    assert report.updated_configs == [unique_name]
    admin = kafka_cluster.admin()
    res = ConfigResource(ResourceType.TOPIC, unique_name)
    assert admin.describe_configs([res])[res].result()["retention.ms"].value == "7200000"
    kafka_cluster.delete_topics([unique_name])


@pytest.mark.cassandra
def test_keyspace_is_rf3_and_provisioning_is_idempotent(
    cassandra_cluster, pipeline_settings, unique_name
):
    from schemas import cql

    first = provision_keyspace(pipeline_settings, unique_name)
    assert first.keyspace_created
    second = provision_keyspace(pipeline_settings, unique_name)
    assert not second.keyspace_created

    session = cassandra_session(pipeline_settings)
    try:
        repl = keyspace_replication(session, unique_name)
        assert repl is not None
        assert repl["class"].endswith("NetworkTopologyStrategy")
        assert repl[cassandra_cluster.get_local_datacenter()] == "3"
        tables = {
            r.table_name
            for r in session.execute(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s",
                (unique_name,),
            )
        }
        assert set(cql.TABLES) <= tables
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {unique_name}", timeout=60)
        session.cluster.shutdown()


@pytest.mark.cassandra
def test_provision_refuses_a_keyspace_with_the_wrong_rf(
    cassandra_cluster, pipeline_settings, unique_name
):
    session = cassandra_session(pipeline_settings)
    try:
        session.execute(
            f"CREATE KEYSPACE {unique_name} WITH replication = "
            "{'class': 'NetworkTopologyStrategy', 'datacenter1': 1}",
            timeout=60,
        )
        with pytest.raises(ProvisionError, match=f"keyspace {unique_name} exists"):
            provision_keyspace(pipeline_settings, unique_name, table_ddl=[])
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {unique_name}", timeout=60)
        session.cluster.shutdown()
