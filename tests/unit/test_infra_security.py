"""infra.security: settings, secret files, the one masking function; infra.certs node
certificates; the Kafka secure-mode configs (broker properties, client configs, ACLs)."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import SecretStr

from infra import certs, kafka_acls, security
from infra.kafka_clients import admin_config, masked, producer_config
from infra.local import kafka_node
from infra.local.layout import resolve_run_dir
from infra.local.topology import kafka_node as kafka_spec
from infra.security import MASK, SecretMissingError, SecuritySettings, mask
from infra.settings import KafkaSettings, PipelineSettings
from schemas import topics


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- settings ---------------------------------------------------------------------------


def test_mode_comes_from_the_environment_and_defaults_to_the_one_constant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PIPELINE_SECURITY__MODE", raising=False)
    assert PipelineSettings().security.mode == security.DEFAULT_MODE == "secure"
    monkeypatch.setenv("PIPELINE_SECURITY__MODE", "secure")
    assert PipelineSettings().security.secure
    monkeypatch.setenv("PIPELINE_SECURITY__MODE", "open")
    with pytest.raises(ValueError, match="secure"):
        PipelineSettings()


def test_run_dir_rule_matches_the_cluster_layout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PIPELINE_RUN_DIR", str(tmp_path / "r"))
    assert security.run_dir() == resolve_run_dir()
    monkeypatch.delenv("PIPELINE_RUN_DIR")
    assert security.run_dir() == resolve_run_dir()


def test_secure_settings_give_each_service_its_own_principal_and_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from consumers.settings import SinkSettings
    from producers.settings import ProducerSettings

    monkeypatch.setenv("PIPELINE_SECURITY__MODE", "secure")
    monkeypatch.setenv("PIPELINE_RUN_DIR", str(tmp_path))
    prod = ProducerSettings().kafka.auth
    assert prod is not None and prod.principal == "producer"
    assert prod.password_file == tmp_path / "secrets" / "kafka" / "producer"
    assert prod.ca_file == tmp_path / "certs" / "ca.crt"
    sink = SinkSettings().kafka.auth
    assert sink is not None and sink.principal == "sink"
    monkeypatch.setenv("PIPELINE_SECURITY__CA_FILE", str(tmp_path / "own-ca.pem"))
    monkeypatch.setenv("PIPELINE_SECURITY__KAFKA_PRINCIPAL", "admin")
    own = ProducerSettings().kafka.auth
    assert own is not None and own.principal == "admin"
    assert own.ca_file == tmp_path / "own-ca.pem"


def test_plaintext_settings_have_no_kafka_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_SECURITY__MODE", "plaintext")
    assert PipelineSettings().kafka.auth is None


# -- secrets ----------------------------------------------------------------------------


def test_ensure_secret_makes_a_private_file_once(tmp_path: Path) -> None:
    first = security.ensure_secret(tmp_path / "secrets", "kafka", "stream")
    path = tmp_path / "secrets" / "kafka" / "stream"
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    assert _mode(path.parent.parent) == 0o700  # the secrets dir itself
    assert len(first) >= 32
    assert security.ensure_secret(tmp_path / "secrets", "kafka", "stream") == first
    assert security.read_secret(tmp_path / "secrets", "kafka", "stream") == first
    assert security.ensure_secret(tmp_path / "secrets", "kafka", "sink") != first


def test_a_missing_secret_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SecretMissingError, match=r"kafka/admin does not exist.*infra up"):
        security.read_secret(tmp_path, "kafka", "admin")
    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka" / "admin").write_text("\n")
    with pytest.raises(SecretMissingError, match="empty"):
        security.read_secret(tmp_path, "kafka", "admin")


@pytest.mark.parametrize("name", ["../etc", "a/b", "", "x" * 65])
def test_principal_names_cannot_escape_the_secrets_dir(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="bad principal name"):
        security.ensure_secret(tmp_path, "kafka", name)


# -- masking ----------------------------------------------------------------------------


def test_mask_hides_secret_keys_secretstr_and_known_secrets_in_text(tmp_path: Path) -> None:
    pw = security.ensure_secret(tmp_path, "kafka", "producer")
    out = mask(
        {
            "sasl.password": "hunter22",
            "ssl.key.pem": "-----BEGIN PRIVATE KEY-----",
            "token": SecretStr("abc"),
            "nested": {"api_secret": "s3cr3t", "plain": f"login failed for {pw}"},
            "list": [SecretStr("zzz"), "ok"],
            "bootstrap.servers": "127.0.0.1:19092",
        }
    )
    assert out == {
        "sasl.password": MASK,
        "ssl.key.pem": MASK,
        "token": MASK,
        "nested": {"api_secret": MASK, "plain": f"login failed for {MASK}"},
        "list": [MASK, "ok"],
        "bootstrap.servers": "127.0.0.1:19092",
    }
    assert mask(RuntimeError(f"bad {pw}")) == f"bad {MASK}"


def test_settings_dump_and_client_config_log_hide_every_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PIPELINE_SECURITY__MODE", "secure")
    monkeypatch.setenv("PIPELINE_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("PIPELINE_KAFKA__CLIENT_CONFIG", '{"ssl.key.password": "kp-123456"}')
    monkeypatch.setenv("PIPELINE_SECURITY__KAFKA_PASSWORD", "env-pw-123456")
    s = PipelineSettings()
    dumped = repr(s.masked())
    assert "kp-123456" not in dumped and "env-pw-123456" not in dumped
    conf = admin_config(s.kafka)
    assert conf["sasl.password"] == "env-pw-123456"  # the env password wins over the file
    assert "env-pw-123456" not in repr(masked(conf))
    assert "env-pw-123456" not in repr(s.kafka.auth)


# -- client configs ---------------------------------------------------------------------


def test_secure_clients_speak_sasl_ssl_with_the_principal_file(tmp_path: Path) -> None:
    pw = security.ensure_secret(tmp_path / "secrets", "kafka", "producer")
    sec = SecuritySettings(
        mode="secure", certs_dir=tmp_path / "certs", secrets_dir=tmp_path / "secrets"
    )
    kafka = KafkaSettings(auth=sec.kafka_auth("producer"))
    conf = producer_config(kafka)
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["sasl.username"] == "producer" and conf["sasl.password"] == pw
    assert conf["ssl.ca.location"] == str(tmp_path / "certs" / "ca.crt")
    assert conf["acks"] == "all"  # the durability defaults stay


def test_plaintext_clients_carry_no_security_settings() -> None:
    conf = producer_config(KafkaSettings())
    assert not any(k.startswith(("sasl.", "ssl.", "security.")) for k in conf)


# -- certificates -----------------------------------------------------------------------


def test_node_certificate_serves_every_local_address_as_server_and_client(
    tmp_path: Path,
) -> None:
    node = certs.ensure_node_cert(tmp_path, "kafka-1")
    cert = x509.load_pem_x509_certificate(node.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert {f"127.0.0.{i}" for i in range(1, 10)} <= ips
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kafka-1"
    ca = x509.load_pem_x509_certificate(node.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    pem = node.pem.read_text()
    assert pem.index("PRIVATE KEY") < pem.index("CERTIFICATE")
    assert pem.count("BEGIN CERTIFICATE") == 2  # leaf + CA chain
    for f in (node.pem, node.cert, node.key, node.ca_cert, tmp_path / certs.CA_KEY):
        assert _mode(f) == 0o600


def test_node_certificate_is_made_once_and_reissued_for_a_new_ca(tmp_path: Path) -> None:
    first = certs.ensure_node_cert(tmp_path, "cassandra-2").pem.read_bytes()
    assert certs.ensure_node_cert(tmp_path, "cassandra-2").pem.read_bytes() == first
    (tmp_path / certs.CA_CERT).unlink()
    (tmp_path / certs.CA_KEY).unlink()
    assert certs.ensure_node_cert(tmp_path, "cassandra-2").pem.read_bytes() != first


def test_node_hosts_cover_three_instances() -> None:
    hosts = certs.node_hosts()
    assert hosts[0] == "localhost"
    assert [h for h in hosts[1:]] == [
        str(ipaddress.ip_address(f"127.0.0.{i}")) for i in range(1, 10)
    ]


def test_the_read_api_server_certificate_is_unchanged(tmp_path: Path) -> None:
    sc = certs.ensure_server_cert(tmp_path, "api", ["127.0.0.1", "localhost"])
    cert = x509.load_pem_x509_certificate(sc.cert.read_bytes())
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "127.0.0.1"


# -- broker configuration ---------------------------------------------------------------


def _props(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k] = v
    return out


def _cluster() -> list:
    return [kafka_spec(i) for i in (1, 2, 3)]


def test_plaintext_broker_properties_are_unchanged(tmp_path: Path) -> None:
    p = _props(
        kafka_node.render_server_properties(
            _cluster()[0], _cluster(), tmp_path, kafka_node.KafkaTuning()
        )
    )
    assert p["listener.security.protocol.map"] == "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    assert "authorizer.class.name" not in p and "super.users" not in p


def test_secure_broker_properties(tmp_path: Path) -> None:
    sec = kafka_node.KafkaSecurity(
        keystore=tmp_path / "kafka-1.pem",
        truststore=tmp_path / "ca.crt",
        broker_user="broker",
        broker_password="pw-broker-123",
        super_users=("broker", "admin"),
    )
    node = _cluster()[0]
    p = _props(
        kafka_node.render_server_properties(
            node, _cluster(), tmp_path, kafka_node.KafkaTuning(), sec
        )
    )
    assert p["listener.security.protocol.map"] == "BROKER:SASL_SSL,CONTROLLER:SSL"
    assert (
        p["listeners"]
        == f"BROKER://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.ports['controller']}"
    )
    assert p["inter.broker.listener.name"] == "BROKER"
    assert p["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    assert p["listener.name.controller.ssl.client.auth"] == "required"
    assert p["ssl.keystore.type"] == "PEM" and p["ssl.truststore.type"] == "PEM"
    assert p["authorizer.class.name"].endswith("StandardAuthorizer")
    assert p["allow.everyone.if.no.acl.found"] == "false"
    assert p["super.users"].split(";") == [
        "User:kafka-1",
        "User:kafka-2",
        "User:kafka-3",
        "User:broker",
        "User:admin",
    ]
    jaas = p["listener.name.broker.scram-sha-512.sasl.jaas.config"]
    assert 'username="broker"' in jaas and 'password="pw-broker-123"' in jaas
    assert "pw-broker-123" not in repr(sec)


def test_format_bootstraps_scram_users(tmp_path: Path) -> None:
    cmd = kafka_node.format_command(
        Path("java"),
        tmp_path,
        tmp_path / "p",
        tmp_path / "l",
        tmp_path,
        "cid",
        {"broker": "b-pw", "admin": "a-pw"},
    )
    assert cmd[-4:] == [
        "--add-scram",
        "SCRAM-SHA-512=[name=broker,password=b-pw]",
        "--add-scram",
        "SCRAM-SHA-512=[name=admin,password=a-pw]",
    ]


# -- ACLs -------------------------------------------------------------------------------


def _allowed(grants: list[kafka_acls.Grant], principal: str) -> set[tuple[str, str, str]]:
    return {
        (g.resource, g.name, op) for g in grants if g.principal == principal for op in g.operations
    }


def test_the_producer_may_only_write_the_raw_topic() -> None:
    assert _allowed(kafka_acls.pipeline_grants("p."), "producer") == {
        ("topic", "p." + topics.RAW, "WRITE"),
        ("topic", "p." + topics.RAW, "DESCRIBE"),
    }


def test_stream_and_sink_grants_follow_the_topics_and_groups() -> None:
    grants = kafka_acls.pipeline_grants("", "my-app", "my-sink")
    stream = _allowed(grants, "stream")
    for stage in topics.STAGES:
        assert ("topic", stage.source, "READ") in stream
        assert ("topic", stage.sink, "WRITE") in stream
        assert ("topic", stage.dlq, "WRITE") in stream
    assert ("group", "my-app", "READ") in stream
    assert ("topic", topics.PREDICTIONS, "READ") not in stream
    assert any(g.prefixed and g.name == "my-app-" for g in grants if g.principal == "stream")
    sink = _allowed(grants, "sink")
    assert ("topic", topics.PREDICTIONS, "READ") in sink
    assert ("topic", topics.SINK_DLQ, "WRITE") in sink
    assert ("group", "my-sink", "READ") in sink
    assert not any(op == "WRITE" and name != topics.SINK_DLQ for _, name, op in sink)


def test_acl_bindings_have_no_duplicates() -> None:
    bindings = kafka_acls.acl_bindings(kafka_acls.pipeline_grants())
    keys = [str(b) for b in bindings]
    assert len(keys) == len(set(keys))


def test_a_kafka_section_with_resolved_auth_keeps_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The test backend resolves auth for the cluster it found; a service's settings
    built from that section (environment plaintext) must not drop it."""
    from producers.settings import ProducerSettings

    monkeypatch.delenv("PIPELINE_SECURITY__MODE", raising=False)
    sec = SecuritySettings(mode="secure", certs_dir=tmp_path, secrets_dir=tmp_path)
    found = PipelineSettings(security=sec).kafka
    assert found.auth is not None and found.auth.principal == "admin"
    kept = ProducerSettings(kafka=found.model_copy()).kafka.auth
    assert kept is not None and kept.principal == "admin"


