"""Small helpers shared by several route modules."""

from __future__ import annotations

from aiohttp import web

from hub.keys import RELAY


def notify_relay(request: web.Request) -> None:
    """Wake this node's outbox relay: a stock change was just committed."""
    relay = request.app[RELAY]
    if relay is not None:
        relay.notify()
