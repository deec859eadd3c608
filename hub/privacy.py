"""A user's personal data, the hub's side: the profile's fields sealed and opened (hub/pii.py), an
erased user's pseudonym, the export and the erasure. storage/privacy.py states what the store does.

**Pseudonyms.** ``erased:`` and 32 hex digits of HMAC-SHA256(k, sub), k = HMAC-SHA256(the JWT secret,
"synchub pseudonym") (derived, as the media URLs' key is): the same subject always gets the same
pseudonym, so an erased user's reservations and audit entries still read as one person's, and
nobody without the secret can tell whose.

**Erasure**, in the order that lets it be run again until it is done (each step is idempotent):

1. each of the user's reviews not yet erased is erased through the review path — the store's
   ``push_review`` with the CRDT's absorbing erasure (``Review.erase`` on the user's REST replica),
   which moves the product's aggregate and announces ``review.removed`` and ``rating.changed`` when
   it was published, and ``review.status`` to the user. An offline device's later push cannot bring
   the content back: the erasure absorbs it, and once the author is the pseudonym the push is not
   even the user's (``review_not_found``);
2. the user's uploads are deleted from the media store (hub/media.py ``delete_media_of``: those
   its owner index lists and those the user's reviews named), so no signed URL given out before
   serves them any more;
3. the store's ``erase_user``, one transaction: carts deleted (``cart.deleted`` on each cart's channel,
   ``cart.status`` on the user's), reservations, erased reviews' authors, votes, reports and audit
   entries pseudonymised, the profile deleted, personalization's events, consent and preferences
   deleted, and the erasure's own audit entry (actor: the admin, or the pseudonym when users erase
   themselves; target: the pseudonym).
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from dataclasses import replace
from typing import Any

from aiohttp import web

from hub.audit import entry_for, mark_recorded, render_entry
from hub.auth import Principal
from hub.behaviour import render_behaviour
from hub.carts import render_cart
from hub.errors import ApiError
from hub.keys import PII_KEYS, SETTINGS, STORE
from hub.media import delete_media_of, media_of, signed_url
from hub.pii import Keyring
from hub.responses import iso
from hub.reviews import RULES, render_review, rest_replica, screen
from hub.routes.reservations import with_iso_times
from storage.carts import PushStatus
from storage.models import reservation_to_dict
from storage.privacy import PSEUDONYM_PREFIX, Erasure, UserProfile
from storage.reviews import ReviewPush, ReviewStatus

SEALED_FIELDS = ("email", "phone")
_PSEUDONYM_LABEL = b"synchub pseudonym"


def pseudonym(jwt_secret: str, sub: str) -> str:
    key = hmac.new(jwt_secret.encode(), _PSEUDONYM_LABEL, hashlib.sha256).digest()
    return PSEUDONYM_PREFIX + hmac.new(key, sub.encode(), hashlib.sha256).hexdigest()[:32]


def seal_profile(keyring: Keyring, sub: str, fields: dict[str, Any]) -> UserProfile:
    """The profile to store: ``display_name`` in clear, email and phone encrypted under the current key,
    every one of them anew (a write rewrites what an older key sealed)."""
    sealed = {
        name: keyring.encrypt(sub, name, fields[name]) if fields.get(name) is not None else None
        for name in SEALED_FIELDS
    }
    return UserProfile(
        sub=sub,
        display_name=fields.get("display_name"),
        email_ciphertext=sealed["email"],
        phone_ciphertext=sealed["phone"],
        key_id=keyring.current if any(v is not None for v in sealed.values()) else None,
    )


def render_profile(keyring: Keyring, sub: str, profile: UserProfile | None) -> dict[str, Any]:
    """The profile as its user reads it (a user with none yet: every field null, version 0).
    PiiError if a field does not decrypt."""
    if profile is None:
        return {
            "sub": sub,
            "display_name": None,
            "email": None,
            "phone": None,
            "version": 0,
            "created_at": None,
            "updated_at": None,
        }
    return {
        "sub": sub,
        "display_name": profile.display_name,
        "email": None
        if profile.email_ciphertext is None
        else keyring.decrypt(sub, "email", profile.email_ciphertext),
        "phone": None
        if profile.phone_ciphertext is None
        else keyring.decrypt(sub, "phone", profile.phone_ciphertext),
        "version": profile.version,
        "created_at": iso(profile.created_at),
        "updated_at": iso(profile.updated_at),
    }


async def export(app: web.Application, sub: str) -> dict[str, Any]:
    """Everything held about ``sub``, as JSON (docs/api.md, "Privacy")."""
    data = await app[STORE].user_data(sub)
    settings = app[SETTINGS]
    author = Principal(sub=sub, roles=frozenset({"customer"}), expires_at=0)
    return {
        "sub": sub,
        "exported_at": iso(time.time_ns() // 1000),
        "profile": None if data.profile is None else render_profile(app[PII_KEYS], sub, data.profile),
        "carts": [render_cart(document) for document in data.carts],
        "reviews": [render_review(document, author) for document in data.reviews],
        "helpful_votes": [{"review_id": v.review_id, "created_at": iso(v.created_at)} for v in data.votes],
        "reports": [
            {"review_id": r.review_id, "reason": r.reason, "created_at": iso(r.created_at)}
            for r in data.reports
        ],
        "reservations": [with_iso_times(reservation_to_dict(r)) for r in data.reservations],
        "media": [
            {
                "id": record.id,
                "content_type": record.content_type,
                "size": record.size,
                "created_at": iso(record.created_at),
                "url": signed_url(settings.jwt_secret, record.id, settings.media_url_ttl_seconds)[0],
            }
            for record in await media_of(app, sub, [m for document in data.reviews for m in document.media])
        ],
        "devices": [{"replica_id": d.replica_id, "created_at": iso(d.created_at)} for d in data.devices],
        "audit": [render_entry(entry) for entry in data.audit],
        "personalization": render_behaviour(sub, data.behaviour, app[SETTINGS].event_retention_days),
    }


async def erase(request: web.Request, who: Principal, sub: str, action: str) -> Erasure:
    """Erase ``sub`` (the module's "Erasure"), recording it as ``action`` by ``who``."""
    app = request.app
    store = app[STORE]
    replica = rest_replica(sub)
    erased = 0
    reviews = (await store.user_data(sub)).reviews
    for document in reviews:
        if document.status is ReviewStatus.ERASED:
            continue
        push = ReviewPush(f"erasure-{uuid.uuid4()}", lambda review: review.erase(replica))
        result = await store.push_review(document.id, sub, [push], RULES, screen)
        outcome = result.outcomes[0]
        if outcome.status is PushStatus.REFUSED:  # (an erasure breaks no rule: a bug, if it happens)
            raise ApiError(
                f"review {document.id} could not be erased ({outcome.code}); erasing again resumes",
                code="erasure_incomplete",
            )
        erased += 1
    media = await delete_media_of(app, sub, [m for document in reviews for m in document.media])
    alias = pseudonym(app[SETTINGS].jwt_secret, sub)
    actor = who if who.sub != sub else replace(who, sub=alias)
    detail = {"reviews_erased": erased, "media_deleted": media}
    entry = entry_for(request, actor, action, ("user", alias), detail)
    mark_recorded(request)
    return await store.erase_user(sub, alias, entry)
