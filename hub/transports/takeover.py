"""Taking a long-lived connection's socket over from aiohttp.

aiohttp routes the request (middlewares, auth, metrics, access log) and then keeps, for as long as the
response lasts, a request handler, the parsed request, a parser, a writer and one or two tasks per
connection — ≈ 10 KB that a WebSocket or an event stream, idle for hours, never uses again. The hub's
WebSocket and SSE connections instead answer the request themselves (the ``101`` or the ``200`` head,
written whole) and become the socket's asyncio protocol: an idle connection is then one slotted
object, its subscriptions and the transport (≈ 2.3 KB in all; bench/README.md, idle capacity).

:func:`take_over` hands the socket over; the handler then returns a :class:`HandedOver` response (for
the middlewares, the metrics and the access log), which writes nothing.

How: the transport gets the connection as its protocol (``set_protocol``), and aiohttp's request handler
is told its connection is gone (``connection_lost``) having first been made to let go of the
transport, so that it ends its loop without closing the socket and its server no longer counts the
connection (the hub's own registry does: shutdown ends these connections itself). It happens inside
the route's handler, not later: once the handler returns, aiohttp takes an upgrade that no WebSocket
reader was set for as declined and reads what followed it as HTTP. tests/test_websocket_protocol.py and
tests/test_realtime_sse.py pin this, should aiohttp change.
"""

from __future__ import annotations

import asyncio

from aiohttp import web


def take_over(request: web.Request, head: bytes, protocol: asyncio.Protocol) -> bytes:
    """Write ``head`` (the response's status line and headers, and whatever should follow at once), then
    make ``protocol`` the socket's. Returns the bytes the client sent after an upgrade request and
    before this (RFC 6455 §4.1 says it must wait; some do not): the caller reads them first.
    Raises :class:`ConnectionResetError` if the client is already gone."""
    transport, handler = request.transport, request.protocol
    if transport is None or transport.is_closing():
        raise ConnectionResetError("the client went away before its response")
    transport.write(head)
    early: bytes = getattr(handler, "_message_tail", b"")
    transport.set_protocol(protocol)
    handler.transport = None
    handler.connection_lost(None)
    if not transport.is_reading():  # aiohttp may have paused it while the request was handled
        transport.resume_reading()
    return early


class HandedOver(web.StreamResponse):
    """What a handler returns after :func:`take_over`: its status is what was written; sending it
    writes nothing."""

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None
