"""Security settings, secrets and masking shared by every service and by `infra up`.

`SecuritySettings` (env `PIPELINE_SECURITY__...`) says whether the clusters run `secure`
(TLS everywhere, SCRAM + ACLs on Kafka, roles on Cassandra) or `plaintext` (development),
where the CA and certificates live (default `<run dir>/certs`; an operator may point at
their own files) and where secrets live (default `<run dir>/secrets`, one file per
principal, mode 0600, made once by `infra up`).

Guarantees:
- a secret is only ever read from the environment or from a file named by settings, never
  from a command line;
- `mask()` is the one function that makes anything printable: settings dumps, client
  configs and error messages go through it, and every secret this process has read or
  made is replaced by `MASK` wherever it appears in text;
- a missing secret file is a clear error naming the file and how to make it.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, SecretStr

from infra.private_files import write_private

Mode = Literal["secure", "plaintext"]
# Secure unless an operator asks for plaintext (development): PIPELINE_SECURITY__MODE.
DEFAULT_MODE: Mode = "secure"

MASK = "**********"
CA_FILE = "ca.crt"  # the name infra.certs gives the CA certificate

# Kafka principals (SCRAM users). `broker` is the brokers' own inter-broker identity.
KAFKA_ADMIN = "admin"
KAFKA_PRODUCER = "producer"
KAFKA_STREAM = "stream"
KAFKA_SINK = "sink"
KAFKA_BROKER = "broker"
KAFKA_PRINCIPALS = (KAFKA_ADMIN, KAFKA_PRODUCER, KAFKA_STREAM, KAFKA_SINK, KAFKA_BROKER)
# Cassandra roles (the Cassandra half fills in their permissions).
CASSANDRA_ROLES = ("admin", "sink", "reader")
SECRET_KINDS = ("kafka", "cassandra")

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Config keys whose values are secret whatever their value looks like.
_SECRET_KEY = re.compile(r"password|secret|token|credential|ssl\.key\.pem|private", re.I)


class SecretMissingError(RuntimeError):
    """A secret file that settings point at does not exist or is empty."""


class SecuritySettings(BaseModel):
    mode: Mode = DEFAULT_MODE
    # Where the CA, node certificates and client trust live; default <run dir>/certs.
    certs_dir: Path | None = None
    # The CA certificate clients trust; default <certs dir>/ca.crt (bring your own here).
    ca_file: Path | None = None
    # Secret files, one per principal: <secrets dir>/kafka/<principal>; default <run dir>/secrets.
    secrets_dir: Path | None = None
    # This process's Kafka principal; unset: the service's own (see PipelineSettings).
    kafka_principal: str | None = None
    # A password given through the environment wins over the secrets file.
    kafka_password: SecretStr | None = None
    # A file holding this principal's password (instead of <secrets dir>/kafka/<principal>).
    kafka_password_file: Path | None = None

    @property
    def secure(self) -> bool:
        return self.mode == "secure"

    def run_dir(self) -> Path:
        return run_dir()

    def resolved_certs_dir(self) -> Path:
        return (self.certs_dir or self.run_dir() / "certs").expanduser().resolve()

    def resolved_ca_file(self) -> Path:
        return (self.ca_file or self.resolved_certs_dir() / CA_FILE).expanduser().resolve()

    def resolved_secrets_dir(self) -> Path:
        return (self.secrets_dir or self.run_dir() / "secrets").expanduser().resolve()

    def kafka_auth(self, default_principal: str) -> KafkaAuth | None:
        """How a Kafka client of this process authenticates; None in plaintext mode."""
        if not self.secure:
            return None
        principal = self.kafka_principal or default_principal
        return KafkaAuth(
            principal=principal,
            password=self.kafka_password,
            password_file=(
                self.kafka_password_file
                or secret_path(self.resolved_secrets_dir(), "kafka", principal)
            ),
            ca_file=self.resolved_ca_file(),
        )


@dataclass(frozen=True)
class KafkaAuth:
    """SASL_SSL + SCRAM-SHA-512 identity of one Kafka client; the password is read late."""

    principal: str
    password: SecretStr | None
    password_file: Path
    ca_file: Path
    mechanism: str = "SCRAM-SHA-512"

    def secret(self) -> str:
        return password_of(self.password, self.password_file)

    def __repr__(self) -> str:  # never show the password, even by accident
        return (
            f"KafkaAuth(principal={self.principal!r}, password_file={str(self.password_file)!r}, "
            f"ca_file={str(self.ca_file)!r})"
        )


def run_dir() -> Path:
    """$PIPELINE_RUN_DIR, else ./.run: infra.local.layout.resolve_run_dir's rule, restated
    here because services never import infra.local (a unit test keeps the two equal)."""
    return Path(os.environ.get("PIPELINE_RUN_DIR") or ".run").expanduser().resolve()


# -- secrets ---------------------------------------------------------------------------

_known: set[str] = set()
_known_lock = threading.Lock()


def remember(value: str) -> None:
    """Register a secret so that `mask()` hides it in any text from now on."""
    if len(value) >= 4:
        with _known_lock:
            _known.add(value)


def password_of(password: SecretStr | None, password_file: Path) -> str:
    """A login's password: the one set in settings, else its file (read late, at connect
    time, so a rotated file is picked up); either way remembered for masking."""
    if password is not None:
        value = password.get_secret_value()
        remember(value)
        return value
    return read_secret_file(password_file)


def secret_path(secrets_dir: Path, kind: str, name: str) -> Path:
    if kind not in SECRET_KINDS:
        raise ValueError(f"unknown secret kind {kind!r}; use one of {', '.join(SECRET_KINDS)}")
    if not _NAME.match(name):
        raise ValueError(f"bad principal name {name!r}: letters, digits, '_', '.', '-' only")
    return secrets_dir / kind / name


def _write_private(path: Path, data: bytes) -> None:
    """Write atomically, mode 0600 from the first byte, directory 0700."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    write_private(path, data)


