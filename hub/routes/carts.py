"""/api/v1/carts: offline carts for REST clients (SSE and long-poll devices, and plain clients).

    GET  /api/v1/carts/{id}            the cart: value, lines, conflicts, rejected edits, context (ETag)
    POST /api/v1/carts/{id}/sync       {"context", "pushes": [{"mutation_id", "delta"}]}
                                       → acks, and the delta the device lacks
    POST /api/v1/carts/{id}/ops        a plain client's edit: {"device_id", "mutation_id", "op", "sku",
                                       "quantity"}; the hub mints the dot for that device
    POST /api/v1/carts/{id}/checkout   Idempotency-Key: close the cart and reserve its lines

Only the owner's tokens push, sync, edit and check out; the owner's, service and admin tokens read. A
cart is created by its owner's first sync, push or edit (devices name carts with their own UUIDs); a
cart that is another user's answers ``cart_not_found``, as a missing one does. Every push is merged and
made durable before it is acknowledged; a retried ``mutation_id`` applies once (storage/carts.py).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from crdt.wire import encode_context
from hub.auth import require
from hub.carts import (
    RULES,
    CartInputError,
    device_op,
    encode_delta,
    may_read,
    open_for,
    read_context,
    read_mutation_id,
    read_pushes,
    render_cart,
    render_outcome,
)
from hub.errors import BadRequest, ConflictError, NotFoundError, Unprocessable
from hub.keys import METRICS, SETTINGS, STORE
from hub.responses import json_response, not_modified, version_etag
from hub.routes.reservations import (
    USER_ROLES,
    idempotency_key,
    request_hash,
    reservation_caps,
    with_iso_times,
)
from hub.validation import Field, choice, integer, path_uuid, read_json, string, validate
from storage.carts import CartPush, CheckoutOutcome, PushStatus

routes = web.RouteTableDef()

_SYNC_FIELDS = {"context": Field(lambda v: v), "pushes": Field(lambda v: v)}
OP_FIELDS = {
    "device_id": Field(string(1, 64, r"[A-Za-z0-9._\-]+"), required=True),
    "mutation_id": Field(string(1, 128), required=True),
    "op": Field(choice("add", "set", "remove"), required=True),
    "sku": Field(string(1, 200), required=True),
    "quantity": Field(integer(0, RULES.max_quantity)),
}


def _input_error(exc: CartInputError) -> BadRequest:
    return BadRequest(exc.message, code=exc.code)


async def _readable(request: web.Request) -> Any:
    who = require(request, *USER_ROLES)
    cart_id = path_uuid(request, "cart_id")
    document = await request.app[STORE].get_cart(cart_id)
    if document is None or not may_read(who, document):
        raise NotFoundError("no such cart", code="cart_not_found")
    return document


@routes.get("/api/v1/carts/{cart_id}", name="get_cart")
async def get_cart(request: web.Request) -> web.StreamResponse:
    document = await _readable(request)
    etag = version_etag(document.version)
    if not_modified(request, etag):
        return web.Response(status=304, headers={"ETag": etag})
    return json_response(render_cart(document), headers={"ETag": etag})


@routes.post("/api/v1/carts/{cart_id}/sync", name="sync_cart")
async def sync_cart(request: web.Request) -> web.StreamResponse:
    who = require(request, "customer")
    cart_id = path_uuid(request, "cart_id")
    data = validate(await read_json(request), _SYNC_FIELDS)
    try:
        context = read_context(data.get("context"))
        pushes = read_pushes(data.get("pushes", []), binary=False)
    except CartInputError as exc:
        raise _input_error(exc) from exc
    store = request.app[STORE]
    if pushes:
        result = await store.push_cart(cart_id, who.sub, pushes, RULES)
        document, outcomes = result.document, result.outcomes
        _count(request, outcomes)
    else:
        document, outcomes = await open_for(store, cart_id, who.sub), []
    lacking = document.cart.sync_reply(context)
    return json_response(
        {
            "cart": render_cart(document),
            "acks": [render_outcome(o) for o in outcomes],
            "delta": None if lacking is None else encode_delta(lacking, binary=False),
            "context": encode_context(document.cart.context),
            "version": document.version,
        },
        headers={"ETag": version_etag(document.version)},
    )


@routes.post("/api/v1/carts/{cart_id}/ops", name="edit_cart")
async def edit_cart(request: web.Request) -> web.StreamResponse:
    who = require(request, "customer")
    cart_id = path_uuid(request, "cart_id")
    data = validate(await read_json(request), OP_FIELDS)
    try:
        mutation_id = read_mutation_id(data["mutation_id"])
    except CartInputError as exc:
        raise _input_error(exc) from exc
    op, quantity = data["op"], data.get("quantity")
    if op == "add" and quantity == 0:
        raise BadRequest("add takes a quantity of 1 or more", code="quantity_out_of_range")
    if op == "set" and quantity is None:
        raise BadRequest("set takes a quantity", code="quantity_required")
    if op == "remove" and quantity is not None:
        raise BadRequest("remove takes no quantity", code="unexpected_quantity")
    maker = device_op(op, data["device_id"], data["sku"], quantity, time.time_ns() // 1_000_000)
    result = await request.app[STORE].push_cart(cart_id, who.sub, [CartPush(mutation_id, maker)], RULES)
    outcome = result.outcomes[0]
    _count(request, result.outcomes)
    if outcome.status is PushStatus.REFUSED:
        message, code = outcome.message or "the edit was refused", outcome.code or "refused"
        if code == "cart_closed":  # the cart's state, not the edit, is in the way: as at checkout
            raise ConflictError(message, code=code)
        raise Unprocessable(message, code=code)
    return json_response(
        {"ack": render_outcome(outcome), "cart": render_cart(result.document)},
        headers={"ETag": version_etag(result.document.version)},
    )


@routes.post("/api/v1/carts/{cart_id}/checkout", name="checkout_cart")
async def checkout_cart(request: web.Request) -> web.StreamResponse:
    who = require(request, "customer")
    cart_id = path_uuid(request, "cart_id")
    key = idempotency_key(request)
    settings = request.app[SETTINGS]
    result = await request.app[STORE].checkout_cart(
        cart_id,
        who.sub,
        key,
        request_hash({"checkout": cart_id}),
        settings.reservation_ttl_seconds,
        reservation_caps(settings, who),
    )
    headers = {"Idempotent-Replayed": "true" if result.replayed else "false"}
    body = dict(result.body)
    if result.outcome is CheckoutOutcome.RESERVED:
        cart = render_cart(result.document) if result.document is not None else None
        if body.get("already_closed"):
            raise ConflictError(
                "the cart is already checked out",
                code="cart_closed",
                reservation_id=body.get("reservation_id"),
                headers=headers,
            )
        headers["Location"] = f"/api/v1/reservations/{body['id']}"
        return json_response({"reservation": with_iso_times(body), "cart": cart}, status=201, headers=headers)
    detail = str(body.pop("detail", "the cart cannot be checked out"))
    body.pop("code", None)
    extra: dict[str, Any] = {
        k: v for k, v in body.items() if isinstance(v, str | int | list) and k != "errors"
    }
    if result.outcome is CheckoutOutcome.EMPTY_CART:
        raise Unprocessable(detail, code="empty_cart", headers=headers)
    if result.outcome is CheckoutOutcome.CAP_EXCEEDED:
        raise Unprocessable(detail, code=CheckoutOutcome.CAP_EXCEEDED.value, headers=headers, **extra)
    if result.outcome is CheckoutOutcome.PRODUCT_NOT_FOUND:
        raise ConflictError(detail, code="product_not_found", headers=headers, **extra)
    raise ConflictError(detail, code="insufficient_stock", headers=headers, **extra)


def _count(request: web.Request, outcomes: list[Any]) -> None:
    metrics = request.app[METRICS]
    for outcome in outcomes:
        metrics.cart_pushes.labels(outcome.status.value).inc()
