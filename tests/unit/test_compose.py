"""docker-compose.yml agrees with the native clusters (infra/local), the settings and the
security volume that infra.compose_security fills (no Docker engine needed)."""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from infra import compose_security as cs
from infra.local import cassandra_node, kafka_node, probes
from infra.local.topology import nodes
from infra.security import KAFKA_BROKER
from infra.settings import PipelineSettings
from infra.supervisor import SupervisorSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
PLAINTEXT = ROOT / "docker-compose.plaintext.yml"
KAFKA = [f"kafka-{i}" for i in (1, 2, 3)]
CASSANDRA = [f"cassandra-{i}" for i in (1, 2, 3)]
APPS = ["producer", "stream-worker", "sink"]
CLIENTS = APPS + ["provision"]  # every service that talks to Kafka or Cassandra


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("security")
    cs.security_init(d, secure=True, chown=False)
    return d


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _props(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k] = v
    return out


# ---- the compose file ------------------------------------------------------------------


def test_three_kafka_and_three_cassandra_nodes(services):
    assert sorted(s for s in services if s.startswith("kafka-")) == KAFKA
    assert sorted(s for s in services if s.startswith("cassandra-")) == CASSANDRA
    for name in KAFKA:
        assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", services[name]["image"])
    for name in CASSANDRA:
        assert services[name]["image"].startswith("cassandra:5.0")
    for name in KAFKA + CASSANDRA:
        assert "healthcheck" in services[name], name


def test_security_init_runs_once_as_root_before_every_node(services):
    init = services["security-init"]
    assert init["command"] == ["python", "-m", "infra", "security-init", "--dir", "/security"]
    assert str(init["user"]).split(":")[0] == "0", "root, to hand files to each image's uid"
    assert "security:/security" in init["volumes"]
    assert _env(init)["PIPELINE_SECURITY__MODE"] == "secure"
    for name in KAFKA + ["cassandra-1"]:
        dep = services[name]["depends_on"]["security-init"]
        assert dep["condition"] == "service_completed_successfully", name


def test_nodes_get_their_files_read_only_from_the_volume(services):
    for name in KAFKA + CASSANDRA + CLIENTS:
        assert "security:/security:ro" in services[name]["volumes"], name


def test_kafka_nodes_format_with_scram_and_log_in_for_health(services):
    for node in nodes("kafka", 3):
        svc = services[node.name]
        assert svc["entrypoint"] == ["/bin/sh", f"/security/{node.name}/start.sh"]
        # Same host ports as the native brokers: host clients use one bootstrap string.
        assert f"127.0.0.1:{node.port}:{node.port}" in svc["ports"]
        test = svc["healthcheck"]["test"][1]
        assert "--command-config /security/$$(hostname)/client.properties" in test
        assert "KAFKA_HEAP_OPTS" in _env(svc)


def test_cassandra_nodes_run_the_rendered_yaml_with_the_native_flags(services):
    for name in CASSANDRA:
        svc = services[name]
        opts = _env(svc)["JVM_EXTRA_OPTS"].split()
        assert opts[0] == f"-Dcassandra.config=file:///security/{name}/cassandra.yaml"
        assert opts[1:] == cs.cassandra_system_properties(secure=True)
        assert "-Dcassandra.system_auth.default_rf=3" in opts
        assert "/security/$$(hostname)/probe.py" in svc["healthcheck"]["test"][1]
    assert services["cassandra-2"]["depends_on"]["cassandra-1"]["condition"] == "service_healthy"
    assert services["cassandra-3"]["depends_on"]["cassandra-2"]["condition"] == "service_healthy"
    assert "127.0.0.1:9042:9042" in services["cassandra-1"]["ports"]


def test_fixed_addresses_are_those_the_certificates_name(compose, services):
    subnets = [c["subnet"] for c in compose["networks"]["default"]["ipam"]["config"]]
    assert subnets == [cs.SUBNET]
    for node in cs.kafka_nodes() + cs.cassandra_nodes():
        ip = services[node.name]["networks"]["default"]["ipv4_address"]
        assert ip in cs.node_hosts(node), node.name
    for node in cs.cassandra_nodes():  # Cassandra listens on it
        assert services[node.name]["networks"]["default"]["ipv4_address"] == node.host


@pytest.mark.parametrize("name", CLIENTS)
def test_every_client_service_has_the_security_env(services, name):
    env = _env(services[name])
    for key, value in cs.app_environment().items():
        assert env.get(key) == value, f"{name}: {key}"


