"""Answers to requests that never reach the application: problem+json, like every other error.

A request aiohttp's HTTP parser refuses (a control byte in a header value, a malformed request line, a
bad chunk, a header line past the size limit) is answered by aiohttp's request handler itself, before
routing and before any middleware, as ``text/plain`` — and logged at ERROR with a traceback, so any
client could fill the log with "server errors" that are its own. :func:`install` makes that answer the
hub's: ``400 malformed_request`` (or ``500 internal_error`` for aiohttp's own failures) as RFC 9457
problem+json, the connection closed (the parser cannot find the next request), logged at DEBUG.

How: aiohttp 3 builds these answers in ``RequestHandler.handle_error`` and offers no hook to give the
server another handler class (``web.Server`` constructs ``RequestHandler`` itself), so the method is
replaced once per process. Every aiohttp server of the process answers this way then; the hub's process
has only the hub's. ``tests/test_http_errors.py`` pins it on raw sockets, should aiohttp change.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from hub.errors import problem_response

log = logging.getLogger(__name__)


def _handle_error(
    self: RequestHandler,
    request: Any,
    status: int = 500,
    exc: BaseException | None = None,
    message: str | None = None,
) -> web.StreamResponse:
    if status >= 500:
        # aiohttp's own failure: keep its ERROR log (a bug to look at), answer in our format
        self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        code, detail = "internal_error", "the server failed to handle the request"
    else:
        # the client's: worth a DEBUG line, not a traceback at ERROR
        log.debug("malformed HTTP request from %s: %s", request.remote, message or exc)
        code, detail = "malformed_request", f"not a valid HTTP/1.1 request: {_first_line(message)}"
    if request.writer.output_size > 0:  # a response had begun: nothing more can be said on this one
        raise ConnectionError("Response is sent already, cannot send another response with the error message")
    response = problem_response(status, code, HTTPStatus(status).phrase, detail)
    # no route matched, so the app's on_response_prepare (hub/browsers.security_headers) will not run
    response.headers["Server"] = "synchub"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.force_close()
    return response


def _first_line(message: str | None) -> str:
    """aiohttp's parser messages repeat the offending bytes on further lines: the first says what."""
    line = (message or "").strip().splitlines()[0:1]
    return line[0].rstrip(":") if line else "malformed"


def install() -> None:
    """Make aiohttp's own answers problem+json (idempotent)."""
    RequestHandler.handle_error = _handle_error  # type: ignore[method-assign]
