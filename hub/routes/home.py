"""The hub's own pages: ``/`` (the live stock of the node's region, over the hub's SSE), ``/api-docs`` (a
reader of ``/api/v1/openapi.json``), their script and style sheet, and ``docs/protocol.md``.

The files are shipped in the package (``hub/static``), read once, and need no network but the hub: no CDN,
no third-party script. Every page is served with a Content-Security-Policy that lets it load only this
origin's scripts and styles and connect only to this origin (no inline script, no frames, no forms), and
``X-Frame-Options: DENY``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources

from aiohttp import web

from hub.errors import NotFoundError
from hub.responses import content_etag, not_modified

PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self';"
    " base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# docs/protocol.md, which hub/static/protocol.md links to: the checkout's own file, and in a wheel (whose
# build copies what a link names) its copy, so an installed hub serves it too.
PROTOCOL_DOC = "protocol.md"


@dataclass(frozen=True)
class Asset:
    path: str
    name: str  # the route's name (hub/authz.py TABLE, hub/ratelimit/classes.py)
    file: str  # in hub/static
    content_type: str


ASSETS = (
    Asset("/", "home", "index.html", "text/html"),
    Asset("/api-docs", "api_docs", "api-docs.html", "text/html"),
    Asset("/static/home.js", "home_js", "home.js", "text/javascript"),
    Asset("/static/api-docs.js", "api_docs_js", "api-docs.js", "text/javascript"),
    Asset("/static/synchub.css", "page_css", "synchub.css", "text/css"),
    Asset("/static/favicon.svg", "favicon", "favicon.svg", "image/svg+xml"),
    # where a browser looks for an icon on a page that names none (the Markdown document)
    Asset("/favicon.ico", "favicon_ico", "favicon.svg", "image/svg+xml"),
)


@cache
def _read(file: str) -> tuple[bytes, str]:
    body = resources.files("hub").joinpath("static").joinpath(file).read_bytes()
    return body, content_etag(body)


def _respond(request: web.Request, body: bytes, etag: str, content_type: str) -> web.Response:
    headers = {
        "ETag": etag,
        # revalidated at every load (a 304 while unchanged): a new version of the hub shows at once
        "Cache-Control": "no-cache",
        "Referrer-Policy": "no-referrer",
    }
    if content_type == "text/html":
        headers["Content-Security-Policy"] = PAGE_CSP
        headers["X-Frame-Options"] = "DENY"
    if not_modified(request, etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=headers)


def _asset_handler(asset: Asset) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        body, etag = _read(asset.file)
        return _respond(request, body, etag, asset.content_type)

    handler.__name__ = asset.name
    return handler


async def protocol_doc(request: web.Request) -> web.StreamResponse:
    try:
        body, etag = _read(PROTOCOL_DOC)
    except OSError:
        raise NotFoundError(
            "docs/protocol.md is missing from this installation", code="document_not_found"
        ) from None
    return _respond(request, body, etag, "text/markdown")


routes = web.RouteTableDef()
for _asset in ASSETS:
    routes.get(_asset.path, name=_asset.name)(_asset_handler(_asset))
routes.get("/docs/protocol.md", name="protocol_doc")(protocol_doc)
