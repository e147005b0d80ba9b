"""A secure Cassandra cluster refuses whoever it should, with the message the user sees,
and the data stays as it was; the reader role works from a third-party client (cqlsh).

Runs against the cluster the test backend finds; skipped when that cluster is plaintext
(PIPELINE_SECURITY__MODE is not `secure`). Each test works in a keyspace of its module,
provisioned (and granted) like the pipeline's own.
"""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra import cassandra_roles as roles
from infra.cassandra_session import connect
from infra.certs import ensure_ca
from infra.provision import provision_keyspace
from infra.settings import PipelineSettings

pytestmark = [pytest.mark.cassandra]

SEEDED = 3
CQLSH = Path(os.environ.get("CQLSH", Path(__file__).resolve().parents[2] / ".venv/bin/cqlsh"))


def _as_role(settings: PipelineSettings, role: str) -> PipelineSettings:
    return PipelineSettings(
        kafka=settings.kafka,
        cassandra=settings.cassandra.model_copy(update={"username": role, "auth": None}),
        security=settings.security,
    )


@pytest.fixture(scope="module")
def keyspace(secure: PipelineSettings, cassandra_cluster: Any) -> Iterator[str]:
    ks = f"sec{uuid.uuid4().hex[:10]}"
    provision_keyspace(secure, ks)
    cluster, session = connect(_as_role(secure, roles.SINK).cassandra)
    try:
        ins = session.prepare(
            f"INSERT INTO {ks}.rejections (image_id, stage, reason) VALUES (?, 'decode', 'x')"
        )
        for i in range(SEEDED):
            _retry_until_granted(lambda i=i: session.execute(ins, (f"seed-{i}",)))
    finally:
        cluster.shutdown()
    yield ks
    cluster, session = connect(secure.cassandra)
    try:
        session.execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=60)
    finally:
        cluster.shutdown()


def _retry_until_granted(call: Any, timeout: float = 10.0) -> Any:
    """Grants reach every node's permission cache within permissions_validity (2 s)."""
    from cassandra import Unauthorized

    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except Unauthorized:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _rows(secure: PipelineSettings, ks: str) -> list[str]:
    cluster, session = connect(secure.cassandra)
    try:
        return sorted(r.image_id for r in session.execute(f"SELECT image_id FROM {ks}.rejections"))
    finally:
        cluster.shutdown()


def _bare_cluster(settings: PipelineSettings, **kw: Any) -> Any:
    from cassandra.cluster import Cluster

    return Cluster(
        contact_points=settings.cassandra.contact_points,
        port=settings.cassandra.port,
        protocol_version=5,
        connect_timeout=5,
        control_connection_timeout=5,
        **kw,
    )


def _refused(settings: PipelineSettings, **kw: Any) -> str:
    """The error text a driver user sees when connecting with `kw` is refused."""
    from cassandra.cluster import NoHostAvailable

    cluster = _bare_cluster(settings, **kw)
    try:
        with pytest.raises(NoHostAvailable) as err:
            cluster.connect()
    finally:
        cluster.shutdown()
    return str(err.value)


def _login(settings: PipelineSettings, user: str, password: str) -> str:
    from cassandra.auth import PlainTextAuthProvider

    auth = settings.cassandra.auth
    assert auth is not None
    return _refused(
        settings,
        ssl_context=auth.ssl_context(),
        auth_provider=PlainTextAuthProvider(user, password),
    )


# ---- refused connections -------------------------------------------------------------


def test_plaintext_client_is_refused(secure: PipelineSettings, keyspace: str) -> None:
    from cassandra.auth import PlainTextAuthProvider

    auth = secure.cassandra.auth
    assert auth is not None
    msg = _refused(secure, auth_provider=PlainTextAuthProvider(auth.role, auth.secret()))
    assert "Unable to connect to any servers" in msg
    # The server closes a plaintext connection during the handshake.
    assert any(s in msg for s in ("ConnectionShutdown", "closed", "reset", "EOF")), msg
    assert len(_rows(secure, keyspace)) == SEEDED


