"""Behaviour events in, recommendations out, and the consent that lets the one feed the other.

    POST /api/v1/events                 a batch of the caller's events (hub/behaviour.py), taken only
                                        while their consent is granted (403 consent_required: nothing stored)
    GET  /api/v1/me/consent             the caller's consent to personalization
    PUT  /api/v1/me/consent             {"status": "granted" | "revoked"}: revoking deletes their events,
                                        preferences and recent products, and stops collection
    GET  /api/v1/me/recommendations     ranked products (hub/recommendations.py): ?limit=, ?attr.<key>=;
                                        ETag, Cache-Control: private, If-None-Match → 304

Customers only: the events and the lists are a shopper's. docs/api.md, "Personalization".
"""

from __future__ import annotations

import time

from aiohttp import web

from hub.auth import require
from hub.behaviour import decode_batch, read_batch_body, render_consent
from hub.errors import Forbidden
from hub.keys import PERSONALIZATION, SETTINGS, STORE
from hub.recommendations import DEFAULT_LIMIT, MAX_LIMIT, parse_filters, rank
from hub.responses import iso, json_response, not_modified
from hub.validation import Field, choice, query_int, read_json, validate
from storage.behaviour import ConsentRequired, ConsentStatus

routes = web.RouteTableDef()

CONSENT_FIELDS = {"status": Field(choice(*(s.value for s in ConsentStatus)), required=True)}
_DAY_US = 86_400 * 10**6


@routes.post("/api/v1/events", name="post_events")
async def post_events(request: web.Request) -> web.StreamResponse:
    who = require(request, "customer")
    settings = request.app[SETTINGS]
    body = await read_batch_body(request)
    now = time.time_ns() // 1000
    retention_us = settings.event_retention_days * _DAY_US
    events = decode_batch(body, now, retention_us, settings.region)
    try:
        ingested = await request.app[STORE].ingest_events(who.sub, events, retention_us)
    except ConsentRequired as exc:
        raise Forbidden(
            "personalization needs the user's consent (PUT /api/v1/me/consent); nothing was stored",
            code="consent_required",
        ) from exc
    request.app[PERSONALIZATION].ingested(who.sub, ingested)
    return json_response(
        {"accepted": ingested.stored, "expires_at": iso(min(e.ts for e in events) + retention_us)}
    )


@routes.get("/api/v1/me/consent", name="get_consent")
async def get_consent(request: web.Request) -> web.StreamResponse:
    who = require(request, "customer")
    consent = await request.app[STORE].get_consent(who.sub)
    return json_response(render_consent(who.sub, consent, request.app[SETTINGS].event_retention_days))


@routes.put("/api/v1/me/consent", name="put_consent")
async def put_consent(request: web.Request) -> web.StreamResponse:
    who = require(request, "customer")
    fields = validate(await read_json(request), CONSENT_FIELDS)
    change = await request.app[STORE].set_consent(who.sub, ConsentStatus(fields["status"]))
    # The list changes with consent (revoked: the region's trending products). Told wherever the user
    # listens: the event is written only if the list differs from the last one told (hub/personalization.py).
    request.app[PERSONALIZATION].touch(who.sub)
    return json_response(
        {
            **render_consent(who.sub, change.consent, request.app[SETTINGS].event_retention_days),
            "events_deleted": change.events_deleted,
            "preferences_deleted": change.preferences_deleted,
        }
    )


@routes.get("/api/v1/me/recommendations", name="get_recommendations")
async def get_recommendations(request: web.Request) -> web.StreamResponse:
    who = require(request, "customer")
    limit = query_int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    filters = parse_filters(list(request.query.items()))
    signals = await request.app[STORE].recommendation_signals(who.sub, request.app[SETTINGS].region)
    ranked = rank(signals, filters, limit)
    headers = {"ETag": ranked.etag, "Cache-Control": "private, no-cache", "Vary": "Authorization"}
    if not_modified(request, ranked.etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=ranked.encoded, content_type="application/json", headers=headers)
