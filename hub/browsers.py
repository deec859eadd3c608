"""What the hub tells browsers, and what it checks of them: the Origin of real-time connections, CORS for
the REST API, and the security headers of every response.

**Origin (WebSocket upgrades and SSE streams).** A browser sends ``Origin`` with both; a page of another
site could otherwise open a connection with the user's credentials (cross-site WebSocket hijacking). A
request with no ``Origin`` (not a browser) is let through; one whose origin is the hub's own (same
scheme, host and port as the request's ``Host``) too; any other must be in ``--allowed-origins``
(``*``: any). Refused: 403 ``origin_not_allowed``.

**CORS (REST).** An origin in ``--cors-origins`` (``*``: any) may call the API from a page: its requests
get ``Access-Control-Allow-Origin`` (that origin, with ``Vary: Origin``), and its preflights the
methods and headers the API takes. Credentials travel as bearer tokens, never cookies, so no
``Allow-Credentials``. Other origins get no CORS headers, and the browser keeps the response from the
page.

**Headers.** Every response: ``X-Content-Type-Options: nosniff`` and ``Server: synchub``. A response to
an authenticated request is private: ``Cache-Control: no-store`` unless the route chose its own. Over
TLS (``--tls-cert``, :mod:`hub.tls`), ``Strict-Transport-Security``; never over plain HTTP, where a
browser would ignore it and a man in the middle could forge or strip it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from hub.errors import Forbidden
from hub.keys import PRINCIPAL, SETTINGS
from hub.tls import HSTS

ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type, Idempotency-Key, If-Match, If-None-Match, Last-Event-ID"
EXPOSED_HEADERS = (
    "ETag, Location, Retry-After, Idempotent-Replayed, Link, RateLimit, RateLimit-Policy, X-Request-Id"
)
PREFLIGHT_MAX_AGE = "600"


def _own_origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def check_origin(request: web.Request) -> None:
    """Forbidden(origin_not_allowed) unless the request may open a real-time connection (see above)."""
    origin = request.headers.get("Origin")
    if origin is None or origin == _own_origin(request):
        return
    allowed = request.app[SETTINGS].allowed_origins
    if "*" in allowed or origin in allowed:
        return
    raise Forbidden(
        f"pages of {origin[:100]} may not open real-time connections here (--allowed-origins)",
        code="origin_not_allowed",
    )


def _cors_origin(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    allowed = request.app[SETTINGS].cors_origins
    return origin if "*" in allowed or origin in allowed else None


@web.middleware
async def cors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    origin = _cors_origin(request)
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        if origin is None:
            raise Forbidden(
                "this origin may not call the API from a page (--cors-origins)", code="cors_refused"
            )
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": ALLOWED_METHODS,
                "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
                "Vary": "Origin",
            },
        )
    response = await handler(request)
    if origin is not None and not response.prepared:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        response.headers.add("Vary", "Origin")
    return response


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the headers every response carries (see the module docstring)."""
    headers = response.headers
    headers["Server"] = "synchub"  # aiohttp's default names its and Python's versions
    headers.setdefault("X-Content-Type-Options", "nosniff")
    if request.secure:  # this connection is TLS: a node serving --tls-cert
        headers["Strict-Transport-Security"] = HSTS
    if request.get(PRINCIPAL) is not None and "Cache-Control" not in headers:
        headers["Cache-Control"] = "no-store"
