"""Reviews on the wire, shared by the REST routes and the WebSocket messages: decoding a device's review
deltas (with a stable code for every refusal), the deltas the hub mints for REST edits, who may read
what, and rendering a review for its reader.

A review's delta travels in the codec's form of the connection, as a cart's does (``hub/carts.py``):
``{"t": "review", "v": 1, "s": …}`` in JSON, MessagePack bytes in ``synchub.msgpack`` frames. Media are
referenced by their media ids (``POST /api/v1/media``); a delta that adds an id that is not one of the
author's uploads is ``unknown_media`` and changes nothing.

Readers: a published review is anyone's; an unpublished one is its author's, moderators' and admins'
only — for anyone else it does not exist (``review_not_found``). Reasons, conflicts and the causal
context are shown to the author and moderators only.
"""

from __future__ import annotations

import functools
import hashlib
import time
from typing import Any

from crdt import codec
from crdt.context import CausalContext
from crdt.hlc import Timestamp
from crdt.review import Review
from crdt.wire import encode_context
from hub.auth import Principal
from hub.carts import decode_document_delta, read_push_list
from hub.moderation import TextScreener
from hub.responses import iso
from storage.reviews import ReviewDocument, ReviewPush, ReviewRules, ReviewStatus, Screening

# The rules and the automatic screen every review write is held to, on every route and transport.
RULES = ReviewRules()
_SCREEN = TextScreener()


@functools.lru_cache(maxsize=4096)
def screen(text: str | None, rating: int | None, media_count: int) -> Screening:
    """The screen, remembered per content: it is deterministic, runs inside the store's write
    transaction (up to ~1 ms for 5,000 characters), and a review is judged again on every edit,
    most of which (a rating, a photo) leave its text as it was."""
    return _SCREEN(text, rating, media_count)


MODERATOR_ROLES = frozenset({"moderator", "admin"})


def is_moderator(principal: Principal | None) -> bool:
    return principal is not None and bool(principal.roles & MODERATOR_ROLES)


def may_read(principal: Principal | None, document: ReviewDocument) -> bool:
    if document.status is ReviewStatus.PUBLISHED:
        return True
    if document.status is ReviewStatus.ERASED:
        return is_moderator(principal)
    return principal is not None and (principal.sub == document.author or is_moderator(principal))


def decode_review_delta(raw: Any, binary: bool) -> Review:
    return decode_document_delta(raw, binary, Review, "review")


def read_review_pushes(raw: Any, binary: bool = False) -> list[ReviewPush]:
    """``[{"mutation_id": …, "delta": …}, …]``; CartInputError names the first bad one."""
    return [
        ReviewPush(m, d) for m, d in read_push_list(raw, lambda delta: decode_review_delta(delta, binary))
    ]


def encode_review(state: Review, binary: bool) -> Any:
    return codec.to_msgpack(state) if binary else codec.to_dict(state)


def sync_reply(review: Review | None, context: CausalContext) -> Review | None:
    """What a device whose context is ``context`` lacks: None if nothing, else the whole state (a review
    is small, and a state is a delta). The server's judgment carries no dot, so a device that holds
    every dot of a judged review may still lack its newest judgment: a judged review is always sent."""
    if review is None or (context.includes(review.context) and review.moderation is None):
        return None
    return review


def new_media(delta: Review, review: Review | None) -> list[str]:
    """The media ids ``delta`` adds that ``review`` does not hold yet (those are checked as uploads)."""
    value = delta.value()
    if value is None:
        return []
    current = None if review is None else review.value()
    held = set() if current is None else set(current.media)
    return [m for m in value.media if m not in held]


def rest_replica(sub: str) -> str:
    """The replica a user's REST edits are minted for: one per user, bound to them on first use."""
    return "rest." + hashlib.sha256(sub.encode()).hexdigest()[:20]


def stamp(review: Review, replica: str) -> Timestamp:
    """A timestamp later than every write the review holds: a REST edit is the latest when it arrives."""
    now = time.time_ns() // 1_000_000
    latest = review.max_timestamp()
    if latest is not None and latest.wall_ms >= now:
        return Timestamp(latest.wall_ms, latest.logical + 1, replica)
    return Timestamp(now, 0, replica)


def render_review(
    document: ReviewDocument, viewer: Principal | None, media_urls: dict[str, str] | None = None
) -> dict[str, Any]:
    urls = media_urls or {}
    out: dict[str, Any] = {
        "id": document.id,
        "product_id": document.product_id,
        "author": document.author,
        "status": document.status.value,
        "rating": document.rating,
        "text": document.text,
        "media": [{"id": m, "url": urls.get(m)} for m in document.media],
        "helpful": document.helpful,
        "version": document.version,
        "created_at": iso(document.created_at),
        "updated_at": iso(document.updated_at),
    }
    if viewer is not None and (viewer.sub == document.author or is_moderator(viewer)):
        out["reasons"] = list(document.reasons)
        if is_moderator(viewer):
            out["reports"] = document.reports
        review = document.review
        if review is not None:
            value = review.value()
            out["conflicts"] = {
                "rating": list(value.rating_conflicts) if value is not None else [],
                "text": list(value.text_conflicts) if value is not None else [],
            }
            out["context"] = encode_context(review.context)
    return out


def review_links(document: ReviewDocument) -> dict[str, str]:
    return {"self": f"/api/v1/reviews/{document.id}", "product": f"/api/v1/products/{document.product_id}"}