def test_tls_client_that_does_not_trust_our_ca_is_refused(
    secure: PipelineSettings, keyspace: str, tmp_path: Path
) -> None:
    other_ca, _ = ensure_ca(tmp_path, name="someone else's CA")
    ctx = ssl.create_default_context(cafile=str(other_ca))
    msg = _refused(secure, ssl_context=ctx)
    assert "certificate verify failed" in msg, msg
    assert len(_rows(secure, keyspace)) == SEEDED


def test_wrong_password_is_refused(secure: PipelineSettings, keyspace: str) -> None:
    msg = _login(secure, roles.READER, "not-the-password")
    assert "Bad credentials" in msg
    assert "Provided username reader and/or password are incorrect" in msg
    assert len(_rows(secure, keyspace)) == SEEDED


def test_unknown_user_is_refused(secure: PipelineSettings, keyspace: str) -> None:
    msg = _login(secure, "mallory", "whatever")
    assert "Provided username mallory and/or password are incorrect" in msg
    assert len(_rows(secure, keyspace)) == SEEDED


def test_default_cassandra_superuser_is_disabled(secure: PipelineSettings, keyspace: str) -> None:
    msg = _login(secure, "cassandra", "cassandra")
    assert "cassandra is not permitted to log in" in msg, msg
    assert len(_rows(secure, keyspace)) == SEEDED


# ---- refused statements --------------------------------------------------------------


def test_reader_reads_but_cannot_write_or_drop(secure: PipelineSettings, keyspace: str) -> None:
    from cassandra import Unauthorized

    before = _rows(secure, keyspace)
    cluster, session = connect(_as_role(secure, roles.READER).cassandra)
    try:
        got = _retry_until_granted(
            lambda: session.execute(f"SELECT image_id FROM {keyspace}.rejections").all()
        )
        assert sorted(r.image_id for r in got) == before
        with pytest.raises(Unauthorized) as write:
            session.execute(
                f"INSERT INTO {keyspace}.rejections (image_id, stage) VALUES ('evil', 'x')"
            )
        assert f"User reader has no MODIFY permission on <table {keyspace}.rejections>" in str(
            write.value
        )
        with pytest.raises(Unauthorized) as drop:
            session.execute(f"DROP TABLE {keyspace}.rejections")
        assert f"User reader has no DROP permission on <table {keyspace}.rejections>" in str(
            drop.value
        )
    finally:
        cluster.shutdown()
    assert _rows(secure, keyspace) == before


def test_sink_writes_but_cannot_read_or_drop(secure: PipelineSettings, keyspace: str) -> None:
    from cassandra import Unauthorized

    before = _rows(secure, keyspace)
    cluster, session = connect(_as_role(secure, roles.SINK).cassandra)
    try:
        with pytest.raises(Unauthorized) as read:
            session.execute(f"SELECT image_id FROM {keyspace}.rejections")
        assert "User sink has no SELECT permission" in str(read.value)
        with pytest.raises(Unauthorized) as drop:
            session.execute(f"DROP KEYSPACE {keyspace}")
        assert "User sink has no DROP permission" in str(drop.value)
    finally:
        cluster.shutdown()
    assert _rows(secure, keyspace) == before


# ---- a third-party client ------------------------------------------------------------


DOC = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"


def _cqlsh_block() -> str:
    m = re.search(
        r"<!-- cqlsh-reader.*?-->\s*```sh\n(.*?)```\s*<!-- /cqlsh-reader -->",
        DOC.read_text(),
        re.DOTALL,
    )
    assert m, "docs/contracts.md lost its cqlsh-reader block"
    return m.group(1)


def _cqlsh() -> str | None:
    return str(CQLSH) if CQLSH.exists() else shutil.which("cqlsh")


