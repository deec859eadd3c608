"""The OpenAPI 3.1 description of the REST API. ``tests/test_openapi.py`` keeps it true: every
route of the app must be described here, and nothing here may be missing from the app."""

from __future__ import annotations

from functools import cache
from typing import Any

PROBLEM = {"$ref": "#/components/responses/Problem"}


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


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


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


@cache
def openapi_document() -> dict[str, Any]:
    product_id = _path("product_id")
    warehouse_id = _path("warehouse_id")
    reservation_id = _path("reservation_id")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "synchub",
            "version": "1",
            "description": "Real-time sync hub: catalog, "
            "inventory and reservations. Errors are RFC 9457 problem+json with a stable `code`.",
        },
        "paths": {
            "/healthz": {"get": _op("Liveness", {"200": {"description": "alive"}})},
            "/readyz": {"get": _op("Readiness: the store answers", {"200": {"description": "ready"}})},
            "/metrics": {"get": _op("Prometheus metrics", {"200": {"description": "text exposition"}})},
            "/api/v1/openapi.json": {"get": _op("This document", {"200": {"description": "OpenAPI 3.1"}})},
            "/api/v1/products": {
                "get": _op(
                    "List products (keyset pagination)",
                    {"200": _json("ProductPage")},
                    params=[
                        _query("cursor", {"type": "string"}, "next_cursor of the previous page"),
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 200}, "page size"),
                        _query(
                            "sort",
                            {"enum": ["newest", "oldest", "name", "-name", "price", "-price"]},
                            "order",
                        ),
                        _query("category", {"type": "string"}, "exact category"),
                        _query("status", {"enum": ["active", "preorder", "discontinued"]}, "product status"),
                        _query("price_min", {"type": "string"}, "inclusive lower bound"),
                        _query("price_max", {"type": "string"}, "inclusive upper bound"),
                        _query("in_stock_region", {"type": "string"}, "only products available there"),
                        _query("fields", {"type": "string"}, "comma-separated sparse fieldset"),
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
                        _query("region", {"type": "string"}, "this node's region (default)"),
                        _query("product_id", {"type": "string", "format": "uuid"}, "one product only"),
                    ],
                ),
            },
            "/api/v1/ws": {
                "get": _op(
                    "WebSocket (subprotocols synchub.json, synchub.msgpack); see docs/protocol.md",
                    {"101": {"description": "switching protocols"}},
                    params=[_query("access_token", {"type": "string"}, "bearer token, optional")],
                ),
            },
            "/api/v1/sse": {
                "get": _op(
                    "Server-Sent Events; see docs/protocol.md",
                    {"200": {"description": "text/event-stream"}},
                    params=[
                        _query("channels", {"type": "string"}, "comma-separated channel names"),
                        _query("last_event_id", {"type": "string"}, "resume position (or Last-Event-ID)"),
                        _query("access_token", {"type": "string"}, "bearer token, optional"),
                    ],
                ),
            },
            "/api/v1/poll": {
                "get": _op(
                    "Long-poll: events after the cursor, waiting up to timeout seconds",
                    {
                        "200": {"description": "events and the next cursor"},
                        "410": {"description": "resync_required: start again from the snapshot"},
                    },
                    params=[
                        _query("channels", {"type": "string"}, "comma-separated channel names"),
                        _query("cursor", {"type": "string"}, "position from the previous reply"),
                        _query("timeout", {"type": "integer", "minimum": 0, "maximum": 60}, "seconds"),
                    ],
                ),
            },
            "/api/v1/warehouses": {
                "get": _op(
                    "List warehouses",
                    {"200": {"description": "warehouses"}},
                    params=[_query("region", {"type": "string"}, "only this region")],
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
                    {"201": _json("Reservation", "reserved")},
                    auth=True,
                    body="NewReservation",
                    params=[
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": True,
                            "schema": {"type": "string", "maxLength": 255},
                        }
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
                "NewProduct": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["sku", "name", "price"],
                    "properties": _PRODUCT_PROPS,
                },
                "ProductPatch": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": _PRODUCT_PROPS,
                },
                "Product": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "format": "uuid"},
                        **_PRODUCT_PROPS,
                        "created_at": {"type": "string", "format": "date-time"},
                        "updated_at": {"type": "string", "format": "date-time"},
                        "version": {"type": "integer"},
                    },
                },
                "ProductPage": {
                    "type": "object",
                    "properties": {
                        "items": {"type": "array", "items": {"$ref": "#/components/schemas/Product"}},
                        "next_cursor": {"type": ["string", "null"]},
                    },
                },
                "Warehouse": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["id", "region", "name"],
                    "properties": {
                        "id": {"type": "string"},
                        "region": {"type": "string"},
                        "name": {"type": "string"},
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
                "SetStock": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["on_hand"],
                    "properties": {"on_hand": {"type": "integer", "minimum": 0}},
                },
                "AdjustStock": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["delta"],
                    "properties": {"delta": {"type": "integer"}, "reason": {"type": "string"}},
                },
                "NewReservation": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["lines"],
                    "properties": {
                        "ttl_seconds": {"type": "integer", "minimum": 1},
                        "lines": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": 100,
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["product_id", "quantity"],
                                "properties": {
                                    "product_id": {"type": "string", "format": "uuid"},
                                    "quantity": {"type": "integer", "minimum": 1, "maximum": 10000},
                                    "warehouse_id": {"type": "string"},
                                    "region": {"type": "string"},
                                },
                            },
                        },
                    },
                },
                "Reservation": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "format": "uuid"},
                        "owner": {"type": "string"},
                        "status": {"enum": ["pending", "committed", "released", "expired"]},
                        "lines": {"type": "array", "items": {"type": "object"}},
                        "created_at": {"type": "string"},
                        "expires_at": {"type": "string"},
                        "updated_at": {"type": "string"},
                    },
                },
            },
        },
    }
