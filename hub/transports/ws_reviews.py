"""Review documents over WebSocket: ``sync`` and ``push`` messages that name a ``review`` instead of a
``cart`` (docs/protocol.md). The same rules as REST (``hub/reviews.py``, storage/reviews.py): a push is
answered ``ack`` only once merged, judged and committed; a refused one is an ``error`` with the
refusal's code and changes nothing. A review that does not exist (or is another user's) syncs as
empty: a device creates one by pushing the delta that names it.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Protocol

from aiohttp import web

from crdt.wire import encode_context
from hub.auth import Principal
from hub.carts import CartInputError, read_context, read_mutation_id
from hub.keys import STORE
from hub.media import owned_media
from hub.metrics import Metrics
from hub.reviews import RULES, decode_review_delta, encode_review, new_media, screen, sync_reply
from storage.carts import PushStatus
from storage.reviews import ReviewPush


class Connection(Protocol):
    app: web.Application
    binary: bool
    metrics: Metrics
    principal: Principal | None

    def send(self, message: dict[str, Any]) -> None: ...


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def document_writer(principal: Principal | None, message: dict[str, Any], what: str) -> tuple[Principal, str]:
    """The connection's user, who may write documents (carts, reviews), and the id the message names
    in its field ``what``; CartInputError with a stable code if either is missing."""
    if principal is None:
        raise CartInputError("unauthenticated", f"{what}s need a bearer token on the connection")
    if "customer" not in principal.roles:
        raise CartInputError("forbidden", f"editing a {what} needs the customer role")
    raw = message.get(what)
    if isinstance(raw, str) and _CANONICAL_UUID.fullmatch(raw):
        return principal, raw  # already as str(UUID) writes it: parsing would give it back (~6 µs a push)
    try:
        if isinstance(raw, str):
            return principal, str(uuid.UUID(raw))
    except ValueError:
        pass
    raise CartInputError(f"invalid_{what}", f"{what} is the {what}'s UUID")


def _author(conn: Connection, message: dict[str, Any]) -> tuple[Principal, str]:
    return document_writer(conn.principal, message, "review")


async def review_sync(conn: Connection, message: dict[str, Any], echo: dict[str, Any]) -> None:
    principal, review_id = _author(conn, message)
    context = read_context(message.get("context"))
    document = await conn.app[STORE].get_review(review_id)
    if document is not None and document.author != principal.sub:
        document = None  # another's review: not revealed
    state = document.review if document is not None else None
    lacking = sync_reply(state, context)
    conn.send(
        {
            "type": "synced",
            "review": review_id,
            "version": 0 if document is None else document.version,
            "status": None if document is None else document.status.value,
            "delta": None if lacking is None else encode_review(lacking, conn.binary),
            "context": None if state is None else encode_context(state.context),
            **echo,
        }
    )


async def review_push(conn: Connection, message: dict[str, Any], echo: dict[str, Any]) -> None:
    principal, review_id = _author(conn, message)
    mutation_id = read_mutation_id(message.get("mutation_id"))
    delta = decode_review_delta(message.get("delta"), conn.binary)
    store = conn.app[STORE]
    added = new_media(delta, None)
    if added:  # (the review is read only when the delta names media: most pushes don't)
        current = await store.get_review(review_id)
        added = new_media(delta, current.review if current is not None else None)
    if added and await owned_media(conn.app, principal.sub, added):
        conn.metrics.review_pushes.labels(PushStatus.REFUSED.value).inc()
        conn.send(
            {
                "type": "error",
                "code": "unknown_media",
                "message": "media ids must name your own uploads (POST /api/v1/media)",
                "review": review_id,
                "mutation_id": mutation_id,
                **echo,
            }
        )
        return
    result = await store.push_review(
        review_id, principal.sub, [ReviewPush(mutation_id, delta)], RULES, screen
    )
    outcome = result.outcomes[0]
    conn.metrics.review_pushes.labels(outcome.status.value).inc()
    if outcome.status is PushStatus.REFUSED:
        conn.send(
            {
                "type": "error",
                "code": outcome.code,
                "message": outcome.message,
                "review": review_id,
                "mutation_id": mutation_id,
                **echo,
            }
        )
        return
    document = result.document
    conn.send(
        {
            "type": "ack",
            "review": review_id,
            "mutation_id": mutation_id,
            "status": outcome.status.value,
            "version": outcome.version,
            "review_status": None if document is None else document.status.value,
            "reasons": [] if document is None else list(document.reasons),
            **echo,
        }
    )
