"""The OpenAPI 3.1 description of the REST API. ``tests/test_openapi.py`` keeps it true: every
route of the app must be described here, and nothing here may be missing from the app."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

from hub.openapi_api_keys import api_key_paths, api_key_schemas, with_api_key_scopes
from hub.openapi_parts import parts_paths, parts_request_bodies, parts_schemas
from hub.openapi_personalization import personalization_paths, personalization_schemas
from hub.openapi_privacy import privacy_paths, privacy_schemas
from hub.openapi_reviews import review_paths, review_schemas
from hub.openapi_webhooks import webhook_paths, webhook_request_bodies, webhook_schemas

PROBLEM = {"$ref": "#/components/responses/Problem"}
PROBLEM_CONTENT = {
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
}
# Every authenticated operation can answer these (docs/errors.md).
_AUTH_PROBLEMS = {"_401": "unauthenticated, invalid_token, token_expired"}


def _op(
    summary: str,
    responses: dict[str, Any],
    *,
    auth: bool = False,
    body: str | None = None,
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**responses, "default": PROBLEM}}
    if auth:
        op["security"] = [{"bearer": []}]
    if body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        }
    if params:
        op["parameters"] = params
    return op


def _json(schema: str, description: str = "OK") -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _problems(**by_status: str) -> dict[str, Any]:
    """Error responses, ``_400="code_a, code_b: when"``: problem+json, described by their codes."""
    return {
        status.lstrip("_"): {"description": codes, **PROBLEM_CONTENT} for status, codes in by_status.items()
    }


# Path parameters the routes read as UUIDs (hub.validation.path_uuid: invalid_id otherwise) and the
# warehouse id's slug (hub.routes.inventory.SLUG).
_UUID_PARAMETERS = frozenset({"product_id", "reservation_id", "cart_id", "media_id", "review_id"})
_SLUG_PARAMETER = {
    "type": "string",
    "minLength": 1,
    "maxLength": 64,
    "pattern": "^[a-z0-9][a-z0-9\\-]{0,63}$",
}


_REGION = {"type": "string", "minLength": 1, "maxLength": 32, "pattern": "^[a-z0-9][a-z0-9\\-]{0,31}$"}
# visible ASCII, as hub.routes.reservations.IDEMPOTENCY_KEY reads it
_IDEMPOTENCY_KEY = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]{1,255}$"}


def comma_list(names: Iterable[str]) -> dict[str, Any]:
    """A query parameter that is a comma-separated list of some of ``names``."""
    one = "|".join(sorted(names))
    return {"type": "string", "pattern": f"^({one})(,({one}))*$"}


def _path(name: str) -> dict[str, Any]:
    if name in _UUID_PARAMETERS:
        schema: dict[str, Any] = {"type": "string", "format": "uuid"}
    elif name == "warehouse_id":
        schema = _SLUG_PARAMETER
    else:
        schema = {"type": "string"}
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema, "description": description}


_STOCK_LEVEL = {
    "type": "object",
    "properties": {
        "product_id": {"type": "string", "format": "uuid"},
        "warehouse_id": {"type": "string"},
        "region": {"type": "string"},
        "on_hand": {"type": "integer"},
        "reserved": {"type": "integer"},
        "available": {"type": "integer"},
        "status": {"enum": ["in_stock", "low_stock", "out_of_stock", "preorder", "discontinued"]},
        "version": {"type": "integer"},
    },
}
_PRODUCT_PROPS = {
    "sku": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
    "name": {"type": "string", "maxLength": 200},
    "description": {"type": "string", "maxLength": 5000},
    "category": {"type": "string", "maxLength": 64},
    "price": {"type": "string", "description": 'exact decimal, up to 4 places, e.g. "12.50"'},
    "status": {"enum": ["active", "preorder", "discontinued"]},
    "attributes": {"type": "object"},
    "low_stock_threshold": {"type": "integer", "minimum": 0},
}


_CONTEXT = {
    "type": "object",
    "description": "A causal context: every write (dot) a replica has seen. vv: replica -> highest"
    " contiguous counter; cloud: the other dots, [replica, counter] pairs",
    "required": ["vv", "cloud"],
    "properties": {
        "vv": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 1}},
        "cloud": {
            "type": "array",
            "items": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]},
        },
    },
}
_DELTA = {
    "type": "object",
    "description": "A cart state or delta in the codec's JSON-safe form (crdt/codec.py); an unknown v"
    " is unsupported_codec_version, never guessed",
    "required": ["t", "v", "s"],
    "properties": {"t": {"const": "cart"}, "v": {"const": 1}, "s": {}},
}
_ACK = {
    "type": "object",
    "description": "A push's outcome. applied: merged and committed; duplicate: this mutation_id was"
    " applied before (version: the cart's version after it); refused: nothing changed (code, message)",
    "required": ["mutation_id", "status"],
    "properties": {
        "mutation_id": {"type": "string"},
        "status": {"enum": ["applied", "duplicate", "refused"]},
        "version": {"type": "integer"},
        "code": {
            "enum": [
                "foreign_replica",
                "unknown_sku",
                "clock_skew",
                "quantity_out_of_range",
                "cart_too_large",
                "delta_too_large",
                "checkout_required",
                "cart_closed",
                "invalid_edit",
            ]
        },
        "message": {"type": "string"},
    },
}
_MUTATION_ID = {"type": "string", "pattern": "^[\\x21-\\x7e]{1,128}$"}


_MEDIA_TYPES = ["image/jpeg", "image/png", "image/gif", "image/webp", "video/mp4", "video/webm"]
_MEDIA = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "owner": {"type": "string"},
        "content_type": {"enum": _MEDIA_TYPES},
        "size": {"type": "integer", "description": "bytes stored, after metadata stripping"},
        "sha256": {"type": "string", "description": "hex SHA-256 of the bytes stored"},
        "created_at": {"type": "string", "format": "date-time"},
        "url": {"type": "string", "description": "signed path on this hub: GET it, no token needed"},
        "expires_at": {"type": "string", "format": "date-time", "description": "when url stops working"},
    },
}


def _media_paths() -> dict[str, Any]:
    media_id = _path("media_id")
    return {
        "/api/v1/media": {
            "post": {
                **_op(
                    "Upload an image or video for a review (customer role): the body is the file, its"
                    " Content-Type the type its bytes are. Images are stored without their metadata",
                    {
                        "201": {
                            **_json("Media", "stored"),
                            "headers": {"Location": {"schema": {"type": "string"}}},
                        },
                        **_problems(
                            **_AUTH_PROBLEMS,
                            _400="empty_upload",
                            _403="forbidden: needs the customer role",
                            _413="media_too_large (limit: bytes): images 10 MiB, videos 50 MiB by default",
                            _415="unsupported_media_type (bytes of no accepted type), media_type_mismatch"
                            " (detected, declared)",
                            _422="malformed_media: an image whose structure is broken (truncated, bad CRC)",
                            _503="media_store_unavailable",
                        ),
                    },
                    auth=True,
                ),
                "requestBody": {
                    "required": True,
                    "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in _MEDIA_TYPES},
                },
            },
        },
        "/api/v1/media/{media_id}": {
            "get": _op(
                "The media's bytes, through the signed URL the hub gave (no token). Range: one byte range",
                {
                    "200": {"description": "the file, with its stored Content-Type"},
                    "206": {"description": "the requested byte range"},
                    "304": {"description": "not modified (ETag: the SHA-256)"},
                    **_problems(
                        _400="invalid_id",
                        _403="invalid_signature (missing, malformed or not this hub's), url_expired",
                        _404="media_not_found",
                    ),
                },
                params=[
                    media_id,
                    _query("exp", {"type": "integer"}, "expiry, epoch seconds, as signed"),
                    _query("sig", {"type": "string"}, "the signature, as given"),
                ],
            ),
        },
        "/api/v1/media/{media_id}/info": {
            "get": _op(
                "The media's record and a fresh signed URL: the uploader, moderators and admins",
                {
                    "200": _json("Media"),
                    **_problems(
                        **_AUTH_PROBLEMS,
                        _400="invalid_id",
                        _404="media_not_found: no such media, or another user's",
                    ),
                },
                auth=True,
                params=[media_id],
            ),
        },
    }


# The operations no rate limit refuses (the routes of hub/ratelimit/classes.UNLIMITED); every other
# operation may answer 429 (docs/api.md, "Rate limits").
_UNLIMITED_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"})
_TEXT = {"type": "string"}
_RATE_LIMITED = {
    "description": "rate_limited: over the limit of the route's class, counted per user (else per client"
    " IP); too_many_connections: /ws and /sse over the connections a user or an address may hold",
    "headers": {
        "Retry-After": {
            "description": "seconds until a request would pass, rounded up (the body's retry_after_ms:"
            " milliseconds)",
            "schema": {"type": "integer", "minimum": 0},
        },
        "RateLimit": {
            "description": 'draft-ietf-httpapi-ratelimit-headers-11: "<class>";r=<left>;t=<seconds>',
            "schema": _TEXT,
        },
        "RateLimit-Policy": {
            "description": 'draft-ietf-httpapi-ratelimit-headers-11: "<class>";q=<burst>;w=<seconds>',
            "schema": _TEXT,
        },
    },
    **PROBLEM_CONTENT,
}


def _with_rate_limits(doc: dict[str, Any]) -> dict[str, Any]:
    for path, item in doc["paths"].items():
        if path in _UNLIMITED_PATHS:
            continue
        for op in item.values():
            if isinstance(op, dict) and "responses" in op:
                op["responses"].setdefault("429", {"$ref": "#/components/responses/RateLimited"})
    doc["components"]["responses"]["RateLimited"] = _RATE_LIMITED
    return doc


@cache
def openapi_document() -> dict[str, Any]:
    return _with_rate_limits(with_api_key_scopes(_with_request_bodies(_document())))


def request_bodies() -> dict[str, dict[str, Any]]:
    """The request bodies' schemas, made from the very fields the routes validate with
    (hub/validation.py: one source, so the document and the server cannot disagree)."""
    # (imported here: the routes import this module's document through hub.routes.ops)
    from hub.behaviour import BATCH_SCHEMA
    from hub.routes import api_keys, carts, catalog, inventory, me, personalization, reservations, reviews
    from hub.settings import Settings
    from hub.validation import body_schema

    return {
        "NewProduct": body_schema(catalog.PRODUCT_FIELDS),
        "ProductPatch": body_schema(catalog.PRODUCT_FIELDS, partial=True),
        "Warehouse": body_schema(inventory.WAREHOUSE_FIELDS),
        "SetStock": body_schema(inventory.SET_STOCK_FIELDS),
        "AdjustStock": body_schema(inventory.ADJUST_FIELDS),
        "NewReservation": body_schema(reservations.request_fields(Settings().reservation_max_ttl_seconds)),
        "CartEdit": body_schema(carts.OP_FIELDS),
        "NewReview": body_schema(reviews.CREATE_FIELDS),
        "ReviewEdit": body_schema(reviews.EDIT_FIELDS, partial=True),
        "ReviewReport": body_schema(reviews.REPORT_FIELDS),
        "ModerationDecision": body_schema(reviews.DECISION_FIELDS),
        "NewApiKey": body_schema(api_keys.CREATE_FIELDS),
        "ProfileUpdate": body_schema(me.PROFILE_FIELDS),
        "EventBatch": BATCH_SCHEMA,
        "ConsentUpdate": body_schema(personalization.CONSENT_FIELDS),
        **webhook_request_bodies(),
        **parts_request_bodies(),
    }


def _with_request_bodies(document: dict[str, Any]) -> dict[str, Any]:
    document["components"]["schemas"].update(request_bodies())
    return document


def _page_paths() -> dict[str, Any]:
    """The hub's own pages and their files (hub/routes/home.py): served with an ETag, 304 when unchanged."""
    from hub.routes.home import ASSETS

    what = {
        "home": "Home page: the live stock of the node's region (over SSE), links to the API reader and the"
        " protocol",
        "api_docs": "A reader of this document",
        "home_js": "The home page's script",
        "api_docs_js": "The API reader's script",
        "page_css": "The pages' style sheet",
        "favicon": "The pages' icon",
        "favicon_ico": "The pages' icon (SVG), where browsers look for one",
    }

    def text(content_type: str) -> dict[str, Any]:
        return {
            "200": {"description": "the file", "content": {content_type: {"schema": {"type": "string"}}}},
            "304": {"description": "not modified (If-None-Match names its ETag)"},
        }

    paths = {asset.path: {"get": _op(what[asset.name], text(asset.content_type))} for asset in ASSETS}
    paths["/docs/protocol.md"] = {
        "get": _op(
            "docs/protocol.md, the real-time protocol (Markdown)",
            {
                **text("text/markdown"),
                **_problems(_404="document_not_found: a hub installed without its docs/ (not a checkout)"),
            },
        )
    }
    return paths