def test_provision_bootstraps_the_roles_then_provisions(services):
    cmd = services["provision"]["command"]
    assert cmd[:2] == ["sh", "-c"]
    steps = [s.strip() for s in cmd[2].split("&&")]
    assert steps == ["python -m infra bootstrap-roles", "python -m infra provision"]
    for dep in KAFKA + ["cassandra-3"]:
        assert services["provision"]["depends_on"][dep]["condition"] == "service_healthy"


def test_app_services_exist_and_workers_scale_to_two(services):
    for name in CLIENTS + ["security-init"]:
        assert name in services, name
        assert services[name].get("build") == "."
    assert services["stream-worker"]["deploy"]["replicas"] == 2
    assert (ROOT / "Dockerfile").exists()


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
        # `X | None` fields: the model is the non-None member.
        args = [a for a in getattr(model, "__args__", ()) if a is not type(None)]
        if args and hasattr(args[0], "model_fields"):
            model = args[0]


def _use_env(env: dict[str, str], monkeypatch) -> PipelineSettings:
    for key in list(os.environ):
        if key.startswith("PIPELINE_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return PipelineSettings()


@pytest.mark.parametrize("name", CLIENTS)
def test_app_env_names_are_pipeline_settings_fields(services, name, monkeypatch):
    env = _env(services[name])
    assert env, f"{name} has no environment"
    for key in env:
        assert key.startswith("PIPELINE_"), key
        _check_field(key.removeprefix("PIPELINE_").lower().split("__"))
    s = _use_env(env, monkeypatch)
    assert len(s.kafka.bootstrap_list()) == 3
    assert len(s.cassandra.contact_points) == 3
    assert s.kafka.replication_factor == 3 and s.kafka.min_insync_replicas == 2
    assert s.cassandra.replication_factor == 3
    assert set(s.kafka.bootstrap_list()) == {f"{k}:9092" for k in KAFKA}
    assert s.cassandra.contact_points == CASSANDRA
    # Secure: the service logs in with the volume's CA and secrets.
    assert s.security.secure
    assert s.kafka.auth is not None and s.cassandra.auth is not None
    assert s.kafka.auth.ca_file == Path("/security/app/certs/ca.crt")
    assert s.kafka.auth.password_file.parent == Path("/security/app/secrets/kafka")
    assert s.cassandra.auth.password_file.parent == Path("/security/app/secrets/cassandra")


def test_the_plaintext_variant_only_switches_the_mode(services, monkeypatch):
    override = yaml.safe_load(PLAINTEXT.read_text())["services"]
    assert set(override) == set(CLIENTS + ["security-init"])
    for name, svc in override.items():
        assert set(svc) == {"environment"}, name
        merged = {**_env(services[name]), **_env(svc)}
        assert merged["PIPELINE_SECURITY__MODE"] == "plaintext"
        if name in CLIENTS:
            assert not _use_env(merged, monkeypatch).security.secure


# ---- rendered node configs: the native ones but for host names and paths --------------

_PATH = re.compile(r"(file://)?/[^\s,;\"']+")
_HOST = re.compile(r"\b(kafka-\d|cassandra-\d|127\.0\.0\.\d|172\.30\.0\.\d+)(:\d+)?")


def _normal(value: object) -> object:
    """Host names, addresses, ports after them and absolute paths made anonymous."""
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, str):
        return _HOST.sub("<host>", _PATH.sub("<path>", value))
    return value


def test_kafka_properties_equal_the_native_ones_but_hosts_paths_and_external(tmp_path):
    native_cluster = nodes("kafka", 3)
    for node, native in zip(cs.kafka_nodes(), native_cluster, strict=True):
        security = kafka_node.KafkaSecurity(
            keystore=tmp_path / f"{native.name}.pem",
            truststore=tmp_path / "ca.crt",
            broker_user=KAFKA_BROKER,
            broker_password="pw-same",
            super_users=("broker", "admin"),
        )
        want = _props(
            kafka_node.render_server_properties(
                native, native_cluster, tmp_path / "data", kafka_node.KafkaTuning(), security
            )
        )
        got = _props(cs.render_kafka_properties(node, secure=True, broker_password="pw-same"))
        external = {k: v for k, v in got.items() if k.startswith("listener.name.external.")}
        # The EXTERNAL listener copies BROKER's SASL settings, and is the only addition.
        assert external == {
            k.replace(".broker.", ".external."): v
            for k, v in want.items()
            if k.startswith("listener.name.broker.")
        }
        port = cs.external_port(node)
        assert port == native.port
        assert got["listeners"].endswith(f",EXTERNAL://{node.host}:{port}")
        assert got["advertised.listeners"].endswith(f",EXTERNAL://127.0.0.1:{port}")
        assert got["listener.security.protocol.map"].endswith(",EXTERNAL:SASL_SSL")
        trimmed = {k: v for k, v in got.items() if k not in external}
        for key in ("listeners", "advertised.listeners", "listener.security.protocol.map"):
            trimmed[key] = trimmed[key].rsplit(",", 1)[0]
        assert _normal(trimmed) == _normal(want)
        assert got["log.dirs"] == str(cs.KAFKA_DATA)
        assert got["ssl.keystore.location"] == f"/security/{node.name}/{node.name}.pem"


