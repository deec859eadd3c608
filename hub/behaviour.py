"""Behaviour events, the wire side: a batch's body read and checked (every problem reported at once, as
hub/validation.py does), consent as its user reads it. storage/behaviour.py states what is stored.

A batch is ``{"events": [...]}``, 1 to :data:`~storage.behaviour.MAX_BATCH` events. Every event names
its ``type`` and the ``consent`` the app had from its user when it was recorded (``granted`` or
``revoked``), and may say when it happened (``ts``, RFC 3339; default: now) and in which region
(default: this node's). Then, by type:

    view, add_to_cart, wishlist   product_id (a UUID)
    search                        query (1-200 characters)
    filter                        attributes: {name: value or [values]} (1-10 names, 1-10 values each)

A field of another type is ``unknown_field``, as any field the hub does not know. ``ts`` may be at most
:data:`FUTURE_SKEW_US` ahead (clocks drift) and no older than the retention (it would expire at once).

Bodies are parsed with orjson rather than hub.validation.read_json's exact decimals: a batch holds no
number, and this is the hub's busiest write (50 events a request).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from hub.errors import BadRequest, Forbidden, RequestTimeout, UnsupportedMedia
from hub.keys import SETTINGS
from hub.responses import iso
from hub.routes.inventory import REGION_PATTERN
from hub.validation import Schema, refuse_encoded_body
from storage.behaviour import EVENT_TYPES, MAX_BATCH, PRODUCT_EVENTS, BehaviourData, Consent, NewEvent

FUTURE_SKEW_US = 300 * 10**6
MAX_QUERY = 200
MAX_FILTER_NAMES = 10
MAX_FILTER_VALUES = 10
FILTER_NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}"
_FILTER_VALUE = r"[^\x00-\x1f\x7f]{1,64}"
_REGION = re.compile(REGION_PATTERN)
_FILTER_NAME = re.compile(FILTER_NAME_PATTERN)
_FILTER_VALUE_RE = re.compile(_FILTER_VALUE)
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")
_COMMON = frozenset({"type", "consent", "ts", "region"})
_FIELDS = {
    **{kind: _COMMON | {"product_id"} for kind in PRODUCT_EVENTS},
    "search": _COMMON | {"query"},
    "filter": _COMMON | {"attributes"},
}
CONSENT_STATES = ("granted", "revoked")


class _Errors:
    """Problems found in a batch, each as hub/validation.py reports one; the first 20 are kept."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []

    def add(self, field: str, code: str, message: str) -> None:
        if len(self.items) < 20:
            self.items.append({"field": field, "code": code, "message": message})


def _time(value: Any, now: int, oldest: int, field: str, errors: _Errors) -> int | None:
    if not isinstance(value, str):
        errors.add(field, "wrong_type", "expected an RFC 3339 date-time string")
        return None
    text = value.upper()
    if not _RFC3339.fullmatch(text):
        errors.add(field, "invalid_format", "expected an RFC 3339 date-time such as 2025-05-01T12:00:00Z")
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        errors.add(field, "invalid_format", "not a date-time that exists")
        return None
    ts = int(moment.timestamp() * 1_000_000)
    if ts > now + FUTURE_SKEW_US:
        errors.add(field, "out_of_range", "more than 5 minutes ahead of the hub's clock")
        return None
    if ts <= oldest:
        errors.add(field, "out_of_range", "older than the events' retention")
        return None
    return ts


def _attributes(value: Any, field: str, errors: _Errors) -> dict[str, list[str]] | None:
    if not isinstance(value, dict):
        errors.add(field, "wrong_type", "expected an object of attribute names and values")
        return None
    if not 1 <= len(value) <= MAX_FILTER_NAMES:
        errors.add(field, "out_of_range", f"between 1 and {MAX_FILTER_NAMES} attributes")
        return None
    clean: dict[str, list[str]] = {}
    for name, raw in value.items():
        if not _FILTER_NAME.fullmatch(name):
            errors.add(f"{field}.{name[:64]}", "invalid_format", f"a name matches {FILTER_NAME_PATTERN}")
            continue
        values = raw if isinstance(raw, list) else [raw]
        if not 1 <= len(values) <= MAX_FILTER_VALUES:
            errors.add(f"{field}.{name}", "out_of_range", f"between 1 and {MAX_FILTER_VALUES} values")
            continue
        if not all(isinstance(v, str) and _FILTER_VALUE_RE.fullmatch(v) for v in values):
            errors.add(
                f"{field}.{name}",
                "invalid_format",
                "a value is text of 1 to 64 characters, no control characters",
            )
            continue
        clean[name] = values
    return clean


