"""Operations: liveness, readiness, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

from aiohttp import web

from hub.auth import require
from hub.errors import ServiceUnavailable
from hub.keys import METRICS, SETTINGS, STORE
from hub.openapi import openapi_document
from hub.responses import json_response
from storage.errors import StoreError

routes = web.RouteTableDef()


@routes.get("/healthz", name="healthz")
async def healthz(request: web.Request) -> web.StreamResponse:
    return json_response({"status": "ok", "node_id": request.app[SETTINGS].node_id})


@routes.get("/readyz", name="readyz")
async def readyz(request: web.Request) -> web.StreamResponse:
    try:
        await request.app[STORE].ping()
    except StoreError as exc:
        raise ServiceUnavailable(f"the store is not reachable: {exc}", code="store_unavailable") from exc
    return json_response({"status": "ready", "store": request.app[STORE].backend})


@routes.get("/metrics", name="metrics")
async def metrics(request: web.Request) -> web.StreamResponse:
    if not request.app[SETTINGS].metrics_public:
        # (the counters tell an outsider the hub's load, its clients and its failures)
        require(request, "admin", "service")
    return web.Response(
        body=request.app[METRICS].render(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


@routes.get("/api/v1/openapi.json", name="openapi")
async def openapi(request: web.Request) -> web.StreamResponse:
    return json_response(openapi_document())
