"""The API's OpenAPI 3.1 description (served at /openapi.json), built from one table."""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}


def _resp(desc: str, codes: tuple[int, ...] = (400, 401, 503)) -> dict[str, Any]:
    out: dict[str, Any] = {
        "200": {
            "description": desc,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    }
    for c in codes:
        out[str(c)] = {
            "description": {
                400: "bad input",
                401: "no or wrong token",
                404: "not found",
                503: "Cassandra unavailable",
            }[c],
            "content": {"application/json": {"schema": _ERROR}},
        }
    return out


def _q(name: str, desc: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "description": desc,
        "required": required,
        "schema": schema,
    }


def _p(name: str, desc: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": desc,
        "schema": {"type": "string", "maxLength": 200},
    }


LIMIT = _q("limit", "rows per page (1..max_limit)", {"type": "integer", "minimum": 1})
PAGE = _q("page", "the `next_page` token of the previous answer", {"type": "string"})


def spec(max_limit: int) -> dict[str, Any]:
    limit = {**LIMIT, "schema": {"type": "integer", "minimum": 1, "maximum": max_limit}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "torchstream read API",
            "version": "1",
            "description": "Stored predictions and rejections, read at LOCAL_QUORUM. "
            "Send `Authorization: Bearer <token>` on /v1/*.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
                }
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/images/{image_id}": {
                "get": {
                    "summary": "one image: its prediction (top-k, model, stage times) or rejection",
                    "parameters": [
                        _p("image_id", "the image id (sha256 of the bytes or supplied)")
                    ],
                    "responses": _resp(
                        "status 'prediction' or 'rejected' with the stored row",
                        (400, 401, 404, 503),
                    ),
                }
            },
            "/v1/images/{image_id}/thumbnail": {
                "get": {
                    "summary": "a JPEG thumbnail read from images.raw while it is in retention",
                    "parameters": [_p("image_id", "the image id")],
                    "responses": {
                        "200": {"description": "image/jpeg"},
                        "404": {
                            "description": "no prediction, or out of retention",
                            "content": {"application/json": {"schema": _ERROR}},
                        },
                    },
                }
            },
            "/v1/labels/{label}": {
                "get": {
                    "summary": "images whose top-1 label is `label`, by image id, paged",
                    "parameters": [_p("label", "a class label, e.g. 'tabby cat'"), limit, PAGE],
                    "responses": _resp("{label, items, next_page}", (400, 401, 404, 503)),
                }
            },
            "/v1/rejections": {
                "get": {
                    "summary": "rejections, newest first, optionally of one reason, paged",
                    "parameters": [
                        _q("reason", "e.g. undecodable", {"type": "string"}),
                        limit,
                        PAGE,
                    ],
                    "responses": _resp("{items, next_page, reasons}", (400, 401, 404, 503)),
                }
            },
            "/v1/stats": {
                "get": {
                    "summary": "counts by label and reason, newest predictions",
                    "responses": _resp("stats"),
                }
            },
            "/v1/pipeline": {
                "get": {
                    "summary": "the stream stages from the workers' health",
                    "responses": _resp("{stages, workers}", (401,)),
                }
            },
            "/healthz": {
                "get": {
                    "summary": "liveness and Cassandra reachability (no token)",
                    "security": [],
                    "responses": {
                        "200": {"description": "ok"},
                        "503": {"description": "Cassandra unreachable"},
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "this description (no token)",
                    "security": [],
                    "responses": {"200": {"description": "OpenAPI 3.1"}},
                }
            },
        },
    }
