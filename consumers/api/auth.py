"""Bearer-token authentication of the read API.

The token comes from `api.token` (env PIPELINE_API__TOKEN), else `api.token_file`, else
`<run_dir>/api/token`, generated once (32 random bytes, URL-safe, mode 0600). Requests
carry `Authorization: Bearer <token>`; the comparison is constant-time (hmac). Routes in
PUBLIC need no token: the liveness probe, the API description and the page's static
files (which hold no data: the page's script sends the token with every data request).
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from consumers.api.errors import json_error
from consumers.api.settings import ApiSettings

PUBLIC_PATHS = frozenset({"/", "/healthz", "/openapi.json", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/",)
MIN_TOKEN_CHARS = 16


def token_path(settings: ApiSettings) -> Path:
    return settings.api.token_file or settings.run_dir / "api" / "token"


def load_or_create_token(settings: ApiSettings) -> str:
    """The API token; generated and stored (0600) on first use when none is configured."""
    if settings.api.token is not None:
        return settings.api.token.get_secret_value()
    path = token_path(settings)
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        if settings.api.token_file is not None:
            raise ValueError(f"api.token_file {path} does not exist") from None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        token = secrets.token_urlsafe(32)
        try:
            # O_EXCL: two starting services never overwrite each other's token.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        return token
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"the token in {path} is shorter than {MIN_TOKEN_CHARS} characters")
    return token


def _presented(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def middleware(token: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    expected = token.encode()

    @web.middleware
    async def require_token(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIXES):
            return await handler(request)
        got = _presented(request)
        if got is None:
            return json_error(
                401,
                "unauthorized",
                "send Authorization: Bearer <token>",
                headers={"WWW-Authenticate": 'Bearer realm="torchstream"'},
            )
        if not hmac.compare_digest(got.encode(), expected):
            return json_error(
                401,
                "unauthorized",
                "the bearer token is not valid",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return await handler(request)

    return require_token
