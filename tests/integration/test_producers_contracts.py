"""Contracts on the real clusters: docs/contracts.md's kcat command, and the CQL DDL."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from kcat_tool import kcat_login_env

from infra.groups import partition_end_offsets
from infra.kafka_clients import consumer_config
from infra.security import KAFKA_PRODUCER
from producers.synthetic import synthetic_items
from schemas import cql, topics
from schemas.raw import parse_raw

DOC = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"


def _kcat_block() -> str:
    text = DOC.read_text()
    m = re.search(
        r"<!-- kcat-publish.*?-->\s*```sh\n(.*?)```\s*<!-- /kcat-publish -->", text, re.DOTALL
    )
    assert m, "docs/contracts.md lost its kcat-publish block"
    return m.group(1)


def _consumer(kafka: Any) -> Consumer:
    return Consumer(
        consumer_config(kafka, f"test-contracts-{uuid.uuid4().hex}", {"enable.auto.commit": False})
    )


@pytest.mark.kafka
def test_kcat_command_from_the_docs_publishes_a_valid_raw_record(
    kafka_cluster, pipeline_settings, tmp_path
) -> None:
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.fail("kcat not installed: `apt-get install -y kafkacat` (make setup does it)")
    data = next(synthetic_items(1, (160, 120), uuid.uuid4().int & (2**63 - 1))).data
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(data)
    image_id = hashlib.sha256(data).hexdigest()
    bootstrap = kafka_cluster.get_bootstrap_server()
    kafka = pipeline_settings.kafka.model_copy(update={"bootstrap_servers": bootstrap})

    c = _consumer(kafka)
    try:
        start = partition_end_offsets(kafka, topics.RAW, timeout_s=30)  # kafka_retry
        before_ms = int(time.time() * 1000)
        # Secure mode: the same command, logged in as the producer (KCAT_CONFIG).
        login = kcat_login_env(pipeline_settings.security.kafka_auth(KAFKA_PRODUCER), tmp_path)
        env = {**os.environ, **login, "BOOTSTRAP": bootstrap, "ID": image_id, "FILE": str(photo)}
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", _kcat_block()],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        c.assign([TopicPartition(topics.RAW, p, o) for p, o in start.items()])
        deadline = time.monotonic() + 60
        found = None
        while found is None and time.monotonic() < deadline:
            msg = c.poll(1.0)
            if msg is not None and msg.error() is None and msg.key() == image_id.encode():
                found = msg
        assert found is not None, "kcat's record not seen on images.raw within 60 s"
    finally:
        c.close()
    raw = parse_raw(found.key(), found.value(), found.headers(), found.timestamp()[1])
    assert raw.image_id == image_id
    assert raw.data == data
    assert raw.content_type == "image/jpeg"
    assert raw.source == "kcat"
    assert before_ms - 1000 <= raw.produced_at_ms <= int(time.time() * 1000)


@pytest.mark.cassandra
def test_ddl_applies_on_the_real_cluster(cassandra_cluster, pipeline_settings) -> None:
    """Render, execute on the 3-node cluster, read the schema back, drop."""
    from infra.cassandra_session import connect

    ks = f"ddl_test_{uuid.uuid4().hex[:12]}"
    settings = pipeline_settings.cassandra
    cluster, session = connect(settings)
    try:
        for _ in range(2):  # twice: IF NOT EXISTS everywhere, so provisioning is idempotent
            session.execute(cql.keyspace_ddl(ks, 3, settings.local_datacenter), timeout=60)
            for stmt in cql.table_ddl(ks):
                session.execute(stmt, timeout=60)
        rows = session.execute(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (ks,)
        )
        assert sorted(r.table_name for r in rows) == sorted(cql.TABLES)
        repl = (
            session.execute(
                "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s", (ks,)
            )
            .one()
            .replication
        )
        assert repl[settings.local_datacenter] == "3"
        for table, stmt in zip(cql.TABLES, cql.table_ddl(ks), strict=True):
            cols = session.execute(
                "SELECT column_name FROM system_schema.columns WHERE keyspace_name = %s AND table_name = %s",
                (ks, table),
            )
            declared = set(re.findall(r"^\s+(\w+)\s+\w", stmt.split("(", 1)[1], re.MULTILINE)) - {
                "PRIMARY"
            }
            assert {r.column_name for r in cols} == declared, table
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=60)
        cluster.shutdown()
