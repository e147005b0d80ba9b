"""JSON errors: every failure the API returns is `{"error": code, "message": text}`.

`middleware` turns aiohttp's own HTTP errors (404 route, 405 method, 413/414 sizes) into
that body, maps Cassandra unavailability to 503, and turns anything unexpected into a
500 whose body says only that: the traceback goes to the log, never to the client.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A client-facing error with its status and a stable code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def json_error(
    status: int, code: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    return web.json_response(
        {"error": code, "message": message, **extra}, status=status, headers=headers
    )


def _unavailable(exc: BaseException) -> bool:
    """Cassandra could not reach the read consistency (or no host answered) in time."""
    try:
        from cassandra import OperationTimedOut, ReadTimeout, Unavailable
        from cassandra.cluster import NoHostAvailable
        from cassandra.connection import ConnectionException
    except ImportError:  # pragma: no cover - the driver is a dependency
        return False
    return isinstance(
        exc, Unavailable | ReadTimeout | OperationTimedOut | NoHostAvailable | ConnectionException
    )


@web.middleware
async def middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return json_error(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_") if exc.reason else "http_error"
        return json_error(
            exc.status,
            code,
            exc.reason or "error",
            headers={k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate")},
        )
    except Exception as exc:
        if _unavailable(exc):
            log.warning("%s %s: Cassandra unavailable: %s", request.method, request.path, exc)
            return json_error(
                503,
                "unavailable",
                "the database did not answer at the read consistency; retry shortly",
                headers={"Retry-After": "2"},
            )
        incident = uuid.uuid4().hex[:12]
        log.exception("%s %s failed (incident %s)", request.method, request.path, incident)
        return json_error(
            500, "internal", "unexpected error; see the server log", incident=incident
        )
