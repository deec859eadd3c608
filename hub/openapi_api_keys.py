"""The OpenAPI paths and schemas of API keys, and which operations an API key may call (``hub/openapi.py``
joins them; ``tests/test_authz.py`` checks the scopes against hub/authz.py's table)."""

from __future__ import annotations

from typing import Any

from hub.authz import SCOPES, TABLE
from hub.openapi_build import AUTH_PROBLEMS, op, problems, query, reply

# The operations an API key may call, by path and method → their route's name in hub/authz.TABLE.
KEY_OPERATIONS: dict[tuple[str, str], str] = {
    ("/api/v1/products", "post"): "create_product",
    ("/api/v1/products/{product_id}", "patch"): "update_product",
    ("/api/v1/products/{product_id}", "delete"): "delete_product",
    ("/api/v1/warehouses", "post"): "create_warehouse",
    ("/api/v1/products/{product_id}/inventory/{warehouse_id}", "put"): "set_stock",
    ("/api/v1/products/{product_id}/inventory/{warehouse_id}/adjustments", "post"): "adjust_stock",
    ("/api/v1/reservations", "post"): "create_reservation",
    ("/api/v1/reservations", "get"): "list_reservations",
    ("/api/v1/reservations/{reservation_id}", "get"): "get_reservation",
    ("/api/v1/reservations/{reservation_id}/commit", "post"): "commit_reservation",
    ("/api/v1/reservations/{reservation_id}/release", "post"): "release_reservation",
    ("/api/v1/webhooks", "post"): "create_webhook",
    ("/api/v1/webhooks", "get"): "list_webhooks",
    ("/api/v1/webhooks/{webhook_id}", "get"): "get_webhook",
    ("/api/v1/webhooks/{webhook_id}", "patch"): "update_webhook",
    ("/api/v1/webhooks/{webhook_id}", "delete"): "delete_webhook",
    ("/api/v1/webhooks/{webhook_id}/rotate-secret", "post"): "rotate_webhook_secret",
    ("/api/v1/webhooks/{webhook_id}/test", "post"): "test_webhook",
    ("/api/v1/webhooks/{webhook_id}/replay", "post"): "replay_webhook",
    ("/api/v1/webhooks/{webhook_id}/deliveries", "get"): "list_webhook_deliveries",
    ("/api/v1/webhooks/{webhook_id}/dead-letters", "get"): "list_webhook_dead_letters",
    ("/api/v1/schools", "get"): "list_schools",
    ("/api/v1/schools/{school_id}", "get"): "get_school",
    ("/api/v1/schools/{school_id}/assets", "post"): "create_asset",
    ("/api/v1/schools/{school_id}/assets", "get"): "list_assets",
    ("/api/v1/schools/{school_id}/assets/{asset_id}", "get"): "get_asset",
    ("/api/v1/schools/{school_id}/assets/{asset_id}", "patch"): "update_asset",
    ("/api/v1/schools/{school_id}/parts-requests", "post"): "create_parts_request",
    ("/api/v1/schools/{school_id}/parts-requests", "get"): "list_parts_requests",
    ("/api/v1/schools/{school_id}/parts-requests/{request_id}", "get"): "get_parts_request",
    (
        "/api/v1/schools/{school_id}/parts-requests/{request_id}/transitions",
        "post",
    ): "transition_parts_request",
}

_KEY_ID = {"type": "string", "pattern": "^[0-9A-Za-z]{16}$"}
_WHEN = {"type": ["string", "null"], "format": "date-time"}
_PROBLEM = {"content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
_KEY_REFUSALS = (
    "; an API key: invalid_api_key (malformed, bad checksum, unknown, wrong secret), api_key_revoked,"
    " api_key_expired, api_key_rotated (its overlap has ended)"
)
_ADMIN_ONLY = "forbidden: needs the admin role; insufficient_scope: an API key (keys never manage keys)"


def api_key_paths() -> dict[str, Any]:
    key_id = {"name": "key_id", "in": "path", "required": True, "schema": _KEY_ID}
    made = {
        **reply("NewApiKeyReply", "made: the key is in this answer and nowhere else, ever"),
        "headers": {"Location": {"schema": {"type": "string"}}},
    }
    return {
        "/api/v1/api-keys": {
            "post": op(
                "Make an API key for a partner system (admin): shown once, only its SHA-256 is kept",
                {
                    "201": made,
                    **problems(
                        **AUTH_PROBLEMS,
                        _400="malformed_json, validation_failed (name 1-100 characters, scopes: 1 or more"
                        " known scopes, each once; expires_in 1 s-10 years; no unknown field)",
                        _403=_ADMIN_ONLY,
                    ),
                },
                auth=True,
                body="NewApiKey",
            ),
            "get": op(
                "The API keys, newest first, without their secrets (admin)",
                {
                    "200": reply("ApiKeyPage"),
                    **problems(**AUTH_PROBLEMS, _400="invalid_parameter, invalid_cursor", _403=_ADMIN_ONLY),
                },
                auth=True,
                params=[
                    query("cursor", {"type": "string"}, "next_cursor of the previous page"),
                    query(
                        "limit", {"type": "integer", "minimum": 1, "maximum": 200}, "page size (default 50)"
                    ),
                ],
            ),
        },
        "/api/v1/api-keys/{key_id}": {
            "get": op(
                "One API key, without its secret (admin)",
                {
                    "200": reply("ApiKey"),
                    **problems(
                        **AUTH_PROBLEMS, _400="invalid_id", _403=_ADMIN_ONLY, _404="api_key_not_found"
                    ),
                },
                auth=True,
                params=[key_id],
            ),
            "delete": op(
                "Revoke an API key (admin): refused from now on by this node, by every node within"
                " api_key_cache_seconds (2 s); revoking it again changes nothing",
                {
                    "204": {"description": "revoked"},
                    **problems(
                        **AUTH_PROBLEMS, _400="invalid_id", _403=_ADMIN_ONLY, _404="api_key_not_found"
                    ),
                },
                auth=True,
                params=[key_id],
            ),
        },
        "/api/v1/api-keys/{key_id}/rotate": {
            "post": {
                **op(
                    "Rotate an API key (admin): a new key of the same name, scopes, expiry and subject;"
                    " the old one works until the overlap ends (default 24 h; 0: refused at once). Once"
                    " per key",
                    {
                        "201": made,
                        **problems(
                            **AUTH_PROBLEMS,
                            _400="invalid_id, malformed_json, validation_failed (overlap_seconds 0-30 days)",
                            _403=_ADMIN_ONLY,
                            _404="api_key_not_found",
                            _409="api_key_not_rotatable: revoked, expired or rotated already (state)",
                        ),
                    },
                    auth=True,
                    params=[key_id],
                ),
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ApiKeyRotation"}}
                    },
                },
            },
        },
    }