def read_secret_file(path: Path) -> str:
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        raise SecretMissingError(
            f"secret file {path} does not exist: run `python -m infra up` with the same "
            f"PIPELINE_RUN_DIR to create it, or point settings at your own file"
        ) from None
    if not value:
        raise SecretMissingError(f"secret file {path} is empty")
    remember(value)
    return value


def read_secret(secrets_dir: Path, kind: str, name: str) -> str:
    """The secret of principal `name` (kind 'kafka' or 'cassandra'); clear error if absent."""
    return read_secret_file(secret_path(secrets_dir, kind, name))


def ensure_secret(secrets_dir: Path, kind: str, name: str) -> str:
    """The secret of `name`, made once (32 random bytes, URL-safe) if its file is absent."""
    path = secret_path(secrets_dir, kind, name)
    if not path.exists():
        # The secrets dir itself is private too, not only its kind/ subdirectories.
        secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(secrets_dir, 0o700)
        _write_private(path, secrets.token_urlsafe(32).encode() + b"\n")
    return read_secret_file(path)


# -- masking ---------------------------------------------------------------------------


def mask(obj: Any) -> Any:
    """A printable copy of `obj`: dicts (values under secret-looking keys), lists, SecretStr,
    and any known secret inside strings all become MASK. The one masking function."""
    if isinstance(obj, SecretStr):
        return MASK if obj.get_secret_value() else ""
    if isinstance(obj, dict):
        return {
            k: (MASK if isinstance(k, str) and _SECRET_KEY.search(k) and v else mask(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return type(obj)(mask(v) for v in obj)
    if isinstance(obj, BaseException):
        return mask(str(obj))
    if isinstance(obj, str):
        with _known_lock:
            known = sorted(_known, key=len, reverse=True)
        for value in known:
            if value in obj:
                obj = obj.replace(value, MASK)
        return obj
    return obj
