"""Build and serve the read API (aiohttp): HTTPS + bearer token in front of the routes.

Why aiohttp: it is already installed as a dependency of faust-streaming (no new server
stack), it serves HTTP/1.1 with TLS from a stdlib SSLContext, and has a client for the
workers' health endpoints and for the tests. The Cassandra driver is blocking, so reads run
in a bounded thread pool and the event loop only parses, authenticates and serializes.

`serve()` writes <run_dir>/api/endpoint.json ({"url", "ca_cert", "pid"}) once it listens,
so the demo, the tests and the bench find the URL (also with port 0) and the CA to trust.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from consumers.api import auth, errors, reads, routes, tls
from consumers.api.errors import json_error
from consumers.api.settings import ApiSettings
from consumers.api.thumbnails import Thumbnails

log = logging.getLogger(__name__)
# aiohttp's parser refuses longer request lines with its own plain-text 400; below this,
# the limit middleware answers a JSON 414 at `api.max_query_bytes`.
MAX_LINE_BYTES = 65_536


def endpoint_file(settings: ApiSettings) -> Path:
    return settings.run_dir / "api" / "endpoint.json"


def _limits(max_bytes: int) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def limit_size(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if len(request.raw_path) > max_bytes:
            return json_error(414, "uri_too_long", f"path and query string over {max_bytes} bytes")
        if request.method not in ("GET", "HEAD"):
            return json_error(
                405,
                "method_not_allowed",
                "this API is read-only: GET only",
                headers={"Allow": "GET, HEAD"},
            )
        return await handler(request)

    return limit_size


@web.middleware
async def _security_headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    resp = await handler(request)
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("Referrer-Policy", "no-referrer")
    if request.path.startswith("/v1/"):
        resp.headers.setdefault("Cache-Control", "no-store")
    return resp


def build(settings: ApiSettings, session: Any, token: str) -> web.Application:
    """The application around an open Cassandra session (the caller owns the session)."""
    ks = settings.cassandra.keyspace
    executor = ThreadPoolExecutor(settings.api.executor_threads, thread_name_prefix="api-read")
    api = routes.Api(
        settings=settings,
        session=session,
        keyspace=ks,
        executor=executor,
        labels=reads.LabelPages(session, ks),
        stats=reads.Cached(settings.api.scan_cache_s, lambda: reads.stats(session, ks)),
        rejections=reads.Cached(
            settings.api.scan_cache_s, lambda: reads.rejections_sorted(session, ks)
        ),
        thumbnails=Thumbnails(
            settings.kafka, settings.api.thumbnail_px, settings.api.thumbnail_cache
        ),
    )
    # Outermost first: errors shape everything (also auth and limit answers pass through).
    app = web.Application(
        middlewares=[
            errors.middleware,
            _security_headers,
            _limits(settings.api.max_query_bytes),
            auth.middleware(token),
        ]
    )
    app[routes.API] = api
    routes.add_routes(app)

    async def http_client(app: web.Application) -> Any:
        api.http = aiohttp.ClientSession()
        yield
        await api.http.close()
        executor.shutdown(wait=False, cancel_futures=True)

    app.cleanup_ctx.append(http_client)
    return app


async def _serve(settings: ApiSettings, stop: asyncio.Event) -> None:
    from infra.cassandra_session import connect

    token = auth.load_or_create_token(settings)
    ssl_ctx = None if settings.api.insecure_http else tls.server_context(settings)
    ca = None if settings.api.insecure_http else tls.cert_files(settings)[2]
    cluster, session = await asyncio.get_running_loop().run_in_executor(
        None, connect, settings.reader_cassandra()
    )
    try:
        app = build(settings, session, token)
        runner = web.AppRunner(
            app, access_log=None, max_line_size=MAX_LINE_BYTES, max_field_size=MAX_LINE_BYTES
        )
        await runner.setup()
        site = web.TCPSite(runner, settings.api.host, settings.api.port, ssl_context=ssl_ctx)
        await site.start()
        port = int(runner.addresses[0][1])  # the bound port, also when asked for port 0
        url = f"{settings.scheme()}://{settings.api.host}:{port}/"
        ep = endpoint_file(settings)
        ep.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        ep.write_text(
            json.dumps(
                {
                    "url": url,
                    "ca_cert": str(ca.resolve()) if ca else None,
                    "token_file": None
                    if settings.api.token
                    else str(auth.token_path(settings).resolve()),
                    "pid": os.getpid(),
                }
            )
            + "\n"
        )
        log.info(
            "read API serving on %s (keyspace %s, TLS %s)",
            url,
            settings.cassandra.keyspace,
            "off" if ssl_ctx is None else "on",
        )
        print(f"read API: {url}", flush=True)
        await stop.wait()
        await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            ep.unlink()
    finally:
        cluster.shutdown()


def serve(settings: ApiSettings) -> int:
    """Serve until SIGTERM/SIGINT. Returns the process exit code."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await _serve(settings, stop)

    asyncio.run(main())
    return 0
