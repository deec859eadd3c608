"""/api/v1/realtime/tickets: a ticket for a browser's EventSource or WebSocket (hub/tickets.py).

POST /api/v1/realtime/tickets   (any user's token, in the header) → {"ticket", "expires_at"}
"""

from __future__ import annotations

from aiohttp import web

from hub.auth import require
from hub.keys import SETTINGS
from hub.responses import iso, json_response
from hub.tickets import TICKET_SECONDS, issue_ticket

routes = web.RouteTableDef()


@routes.post("/api/v1/realtime/tickets", name="create_ticket")
async def create_ticket(request: web.Request) -> web.StreamResponse:
    who = require(request)
    ticket, expires = issue_ticket(request.app[SETTINGS].jwt_secret, who)
    return json_response(
        {"ticket": ticket, "expires_at": iso(expires * 1_000_000), "ttl": TICKET_SECONDS},
        status=201,
        headers={"Cache-Control": "no-store"},
    )