def test_a_run_dir_keeps_the_mode_its_kafka_was_formatted_in(tmp_path: Path) -> None:
    from infra.local import InfraError, LocalCluster
    from infra.local.layout import RunDir

    RunDir(tmp_path).save_state({"kafka": {"nodes": 3, "cluster_id": "x"}})  # before modes
    (tmp_path / "kafka-1" / "data").mkdir(parents=True)
    (tmp_path / "kafka-1" / "data" / "meta.properties").write_text("x")
    secure = SecuritySettings(mode="secure")
    with pytest.raises(InfraError, match="formatted in plaintext mode.*MODE=secure is asked"):
        LocalCluster(tmp_path, security=secure)._check_kafka_mode()
    LocalCluster(tmp_path, security=SecuritySettings(mode="plaintext"))._check_kafka_mode()
    RunDir(tmp_path).save_state({"kafka": {"nodes": 3, "security": "secure"}})
    LocalCluster(tmp_path, security=secure)._check_kafka_mode()


def _own_rsa_ca(d: Path) -> bytes:
    import datetime as dt

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "operator CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    d.mkdir(parents=True, exist_ok=True)
    (d / certs.CA_CERT).write_bytes(pem)
    (d / certs.CA_KEY).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pem


def test_an_operators_own_rsa_ca_issues_the_node_certificates(tmp_path: Path) -> None:
    ca_pem = _own_rsa_ca(tmp_path)
    node = certs.ensure_node_cert(tmp_path, "kafka-2")
    assert (tmp_path / certs.CA_CERT).read_bytes() == ca_pem  # kept, not replaced
    cert = x509.load_pem_x509_certificate(node.cert.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))


def test_an_unreadable_ca_is_an_error_never_replaced(tmp_path: Path) -> None:
    (tmp_path / certs.CA_CERT).write_text("not a certificate")
    (tmp_path / certs.CA_KEY).write_text("not a key")
    with pytest.raises(RuntimeError, match="cannot be read"):
        certs.ensure_node_cert(tmp_path, "kafka-1")
    assert (tmp_path / certs.CA_CERT).read_text() == "not a certificate"
