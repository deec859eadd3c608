"""The OpenAPI 3.1 description of the REST API. ``tests/test_openapi.py`` keeps it true: every
route of the app must be described here, and nothing here may be missing from the app."""

from __future__ import annotations

from functools import cache
from typing import Any

from hub.openapi_api_keys import api_key_paths, api_key_schemas, with_api_key_scopes
from hub.openapi_build import PROBLEM_CONTENT, op, problems
from hub.openapi_carts import ACK, CONTEXT, DELTA, cart_paths, cart_schemas
from hub.openapi_catalog import catalog_paths, catalog_schemas
from hub.openapi_media import MEDIA, media_paths
from hub.openapi_parts import parts_paths, parts_request_bodies, parts_schemas
from hub.openapi_personalization import personalization_paths, personalization_schemas
from hub.openapi_privacy import privacy_paths, privacy_schemas
from hub.openapi_realtime import realtime_paths
from hub.openapi_reservations import reservation_paths, reservation_schemas
from hub.openapi_reviews import review_paths, review_schemas
from hub.openapi_webhooks import webhook_paths, webhook_request_bodies, webhook_schemas

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
        for operation in item.values():
            if isinstance(operation, dict) and "responses" in operation:
                operation["responses"].setdefault("429", {"$ref": "#/components/responses/RateLimited"})
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

    paths = {asset.path: {"get": op(what[asset.name], text(asset.content_type))} for asset in ASSETS}
    paths["/docs/protocol.md"] = {
        "get": op(
            "docs/protocol.md, the real-time protocol (Markdown)",
            {
                **text("text/markdown"),
                **problems(_404="document_not_found: a hub installed without its docs/ (not a checkout)"),
            },
        )
    }
    return paths


def _document() -> dict[str, Any]:
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
            "/healthz": {"get": op("Liveness", {"200": {"description": "alive"}})},
            "/readyz": {"get": op("Readiness: the store answers", {"200": {"description": "ready"}})},
            "/metrics": {"get": op("Prometheus metrics", {"200": {"description": "text exposition"}})},
            "/api/v1/openapi.json": {"get": op("This document", {"200": {"description": "OpenAPI 3.1"}})},
            **_page_paths(),
            **catalog_paths(),
            **realtime_paths(),
            **reservation_paths(),
            **cart_paths(),
            **media_paths(),
            **review_paths(),
            **privacy_paths(),
            **personalization_paths(),
            **api_key_paths(),
            **webhook_paths(),
            **parts_paths(),
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
                **catalog_schemas(),
                **reservation_schemas(),
                **cart_schemas(),
                "Media": MEDIA,
                **review_schemas(CONTEXT, DELTA, ACK),
                **privacy_schemas(),
                **personalization_schemas(),
                **api_key_schemas(),
                **webhook_schemas(),
                **parts_schemas(),
            },
        },
    }