@pytest.mark.skipif(_cqlsh() is None, reason="cqlsh is not installed (pip install cqlsh)")
def test_cqlsh_with_the_reader_role(
    secure: PipelineSettings, keyspace: str, tmp_path: Path
) -> None:
    """docs/contracts.md's cqlsh block, as written, with the reader role."""
    auth = _as_role(secure, roles.READER).cassandra.auth
    assert auth is not None
    exe = _cqlsh()
    assert exe is not None
    env = {
        **os.environ,
        "PATH": f"{Path(exe).parent}:{os.environ.get('PATH', '')}",
        "HOME": str(tmp_path),
        "CQL_USER": auth.role,
        "CQL_PASSWORD_FILE": str(auth.password_file),
        "CA_FILE": str(auth.ca_file),
        "CQLSH_DIR": str(tmp_path),
        "CQL_HOST": secure.cassandra.contact_points[0],
        "KEYSPACE": keyspace,
    }
    ok = subprocess.run(
        ["bash", "-euc", _cqlsh_block()], capture_output=True, text=True, timeout=60, env=env
    )
    assert ok.returncode == 0, ok.stderr
    for i in range(SEEDED):
        assert f"seed-{i}" in ok.stdout
    assert (tmp_path / "credentials").stat().st_mode & 0o077 == 0
    denied = subprocess.run(
        [
            exe,
            *(
                "--cqlshrc",
                str(tmp_path / "cqlshrc"),
                "--credentials",
                str(tmp_path / "credentials"),
            ),
            *(env["CQL_HOST"], "9042"),
            *("--connect-timeout", "30"),  # cqlsh's 5 s is short on a loaded 2-core box
            *("-e", f"INSERT INTO {keyspace}.rejections (image_id, stage) VALUES ('z', 'x')"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert denied.returncode != 0
    assert "User reader has no MODIFY permission" in denied.stderr
    assert auth.secret() not in denied.stdout + denied.stderr + ok.stdout + ok.stderr
    assert len(_rows(secure, keyspace)) == SEEDED


def test_no_role_password_in_the_nodes_logs_or_config(
    secure: PipelineSettings, keyspace: str, cluster_backend: Any
) -> None:
    """Role DDL carries passwords (CREATE/ALTER ROLE ... PASSWORD): none of them may reach
    a node's logs (server, stdout, slow-query) or its generated configuration."""
    run_dir = getattr(getattr(cluster_backend, "cluster", None), "run_dir", None)
    if run_dir is None:
        pytest.skip(f"the {cluster_backend.name} backend keeps no node logs here")
    secrets = [_as_role(secure, r).cassandra.auth.secret() for r in roles.CASSANDRA_ROLES]  # type: ignore[union-attr]
    files = [
        p
        for pattern in ("cassandra-*/logs/*", "cassandra-*/conf/*")
        for p in Path(run_dir).glob(pattern)
        if p.is_file()
    ]
    assert files, f"no node logs under {run_dir}"
    leaks = [str(p) for p in files if any(s in p.read_text(errors="replace") for s in secrets)]
    assert not leaks


def test_roles_bootstrap_again_changes_nothing(secure: PipelineSettings, keyspace: str) -> None:
    """`infra up` on a running secure cluster: admin logs in at once, nothing is created
    or disabled again, and the other roles keep working with their password files."""
    auth = secure.cassandra.auth
    assert auth is not None
    report = roles.bootstrap(
        secure.cassandra.contact_points,
        secure.cassandra.port,
        auth.ssl_context(),
        roles.role_passwords(secure.security.resolved_secrets_dir()),
        timeout=30,
    )
    assert not report.admin_created
    assert not report.default_superuser_disabled
    assert sorted(report.roles) == [roles.READER, roles.SINK]
    assert len(_rows(secure, keyspace)) == SEEDED
    cluster, session = connect(_as_role(secure, roles.READER).cassandra)
    try:
        assert len(session.execute(f"SELECT image_id FROM {keyspace}.rejections").all()) == SEEDED
    finally:
        cluster.shutdown()
