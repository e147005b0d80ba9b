"""The API's TLS context: operator-provided PEM files, or the local CA's server certificate.

Without `api.tls_cert_file`/`tls_key_file`, `infra.certs` creates (once) a CA and a
certificate for `api.tls_hosts` under <run_dir>/certs; clients trust <run_dir>/certs/ca.crt.
TLS 1.2 is the floor.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from consumers.api.settings import ApiSettings
from infra import certs


def cert_files(settings: ApiSettings) -> tuple[Path, Path, Path | None]:
    """(certificate, key, CA certificate or None when the operator brought the pair)."""
    api = settings.api
    if api.tls_cert_file is not None and api.tls_key_file is not None:
        return api.tls_cert_file, api.tls_key_file, None
    sc = certs.ensure_server_cert(settings.run_dir / "certs", name="api", hosts=api.tls_hosts)
    return sc.cert, sc.key, sc.ca_cert


def server_context(settings: ApiSettings) -> ssl.SSLContext:
    cert, key, _ca = cert_files(settings)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def client_context(ca_file: Path | str) -> ssl.SSLContext:
    """For clients of the API (tests, bench, demo readiness): trust only this CA."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
