"""Real-time tickets: how a browser opens an EventSource or a WebSocket without putting its token in a URL.

A browser cannot set headers on those two requests, and a token in a URL ends up in proxies' logs,
browser history and Referer headers. So tokens in URLs are refused by default (``--tokens-in-urls``
turns them back on), and a page instead asks ``POST /api/v1/realtime/tickets`` (with its token, in the
header) for a ticket: an opaque string, signed by the hub, good for **30 seconds** and **once**, that it
puts in the URL as ``?ticket=…``. The connection it opens holds the token's principal and ends when the
token would have expired (as with the token itself).

Once means once across every node of the deployment: a ticket's id is recorded in the database when it
is used, and a second use is refused (``ticket_used``). An EventSource that reconnects by itself
reuses its URL, so a page listens for the error, asks for a new ticket and opens a new stream (with
``Last-Event-ID``, nothing is lost).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid

import orjson
from aiohttp import web

from hub.auth import Principal
from hub.errors import Unauthenticated
from hub.keys import SETTINGS, STORE

TICKET_SECONDS = 30


def _key(secret: str) -> bytes:
    return hmac.new(secret.encode(), b"synchub realtime ticket", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_ticket(secret: str, principal: Principal, now: float | None = None) -> tuple[str, int]:
    """A ticket for ``principal`` and its expiry (epoch seconds)."""
    issued = int(now if now is not None else time.time())
    expires = min(issued + TICKET_SECONDS, principal.expires_at)
    payload = orjson.dumps(
        {
            "sub": principal.sub,
            "roles": sorted(principal.roles),
            "exp": principal.expires_at,
            "texp": expires,
            "jti": uuid.uuid4().hex,
        }
    )
    body = _b64(payload)
    signature = _b64(hmac.new(_key(secret), body.encode(), hashlib.sha256).digest())
    return f"{body}.{signature}", expires


def read_ticket(secret: str, ticket: str, now: float | None = None) -> tuple[Principal, str, int]:
    """(the principal, the ticket's id, its expiry) of a well-signed, unexpired ticket; Unauthenticated
    (``invalid_ticket``, ``ticket_expired``) if not. Whether it was used before is the store's."""
    body, _, signature = ticket.partition(".")
    expected = _b64(hmac.new(_key(secret), body.encode(), hashlib.sha256).digest())
    if not body or not hmac.compare_digest(signature, expected):
        raise Unauthenticated("the ticket is not one this hub issued", code="invalid_ticket")
    try:
        claims = orjson.loads(_unb64(body))
        principal = Principal(str(claims["sub"]), frozenset(claims["roles"]), int(claims["exp"]))
        jti, expires = str(claims["jti"]), int(claims["texp"])
    except (ValueError, KeyError, TypeError) as exc:
        raise Unauthenticated("the ticket is not one this hub issued", code="invalid_ticket") from exc
    if (now if now is not None else time.time()) >= expires:
        raise Unauthenticated("the ticket expired: ask for a new one", code="ticket_expired")
    return principal, jti, expires


async def redeem(request: web.Request, ticket: str) -> Principal:
    """The ticket's principal, recording its use: a second use anywhere is ``ticket_used``."""
    principal, jti, expires = read_ticket(request.app[SETTINGS].jwt_secret, ticket)
    if not await request.app[STORE].use_ticket(jti, expires * 1_000_000):
        raise Unauthenticated("the ticket was used already: ask for a new one", code="ticket_used")
    return principal