def decode_batch(body: Any, now: int, retention_us: int, default_region: str) -> list[NewEvent]:
    """The batch's events, checked; BadRequest (validation_failed) naming every problem found, or
    Forbidden (consent_required) when an event was recorded without its user's consent."""
    errors = _Errors()
    if not isinstance(body, dict):
        raise BadRequest(
            "the body must be a JSON object",
            code="validation_failed",
            errors=[{"field": "", "code": "wrong_type", "message": "expected an object"}],
        )
    for name in body:
        if name != "events":
            errors.add(name, "unknown_field", "no such field")
    raw_events = body.get("events")
    if raw_events is None:
        errors.add("events", "required", "this field is required")
    elif not isinstance(raw_events, list):
        errors.add("events", "wrong_type", "expected an array")
    elif not 1 <= len(raw_events) <= MAX_BATCH:
        errors.add("events", "out_of_range", f"between 1 and {MAX_BATCH} events")
    if errors.items:
        _refuse(errors)
    assert isinstance(raw_events, list)
    oldest = now - retention_us
    out: list[NewEvent] = []
    refused_consent: list[int] = []
    add = errors.add
    for index, raw in enumerate(raw_events):
        # (the fast path first: a field's name is spelt out only for a problem)
        if not isinstance(raw, dict):
            add(f"events[{index}]", "wrong_type", "expected an object")
            continue
        kind = raw.get("type")
        allowed = _FIELDS.get(kind) if isinstance(kind, str) else None
        if allowed is None:
            code = "required" if kind is None else "invalid_choice"
            add(f"events[{index}].type", code, f"one of {', '.join(EVENT_TYPES)}")
            continue
        assert isinstance(kind, str)
        if not raw.keys() <= allowed:
            for name in raw.keys() - allowed:
                add(f"events[{index}].{name}", "unknown_field", f"not a field of a {kind} event")
        consent = raw.get("consent")
        if consent != "granted":
            if consent is None:
                add(f"events[{index}].consent", "required", "the user's consent when the event was recorded")
            elif consent not in CONSENT_STATES:
                add(f"events[{index}].consent", "invalid_choice", "one of granted, revoked")
            else:
                refused_consent.append(index)
        ts = now
        if "ts" in raw:
            ts = _time(raw["ts"], now, oldest, f"events[{index}].ts", errors) or now
        region = default_region
        if "region" in raw:
            region = raw["region"]
            if not isinstance(region, str) or not _REGION.fullmatch(region):
                add(f"events[{index}].region", "invalid_format", f"a region name matches {REGION_PATTERN}")
        product_id = query = attributes = None
        if kind in PRODUCT_EVENTS:
            product_id = raw.get("product_id")
            if product_id is None:
                add(f"events[{index}].product_id", "required", f"a {kind} event names its product")
            elif not isinstance(product_id, str):
                add(f"events[{index}].product_id", "wrong_type", "expected a UUID string")
            elif not _CANONICAL_UUID.fullmatch(product_id):
                try:
                    product_id = str(uuid.UUID(product_id))
                except ValueError:
                    add(f"events[{index}].product_id", "invalid_format", "expected a UUID")
        elif kind == "search":
            query = raw.get("query")
            if query is None:
                add(f"events[{index}].query", "required", "a search event names its query")
            elif not isinstance(query, str):
                add(f"events[{index}].query", "wrong_type", "expected a string")
            elif not 1 <= len(query) <= MAX_QUERY or "\x00" in query:
                add(f"events[{index}].query", "invalid_format", f"1 to {MAX_QUERY} characters, no NUL")
        else:
            raw_attributes = raw.get("attributes")
            if raw_attributes is None:
                add(
                    f"events[{index}].attributes",
                    "required",
                    "a filter event names the attributes filtered on",
                )
            else:
                attributes = _attributes(raw_attributes, f"events[{index}].attributes", errors)
        if not errors.items:
            out.append(NewEvent(kind, ts, region, product_id, query, attributes))
    if errors.items:
        _refuse(errors)
    if refused_consent:
        raise Forbidden(
            f"{len(refused_consent)} of the events were recorded without the user's consent"
            f" (the first: events[{refused_consent[0]}]); nothing was stored",
            code="consent_required",
        )
    return out