def test_cassandra_yaml_equals_the_native_one_but_hosts_and_paths(tmp_path):
    native_cluster = nodes("cassandra", 3)
    for node, native in zip(cs.cassandra_nodes(), native_cluster, strict=True):
        security = cassandra_node.CassandraSecurity(
            keystore=tmp_path / f"{native.name}.pem", truststore=tmp_path / "ca.crt"
        )
        want = yaml.safe_load(
            cassandra_node.render_yaml(
                native, native_cluster, tmp_path, cassandra_node.CassandraTuning(), security
            )
        )
        got = yaml.safe_load(cs.render_cassandra_yaml(node, secure=True))
        assert _normal(got) == _normal(want)
        assert got["listen_address"] == got["rpc_address"] == node.host
        assert (
            got["client_encryption_options"]["keystore"] == f"/security/{node.name}/{node.name}.pem"
        )
        assert got["data_file_directories"] == ["/var/lib/cassandra/data"]


def test_plaintext_renders_are_the_native_plaintext_ones(tmp_path):
    native = nodes("kafka", 3)
    want = _props(
        kafka_node.render_server_properties(
            native[0], native, tmp_path, kafka_node.KafkaTuning(), None
        )
    )
    got = _props(cs.render_kafka_properties(cs.kafka_nodes()[0], secure=False))
    assert (
        got["listener.security.protocol.map"]
        == "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,EXTERNAL:PLAINTEXT"
    )
    assert "authorizer.class.name" not in got and "sasl.enabled.mechanisms" not in got
    assert set(got) == set(want)
    y = yaml.safe_load(cs.render_cassandra_yaml(cs.cassandra_nodes()[0], secure=False))
    assert y["authenticator"] == "AllowAllAuthenticator"
    assert "client_encryption_options" not in y


# ---- the volume --------------------------------------------------------------------------


def _snapshot(d: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(d.rglob("*")):
        st = p.lstat()
        data = p.read_bytes() if p.is_file() else b""
        out[str(p.relative_to(d))] = (data, st.st_mode, st.st_mtime_ns, st.st_uid)
    return out


def test_init_is_idempotent(tmp_path):
    first = cs.security_init(tmp_path, secure=True, chown=False)
    assert first
    before = _snapshot(tmp_path)
    assert cs.security_init(tmp_path, secure=True, chown=False) == []
    assert _snapshot(tmp_path) == before


def test_init_repairs_a_changed_config_and_keeps_the_secrets(tmp_path):
    cs.security_init(tmp_path, secure=True, chown=False)
    secret = (tmp_path / "app/secrets/kafka/producer").read_bytes()
    props = tmp_path / "kafka-2/server.properties"
    good = props.read_bytes()
    props.write_text("tampered\n")
    os.chmod(props, 0o644)
    assert cs.security_init(tmp_path, secure=True, chown=False) == [props]
    assert props.read_bytes() == good and props.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "app/secrets/kafka/producer").read_bytes() == secret


def test_every_file_is_private_and_each_container_gets_only_its_own(volume):
    for p in volume.rglob("*"):
        mode = p.stat().st_mode & 0o777
        assert mode == (0o700 if p.is_dir() else 0o600), p
    assert volume.stat().st_mode & 0o777 == 0o755
    for name in KAFKA:
        files = {str(p.relative_to(volume / name)) for p in (volume / name).rglob("*")}
        assert files == {
            f"{name}.pem",
            "ca.crt",
            "server.properties",
            "client.properties",
            "cluster.id",
            "start.sh",
            "scram",
            "scram/broker",
            "scram/admin",
        }
    for name in CASSANDRA:
        files = {p.name for p in (volume / name).iterdir()}
        assert files == {f"{name}.pem", "ca.crt", "cassandra.yaml", "probe.py"}
    app = {str(p.relative_to(volume / "app")) for p in (volume / "app").rglob("*") if p.is_file()}
    assert app == {
        "certs/ca.crt",
        *(f"secrets/kafka/{u}" for u in ("admin", "producer", "stream", "sink")),
        *(f"secrets/cassandra/{r}" for r in ("admin", "sink", "reader")),
    }
    # The CA key stays in the master copy only.
    assert [p.relative_to(volume) for p in volume.rglob("ca.key")] == [Path("certs/ca.key")]


