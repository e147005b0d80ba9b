"""Cassandra roles of a secure cluster: who logs in as what, and what each may do.

Three login roles (names in infra.security.CASSANDRA_ROLES), passwords generated once
under `<secrets dir>/cassandra/<role>`:

- `admin`: superuser; provisioning (DDL), backup and restore, `infra up`. It replaces the
  default `cassandra` superuser, which `bootstrap()` then disables (no login, no superuser).
- `sink`: MODIFY on each result table of the keyspace (INSERT, and the DELETE ... USING
  TIMESTAMP that keeps one status per image); it reads only system_schema, which every
  role may.
- `reader`: SELECT on each result table (`consumers query`, the read API, cqlsh).

`CassandraAuth` is how one client process logs in (role, password, CA); settings build it
(see infra.settings) and infra.cassandra_session turns it into the driver's ssl_context
and auth provider. Pure statement builders are separate from the functions that run them.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from infra.security import (
    CASSANDRA_ROLES,
    ensure_secret,
    password_of,
    secret_path,
)

if TYPE_CHECKING:
    from infra.security import SecuritySettings

log = logging.getLogger(__name__)

ADMIN, SINK, READER = CASSANDRA_ROLES
DEFAULT_SUPERUSER = "cassandra"
DEFAULT_SUPERUSER_PASSWORD = "cassandra"  # Cassandra's own well-known default
# Table permissions per role on every table of the pipeline's keyspace. The sink needs no
# SELECT: its queries are writes, and its table check reads system_schema.
TABLE_PERMISSIONS: Mapping[str, tuple[str, ...]] = {SINK: ("MODIFY",), READER: ("SELECT",)}
# The default superuser appears ~10 s after a first boot (superuser_setup_delay_ms) once
# a QUORUM of system_auth replicas is up; logins before that are AuthenticationFailed.
BOOTSTRAP_TIMEOUT_S = 120.0
DDL_TIMEOUT_S = 60.0


class RolesError(RuntimeError):
    """The roles could not be set up (what was tried and the server's last answer)."""


@dataclass(frozen=True)
class CassandraAuth:
    """TLS + password login of one Cassandra client; the password is read late."""

    role: str
    password: SecretStr | None
    password_file: Path
    ca_file: Path
    check_hostname: bool = True

    def secret(self) -> str:
        return password_of(self.password, self.password_file)

    def ssl_context(self) -> ssl.SSLContext:
        """Trusts only the configured CA; the node's certificate must name the address
        the driver connects to (the driver passes it as server_hostname)."""
        return client_ssl_context(self.ca_file, self.check_hostname)

    def auth_provider(self) -> Any:
        from cassandra.auth import PlainTextAuthProvider

        return PlainTextAuthProvider(self.role, self.secret())

    def __repr__(self) -> str:  # never show the password, even by accident
        return (
            f"CassandraAuth(role={self.role!r}, password_file={str(self.password_file)!r}, "
            f"ca_file={str(self.ca_file)!r})"
        )


def client_ssl_context(ca_file: Path, check_hostname: bool = True) -> ssl.SSLContext:
    if not ca_file.is_file():
        raise FileNotFoundError(
            f"CA certificate {ca_file} does not exist: run `python -m infra up` with the same "
            f"PIPELINE_RUN_DIR, or set PIPELINE_SECURITY__CA_FILE"
        )
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = check_hostname
    return ctx


def cassandra_auth(
    security: SecuritySettings,
    default_role: str,
    *,
    username: str | None = None,
    password: SecretStr | None = None,
    password_file: Path | None = None,
) -> CassandraAuth | None:
    """How a client of this process logs in; None in plaintext mode. An explicit username
    (PIPELINE_CASSANDRA__USERNAME) replaces the service's own role; an explicit password or
    password file replaces `<secrets dir>/cassandra/<role>`."""
    if not security.secure:
        return None
    role = username or default_role
    return CassandraAuth(
        role=role,
        password=password,
        password_file=password_file
        or secret_path(security.resolved_secrets_dir(), "cassandra", role),
        ca_file=security.resolved_ca_file(),
    )


# ---- statements (pure) ---------------------------------------------------------------


def _literal(value: str) -> str:
    """A CQL string literal (role DDL takes no bind markers)."""
    return "'" + value.replace("'", "''") + "'"


def create_role(role: str, password: str, *, superuser: bool = False) -> str:
    return (
        f"CREATE ROLE IF NOT EXISTS {role} WITH PASSWORD = {_literal(password)} "
        f"AND LOGIN = true AND SUPERUSER = {'true' if superuser else 'false'}"
    )


def set_password(role: str, password: str) -> str:
    return f"ALTER ROLE {role} WITH PASSWORD = {_literal(password)} AND LOGIN = true"


DISABLE_DEFAULT_SUPERUSER = (
    f"ALTER ROLE {DEFAULT_SUPERUSER} WITH SUPERUSER = false AND LOGIN = false"
)


def grant_statements(keyspace: str, tables: Iterable[str]) -> list[str]:
    """GRANTs giving each role its TABLE_PERMISSIONS on each of `tables` (idempotent)."""
    return [
        f"GRANT {perm} ON TABLE {keyspace}.{table} TO {role}"
        for table in sorted(tables)
        for role, perms in TABLE_PERMISSIONS.items()
        for perm in perms
    ]


# ---- running them --------------------------------------------------------------------


@dataclass
class BootstrapReport:
    admin_created: bool = False
    default_superuser_disabled: bool = False
    roles: list[str] = field(default_factory=list)
    seconds: float = 0.0


class _DropFailedControlConnection(logging.Filter):
    """The driver logs a refused login as an ERROR with a traceback (cassandra.cluster,
    checked against cassandra-driver 3.29-3.30) before raising it to the caller."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Control connection failed to connect")


@contextlib.contextmanager
def expected_login_failures() -> Iterator[None]:
    """While a caller retries logins that are refused for a while by design (the default
    superuser before it exists, admin before it is made), the driver's ERROR line and
    traceback for each try are dropped; the caller still gets, and reports, the error."""
    driver_log = logging.getLogger("cassandra.cluster")
    quiet = _DropFailedControlConnection()
    driver_log.addFilter(quiet)
    try:
        yield
    finally:
        driver_log.removeFilter(quiet)


def _connect(
    hosts: list[str], port: int, ssl_context: ssl.SSLContext, user: str, password: str
) -> Any:
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import Cluster

    cluster = Cluster(
        contact_points=hosts,
        port=port,
        ssl_context=ssl_context,
        auth_provider=PlainTextAuthProvider(user, password),
        protocol_version=5,
        connect_timeout=10,
        control_connection_timeout=10,
    )
    try:
        with expected_login_failures():
            return cluster.connect()
    except Exception:
        cluster.shutdown()
        raise


def _login_refused(exc: BaseException) -> bool:
    """Whether a connect failed because the login was refused (vs. a node not answering)."""
    from cassandra import AuthenticationFailed
    from cassandra.cluster import NoHostAvailable

    if isinstance(exc, AuthenticationFailed):
        return True
    if isinstance(exc, NoHostAvailable):
        return any(isinstance(e, AuthenticationFailed) for e in exc.errors.values())
    return False


def _connect_with_deadline(
    hosts: list[str],
    port: int,
    ssl_context: ssl.SSLContext,
    logins: list[tuple[str, str]],
    timeout: float,
) -> tuple[str, Any]:
    """The first of `logins` accepted, retried until `timeout` (the default superuser and
    a role made a moment ago are refused for a while); (user, session)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        for user, password in logins:
            try:
                return user, _connect(hosts, port, ssl_context, user, password)
            except Exception as e:
                last = e
                if not _login_refused(e):
                    log.debug("cassandra login as %s: %s", user, e)
        if time.monotonic() >= deadline:
            tried = ", ".join(u for u, _ in logins)
            raise RolesError(
                f"no login accepted by {', '.join(hosts)} within {timeout:.0f}s "
                f"(tried {tried}); last answer: {type(last).__name__}: {last}"
            )
        time.sleep(1.0)


def bootstrap(
    hosts: list[str],
    port: int,
    ssl_context: ssl.SSLContext,
    passwords: Mapping[str, str],
    *,
    timeout: float = BOOTSTRAP_TIMEOUT_S,
) -> BootstrapReport:
    """Make the project's roles on a secure cluster; idempotent.

    1. log in as admin, or (first boot) as the default superuser, waiting for it;
    2. create the admin superuser if absent and log in as it;
    3. disable the default superuser (no login, no superuser);
    4. create (or re-password) every other role from `passwords`.
    Table permissions follow per keyspace at provisioning (grant_tables)."""
    t0 = time.monotonic()
    report = BootstrapReport()
    admin_pw = passwords[ADMIN]
    logins = [(ADMIN, admin_pw), (DEFAULT_SUPERUSER, DEFAULT_SUPERUSER_PASSWORD)]
    user, session = _connect_with_deadline(hosts, port, ssl_context, logins, timeout)
    if user != ADMIN:
        session.execute(create_role(ADMIN, admin_pw, superuser=True), timeout=DDL_TIMEOUT_S)
        session.cluster.shutdown()
        report.admin_created = True
        log.info("cassandra: created the %s superuser role", ADMIN)
        _, session = _connect_with_deadline(hosts, port, ssl_context, [(ADMIN, admin_pw)], timeout)
    try:
        row = session.execute(
            "SELECT can_login, is_superuser FROM system_auth.roles WHERE role = %s",
            (DEFAULT_SUPERUSER,),
            timeout=DDL_TIMEOUT_S,
        ).one()
        if row is not None and (row.can_login or row.is_superuser):
            session.execute(DISABLE_DEFAULT_SUPERUSER, timeout=DDL_TIMEOUT_S)
            report.default_superuser_disabled = True
            log.info("cassandra: disabled the default %s superuser", DEFAULT_SUPERUSER)
        for role, password in sorted(passwords.items()):
            if role == ADMIN:
                continue
            session.execute(create_role(role, password), timeout=DDL_TIMEOUT_S)
            # Keeps the role's password equal to its secret file if that was replaced.
            session.execute(set_password(role, password), timeout=DDL_TIMEOUT_S)
            report.roles.append(role)
    finally:
        session.cluster.shutdown()
    report.seconds = time.monotonic() - t0
    return report


def keyspace_tables(session: Any, keyspace: str) -> list[str]:
    rows = session.execute(
        "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s",
        (keyspace,),
        timeout=DDL_TIMEOUT_S,
    )
    return sorted(r.table_name for r in rows)


def grant_tables(session: Any, keyspace: str) -> list[str]:
    """Give sink and reader their permissions on every table of `keyspace` (run as admin,
    after the tables exist); the statements run, for the report."""
    statements = grant_statements(keyspace, keyspace_tables(session, keyspace))
    for stmt in statements:
        session.execute(stmt, timeout=DDL_TIMEOUT_S)
    log.info("cassandra: granted %d table permissions in keyspace %s", len(statements), keyspace)
    return statements


def role_passwords(secrets_dir: Path) -> dict[str, str]:
    """Each role's password from `<secrets dir>/cassandra/<role>`, made once if absent."""
    return {role: ensure_secret(secrets_dir, "cassandra", role) for role in CASSANDRA_ROLES}


def as_role(settings: Any, role: str) -> Any:
    """`settings.cassandra` (of a PipelineSettings) logging in as `role` in secure mode, for
    a command that needs another role than its service's (`consumers query`: reader). An
    explicit PIPELINE_CASSANDRA__USERNAME / PASSWORD still wins. Plaintext: unchanged."""
    c = settings.cassandra
    auth = cassandra_auth(
        settings.security,
        role,
        username=c.username,
        password=c.password,
        password_file=c.password_file,
    )
    return c.model_copy(update={"auth": auth})


def settings_as(settings: Any, role: str) -> Any:
    """A copy of a service's whole settings whose Cassandra login is `role`: for a harness
    that provisions (admin) or checks rows (reader) with, say, the sink's settings."""
    return settings.model_copy(update={"cassandra": as_role(settings, role)})
