"""docker-compose.yml agrees with the native clusters (infra/local) and the settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from infra.local.topology import nodes
from infra.settings import PipelineSettings
from infra.supervisor import SupervisorSettings

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
KAFKA = [f"kafka-{i}" for i in (1, 2, 3)]
CASSANDRA = [f"cassandra-{i}" for i in (1, 2, 3)]
APPS = ["producer", "stream-worker", "sink"]


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_three_kafka_and_three_cassandra_nodes(services):
    assert sorted(s for s in services if s.startswith("kafka-")) == KAFKA
    assert sorted(s for s in services if s.startswith("cassandra-")) == CASSANDRA
    for name in KAFKA:
        assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", services[name]["image"])
    for name in CASSANDRA:
        assert services[name]["image"].startswith("cassandra:5.0")
    for name in KAFKA + CASSANDRA:
        assert "healthcheck" in services[name], name


def test_kafka_is_a_kraft_quorum_with_rf3_and_min_isr2(services):
    cluster_ids = set()
    for i, name in enumerate(KAFKA, start=1):
        env = _env(services[name])
        cluster_ids.add(env["CLUSTER_ID"])
        assert env["KAFKA_NODE_ID"] == str(i)
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert len(env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")) == 3
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"
        assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        assert "0.0.0.0" not in env["KAFKA_ADVERTISED_LISTENERS"]
    assert len(cluster_ids) == 1


def test_kafka_host_ports_match_the_native_brokers(services):
    """Tests on the host use the same bootstrap string with either backend."""
    for node in nodes("kafka", 3):
        svc = services[node.name]
        assert f"127.0.0.1:{node.port}:{node.port}" in svc["ports"]
        assert f"EXTERNAL://127.0.0.1:{node.port}" in _env(svc)["KAFKA_ADVERTISED_LISTENERS"]


def test_cassandra_nodes_start_seed_first_in_datacenter1(services):
    dc = PipelineSettings().cassandra.local_datacenter
    for name in CASSANDRA:
        env = _env(services[name])
        assert env["CASSANDRA_DC"] == dc
        assert env["CASSANDRA_SEEDS"] == "cassandra-1"
    assert services["cassandra-2"]["depends_on"]["cassandra-1"]["condition"] == "service_healthy"
    assert services["cassandra-3"]["depends_on"]["cassandra-2"]["condition"] == "service_healthy"
    assert "127.0.0.1:9042:9042" in services["cassandra-1"]["ports"]


def test_app_services_exist_and_workers_scale_to_two(services):
    for name in APPS + ["provision"]:
        assert name in services, name
        assert services[name].get("build") == "."
    assert services["stream-worker"]["deploy"]["replicas"] == 2
    assert Path(COMPOSE.parent / "Dockerfile").exists()


def test_workers_and_sink_run_under_the_supervisor(services):
    """Supervision everywhere: Docker runs the same restart policy as `pipeline up`."""
    worker = services["stream-worker"]["command"]
    assert worker[:4] == ["python", "-m", "stream_app", "workers"]
    sink = services["sink"]["command"]
    assert sink[:3] == ["python", "-m", "infra.supervisor"]
    assert sink[sink.index("--") + 1 :] == ["python", "-m", "consumers", "sink"]
    for name in ("stream-worker", "sink"):
        svc = services[name]
        assert svc["init"] is True, "tini as pid 1 forwards signals and reaps"
        # The supervisor's give-up is final; Docker must not hide a crash loop.
        assert svc["restart"] == "no"
        grace = int(str(svc["stop_grace_period"]).rstrip("s"))
        assert grace > SupervisorSettings().grace_s


def _check_field(path: list[str]) -> None:
    model = PipelineSettings
    for part in path:
        fields = model.model_fields
        assert part in fields, f"{'__'.join(path)}: no field {part!r} on {model.__name__}"
        model = fields[part].annotation  # type: ignore[assignment]


@pytest.mark.parametrize("name", APPS + ["provision"])
def test_app_env_names_are_pipeline_settings_fields(services, name, monkeypatch):
    env = _env(services[name])
    assert env, f"{name} has no environment"
    for key in env:
        assert key.startswith("PIPELINE_"), key
        _check_field(key.removeprefix("PIPELINE_").lower().split("__"))
    for key in list(__import__("os").environ):
        if key.startswith("PIPELINE_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = PipelineSettings()
    assert len(s.kafka.bootstrap_list()) == 3
    assert len(s.cassandra.contact_points) == 3
    assert s.kafka.replication_factor == 3 and s.kafka.min_insync_replicas == 2
    assert s.cassandra.replication_factor == 3
    assert set(s.kafka.bootstrap_list()) == {f"{k}:9092" for k in KAFKA}
    assert s.cassandra.contact_points == CASSANDRA