def api_key_schemas() -> dict[str, Any]:
    scopes = {"type": "array", "items": {"enum": sorted(SCOPES)}, "uniqueItems": True}
    record = {
        "type": "object",
        "properties": {
            "id": _KEY_ID,
            "name": {"type": "string"},
            "prefix": {"type": "string", "description": "what a listing shows of the key: shk_<id>"},
            "scopes": scopes,
            "state": {"enum": ["active", "rotating", "rotated", "expired", "revoked"]},
            "subject": {
                "type": "string",
                "description": "who the key acts as (apikey.<id of the first key of its rotations>): the"
                " owner of its reservations, its user: channel",
            },
            "owner": {"type": "string", "description": "the admin who made it"},
            "created_at": {"type": "string", "format": "date-time"},
            "expires_at": _WHEN,
            "last_used_at": {**_WHEN, "description": "to the minute: written at most once a minute"},
            "revoked_at": _WHEN,
            "rotated_from": {"type": ["string", "null"]},
            "replaced_by": {"type": ["string", "null"]},
            "overlap_ends_at": {**_WHEN, "description": "a rotated key works until then"},
        },
    }
    return {
        "ApiKeyRotation": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "overlap_seconds": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": 30 * 24 * 3600,
                    "description": "how long the old key keeps working (default 86400; 0: not at all)",
                }
            },
        },
        "ApiKey": record,
        "NewApiKeyReply": {
            "allOf": [
                {"$ref": "#/components/schemas/ApiKey"},
                {
                    "type": "object",
                    "properties": {
                        "key": {
                            "type": "string",
                            "pattern": "^shk_[0-9A-Za-z]{16}_[0-9A-Za-z]{32}_[0-9A-Za-z]{6}$",
                            "description": "the key: send it as Authorization: Bearer <key>. Shown once",
                        },
                        "previous": {
                            "$ref": "#/components/schemas/ApiKey",
                            "description": "a rotation's old key",
                        },
                    },
                },
            ]
        },
        "ApiKeyPage": {
            "type": "object",
            "properties": {
                "items": {"type": "array", "items": {"$ref": "#/components/schemas/ApiKey"}},
                "next_cursor": {"type": ["string", "null"]},
            },
        },
    }


def with_api_key_scopes(doc: dict[str, Any]) -> dict[str, Any]:
    """An operation an API key may call says so: its security is a user's token *or* a key holding one
    of the scopes (the table's, hub/authz.py)."""
    doc["components"]["securitySchemes"]["apiKey"] = {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "shk_<id>_<secret>_<checksum>",
        "description": "A partner system's API key (docs/security.md, 'API keys'); scopes: "
        + "; ".join(f"{name}: {what}" for name, what in SCOPES.items()),
    }
    for (path, method), name in KEY_OPERATIONS.items():
        operation = doc["paths"][path][method]
        operation["security"] = [{"bearer": []}, {"apiKey": sorted(TABLE[name].scopes)}]
        operation["responses"].setdefault("401", {"description": "unauthenticated", **_PROBLEM})
        operation["responses"]["401"] = {
            **operation["responses"]["401"],
            "description": operation["responses"]["401"]["description"] + _KEY_REFUSALS,
        }
        operation["responses"].setdefault(
            "403",
            {
                "description": "forbidden: a token without the role; insufficient_scope: an API key"
                f" without {' or '.join(sorted(TABLE[name].scopes))} (required_scopes)",
                **_PROBLEM,
            },
        )
    return doc
