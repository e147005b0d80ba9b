"""The API's routes. Handlers validate input (cursors), run the blocking reads in the
app's thread pool and answer JSON; errors are raised as ApiError and shaped by errors.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from consumers.api import cursors, reads, stages
from consumers.api.errors import ApiError, bad_request
from consumers.api.openapi import spec
from consumers.api.settings import ApiSettings
from consumers.api.thumbnails import NotInRetention, Thumbnails

STATIC = Path(__file__).with_name("static")
T = TypeVar("T")


@dataclass
class Api:
    """What the handlers share; built by app.build() and kept in app[API]."""

    settings: ApiSettings
    session: Any  # the Cassandra driver session
    keyspace: str
    executor: Any
    labels: reads.LabelPages
    stats: reads.Cached
    rejections: reads.Cached
    thumbnails: Thumbnails
    http: aiohttp.ClientSession | None = None
    rates: stages.RateWindow = field(default_factory=stages.RateWindow)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)


API = web.AppKey("api", Api)


def _only(request: web.Request, *allowed: str) -> None:
    extra = sorted(set(request.query) - set(allowed))
    if extra:
        raise bad_request(
            "unknown_parameter",
            f"unknown query parameter(s): {', '.join(extra)}; "
            f"allowed: {', '.join(allowed) or 'none'}",
        )
    for name in allowed:
        if len(request.query.getall(name, [])) > 1:
            raise bad_request("repeated_parameter", f"{name} given more than once")


async def image(request: web.Request) -> web.Response:
    _only(request)
    api = request.app[API]
    image_id = cursors.image_id(request.match_info["image_id"])
    found = await api.run(reads.image, api.session, api.keyspace, image_id)
    if found is None:
        raise ApiError(404, "not_found", f"no prediction or rejection for image {image_id}")
    return web.json_response(found)


PLACEHOLDER_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="160" height="120" viewBox="0 0 160 120">'
    '<rect width="160" height="120" fill="#e5e7eb"/><text x="80" y="64" font-family="sans-serif"'
    ' font-size="12" text-anchor="middle" fill="#6b7280">no longer in images.raw</text></svg>'
)


async def thumbnail(request: web.Request) -> web.Response:
    """JPEG; 404 when out of retention, or with ?placeholder=1 a 200 SVG placeholder
    (the page uses that: a browser logs every 404 as a console error)."""
    _only(request, "placeholder")
    api = request.app[API]
    image_id = cursors.image_id(request.match_info["image_id"])
    placeholder = request.query.get("placeholder")
    if placeholder not in (None, "0", "1"):
        raise bad_request("bad_placeholder", "placeholder must be 0 or 1")
    found = await api.run(reads.image, api.session, api.keyspace, image_id)
    if found is None or found["status"] != "prediction":
        raise ApiError(404, "not_found", f"no prediction for image {image_id}")
    try:
        jpeg = await api.run(api.thumbnails.get, found)
    except NotInRetention as exc:
        if placeholder == "1":
            return web.Response(
                text=PLACEHOLDER_SVG,
                content_type="image/svg+xml",
                headers={"X-Thumbnail": "placeholder"},
            )
        raise ApiError(404, "not_in_retention", str(exc)) from None
    return web.Response(
        body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"}
    )


async def label(request: web.Request) -> web.Response:
    _only(request, "limit", "page")
    api = request.app[API]
    name = cursors.text("label", request.match_info["label"])
    limit = cursors.limit(
        request.query.get("limit"), api.settings.api.default_limit, api.settings.api.max_limit
    )
    after = cursors.decode(request.query.get("page"), "label", name)
    if after is not None and not isinstance(after, str):
        raise bad_request("bad_page_token", "page token is malformed")
    if after is not None:
        cursors.image_id(after)
    items, nxt = await api.run(api.labels.page, name, after, limit)
    if after is None and not items and nxt is None:
        raise ApiError(404, "unknown_label", f"no stored image has the label {name!r}")
    return web.json_response(
        {
            "label": name,
            "items": items,
            "next_page": cursors.encode("label", name, nxt) if nxt else None,
        }
    )


async def rejections(request: web.Request) -> web.Response:
    _only(request, "reason", "limit", "page")
    api = request.app[API]
    reason = request.query.get("reason")
    if reason is not None:
        cursors.text("reason", reason)
    limit = cursors.limit(
        request.query.get("limit"), api.settings.api.default_limit, api.settings.api.max_limit
    )
    scope = reason or ""
    start = cursors.decode(request.query.get("page"), "rejections", scope)
    if start is not None and (not isinstance(start, int) or isinstance(start, bool) or start < 0):
        raise bad_request("bad_page_token", "page token is malformed")
    rows: list[dict[str, Any]] = await api.run(api.rejections.get)
    known = sorted({r["reason"] for r in rows if r.get("reason")})
    if reason is not None and reason not in known:
        raise ApiError(
            404,
            "unknown_reason",
            f"no rejection has the reason {reason!r}; known: {', '.join(known) or 'none'}",
        )
    # Newest first from a cached snapshot; the token is a position in that order.
    matching = [r for r in rows if reason is None or r.get("reason") == reason]
    offset = start or 0
    page = matching[offset : offset + limit]
    nxt = offset + limit if offset + limit < len(matching) else None
    return web.json_response(
        {
            "reason": reason,
            "items": page,
            "reasons": known,
            "next_page": cursors.encode("rejections", scope, nxt) if nxt is not None else None,
        }
    )


async def stats(request: web.Request) -> web.Response:
    _only(request)
    api = request.app[API]
    return web.json_response(await api.run(api.stats.get))


async def pipeline(request: web.Request) -> web.Response:
    _only(request)
    api = request.app[API]
    urls = stages.health_urls(api.settings.api.health_urls, api.settings.run_dir)
    assert api.http is not None
    results = await stages.fetch(api.http, urls)
    view = stages.merge(results, api.rates, api.settings.api.stall_after_s)
    return web.json_response(view)


def _ping(session: Any) -> int:
    session.execute("SELECT release_version FROM system.local")
    return sum(1 for h in session.cluster.metadata.all_hosts() if h.is_up)


async def healthz(request: web.Request) -> web.Response:
    _only(request)
    api = request.app[API]
    try:
        up = await api.run(_ping, api.session)
    except Exception as exc:
        return web.json_response({"status": "unavailable", "error": type(exc).__name__}, status=503)
    return web.json_response({"status": "ok", "cassandra_hosts_up": up})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(spec(request.app[API].settings.api.max_limit))


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(
        STATIC / "index.html",
        headers={
            "Cache-Control": "no-cache",
            "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
            "style-src 'self'; script-src 'self'",
        },
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC, append_version=False)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/v1/images/{image_id:.+}/thumbnail", thumbnail)
    app.router.add_get("/v1/images/{image_id:.+}", image)
    app.router.add_get("/v1/labels/{label:.+}", label)
    app.router.add_get("/v1/rejections", rejections)
    app.router.add_get("/v1/stats", stats)
    app.router.add_get("/v1/pipeline", pipeline)
