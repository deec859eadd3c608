"""The OpenAPI paths and schemas of offline carts: their sync, edits and checkout (``hub/openapi.py``
joins them; reviews share the causal context and the ack)."""

from __future__ import annotations

from typing import Any

from hub.openapi_build import AUTH_PROBLEMS, IDEMPOTENCY_KEY, op, path_param, problems, reply

CONTEXT = {
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
DELTA = {
    "type": "object",
    "description": "A cart state or delta in the codec's JSON-safe form (crdt/codec.py); an unknown v"
    " is unsupported_codec_version, never guessed",
    "required": ["t", "v", "s"],
    "properties": {"t": {"const": "cart"}, "v": {"const": 1}, "s": {}},
}
ACK = {
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


def cart_paths() -> dict[str, Any]:
    cart_id = path_param("cart_id")
    return {
        "/api/v1/carts/{cart_id}": {
            "get": op(
                "Read a cart: value, lines, conflicts, rejected edits, context (ETag, If-None-Match)."
                " The owner's tokens, or service/admin",
                {
                    "200": reply("Cart"),
                    "304": {"description": "not modified"},
                    **problems(
                        **AUTH_PROBLEMS,
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
            "post": op(
                "Sync a device (owner, customer role): merge its pushes, each acknowledged once"
                " committed, and answer what it lacks. Creates the cart on first use",
                {
                    "200": reply("CartSyncReply"),
                    **problems(
                        **AUTH_PROBLEMS,
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
            "post": op(
                "A plain client's edit (add, set, remove): the hub mints the dot for device_id."
                " Creates the cart on first use",
                {
                    "200": reply("CartEditReply"),
                    **problems(
                        **AUTH_PROBLEMS,
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
            "post": op(
                "Check out (Idempotency-Key required): close the cart and reserve all its lines"
                " or none, once per key",
                {
                    "201": {
                        **reply("CartCheckout", "checked out and reserved"),
                        "headers": {
                            "Idempotent-Replayed": {"schema": {"enum": ["true", "false"]}},
                            "Location": {"schema": {"type": "string"}},
                        },
                    },
                    **problems(
                        **AUTH_PROBLEMS,
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
                        "schema": IDEMPOTENCY_KEY,
                    },
                ],
            ),
        },
    }


def cart_schemas() -> dict[str, Any]:
    return {
        "CausalContext": CONTEXT,
        "CartDelta": DELTA,
        "CartAck": ACK,
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
                "context": CONTEXT,
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
            },
        },
        "CartSync": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "context": {
                    "oneOf": [CONTEXT, {"type": "null"}],
                    "description": "the device's context; absent or null: it has nothing",
                },
                "pushes": {
                    "type": "array",
                    "maxItems": 100,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["mutation_id", "delta"],
                        "properties": {"mutation_id": _MUTATION_ID, "delta": DELTA},
                    },
                },
            },
        },
        "CartSyncReply": {
            "type": "object",
            "properties": {
                "cart": {"$ref": "#/components/schemas/Cart"},
                "acks": {"type": "array", "items": ACK},
                "delta": {
                    "oneOf": [DELTA, {"type": "null"}],
                    "description": "null: the device has seen every write; else the cart's"
                    " state, which the device merges",
                },
                "context": CONTEXT,
                "version": {"type": "integer"},
            },
        },
        "CartEditReply": {
            "type": "object",
            "properties": {"ack": ACK, "cart": {"$ref": "#/components/schemas/Cart"}},
        },
        "CartCheckout": {
            "type": "object",
            "properties": {
                "reservation": {"$ref": "#/components/schemas/Reservation"},
                "cart": {"$ref": "#/components/schemas/Cart"},
            },
        },
    }