def test_copies_equal_the_master_secrets_and_the_kafka_nodes_share_a_cluster_id(volume):
    for kind in ("kafka", "cassandra"):
        for p in (volume / "app/secrets" / kind).iterdir():
            assert p.read_bytes() == (volume / "secrets" / kind / p.name).read_bytes()
    for name in KAFKA:
        for user in ("broker", "admin"):
            got = (volume / name / "scram" / user).read_bytes()
            assert got == (volume / "secrets/kafka" / user).read_bytes()
    ids = {(volume / n / "cluster.id").read_text().strip() for n in KAFKA}
    assert len(ids) == 1 and kafka_node.valid_cluster_id(ids.pop())


def test_node_certificates_name_the_container_and_its_address(volume):
    ca = x509.load_pem_x509_certificate((volume / "certs/ca.crt").read_bytes())
    for node in cs.kafka_nodes() + cs.cassandra_nodes():
        cert = x509.load_pem_x509_certificate((volume / "certs" / f"{node.name}.crt").read_bytes())
        cert.verify_directly_issued_by(ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = {str(n.value) for n in san}
        assert set(cs.node_hosts(node)) <= names, node.name
        assert {node.name, "localhost", "127.0.0.1"} <= names
        pem = (volume / node.name / f"{node.name}.pem").read_bytes()
        assert pem == (volume / "certs" / f"{node.name}.pem").read_bytes()


def test_secrets_never_appear_in_a_command_or_the_compose_file(volume):
    passwords = [p.read_text().strip() for p in (volume / "secrets").rglob("*") if p.is_file()]
    assert passwords
    start = (volume / "kafka-1/start.sh").read_text()
    for pw in passwords:
        assert pw not in start
        assert pw not in COMPOSE.read_text()
    for user in ("broker", "admin"):
        assert f"name={user},password=$(cat /security/kafka-1/scram/{user})" in start
    assert "kafka-server-start.sh /security/kafka-1/server.properties" in start


def test_init_gives_each_container_its_uid_when_root(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("chown needs root (security-init runs as root in compose)")
    cs.security_init(tmp_path, secure=True, chown=True)
    want = {"kafka-1": cs.KAFKA_UID, "cassandra-3": cs.CASSANDRA_UID, "app": cs.APP_UID}
    for top, uid in want.items():
        for p in [tmp_path / top, *(tmp_path / top).rglob("*")]:
            assert p.stat().st_uid == uid, p
    assert (tmp_path / "secrets").stat().st_uid == 0
    before = _snapshot(tmp_path)
    assert cs.security_init(tmp_path, secure=True, chown=True) == []
    assert _snapshot(tmp_path) == before


def test_the_plaintext_volume_has_no_secrets(tmp_path):
    cs.security_init(tmp_path, secure=False, chown=False)
    assert not (tmp_path / "secrets").exists() and not (tmp_path / "certs").exists()
    assert "--add-scram" not in (tmp_path / "kafka-1/start.sh").read_text()
    assert (tmp_path / "kafka-1/client.properties").read_text() == "security.protocol=PLAINTEXT\n"


def test_the_cassandra_probe_sends_the_native_probes_options_frame(volume):
    assert struct.pack(">BBhBi", 0x04, 0, 1, 0x05, 0) == probes._CQL_OPTIONS
    text = (volume / "cassandra-2/probe.py").read_text()
    compile(text, "probe.py", "exec")
    assert 'struct.pack(">BBhBi", 0x04, 0, 1, 0x05, 0)' in text
    assert "TLS = True" in text and 'cafile="/security/cassandra-2/ca.crt"' in text
    assert 'server_hostname="cassandra-2"' in text


def test_the_cli_commands(tmp_path, monkeypatch, capsys):
    from infra.cli import main

    monkeypatch.setenv("PIPELINE_SECURITY__MODE", "secure")
    assert main(["security-init", "--dir", str(tmp_path / "v")]) == 0
    assert re.search(r"security-init \(secure\): [1-9]\d* files written", capsys.readouterr().out)
    assert main(["security-init", "--dir", str(tmp_path / "v")]) == 0
    assert "security-init (secure): 0 files written" in capsys.readouterr().out
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "certs").mkdir()
    (tmp_path / "bad" / "certs" / "ca.crt").write_text("not a certificate")
    assert main(["security-init", "--dir", str(tmp_path / "bad")]) == 1
    assert "cannot be read" in capsys.readouterr().err
    monkeypatch.setenv("PIPELINE_SECURITY__MODE", "plaintext")
    assert main(["bootstrap-roles"]) == 0
    assert "plaintext mode: no roles" in capsys.readouterr().out
