"""/api/v1/reservations: the flash-sale path.

``POST /api/v1/reservations`` requires an ``Idempotency-Key`` header. The store records the outcome
(success or failure) under (caller, key) in the same transaction as the stock change, so a retry
gets the first outcome back verbatim with ``Idempotent-Replayed: true`` and never reserves twice.

A caller without an exempt role reserves within the reservation caps (``--max-reserve-per-line``,
``--max-active-reserved-per-user``; :mod:`storage.reservation_caps`): past one, 422
``reservation_cap_exceeded``, an outcome stored and replayed like the others.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from aiohttp import web

from hub.auth import Principal, require
from hub.errors import BadRequest, ConflictError, Forbidden, NotFoundError, Unprocessable
from hub.keys import METRICS, SETTINGS, STORE
from hub.responses import iso, json_response
from hub.routes.inventory import REGION_PATTERN, SLUG
from hub.routes.schools import decode_cursor, encode_cursor
from hub.settings import Settings
from hub.validation import (
    SUBJECT,
    Field,
    integer,
    list_of,
    object_of,
    path_uuid,
    query_int,
    query_text,
    read_json,
    string,
    uuid_string,
    validate,
)
from storage.models import Reservation, ReservationLineRequest, ReservationOutcome, reservation_to_dict
from storage.reservation_caps import ReservationCaps

routes = web.RouteTableDef()

USER_ROLES = ("customer", "moderator", "admin", "service")
PRIVILEGED = frozenset({"admin", "service"})
MAX_QUANTITY = 10_000
MAX_LINES = 100
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")

LINE_FIELDS = {
    "product_id": Field(uuid_string, required=True),
    "quantity": Field(integer(1, MAX_QUANTITY), required=True),
    "warehouse_id": Field(string(1, 64, SLUG)),
    "region": Field(string(1, 32, REGION_PATTERN)),
}


def request_fields(max_ttl: int) -> dict[str, Field]:
    return {
        "lines": Field(
            list_of(object_of(LINE_FIELDS, exclusive=(("warehouse_id", "region"),)), 1, MAX_LINES),
            required=True,
        ),
        "ttl_seconds": Field(integer(1, max_ttl)),
    }


def request_hash(body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def with_iso_times(stored: dict[str, Any]) -> dict[str, Any]:
    body = dict(stored)
    for key in ("created_at", "expires_at", "updated_at"):
        body[key] = iso(body[key])
    return body


def _render(reservation: Reservation) -> dict[str, Any]:
    return with_iso_times(reservation_to_dict(reservation))


def reservation_caps(settings: Settings, who: Principal) -> ReservationCaps | None:
    """The caps ``who`` reserves within: none for an exempt role, or when both are off."""
    if not who.roles.isdisjoint(settings.reservation_cap_exempt_roles):
        return None
    caps = ReservationCaps(settings.max_reserve_per_line, settings.max_active_reserved_per_user)
    return caps if caps.active else None


def idempotency_key(request: web.Request) -> str:
    """The request's Idempotency-Key header: required, 1-255 visible ASCII characters."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        raise BadRequest(
            "send an Idempotency-Key header so that retries are safe", code="idempotency_key_required"
        )
    if not IDEMPOTENCY_KEY.fullmatch(key):
        raise BadRequest(
            "the Idempotency-Key must be 1-255 visible ASCII characters", code="invalid_idempotency_key"
        )
    return key


@routes.post("/api/v1/reservations", name="create_reservation")
async def create_reservation(request: web.Request) -> web.StreamResponse:
    who = require(request, *USER_ROLES)
    key = idempotency_key(request)
    settings = request.app[SETTINGS]
    raw = await read_json(request)
    data = validate(raw, request_fields(settings.reservation_max_ttl_seconds))
    lines = [ReservationLineRequest(**line) for line in data["lines"]]
    metrics = request.app[METRICS]
    result = await request.app[STORE].reserve(
        who.sub,
        key,
        request_hash(data),
        lines,
        data.get("ttl_seconds", settings.reservation_ttl_seconds),
        reservation_caps(settings, who),
    )
    headers = {"Idempotent-Replayed": "true" if result.replayed else "false"}
    if result.replayed:
        metrics.reservations.labels("replayed").inc()
    if result.status is ReservationOutcome.RESERVED:
        if not result.replayed:
            metrics.reservations.labels("reserved").inc()
        body = with_iso_times(result.body)
        headers["Location"] = f"/api/v1/reservations/{body['id']}"
        return json_response(body, status=201, headers=headers)
    code = str(result.body.get("code", "insufficient_stock"))
    if not result.replayed:
        metrics.reservations.labels(code).inc()
    extra = {k: v for k, v in result.body.items() if k not in ("code", "detail")}
    error_cls: type[NotFoundError | ConflictError | Unprocessable] = ConflictError
    if result.status is ReservationOutcome.PRODUCT_NOT_FOUND:
        error_cls = NotFoundError
    elif result.status is ReservationOutcome.CAP_EXCEEDED:
        error_cls = Unprocessable
    raise error_cls(str(result.body.get("detail", "")), code=code, headers=headers, **extra)


async def _owned(request: web.Request) -> Reservation:
    """The reservation of the path, if the caller may see it."""
    who = require(request, *USER_ROLES)
    reservation_id = path_uuid(request, "reservation_id")
    reservation = await request.app[STORE].get_reservation(reservation_id)
    # Someone else's reservation is reported as missing: its existence is not the caller's business.
    if reservation is None or (reservation.owner != who.sub and not who.roles & PRIVILEGED):
        raise NotFoundError("no such reservation", code="reservation_not_found")
    return reservation


@routes.get("/api/v1/reservations", name="list_reservations")
async def list_reservations(request: web.Request) -> web.StreamResponse:
    """The caller's reservations, newest first (``cursor``, ``limit``); an admin or service token may
    name another user's with ``sub``."""
    who = require(request, *USER_ROLES)
    owner = query_text(request, "sub", SUBJECT) or who.sub
    if owner != who.sub and not who.roles & PRIVILEGED:
        raise Forbidden("only admin and service tokens list another user's reservations", code="forbidden")
    limit = query_int(request, "limit", 50, 1, 200)
    cursor = request.query.get("cursor")
    after = decode_cursor(cursor, (int, str)) if cursor else None
    found = await request.app[STORE].list_reservations(
        owner, limit + 1, (after[0], after[1]) if after else None
    )
    page = found[:limit]
    next_cursor = encode_cursor([page[-1].created_at, page[-1].id]) if len(found) > limit else None
    return json_response({"items": [_render(r) for r in page], "next_cursor": next_cursor})


@routes.get("/api/v1/reservations/{reservation_id}", name="get_reservation")
async def get_reservation(request: web.Request) -> web.StreamResponse:
    return json_response(_render(await _owned(request)))


@routes.post("/api/v1/reservations/{reservation_id}/commit", name="commit_reservation")
async def commit_reservation(request: web.Request) -> web.StreamResponse:
    reservation = await request.app[STORE].commit_reservation((await _owned(request)).id)
    request.app[METRICS].reservations.labels("committed").inc()
    return json_response(_render(reservation))


@routes.post("/api/v1/reservations/{reservation_id}/release", name="release_reservation")
async def release_reservation(request: web.Request) -> web.StreamResponse:
    reservation = await request.app[STORE].release_reservation((await _owned(request)).id)
    request.app[METRICS].reservations.labels("released").inc()
    return json_response(_render(reservation))
