"""Fixtures of the end-to-end tests; the harness itself is in e2e_harness.py."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient
from e2e_harness import WORKERS, Pipeline, _env, settings_env

from consumers.settings import SinkSettings
from infra import cassandra_session
from infra.cassandra_roles import ADMIN, settings_as
from infra.kafka_clients import admin_config
from infra.provision import provision
from orchestration.services import Services, pipeline_specs
from schemas.topics import topic_registry
from stream_app.settings import StreamSettings


@pytest.fixture(scope="session")
def pipeline(
    kafka_cluster, cassandra_cluster, cluster_backend, tmp_path_factory
) -> Iterator[Pipeline]:
    run_dir = tmp_path_factory.mktemp("pipeline")
    run_id = f"e2e-{uuid.uuid4().hex[:8]}"
    env = settings_env(
        kafka_cluster.get_bootstrap_server(),
        list(cassandra_cluster.get_contact_points()),
        run_id,
        run_dir,
        security=cluster_backend.security(),
    )
    with _env(env):
        # The harness is the operator: it provisions, drops and restores as the Cassandra
        # admin role (the services log in as their own least-privilege roles) ...
        sink = settings_as(SinkSettings(), ADMIN)
        stream = StreamSettings()
    # ... and as the Kafka admin principal (the sink's may not create topics or look at
    # the stream group).
    sink.kafka = sink.kafka.model_copy(update={"auth": cluster_backend.settings().kafka.auth})
    # Secure mode: the services' principals get this pipeline's topics and groups too.
    provision(
        sink,
        topic_prefix=f"{run_id}.",
        keyspace=sink.cassandra.keyspace,
        stream_group=stream.stream.worker.app_id,
        sink_group=sink.sink.group_id,
    )
    services = Services(run_dir, env)
    cluster, session = cassandra_session.connect(sink.cassandra)
    p = Pipeline(
        services=services,
        env=env,
        kafka=sink.kafka,
        cassandra=sink.cassandra,
        session=session,
        keyspace=sink.cassandra.keyspace,
        sink_group=sink.sink.group_id,
        stream_group=stream.stream.worker.app_id,
        run_dir=run_dir,
        prefix=f"{run_id}.",
    )
    for spec in pipeline_specs(workers=WORKERS, web_port_base=_free_port_base(WORKERS + 1)):
        services.start(spec)
    try:
        p.wait_ready()
    except TimeoutError:
        services.stop_all()
        raise
    yield p
    services.stop_all()
    # Leave no private topics or keyspace behind: leftovers slow recovery after kills.
    with contextlib.suppress(Exception):
        session.execute(f"DROP KEYSPACE IF EXISTS {p.keyspace}", timeout=60)
    cluster.shutdown()
    with contextlib.suppress(Exception):
        admin = AdminClient(admin_config(sink.kafka))
        names = [p.topic(t.name) for t in topic_registry(sink.kafka.partitions)]
        for fut in admin.delete_topics(names, operation_timeout=30).values():
            fut.result(timeout=60)


@pytest.fixture
def healthy(pipeline: Pipeline, kafka_cluster, cassandra_cluster) -> Pipeline:
    """The pipeline with every service and node up before a test starts (after a fault test).
    A supervisor that is down (stopped by a test, or gave up) is started again; its
    children are the supervisor's to restart."""
    for name in kafka_cluster.node_names():
        kafka_cluster.start_node(name)
    for name in cassandra_cluster.node_names():
        cassandra_cluster.start_node(name)
    for st in pipeline.services.status():
        if st.state == "down":
            pipeline.services.restart(st.name)
    pipeline.wait_ready()
    return pipeline


def _free_port_base(n: int) -> int:
    """A base port b such that b..b+n-1 are free now (the supervised workers' web ports,
    then the sink's metrics port)."""
    import random
    import socket

    for _ in range(100):
        base = random.randrange(30000, 39000)
        try:
            for port in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range for the worker web endpoints")