def _refuse(errors: _Errors) -> None:
    raise BadRequest(
        "the request body is invalid: " + ", ".join(f"{e['field']}: {e['code']}" for e in errors.items),
        code="validation_failed",
        errors=errors.items,
    )


async def read_batch_body(request: web.Request) -> Any:
    """The body as JSON (orjson), with read_json's rules: no Content-Encoding, application/json, bounded
    in size (aiohttp's client_max_size) and in time."""
    refuse_encoded_body(request)
    if request.content_type != "application/json":
        raise UnsupportedMedia(f"send the body as application/json, not {request.content_type or 'nothing'}")
    seconds = request.app[SETTINGS].body_timeout_seconds
    try:
        async with asyncio.timeout(seconds):
            raw = await request.read()
    except TimeoutError as exc:
        raise RequestTimeout(f"the body did not arrive within {seconds:g} s") from exc
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", code="malformed_json") from exc


def render_consent(sub: str, consent: Consent | None, retention_days: int) -> dict[str, Any]:
    return {
        "sub": sub,
        "status": "unset" if consent is None else consent.status.value,
        "updated_at": None if consent is None else iso(consent.at),
        "retention_days": retention_days,
    }


# -- the batch's JSON Schema (the OpenAPI document's; hub/openapi_personalization.py) ------------------

_TIME: Schema = {
    "type": "string",
    "format": "date-time",
    "description": "when it happened (default: when the hub received it); at most 5 minutes ahead, and"
    " no older than the retention (out_of_range)",
}
_COMMON_PROPERTIES: Schema = {
    "consent": {"enum": list(CONSENT_STATES), "description": "the user's consent when it was recorded"},
    "ts": _TIME,
    "region": {"type": "string", "pattern": f"^(?:{REGION_PATTERN})$", "maxLength": 32},
}
_FILTER_VALUE_SCHEMA: Schema = {"type": "string", "pattern": f"^(?:{_FILTER_VALUE})$"}


def _event_schema(kinds: list[str], field: str, schema: Schema) -> Schema:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["type", "consent", field],
        "properties": {"type": {"enum": kinds}, **_COMMON_PROPERTIES, field: schema},
    }


EVENT_SCHEMA: Schema = {
    "oneOf": [
        _event_schema(sorted(PRODUCT_EVENTS), "product_id", {"type": "string", "format": "uuid"}),
        _event_schema(
            ["search"],
            "query",
            {"type": "string", "minLength": 1, "maxLength": MAX_QUERY, "pattern": "^[^\\u0000]*$"},
        ),
        _event_schema(
            ["filter"],
            "attributes",
            {
                "type": "object",
                "minProperties": 1,
                "maxProperties": MAX_FILTER_NAMES,
                "propertyNames": {"pattern": f"^(?:{FILTER_NAME_PATTERN})$"},
                "additionalProperties": {
                    "anyOf": [
                        _FILTER_VALUE_SCHEMA,
                        {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": MAX_FILTER_VALUES,
                            "items": _FILTER_VALUE_SCHEMA,
                        },
                    ]
                },
            },
        ),
    ]
}
BATCH_SCHEMA: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["events"],
    "properties": {"events": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH, "items": EVENT_SCHEMA}},
}


def render_behaviour(sub: str, data: BehaviourData | None, retention_days: int) -> dict[str, Any]:
    """What a user's export holds of personalization: consent, every event kept, the preferred attributes."""
    if data is None:
        data = BehaviourData(None, [], [])
    return {
        "consent": render_consent(sub, data.consent, retention_days),
        "events": [
            {
                "type": e.type,
                **({"product_id": e.product_id} if e.product_id is not None else {}),
                **({"query": e.query} if e.query is not None else {}),
                **({"attributes": e.attributes} if e.attributes is not None else {}),
                "region": e.region,
                "ts": iso(e.ts),
                "received_at": iso(e.received_at),
                "consent_granted_at": iso(e.consent_at),
                "expires_at": iso(e.expires_at),
            }
            for e in data.events
        ],
        "preferences": [
            {"attribute": p.attribute, "value": p.value, "count": p.count, "updated_at": iso(p.updated_at)}
            for p in data.preferences
        ],
    }
