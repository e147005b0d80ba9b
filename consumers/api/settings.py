"""Settings of the read API (`python -m consumers api`): the shared sections plus `api`.

Env: PIPELINE_API__PORT, PIPELINE_API__TOKEN, PIPELINE_API__TLS_CERT_FILE, ... and
PIPELINE_RUN_DIR (where the generated CA, certificate and token live). Unsafe combinations
are refused when the settings are built, not at the first request: plain HTTP is allowed
only with `api.insecure_http=true` and a loopback `api.host`.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from infra.cassandra_roles import READER, cassandra_auth
from infra.settings import PipelineSettings


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ApiSection(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8443, ge=0, le=65535)
    # HTTPS by default. Plain HTTP only on a loopback host, and only when asked for.
    insecure_http: bool = False
    # Operator-provided certificate and key (PEM). Unset: a local CA and a server
    # certificate for 127.0.0.1/localhost are generated once under <run_dir>/certs.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Names the generated certificate covers (IPs and DNS names).
    tls_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1", "localhost"]
    )
    # The bearer token clients send (`Authorization: Bearer <token>`). Unset: read from
    # `token_file`, or generated once at <run_dir>/api/token (mode 0600).
    token: SecretStr | None = None
    token_file: Path | None = None
    # The Cassandra reader role (issue 13). Unset: the `cassandra` section's credentials,
    # like `consumers query`. Once roles exist, point these at the read-only role.
    cassandra_username: str | None = None
    cassandra_password: SecretStr | None = None
    # Worker health endpoints for the page (http://127.0.0.1:6067/health/, ...). Unset:
    # found from the service specs under <run_dir>/services/*.json.
    health_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # A stage with lag and no batch for this long is shown as stalled.
    stall_after_s: float = Field(default=30.0, gt=0)
    # Paging of /v1/labels and /v1/rejections.
    default_limit: int = Field(default=50, ge=1)
    max_limit: int = Field(default=500, ge=1)
    # Requests whose query string or path is longer than this get 414.
    max_query_bytes: int = Field(default=2048, ge=64)
    # Threads running the (blocking) Cassandra driver and Kafka calls.
    executor_threads: int = Field(default=16, ge=1, le=256)
    # Whole-table reads (stats, rejections) are cached this long: the page polls them.
    scan_cache_s: float = Field(default=2.0, ge=0)
    # Thumbnails of raw images fetched from Kafka, kept in memory (count).
    thumbnail_cache: int = Field(default=256, ge=0)
    thumbnail_px: int = Field(default=160, ge=16, le=1024)

    @field_validator("tls_hosts", "health_urls", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @model_validator(mode="after")
    def _safe(self) -> ApiSection:
        if self.insecure_http and not _is_loopback(self.host):
            raise ValueError(
                f"api.insecure_http serves plain HTTP: only on a loopback host, not {self.host!r}"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set both api.tls_cert_file and api.tls_key_file, or neither")
        if self.default_limit > self.max_limit:
            raise ValueError("api.default_limit must be <= api.max_limit")
        if self.token is not None and len(self.token.get_secret_value()) < 16:
            raise ValueError("api.token must be at least 16 characters")
        return self


class ApiSettings(PipelineSettings):
    cassandra_role: ClassVar[str] = READER  # SELECT on the result tables only

    api: ApiSection = Field(default_factory=ApiSection)
    run_dir: Path = Path(".run")

    def reader_cassandra(self) -> Any:
        """The cassandra section with the reader role's credentials, when they are set."""
        c = self.cassandra.model_copy()
        if self.api.cassandra_username:
            c.username = self.api.cassandra_username
            c.password = self.api.cassandra_password
            c.auth = cassandra_auth(  # secure mode: log in as the user named here
                self.security, READER, username=c.username, password=c.password
            )
        return c

    def scheme(self) -> str:
        return "http" if self.api.insecure_http else "https"
