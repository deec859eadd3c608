"""/api/v1/webhooks: partners' webhook endpoints (hub/webhooks/), managed by the API key that owns them
(scope ``webhooks:manage``) or by an admin (who sees and manages every one).

POST   /api/v1/webhooks                            {url, events, description?, enabled?} → the endpoint and
                                                   its signing secret, shown this once
GET    /api/v1/webhooks                            the caller's endpoints (an admin's: all), newest first
GET    /api/v1/webhooks/{webhook_id}               one
PATCH  /api/v1/webhooks/{webhook_id}               {url?, events?, description?, enabled?} (If-Match)
DELETE /api/v1/webhooks/{webhook_id}               it, its queue and its log
POST   /api/v1/webhooks/{webhook_id}/rotate-secret {overlap_seconds?} → a new signing secret, shown this
                                                   once; the replaced one signs too for the overlap
POST   /api/v1/webhooks/{webhook_id}/test          a signed webhook.ping, queued → 202 {message_id}
POST   /api/v1/webhooks/{webhook_id}/replay        {since_position} | {since_time} | {message_id} → 202
GET    /api/v1/webhooks/{webhook_id}/deliveries    the delivery log: every attempt, newest first
GET    /api/v1/webhooks/{webhook_id}/dead-letters  the messages whose every attempt failed, newest first

Another caller's endpoint is answered 404, as one that does not exist.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import time
import uuid
from base64 import b32encode
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from hub.auth import Principal, require
from hub.errors import BadRequest, ConflictError, Forbidden, NotFoundError, PreconditionFailed, Unprocessable
from hub.keys import BROKER, PII_KEYS, SETTINGS, STORE, WEBHOOKS
from hub.responses import expected_version, iso, json_response, version_etag
from hub.routes.reviews import decode_cursor, encode_cursor
from hub.validation import (
    Field,
    FieldError,
    Schema,
    body_schema,
    described,
    integer,
    list_of,
    query_int,
    query_text,
    read_json,
    schema_of,
    string,
    validate,
)
from hub.webhooks.signing import new_secret
from hub.webhooks.sources import PING, SOURCES, EventSource, Matcher, Owner, envelope, patterns, sources_of
from hub.webhooks.targets import AllowList, TargetRefused, check_url
from hub.webhooks.worker import SECRET_FIELD
from storage.webhooks import (
    Attempt,
    Delivery,
    QueuedMessage,
    Replay,
    StreamPosition,
    Subscription,
    WebhookEndpoint,
)
from sync.broker import Broker

routes = web.RouteTableDef()

MAX_ENDPOINTS_PER_OWNER = 50
MAX_SUBSCRIPTIONS = 20
MAX_FILTER_VALUES = 100
_NO_STORE = {"Cache-Control": "no-store"}
BASE = "/api/v1/webhooks"

# -- the URL: absolute http(s), a host name or an IP literal, no credentials, no fragment ------------
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_H16 = "[0-9A-Fa-f]{1,4}"
_V4 = r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_V6 = "|".join(
    [
        f"(?:{_H16}:){{7}}{_H16}",
        f"(?:{_H16}:){{1,7}}:",
        f"(?:{_H16}:){{1,6}}:{_H16}",
        f"(?:{_H16}:){{1,5}}(?::{_H16}){{1,2}}",
        f"(?:{_H16}:){{1,4}}(?::{_H16}){{1,3}}",
        f"(?:{_H16}:){{1,3}}(?::{_H16}){{1,4}}",
        f"(?:{_H16}:){{1,2}}(?::{_H16}){{1,5}}",
        f"{_H16}:(?::{_H16}){{1,6}}",
        f":(?:(?::{_H16}){{1,7}}|:)",
        f"::(?:[fF]{{4}}(?::0{{1,4}})?:)?{_V4}",
    ]
)
_PORT = "(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
_PCHAR = "(?:[A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})"
URL_PATTERN = (
    f"[hH][tT][tT][pP][sS]?://(?:{_LABEL}(?:\\.{_LABEL})*|\\[(?:{_V6})\\])(?::{_PORT})?"
    f"(?:/(?:{_PCHAR}|/)*)?(?:\\?(?:{_PCHAR}|[/?])*)?"
)
URL = string(10, 2048, URL_PATTERN)
DESCRIPTION = string(0, 200, r"[^\x00-\x1f\x7f]*")
POSITION = string(
    3,
    300,
    r"[a-z][a-z_]*\.[a-z0-9][a-z0-9\-]{0,31}(?:\.[0-9]{1,3})?@[A-Za-z0-9_\-]{1,64}:(?:0|[1-9][0-9]{0,17})",
)
MESSAGE_ID = string(28, 28, "msg_[a-z2-7]{24}")
_POSITION_PARTS = re.compile(r"(.+)@([^@:]+):([0-9]+)")


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise FieldError("wrong_type", "expected true or false")
    return value


BOOLEAN = described(_boolean, {"type": "boolean"})


def _rfc3339(value: Any) -> int:
    text = string(1, 40)(value)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise FieldError("invalid_format", "an RFC 3339 time with its offset, e.g. 2025-01-31T12:00:00Z")
    return int(moment.timestamp() * 1_000_000)


SINCE_TIME = described(_rfc3339, {"type": "string", "format": "date-time"})


def _source_schema(source: EventSource) -> Schema:
    names = sorted(source.types) + sorted({t.split(".", 1)[0] + ".*" for t in source.types})
    filters: Schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            name: {
                "type": "array",
                "items": schema_of(spec.check),
                "minItems": 1,
                "maxItems": MAX_FILTER_VALUES,
                "uniqueItems": True,
            }
            for name, spec in sorted(source.filters.items())
        },
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["type"],
        "properties": {"type": {"enum": names}, "filters": filters},
    }


def _subscription(value: Any) -> Subscription:
    if not isinstance(value, dict):
        raise FieldError("wrong_type", "expected an object {type, filters?}")
    unknown = sorted(set(value) - {"type", "filters"})
    if unknown:
        raise FieldError("unknown_field", f"no such field: {unknown[0]}")
    kind = value.get("type")
    if kind not in patterns():
        raise FieldError("invalid_choice", f"type: one of {', '.join(patterns())}")
    (source,) = sources_of(kind)
    raw = value.get("filters", {})
    if not isinstance(raw, dict):
        raise FieldError("wrong_type", "filters: expected an object")
    filters: dict[str, tuple[str, ...]] = {}
    for name, values in raw.items():
        spec = source.filters.get(name)
        if spec is None:
            offered = ", ".join(sorted(source.filters)) or "none"
            raise FieldError("invalid_filter", f"{kind} events filter on {offered}, not {name!r}")
        checked = list_of(spec.check, 1, MAX_FILTER_VALUES, unique=True)(values)
        filters[name] = tuple(str(v) for v in checked)
    return Subscription(kind, filters)


SUBSCRIPTION = described(_subscription, {"anyOf": [_source_schema(source) for source in SOURCES]})
EVENTS = list_of(SUBSCRIPTION, 1, MAX_SUBSCRIPTIONS, unique=True)

CREATE_FIELDS = {
    "url": Field(URL, required=True),
    "events": Field(EVENTS, required=True),
    "description": Field(DESCRIPTION),
    "enabled": Field(BOOLEAN),
}
PATCH_FIELDS = {name: Field(spec.check) for name, spec in CREATE_FIELDS.items()}
# A rotated secret keeps signing (beside the new one) for the overlap: a day unless asked, at most a
# week; 0 for a secret that leaked, which stops signing as each node's runner takes the new version.
DEFAULT_SECRET_OVERLAP_SECONDS = 24 * 3600
MAX_SECRET_OVERLAP_SECONDS = 7 * 24 * 3600
ROTATE_FIELDS = {"overlap_seconds": Field(integer(0, MAX_SECRET_OVERLAP_SECONDS))}
REPLAY_FIELDS = {
    "since_position": Field(POSITION),
    "since_time": Field(SINCE_TIME),
    "message_id": Field(MESSAGE_ID),
}


def replay_schema() -> Schema:
    """Exactly one of the three."""
    return {**body_schema(REPLAY_FIELDS), "minProperties": 1, "maxProperties": 1}


def now_us() -> int:
    return time.time_ns() // 1000


# -- rendering -------------------------------------------------------------------------------------


def _at(us: int | None) -> str | None:
    return None if us is None else iso(us)


def render(endpoint: WebhookEndpoint) -> dict[str, Any]:
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "description": endpoint.description,
        "events": [
            {"type": s.type, **({"filters": {k: list(v) for k, v in s.filters.items()}} if s.filters else {})}
            for s in endpoint.subscriptions
        ],
        "enabled": endpoint.enabled,
        "disabled_reason": endpoint.disabled_reason,
        "disabled_at": _at(endpoint.disabled_at),
        "failing_since": _at(endpoint.failing_since),
        "dead_letters": endpoint.dead_letters,
        "previous_secret_expires_at": _at(_previous_secret_until(endpoint, now_us())),
        "owner": endpoint.owner,
        "version": endpoint.version,
        "created_at": iso(endpoint.created_at),
        "updated_at": iso(endpoint.updated_at),
    }


def _previous_secret_until(endpoint: WebhookEndpoint, now: int) -> int | None:
    """Until when the secret a rotation replaced still signs; None if none does any more."""
    until = endpoint.previous_secret_until
    if endpoint.previous_secret_ciphertext is None or until is None or until <= now:
        return None
    return until


def render_attempt(attempt: Attempt) -> dict[str, Any]:
    return {
        "message_id": attempt.message_id,
        "event_type": attempt.event_type,
        "attempt": attempt.attempt,
        "at": iso(attempt.at),
        "status_code": attempt.status_code,
        "latency_ms": round(attempt.latency_us / 1000, 3),
        "error": attempt.error,
        "outcome": attempt.outcome.value,
    }


def render_dead_letter(delivery: Delivery) -> dict[str, Any]:
    return {
        "message_id": delivery.message_id,
        "event_type": delivery.event_type,
        "attempts": delivery.attempts,
        "queued_at": iso(delivery.queued_at),
        "dead_at": iso(delivery.updated_at),
        "last_error": delivery.last_error,
        "payload": orjson.loads(delivery.payload),
    }


# -- who and what ----------------------------------------------------------------------------------


def _is_admin(who: Principal) -> bool:
    return who.api_key_id is None and "admin" in who.roles


def _webhook_id(request: web.Request) -> str:
    raw = request.match_info["webhook_id"]
    try:
        return str(uuid.UUID(raw))
    except ValueError as exc:
        raise BadRequest(f"webhook_id must be a UUID, got {raw[:64]!r}", code="invalid_id") from exc


def _not_found() -> NotFoundError:
    return NotFoundError("no such webhook", code="webhook_not_found")


async def _owned(request: web.Request, who: Principal) -> WebhookEndpoint:
    endpoint = await request.app[STORE].get_webhook(_webhook_id(request))
    if endpoint is None or not (_is_admin(who) or endpoint.owner == who.sub):
        raise _not_found()
    return endpoint


def _check_scopes(who: Principal, subscriptions: list[Subscription]) -> None:
    """An API key subscribes to private events only with a scope that lets it read them."""
    if who.api_key_id is None:
        return
    for sub in subscriptions:
        for source in sources_of(sub.type):
            if source.key_scopes and not (who.scopes & source.key_scopes):
                wanted = sorted(source.key_scopes)
                raise Forbidden(
                    f"subscribing to {sub.type} needs the scope {' or '.join(wanted)}",
                    code="insufficient_scope",
                    required_scopes=wanted,
                )


async def _check_target(request: web.Request, url: str) -> None:
    allow = AllowList.parse(request.app[SETTINGS].webhook_allow_hosts)
    try:
        await check_url(url, allow)
    except TargetRefused as exc:
        extra: dict[str, Any] = {"reason": exc.reason, **({"address": exc.address} if exc.address else {})}
        raise Unprocessable(exc.message, code=exc.code, **extra) from None


async def _starting_positions(
    broker: Broker, endpoint: WebhookEndpoint, region: str, known: set[str]
) -> dict[str, StreamPosition]:
    """Where the streams of the endpoint's subscriptions stand now (its events start after), for those
    not in ``known``."""
    streams = Matcher(
        endpoint.id, Owner(endpoint.owner, endpoint.owner_is_admin), endpoint.subscriptions, region
    )
    positions = {}
    for stream in sorted(set(streams.streams) - known):
        top = await broker.top(stream)
        positions[stream] = StreamPosition(top.epoch, top.offset)
    return positions


def _poke(request: web.Request, endpoint_id: str) -> None:
    worker = request.app[WEBHOOKS]
    if worker is not None:
        worker.poke(endpoint_id)


# -- routes ----------------------------------------------------------------------------------------


@routes.post(BASE, name="create_webhook")
async def create_webhook(request: web.Request) -> web.StreamResponse:
    who = require(request, "admin")
    data = validate(await read_json(request), CREATE_FIELDS)
    subscriptions: list[Subscription] = data["events"]
    _check_scopes(who, subscriptions)
    store = request.app[STORE]
    if len(await store.list_webhooks(who.sub, MAX_ENDPOINTS_PER_OWNER)) >= MAX_ENDPOINTS_PER_OWNER:
        raise ConflictError(
            f"an owner has at most {MAX_ENDPOINTS_PER_OWNER} webhooks: delete one first",
            code="too_many_webhooks",
        )
    await _check_target(request, data["url"])
    endpoint_id = str(uuid.uuid4())
    secret = new_secret()
    now = now_us()
    endpoint = WebhookEndpoint(
        id=endpoint_id,
        owner=who.sub,
        owner_is_admin=_is_admin(who),
        url=data["url"],
        description=data.get("description", ""),
        subscriptions=tuple(subscriptions),
        secret_ciphertext=request.app[PII_KEYS].encrypt(endpoint_id, SECRET_FIELD, secret),
        enabled=data.get("enabled", True),
        disabled_reason=None if data.get("enabled", True) else "owner",
        disabled_at=None if data.get("enabled", True) else now,
        failing_since=None,
        dead_letters=0,
        version=1,
        created_at=now,
        updated_at=now,
    )
    positions = await _starting_positions(request.app[BROKER], endpoint, request.app[SETTINGS].region, set())
    await store.create_webhook(endpoint, positions)
    _poke(request, endpoint_id)
    return json_response(
        {**render(endpoint), "secret": secret},
        status=201,
        etag=version_etag(endpoint.version),
        headers={**_NO_STORE, "Location": f"{BASE}/{endpoint_id}"},
    )


@routes.get(BASE, name="list_webhooks")
async def list_webhooks(request: web.Request) -> web.StreamResponse:
    who = require(request, "admin")
    limit = query_int(request, "limit", 50, 1, 200)
    cursor = request.query.get("cursor")
    after = decode_cursor(cursor, "webhooks", 2) if cursor else None
    if after is not None and not (isinstance(after[0], int) and isinstance(after[1], str)):
        raise BadRequest("the cursor does not belong to this listing; start again", code="invalid_cursor")
    owner = None if _is_admin(who) else who.sub
    found = await request.app[STORE].list_webhooks(
        owner, limit + 1, None if after is None else (int(after[0]), str(after[1]))
    )
    page = found[:limit]
    next_cursor = (
        encode_cursor("webhooks", (page[-1].created_at, page[-1].id)) if len(found) > limit else None
    )
    return json_response({"items": [render(e) for e in page], "next_cursor": next_cursor})


@routes.get(BASE + "/{webhook_id}", name="get_webhook")
async def get_webhook(request: web.Request) -> web.StreamResponse:
    endpoint = await _owned(request, require(request, "admin"))
    return json_response(render(endpoint), etag=version_etag(endpoint.version))


@routes.patch(BASE + "/{webhook_id}", name="update_webhook")
async def update_webhook(request: web.Request) -> web.StreamResponse:
    who = require(request, "admin")
    endpoint = await _owned(request, who)
    data = validate(await read_json(request), PATCH_FIELDS, partial=True)
    if not data:
        raise BadRequest(
            "a patch names at least one field",
            code="validation_failed",
            errors=[{"field": "", "code": "empty_patch", "message": "nothing to change"}],
        )
    wanted = expected_version(request)
    if wanted is not None and wanted != endpoint.version:
        raise PreconditionFailed("the webhook changed since it was read", current_version=endpoint.version)
    now = now_us()
    changes: dict[str, Any] = {"version": endpoint.version + 1, "updated_at": now}
    if "url" in data and data["url"] != endpoint.url:
        await _check_target(request, data["url"])
        changes["url"] = data["url"]
    if "description" in data:
        changes["description"] = data["description"]
    if "events" in data:
        _check_scopes(who, data["events"])
        changes["subscriptions"] = tuple(data["events"])
    if "enabled" in data and data["enabled"] != endpoint.enabled:
        if data["enabled"]:
            changes.update(
                enabled=True, disabled_reason=None, disabled_at=None, failing_since=None, dead_letters=0
            )
        else:
            changes.update(enabled=False, disabled_reason="owner", disabled_at=now)
    updated = dataclasses.replace(endpoint, **changes)
    known = set((await request.app[STORE].webhook_positions(endpoint.id)).keys())
    positions = await _starting_positions(request.app[BROKER], updated, request.app[SETTINGS].region, known)
    await request.app[STORE].update_webhook(updated, positions)
    _poke(request, endpoint.id)
    return json_response(render(updated), etag=version_etag(updated.version))


@routes.delete(BASE + "/{webhook_id}", name="delete_webhook")
async def delete_webhook(request: web.Request) -> web.StreamResponse:
    endpoint = await _owned(request, require(request, "admin"))
    await request.app[STORE].delete_webhook(endpoint.id)
    _poke(request, endpoint.id)
    return web.Response(status=204)


@routes.post(BASE + "/{webhook_id}/rotate-secret", name="rotate_webhook_secret")
async def rotate_webhook_secret(request: web.Request) -> web.StreamResponse:
    """A new secret signs every delivery from the next attempt of each node's runner on (a lease round:
    at once on this node, within ``lease_seconds / 4`` on the others); the replaced one signs too, as a
    second signature, until the overlap ends. The secret replaced before that one stops signing."""
    endpoint = await _owned(request, require(request, "admin"))
    data = validate(await read_json(request), ROTATE_FIELDS) if request.body_exists else {}
    wanted = expected_version(request)
    if wanted is not None and wanted != endpoint.version:
        raise PreconditionFailed("the webhook changed since it was read", current_version=endpoint.version)
    overlap = data.get("overlap_seconds", DEFAULT_SECRET_OVERLAP_SECONDS)
    secret = new_secret()
    now = now_us()
    updated = dataclasses.replace(
        endpoint,
        secret_ciphertext=request.app[PII_KEYS].encrypt(endpoint.id, SECRET_FIELD, secret),
        previous_secret_ciphertext=endpoint.secret_ciphertext if overlap else None,
        previous_secret_until=now + overlap * 1_000_000 if overlap else None,
        version=endpoint.version + 1,
        updated_at=now,
    )
    await request.app[STORE].update_webhook(updated, {})
    worker = request.app[WEBHOOKS]
    if worker is not None:
        worker.rotated(updated)
    _poke(request, endpoint.id)
    return json_response(
        {**render(updated), "secret": secret},
        etag=version_etag(updated.version),
        headers=_NO_STORE,
    )


@routes.post(BASE + "/{webhook_id}/test", name="test_webhook")
async def test_webhook(request: web.Request) -> web.StreamResponse:
    endpoint = await _owned(request, require(request, "admin"))
    if not endpoint.enabled:
        raise ConflictError("the webhook is disabled: enable it first", code="webhook_disabled")
    message_id = "msg_" + b32encode(secrets.token_bytes(15)).decode().lower()
    now = now_us()
    data = orjson.dumps(
        {"webhook_id": endpoint.id, "message": "a test of this endpoint's signature and delivery"}
    )
    message = QueuedMessage(
        message_id=message_id,
        region=request.app[SETTINGS].region,
        order_key=f"ping:{message_id}",
        event_type=PING,
        event_at=now,
        payload=envelope(PING, now, None, data),
    )
    await request.app[STORE].enqueue_webhook_messages(endpoint.id, [message], {}, now)
    _poke(request, endpoint.id)
    return json_response({"message_id": message_id, "event_type": PING}, status=202)


@routes.post(BASE + "/{webhook_id}/replay", name="replay_webhook")
async def replay_webhook(request: web.Request) -> web.StreamResponse:
    endpoint = await _owned(request, require(request, "admin"))
    data = validate(await read_json(request), REPLAY_FIELDS)
    if len(data) != 1:
        raise BadRequest(
            "a replay names exactly one of since_position, since_time and message_id",
            code="validation_failed",
            errors=[{"field": "", "code": "one_of", "message": "exactly one of the three"}],
        )
    if "since_position" in data:
        match = _POSITION_PARTS.fullmatch(data["since_position"])
        assert match is not None  # (the field's pattern)
        replay = Replay(stream=match.group(1), after=StreamPosition(match.group(2), int(match.group(3))))
    elif "since_time" in data:
        replay = Replay(since_us=data["since_time"])
    else:
        replay = Replay(message_id=data["message_id"])
    queued = await request.app[STORE].replay_webhook(endpoint.id, replay, now_us())
    _poke(request, endpoint.id)
    return json_response({"queued": queued}, status=202)


def _page_cursor(request: web.Request, kind: str) -> int | None:
    cursor = request.query.get("cursor")
    if not cursor:
        return None
    (before,) = decode_cursor(cursor, kind, 1)
    if not (isinstance(before, int) and 0 < before < 2**62):
        raise BadRequest("the cursor does not belong to this listing; start again", code="invalid_cursor")
    return before


@routes.get(BASE + "/{webhook_id}/deliveries", name="list_webhook_deliveries")
async def list_webhook_deliveries(request: web.Request) -> web.StreamResponse:
    endpoint = await _owned(request, require(request, "admin"))
    limit = query_int(request, "limit", 50, 1, 200)
    before = _page_cursor(request, "deliveries")
    message_id = query_text(request, "message_id", MESSAGE_ID)
    found = await request.app[STORE].list_webhook_attempts(endpoint.id, limit + 1, before, message_id)
    page = found[:limit]
    next_cursor = encode_cursor("deliveries", (page[-1].seq,)) if len(found) > limit else None
    return json_response({"items": [render_attempt(a) for a in page], "next_cursor": next_cursor})


@routes.get(BASE + "/{webhook_id}/dead-letters", name="list_webhook_dead_letters")
async def list_webhook_dead_letters(request: web.Request) -> web.StreamResponse:
    endpoint = await _owned(request, require(request, "admin"))
    limit = query_int(request, "limit", 50, 1, 200)
    before = _page_cursor(request, "dead-letters")
    found = await request.app[STORE].list_webhook_dead_letters(endpoint.id, limit + 1, before)
    page = found[:limit]
    next_cursor = encode_cursor("dead-letters", (page[-1].seq,)) if len(found) > limit else None
    return json_response({"items": [render_dead_letter(d) for d in page], "next_cursor": next_cursor})


__all__ = ["CREATE_FIELDS", "PATCH_FIELDS", "REPLAY_FIELDS", "ROTATE_FIELDS", "replay_schema", "routes"]
