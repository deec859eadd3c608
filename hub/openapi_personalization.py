"""The OpenAPI paths and schemas of personalization: behaviour events, consent, recommendations
(``hub/openapi.py`` joins them; the batch's schema is hub/behaviour.py's, beside its decoder)."""

from __future__ import annotations

from typing import Any

from hub.openapi_build import AUTH_PROBLEMS, op, problems, query, reply
from hub.recommendations import DEFAULT_LIMIT, MAX_LIMIT

_TIME = {"type": "string", "format": "date-time"}
_CUSTOMER = "forbidden: a customer's token"
_CONSENT = (
    "consent_required: the user has not granted consent to personalization (PUT /api/v1/me/consent), or"
    " revoked it, or an event of the batch was recorded without it; nothing was stored"
)


def personalization_paths() -> dict[str, Any]:
    return {
        "/api/v1/events": {
            "post": op(
                "Record a batch of the caller's behaviour events (1-100: view, search, filter, add_to_cart,"
                " wishlist), each with the user's consent when it was recorded. Stored with the retention"
                " (--event-retention-days) and aggregated in the same transaction: the recommendations"
                " read right after reflect them",
                {
                    "200": reply("EventsAccepted"),
                    **problems(
                        **AUTH_PROBLEMS,
                        _400="malformed_json, validation_failed (every problem named: events[i].field, code;"
                        " no unknown field, a field of another type of event included)",
                        _403=f"{_CUSTOMER}; {_CONSENT}",
                        _413="body_too_large",
                        _415="unsupported_media_type, unsupported_content_encoding",
                    ),
                },
                auth=True,
                body="EventBatch",
            ),
        },
        "/api/v1/me/consent": {
            "get": op(
                "The caller's consent to personalization (unset until given) and the events' retention",
                {"200": reply("Consent"), **problems(**AUTH_PROBLEMS, _403=_CUSTOMER)},
                auth=True,
            ),
            "put": op(
                "Grant or revoke consent. Revoking stops collection at once and deletes, in the same"
                " transaction, the caller's events, preferred attributes and recent products (the anonymous"
                " co-occurrence and trending counts stay); granting or revoking again changes nothing",
                {
                    "200": reply("ConsentChange"),
                    **problems(
                        **AUTH_PROBLEMS,
                        _400="malformed_json, validation_failed",
                        _403=_CUSTOMER,
                        _415="unsupported_media_type",
                    ),
                },
                auth=True,
                body="ConsentUpdate",
            ),
        },
        "/api/v1/me/recommendations": {
            "get": op(
                "Products ranked for the caller from their recent views and adds to cart (co-viewed and"
                " co-carted products), their preferred attributes and their region's trending products;"
                " out of stock in their region excluded. Filter by attribute with attr.<key>[.<key>]=<value>"
                " parameters (e.g. attr.material=organic-cotton&attr.certification=GOTS; every one must"
                " match, as the catalog's). ETag (If-None-Match → 304), Cache-Control: private. Without"
                " consent: the region's trending products",
                {
                    "200": reply("Recommendations"),
                    "304": {"description": "not modified: the list is the one If-None-Match names"},
                    **problems(
                        **AUTH_PROBLEMS,
                        _400="invalid_parameter: limit, or an attr.… filter",
                        _403=_CUSTOMER,
                    ),
                },
                auth=True,
                params=[
                    query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                        f"how many ({DEFAULT_LIMIT})",
                    ),
                ],
            ),
        },
    }


def personalization_schemas() -> dict[str, Any]:
    consent = {
        "sub": {"type": "string"},
        "status": {"enum": ["granted", "revoked", "unset"]},
        "updated_at": {"type": ["string", "null"], "format": "date-time"},
        "retention_days": {"type": "integer", "description": "how long events are kept after they happened"},
    }
    return {
        "EventsAccepted": {
            "type": "object",
            "properties": {
                "accepted": {"type": "integer"},
                "expires_at": {**_TIME, "description": "when the batch's oldest event will be deleted"},
            },
        },
        "Consent": {"type": "object", "properties": consent},
        "ConsentChange": {
            "type": "object",
            "properties": {
                **consent,
                "events_deleted": {"type": "integer"},
                "preferences_deleted": {"type": "integer"},
            },
        },
        "Recommendations": {
            "type": "object",
            "properties": {
                "region": {"type": "string", "description": "whose stock and trending products: the user's"},
                "personalized": {"type": "boolean", "description": "false: no consent, trending only"},
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "product_id": {"type": "string", "format": "uuid"},
                            "sku": {"type": "string"},
                            "name": {"type": "string"},
                            "category": {"type": "string"},
                            "price": {"type": "string"},
                            "attributes": {"type": "object"},
                            "stock_status": {"enum": ["in_stock", "low_stock", "preorder"]},
                            "reasons": {
                                "type": "array",
                                "items": {"type": "string"},
                                "description": "co_carted, co_viewed, preferred:<name>=<value>, trending",
                            },
                        },
                    },
                },
            },
        },
    }
