"""Find the running API and wait until it serves: for the demo, the tests, the bench.

Starting it as a background service is orchestration's (orchestration/api.py); this
module only reads what the API publishes. `wait_serving()` reads
<run_dir>/api/endpoint.json (written by the API once it listens) and probes /healthz
over TLS with the run's CA until it answers 200 or the deadline passes; an endpoint file
left by an earlier process (another pid) is not taken for readiness.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Endpoint:
    url: str
    ca_cert: Path | None
    token_file: Path | None
    pid: int

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.ca_cert is None:
            return None
        from consumers.api.tls import client_context

        return client_context(self.ca_cert)

    def token(self) -> str | None:
        return self.token_file.read_text().strip() if self.token_file else None

    def page_url(self, token: str | None = None) -> str:
        """The page's URL; with the token in the fragment (never sent to the server, the
        page moves it to sessionStorage and out of the address bar)."""
        token = token or self.token()
        return self.url + (f"#token={token}" if token else "")


def read_endpoint(run_dir: Path | str) -> Endpoint | None:
    try:
        doc = json.loads((Path(run_dir) / "api" / "endpoint.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return Endpoint(
        url=doc["url"],
        ca_cert=Path(doc["ca_cert"]) if doc.get("ca_cert") else None,
        token_file=Path(doc["token_file"]) if doc.get("token_file") else None,
        pid=int(doc["pid"]),
    )


def _healthy(ep: Endpoint) -> bool:
    try:
        with urllib.request.urlopen(ep.url + "healthz", context=ep.ssl_context(), timeout=5) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_serving(run_dir: Path | str, timeout_s: float, pid: int | None = None) -> Endpoint:
    """The endpoint once /healthz answers 200 (of process `pid`, when given)."""
    deadline = time.monotonic() + timeout_s
    while True:
        ep = read_endpoint(run_dir)
        if ep is not None and (pid is None or ep.pid == pid) and _healthy(ep):
            return ep
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the read API under {run_dir} did not answer /healthz within {timeout_s:.0f}s"
            )
        time.sleep(0.25)