def _document() -> dict[str, Any]:
    from hub.fitment import ATTRIBUTE_VALUE
    from hub.routes import catalog  # (late: see request_bodies)
    from hub.validation import SUBJECT, schema_of

    product_id = _path("product_id")
    warehouse_id = _path("warehouse_id")
    reservation_id = _path("reservation_id")
    cart_id = _path("cart_id")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "synchub",
            "version": "1",
            "description": "Real-time sync hub: catalog, inventory, reservations and offline carts. "
            "Errors are RFC 9457 problem+json with a stable `code` (docs/errors.md); the real-time "
            "protocol is docs/protocol.md.",
        },
        "paths": {
            "/healthz": {"get": _op("Liveness", {"200": {"description": "alive"}})},
            "/readyz": {"get": _op("Readiness: the store answers", {"200": {"description": "ready"}})},
            "/metrics": {"get": _op("Prometheus metrics", {"200": {"description": "text exposition"}})},
            "/api/v1/openapi.json": {"get": _op("This document", {"200": {"description": "OpenAPI 3.1"}})},
            **_page_paths(),
            "/api/v1/products": {
                "get": _op(
                    "List products (keyset pagination)",
                    {"200": _json("ProductPage")},
                    params=[
                        _query("cursor", {"type": "string"}, "next_cursor of the previous page"),
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 200}, "page size"),
                        _query(
                            "sort",
                            {
                                "enum": [
                                    "newest",
                                    "oldest",
                                    "name",
                                    "-name",
                                    "price",
                                    "-price",
                                    "rating",
                                    "-rating",
                                ]
                            },
                            "order (rating: the average of published reviews)",
                        ),
                        _query("category", schema_of(catalog.CATEGORY), "exact category"),
                        _query("status", {"enum": ["active", "preorder", "discontinued"]}, "product status"),
                        _query("price_min", schema_of(catalog.PRICE), "inclusive lower bound"),
                        _query("price_max", schema_of(catalog.PRICE), "inclusive upper bound"),
                        _query(
                            "min_rating",
                            schema_of(catalog.MIN_RATING),
                            "reviewed products whose published reviews average at least this (1-5)",
                        ),
                        _query("in_stock_region", _REGION, "only products available there"),
                        *(
                            _query(
                                f"attr.fitment.{name}",
                                schema_of(ATTRIBUTE_VALUE),
                                f"attributes: products whose attributes.fitment.{name} is this value, or an"
                                " array holding it; any attr.<path> (1-4 names joined by dots) filters alike,"
                                " at most 8 of them (docs/api.md, 'Attribute filters')",
                            )
                            for name in ("make", "model", "year")
                        ),
                        _query(
                            "fields", comma_list(catalog.VISIBLE_FIELDS), "comma-separated sparse fieldset"
                        ),
                    ],
                ),
                "post": _op(
                    "Create a product (admin)",
                    {"201": _json("Product", "created")},
                    auth=True,
                    body="NewProduct",
                ),
            },
            "/api/v1/products/{product_id}": {
                "get": _op(
                    "Read a product (ETag, If-None-Match)",
                    {"200": _json("Product"), "304": {"description": "not modified"}},
                    params=[product_id],
                ),
                "patch": _op(
                    "Update some fields (admin, If-Match)",
                    {"200": _json("Product")},
                    auth=True,
                    body="ProductPatch",
                    params=[product_id],
                ),
                "delete": _op(
                    "Delete a product (admin, If-Match)",
                    {"204": {"description": "deleted"}},
                    auth=True,
                    params=[product_id],
                ),
            },
            "/api/v1/products/{product_id}/inventory": {
                "get": _op(
                    "Stock per warehouse and region", {"200": _json("Inventory")}, params=[product_id]
                ),
            },
            "/api/v1/products/{product_id}/inventory/{warehouse_id}": {
                "put": _op(
                    "Set on_hand absolutely (admin)",
                    {"200": _json("StockLevel")},
                    auth=True,
                    body="SetStock",
                    params=[product_id, warehouse_id],
                ),
            },
            "/api/v1/products/{product_id}/inventory/{warehouse_id}/adjustments": {
                "post": _op(
                    "Apply a signed delta to on_hand (admin)",
                    {"200": _json("StockLevel")},
                    auth=True,
                    body="AdjustStock",
                    params=[product_id, warehouse_id],
                ),
            },
            "/api/v1/inventory": {
                "get": _op(
                    "Snapshot of a region's stock and the stream position it is at least as new as",
                    {"200": {"description": "position and stock rows"}},
                    params=[
                        _query("region", _REGION, "this node's region (default)"),
                        _query("product_id", {"type": "string", "format": "uuid"}, "one product only"),
                    ],
                ),
            },
            "/api/v1/ws": {
                "get": _op(
                    "WebSocket (subprotocols synchub.json, synchub.msgpack); see docs/protocol.md",
                    {"101": {"description": "switching protocols"}},
                    params=[
                        _query(
                            "access_token",
                            {"type": "string"},
                            "bearer token: optional for inventory channels, needed for cart: and user:"
                            " channels and for sync/push",
                        )
                    ],
                ),
            },
            "/api/v1/sse": {
                "get": _op(
                    "Server-Sent Events; see docs/protocol.md",
                    {
                        "200": {"description": "text/event-stream"},
                        **_problems(
                            _400="invalid_channel, channel_not_served, channels_span_streams,"
                            " invalid_position",
                            _401="unauthenticated (cart: and user: channels need a token), invalid_token,"
                            " token_expired",
                            _403="channel_forbidden: another user's user: channel",
                            _404="cart_not_found: no such cart, or another user's",
                        ),
                    },
                    params=[
                        _query("channels", {"type": "string"}, "comma-separated channel names (1-20)"),
                        _query("last_event_id", {"type": "string"}, "resume position (or Last-Event-ID)"),
                        _query(
                            "access_token",
                            {"type": "string"},
                            "bearer token (or Authorization): optional for inventory channels only",
                        ),
                    ],
                ),
            },
            "/api/v1/poll": {
                "get": _op(
                    "Long-poll: events after the cursor, waiting up to timeout seconds",
                    {
                        "200": {"description": "events and the next cursor"},
                        **_problems(
                            _400="invalid_channel, channel_not_served, channels_span_streams,"
                            " invalid_position, invalid_parameter",
                            _401="unauthenticated (cart: and user: channels need a token), invalid_token,"
                            " token_expired",
                            _403="channel_forbidden: another user's user: channel",
                            _404="cart_not_found: no such cart, or another user's",
                            _410="resync_required: start again from the snapshot",
                        ),
                    },
                    params=[
                        _query("channels", {"type": "string"}, "comma-separated channel names (1-20)"),
                        _query("cursor", {"type": "string"}, "position from the previous reply"),
                        _query("timeout", {"type": "integer", "minimum": 0, "maximum": 60}, "seconds"),
                        _query(
                            "access_token",
                            {"type": "string"},
                            "bearer token (or Authorization): optional for inventory channels only",
                        ),
                    ],
                ),
            },
            "/api/v1/warehouses": {
                "get": _op(
                    "List warehouses",
                    {"200": {"description": "warehouses"}},
                    params=[_query("region", _REGION, "only this region")],
                ),
                "post": _op(
                    "Create a warehouse (admin)",
                    {"201": _json("Warehouse", "created")},
                    auth=True,
                    body="Warehouse",
                ),
            },
            "/api/v1/warehouses/{warehouse_id}": {
                "get": _op("Read a warehouse", {"200": _json("Warehouse")}, params=[warehouse_id]),
            },
            "/api/v1/reservations": {
                "post": _op(
                    "Reserve all lines or none (Idempotency-Key required)",
                    {
                        "201": _json("Reservation", "reserved"),
                        **_problems(
                            _422="idempotency_key_reused, reservation_cap_exceeded (scope: reservation or"
                            " user, cap, product_id, line, requested, held): nothing reserved",
                        ),
                    },
                    auth=True,
                    body="NewReservation",
                    params=[
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": True,
                            "schema": _IDEMPOTENCY_KEY,
                        }
                    ],
                ),
                "get": _op(
                    "The caller's reservations, newest first (an admin or service token: another user's,"
                    " with sub)",
                    {
                        "200": _json("ReservationPage"),
                        **_problems(
                            _400="invalid_parameter, invalid_cursor",
                            _403="forbidden: sub names another user and the token is not admin or service;"
                            " insufficient_scope: an API key without reservations:read or reservations:write",
                        ),
                    },
                    auth=True,
                    params=[
                        _query("cursor", {"type": "string"}, "next_cursor of the previous page"),
                        _query(
                            "limit",
                            {"type": "integer", "minimum": 1, "maximum": 200},
                            "page size (default 50)",
                        ),
                        _query(
                            "sub",
                            schema_of(SUBJECT),
                            "whose reservations (default: the caller's; another's needs admin or service)",
                        ),
                    ],
                ),
            },
            "/api/v1/reservations/{reservation_id}": {
                "get": _op(
                    "Read a reservation", {"200": _json("Reservation")}, auth=True, params=[reservation_id]
                ),
            },
            "/api/v1/reservations/{reservation_id}/commit": {
                "post": _op(
                    "Commit: reserved units leave on_hand",
                    {"200": _json("Reservation")},
                    auth=True,
                    params=[reservation_id],
                ),
            },
            "/api/v1/reservations/{reservation_id}/release": {
                "post": _op(
                    "Release: reserved units return",
                    {"200": _json("Reservation")},
                    auth=True,
                    params=[reservation_id],
                ),
            },
            "/api/v1/carts/{cart_id}": {
                "get": _op(
                    "Read a cart: value, lines, conflicts, rejected edits, context (ETag, If-None-Match)."
                    " The owner's tokens, or service/admin",
                    {
                        "200": _json("Cart"),
                        "304": {"description": "not modified"},
                        **_problems(
                            **_AUTH_PROBLEMS,
                            _400="invalid_id",
                            _403="forbidden: no user role",
                            _404="cart_not_found: no such cart, or another user's",
                        ),
                    },
                    auth=True,
                    params=[cart_id],
                ),
            },
            "/api/v1/carts/{cart_id}/sync": {
                "post": _op(
                    "Sync a device (owner, customer role): merge its pushes, each acknowledged once"
                    " committed, and answer what it lacks. Creates the cart on first use",
                    {
                        "200": _json("CartSyncReply"),
                        **_problems(
                            **_AUTH_PROBLEMS,
                            _400="malformed_json, validation_failed, invalid_id, malformed_context,"
                            " bad_request (pushes: a list of at most 100 {mutation_id, delta}),"
                            " invalid_mutation_id, malformed_delta, unsupported_codec_version,"
                            " delta_too_large; nothing is merged",
                            _403="forbidden: needs the customer role",
                            _404="cart_not_found: another user's cart",
                            _413="body_too_large",
                            _415="unsupported_media_type",
                        ),
                    },
                    auth=True,
                    body="CartSync",
                    params=[cart_id],
                ),
            },
            "/api/v1/carts/{cart_id}/ops": {
                "post": _op(
                    "A plain client's edit (add, set, remove): the hub mints the dot for device_id."
                    " Creates the cart on first use",
                    {
                        "200": _json("CartEditReply"),
                        **_problems(
                            **_AUTH_PROBLEMS,
                            _400="malformed_json, validation_failed, invalid_id, invalid_mutation_id,"
                            " quantity_out_of_range (add 0), quantity_required (set), unexpected_quantity"
                            " (remove)",
                            _403="forbidden: needs the customer role",
                            _404="cart_not_found: another user's cart",
                            _409="cart_closed: the cart is checked out and takes no more edits",
                            _413="body_too_large",
                            _415="unsupported_media_type",
                            _422="the edit was refused, nothing changed: foreign_replica, unknown_sku,"
                            " quantity_out_of_range, cart_too_large, invalid_edit",
                        ),
                    },
                    auth=True,
                    body="CartEdit",
                    params=[cart_id],
                ),
            },
            "/api/v1/carts/{cart_id}/checkout": {
                "post": _op(
                    "Check out (Idempotency-Key required): close the cart and reserve all its lines"
                    " or none, once per key",
                    {
                        "201": {
                            **_json("CartCheckout", "checked out and reserved"),
                            "headers": {
                                "Idempotent-Replayed": {"schema": {"enum": ["true", "false"]}},
                                "Location": {"schema": {"type": "string"}},
                            },
                        },
                        **_problems(
                            **_AUTH_PROBLEMS,
                            _400="idempotency_key_required, invalid_idempotency_key, invalid_id",
                            _403="forbidden: needs the customer role",
                            _404="cart_not_found: another user's cart",
                            _409="cart_closed (already checked out; reservation_id), insufficient_stock"
                            " (line, product_id, requested), product_not_found (skus, or line and"
                            " product_id); the cart stays open",
                            _422="empty_cart, idempotency_key_reused, reservation_cap_exceeded (scope,"
                            " cap, product_id, line, requested, held); the cart stays open",
                        ),
                    },
                    auth=True,
                    params=[
                        cart_id,
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": True,
                            "schema": _IDEMPOTENCY_KEY,
                        },
                    ],
                ),
            },
            **_media_paths(),
            **review_paths(_op, _json, _problems, _path, _query, _AUTH_PROBLEMS),
            **privacy_paths(_op, _json, _problems, _path, _query, _AUTH_PROBLEMS),
            **personalization_paths(_op, _json, _problems, _query, _AUTH_PROBLEMS),
            **api_key_paths(_op, _json, _problems, _query, _AUTH_PROBLEMS),
            **webhook_paths(_op, _json, _problems, _query, _AUTH_PROBLEMS),
            **parts_paths(_op, _json, _problems, _query, _AUTH_PROBLEMS),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "responses": {
                "Problem": {
                    "description": "RFC 9457 problem",
                    "content": {
                        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                    },
                },
            },
            "schemas": {
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status", "code", "detail"],
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "code": {"type": "string"},
                        "detail": {"type": "string"},
                        "errors": {"type": "array", "items": {"type": "object"}},
                    },
                },
                "Product": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "format": "uuid"},
                        **_PRODUCT_PROPS,
                        "created_at": {"type": "string", "format": "date-time"},
                        "updated_at": {"type": "string", "format": "date-time"},
                        "version": {"type": "integer"},
                        "rating": {"$ref": "#/components/schemas/RatingAggregate"},
                        "links": {
                            "type": "object",
                            "properties": {"reviews": {"type": "string", "description": "its reviews"}},
                        },
                    },
                },
                "ProductPage": {
                    "type": "object",
                    "properties": {
                        "items": {"type": "array", "items": {"$ref": "#/components/schemas/Product"}},
                        "next_cursor": {"type": ["string", "null"]},
                    },
                },
                "ReservationPage": {
                    "type": "object",
                    "properties": {
                        "items": {"type": "array", "items": {"$ref": "#/components/schemas/Reservation"}},
                        "next_cursor": {"type": ["string", "null"]},
                    },
                },
                "StockLevel": _STOCK_LEVEL,
                "Inventory": {
                    "type": "object",
                    "properties": {
                        "product_id": {"type": "string"},
                        "sku": {"type": "string"},
                        "warehouses": {"type": "array", "items": _STOCK_LEVEL},
                        "regions": {"type": "array", "items": {"type": "object"}},
                        "total": {"type": "object"},
                    },
                },
                "Reservation": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "format": "uuid"},
                        "owner": {"type": "string"},
                        "status": {"enum": ["pending", "committed", "released", "expired"]},
                        "lines": {"type": "array", "items": {"type": "object"}},
                        "created_at": {"type": "string", "format": "date-time"},
                        "expires_at": {"type": "string", "format": "date-time"},
                        "updated_at": {"type": "string", "format": "date-time"},
                    },
                },
                "CausalContext": _CONTEXT,
                "CartDelta": _DELTA,
                "CartAck": _ACK,
                "Cart": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "format": "uuid"},
                        "owner": {"type": "string"},
                        "version": {"type": "integer", "description": "grows by one per accepted change"},
                        "status": {"enum": ["open", "checked_out"]},
                        "value": {
                            "type": "object",
                            "description": "SKU -> quantity, lines above 0 (the checkout's, once closed)",
                            "additionalProperties": {"type": "integer"},
                        },
                        "lines": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "sku": {"type": "string"},
                                    "quantity": {"type": "integer"},
                                    "conflicts": {
                                        "type": "array",
                                        "items": {"type": "integer"},
                                        "description": "quantities that lost a concurrent set, latest first",
                                    },
                                },
                            },
                        },
                        "conflicts": {
                            "type": "object",
                            "additionalProperties": {"type": "array", "items": {"type": "integer"}},
                        },
                        "rejected_edits": {
                            "type": "array",
                            "description": "edits the checkout did not see: kept, never applied",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "sku": {"type": "string"},
                                    "kind": {"enum": ["add", "set", "cancel"]},
                                    "dot": {
                                        "type": "array",
                                        "prefixItems": [{"type": "string"}, {"type": "integer"}],
                                    },
                                    "quantity": {"type": "integer"},
                                },
                            },
                        },
                        "reservation_id": {"type": ["string", "null"]},
                        "context": _CONTEXT,
                        "created_at": {"type": "string", "format": "date-time"},
                        "updated_at": {"type": "string", "format": "date-time"},
                    },
                },
                "CartSync": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "context": {
                            "oneOf": [_CONTEXT, {"type": "null"}],
                            "description": "the device's context; absent or null: it has nothing",
                        },
                        "pushes": {
                            "type": "array",
                            "maxItems": 100,
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["mutation_id", "delta"],
                                "properties": {"mutation_id": _MUTATION_ID, "delta": _DELTA},
                            },
                        },
                    },
                },
                "CartSyncReply": {
                    "type": "object",
                    "properties": {
                        "cart": {"$ref": "#/components/schemas/Cart"},
                        "acks": {"type": "array", "items": _ACK},
                        "delta": {
                            "oneOf": [_DELTA, {"type": "null"}],
                            "description": "null: the device has seen every write; else the cart's"
                            " state, which the device merges",
                        },
                        "context": _CONTEXT,
                        "version": {"type": "integer"},
                    },
                },
                "CartEditReply": {
                    "type": "object",
                    "properties": {"ack": _ACK, "cart": {"$ref": "#/components/schemas/Cart"}},
                },
                "CartCheckout": {
                    "type": "object",
                    "properties": {
                        "reservation": {"$ref": "#/components/schemas/Reservation"},
                        "cart": {"$ref": "#/components/schemas/Cart"},
                    },
                },
                "Media": _MEDIA,
                **review_schemas(_CONTEXT, _DELTA, _ACK),
                **privacy_schemas(),
                **personalization_schemas(),
                **api_key_schemas(),
                **webhook_schemas(),
                **parts_schemas(),
            },
        },
    }
