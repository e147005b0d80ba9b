"""Secure Cassandra, pure parts: node config, role statements, client settings. No server."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from infra import cassandra_roles as roles
from infra.certs import ensure_node_cert
from infra.local import cassandra_node
from infra.local.topology import node_by_name, nodes
from infra.security import SecuritySettings, ensure_secret, mask
from infra.settings import PipelineSettings


def _yaml(tmp_path: Path, security: cassandra_node.CassandraSecurity | None) -> dict:
    text = cassandra_node.render_yaml(
        node_by_name("cassandra-1"),
        nodes("cassandra", 3),
        tmp_path,
        cassandra_node.CassandraTuning(),
        security,
    )
    conf: dict = yaml.safe_load(text)
    return conf


def _jvm(tmp_path: Path, secure: bool, size: int = 3) -> list[str]:
    return cassandra_node.jvm_options(
        node_by_name("cassandra-1"),
        lib=tmp_path,
        conf_dir=tmp_path / "conf",
        storage=tmp_path / "d",
        logs_dir=tmp_path / "l",
        tmp_dir=tmp_path / "t",
        tuning=cassandra_node.CassandraTuning(),
        secure=secure,
        cluster_size=size,
    )


def test_secure_node_requires_tls_and_login_from_clients(tmp_path):
    sec = cassandra_node.CassandraSecurity(tmp_path / "node.pem", tmp_path / "ca.crt")
    conf = _yaml(tmp_path, sec)
    assert conf["authenticator"] == "PasswordAuthenticator"
    assert conf["authorizer"] == "CassandraAuthorizer"
    assert conf["role_manager"] == "CassandraRoleManager"
    client = conf["client_encryption_options"]
    assert client["enabled"] is True and client["optional"] is False
    assert client["ssl_context_factory"]["class_name"] == cassandra_node.PEM_FACTORY
    assert client["keystore"] == str(tmp_path / "node.pem")
    assert client["truststore"] == str(tmp_path / "ca.crt")
    assert "TLSv1.1" not in client["accepted_protocols"]


def test_secure_node_speaks_mutual_tls_to_its_peers(tmp_path):
    sec = cassandra_node.CassandraSecurity(tmp_path / "node.pem", tmp_path / "ca.crt")
    server = _yaml(tmp_path, sec)["server_encryption_options"]
    assert server["internode_encryption"] == "all"
    assert server["optional"] is False
    assert server["require_client_auth"] is True
    assert server["require_endpoint_verification"] is True
    assert server["keystore"] == str(tmp_path / "node.pem")


def test_plaintext_node_is_unchanged(tmp_path):
    conf = _yaml(tmp_path, None)
    assert conf["authenticator"] == "AllowAllAuthenticator"
    assert conf["authorizer"] == "AllowAllAuthorizer"
    assert "client_encryption_options" not in conf
    assert "server_encryption_options" not in conf
    assert not any("system_auth" in o for o in _jvm(tmp_path, secure=False))


@pytest.mark.parametrize(("size", "rf"), [(3, 3), (1, 1)])
def test_system_auth_replicated_on_every_node_from_first_boot(tmp_path, size, rf):
    assert f"-Dcassandra.system_auth.default_rf={rf}" in _jvm(tmp_path, True, size)


def test_node_pem_holds_key_then_chain_covering_instance_addresses(tmp_path):
    cert = ensure_node_cert(tmp_path, "cassandra-1")
    text = cert.pem.read_text()
    assert text.index("PRIVATE KEY") < text.index("BEGIN CERTIFICATE")
    assert cert.pem.stat().st_mode & 0o077 == 0
    from cryptography import x509

    leaf = x509.load_pem_x509_certificate(cert.cert.read_bytes())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    # instance 0 and instance 2 (the security engineers' second cluster)
    assert {"127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.7", "127.0.0.9"} <= ips


# ---- roles ----------------------------------------------------------------------------


def test_grants_give_sink_modify_and_reader_select_only():
    stmts = roles.grant_statements("vision", ["predictions", "rejections"])
    assert stmts == [
        "GRANT MODIFY ON TABLE vision.predictions TO sink",
        "GRANT SELECT ON TABLE vision.predictions TO reader",
        "GRANT MODIFY ON TABLE vision.rejections TO sink",
        "GRANT SELECT ON TABLE vision.rejections TO reader",
    ]
    assert not any(p in s for s in stmts for p in ("ALL", "CREATE", "DROP", "ALTER"))


def test_role_statements_quote_passwords():
    assert roles.create_role("admin", "a'b", superuser=True) == (
        "CREATE ROLE IF NOT EXISTS admin WITH PASSWORD = 'a''b' AND LOGIN = true "
        "AND SUPERUSER = true"
    )
    assert "SUPERUSER = false" in roles.create_role("sink", "x")
    assert roles.DISABLE_DEFAULT_SUPERUSER == (
        "ALTER ROLE cassandra WITH SUPERUSER = false AND LOGIN = false"
    )


def test_role_passwords_are_made_once_and_private(tmp_path):
    first = roles.role_passwords(tmp_path)
    assert set(first) == {"admin", "sink", "reader"}
    assert len(set(first.values())) == 3
    assert roles.role_passwords(tmp_path) == first
    for role in first:
        assert (tmp_path / "cassandra" / role).stat().st_mode & 0o077 == 0


# ---- client settings ------------------------------------------------------------------


def test_plaintext_settings_have_no_auth(monkeypatch):
    monkeypatch.delenv("PIPELINE_SECURITY__MODE", raising=False)
    s = PipelineSettings(security=SecuritySettings(mode="plaintext"))
    assert s.cassandra.auth is None


def test_secure_settings_log_in_as_the_services_role(tmp_path):
    sec = SecuritySettings(mode="secure", secrets_dir=tmp_path / "s", certs_dir=tmp_path / "c")

    class ReaderSettings(PipelineSettings):
        cassandra_role = roles.READER

    auth = ReaderSettings(security=sec).cassandra.auth
    assert auth is not None and auth.role == "reader"
    assert auth.password_file == tmp_path / "s" / "cassandra" / "reader"
    assert auth.ca_file == tmp_path / "c" / "ca.crt"
    admin = PipelineSettings(security=sec).cassandra.auth
    assert admin is not None and admin.role == "admin"


def test_explicit_username_and_password_win_and_are_masked(tmp_path):
    sec = SecuritySettings(mode="secure", secrets_dir=tmp_path)
    s = PipelineSettings(
        security=sec,
        cassandra={"username": "reader", "password": SecretStr("pw-from-env-123")},
    )
    assert s.cassandra.auth is not None
    assert s.cassandra.auth.role == "reader"
    assert s.cassandra.auth.secret() == "pw-from-env-123"
    assert "pw-from-env-123" not in repr(s.cassandra.auth)
    assert "pw-from-env-123" not in str(s.masked())
    assert "pw-from-env-123" not in mask("login failed for reader/pw-from-env-123")


def test_missing_password_file_is_a_clear_error(tmp_path):
    auth = roles.CassandraAuth("sink", None, tmp_path / "cassandra" / "sink", tmp_path / "ca")
    with pytest.raises(RuntimeError, match="does not exist: run `python -m infra up`"):
        auth.secret()
    ensure_secret(tmp_path, "cassandra", "sink")
    assert auth.secret()


def test_client_context_trusts_only_the_ca_and_checks_the_host(tmp_path):
    cert = ensure_node_cert(tmp_path, "cassandra-1")
    ctx = roles.client_ssl_context(cert.ca_cert)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    with pytest.raises(FileNotFoundError, match="PIPELINE_SECURITY__CA_FILE"):
        roles.client_ssl_context(tmp_path / "absent.crt")


def test_each_service_logs_in_with_least_privilege(tmp_path, monkeypatch):
    from consumers.api.settings import ApiSettings
    from consumers.settings import SinkSettings

    monkeypatch.setenv("PIPELINE_SECURITY__MODE", "secure")
    monkeypatch.setenv("PIPELINE_SECURITY__SECRETS_DIR", str(tmp_path))
    sink = SinkSettings()
    assert sink.cassandra.auth is not None and sink.cassandra.auth.role == "sink"
    # `consumers query` runs with the sink's settings but reads as the reader.
    query = roles.as_role(sink, roles.READER)
    assert query.auth.role == "reader"
    assert sink.cassandra.auth.role == "sink", "as_role copies, it does not change the service"
    api = ApiSettings()
    assert api.reader_cassandra().auth.role == "reader"
    assert PipelineSettings().cassandra.auth.role == "admin"  # provisioning, backup


def test_as_role_leaves_plaintext_settings_alone(monkeypatch):
    monkeypatch.delenv("PIPELINE_SECURITY__MODE", raising=False)
    s = PipelineSettings(security=SecuritySettings(mode="plaintext"))
    assert roles.as_role(s, roles.READER).auth is None


def test_a_cluster_keeps_the_mode_it_first_booted_in(tmp_path):
    from infra.local.cluster import LocalCluster
    from infra.local.errors import InfraError

    plain = LocalCluster(tmp_path, security=SecuritySettings(mode="plaintext"))
    state = {"cassandra": {"nodes": 3}}  # recorded before secure mode existed: plaintext
    plain.run.save_state(state)
    for n in nodes("cassandra", 3):
        plain.dirs(n).data.mkdir(parents=True)
        (plain.dirs(n).data / "commitlog").mkdir()
    plain._check_cassandra_mode()
    secure = LocalCluster(tmp_path, security=SecuritySettings(mode="secure"))
    with pytest.raises(InfraError, match="first started in plaintext mode.*MODE=secure"):
        secure._check_cassandra_mode()
    secure.run.save_state({"cassandra": {"nodes": 3, "security": "secure"}})
    secure._check_cassandra_mode()
    with pytest.raises(InfraError, match="down --wipe"):
        plain._check_cassandra_mode()


def test_driver_gets_tls_and_the_roles_login_only_in_secure_mode(tmp_path):
    from infra.cassandra_session import security_kwargs

    cert = ensure_node_cert(tmp_path / "certs", "cassandra-1")
    sec = SecuritySettings(mode="secure", secrets_dir=tmp_path, ca_file=cert.ca_cert)
    ensure_secret(tmp_path, "cassandra", "admin")
    kw = security_kwargs(PipelineSettings(security=sec).cassandra)
    assert isinstance(kw["ssl_context"], ssl.SSLContext)
    assert kw["ssl_context"].check_hostname
    assert kw["auth_provider"].username == "admin"
    plain = PipelineSettings(security=SecuritySettings(mode="plaintext"))
    assert security_kwargs(plain.cassandra) == {}


def test_refused_logins_being_retried_leave_no_driver_tracebacks(caplog):
    driver_log = logging.getLogger("cassandra.cluster")
    with caplog.at_level(logging.ERROR, logger="cassandra.cluster"):
        with roles.expected_login_failures():
            driver_log.error("Control connection failed to connect, shutting down Cluster:")
            driver_log.error("something else went wrong")
        driver_log.error("Control connection failed to connect, shutting down Cluster:")
    assert [r.getMessage()[:20] for r in caplog.records] == [
        "something else went ",
        "Control connection f",
    ]


def test_settings_as_gives_a_whole_copy_with_another_role(tmp_path, monkeypatch):
    from consumers.settings import SinkSettings

    monkeypatch.setenv("PIPELINE_SECURITY__MODE", "secure")
    monkeypatch.setenv("PIPELINE_SECURITY__SECRETS_DIR", str(tmp_path))
    sink = SinkSettings()
    admin = roles.settings_as(sink, roles.ADMIN)
    assert isinstance(admin, SinkSettings)
    assert admin.cassandra.auth.role == "admin" and sink.cassandra.auth.role == "sink"
    assert admin.sink == sink.sink and admin.kafka.auth == sink.kafka.auth
