"""The OpenAPI paths and schemas of products, their stock and warehouses (``hub/openapi.py`` joins them)."""

from __future__ import annotations

from typing import Any

from hub.openapi_build import REGION, comma_list, op, path_param, query, reply

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


def catalog_paths() -> dict[str, Any]:
    from hub.fitment import ATTRIBUTE_VALUE
    from hub.routes import catalog  # (late: the routes import the document)
    from hub.validation import schema_of

    product_id, warehouse_id = path_param("product_id"), path_param("warehouse_id")
    return {
        "/api/v1/products": {
            "get": op(
                "List products (keyset pagination)",
                {"200": reply("ProductPage")},
                params=[
                    query("cursor", {"type": "string"}, "next_cursor of the previous page"),
                    query("limit", {"type": "integer", "minimum": 1, "maximum": 200}, "page size"),
                    query(
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
                    query("category", schema_of(catalog.CATEGORY), "exact category"),
                    query("status", {"enum": ["active", "preorder", "discontinued"]}, "product status"),
                    query("price_min", schema_of(catalog.PRICE), "inclusive lower bound"),
                    query("price_max", schema_of(catalog.PRICE), "inclusive upper bound"),
                    query(
                        "min_rating",
                        schema_of(catalog.MIN_RATING),
                        "reviewed products whose published reviews average at least this (1-5)",
                    ),
                    query("in_stock_region", REGION, "only products available there"),
                    *(
                        query(
                            f"attr.fitment.{name}",
                            schema_of(ATTRIBUTE_VALUE),
                            f"attributes: products whose attributes.fitment.{name} is this value, or an"
                            " array holding it; any attr.<path> (1-4 names joined by dots) filters alike,"
                            " at most 8 of them (docs/api.md, 'Attribute filters')",
                        )
                        for name in ("make", "model", "year")
                    ),
                    query("fields", comma_list(catalog.VISIBLE_FIELDS), "comma-separated sparse fieldset"),
                ],
            ),
            "post": op(
                "Create a product (admin)",
                {"201": reply("Product", "created")},
                auth=True,
                body="NewProduct",
            ),
        },
        "/api/v1/products/{product_id}": {
            "get": op(
                "Read a product (ETag, If-None-Match)",
                {"200": reply("Product"), "304": {"description": "not modified"}},
                params=[product_id],
            ),
            "patch": op(
                "Update some fields (admin, If-Match)",
                {"200": reply("Product")},
                auth=True,
                body="ProductPatch",
                params=[product_id],
            ),
            "delete": op(
                "Delete a product (admin, If-Match)",
                {"204": {"description": "deleted"}},
                auth=True,
                params=[product_id],
            ),
        },
        "/api/v1/products/{product_id}/inventory": {
            "get": op("Stock per warehouse and region", {"200": reply("Inventory")}, params=[product_id]),
        },
        "/api/v1/products/{product_id}/inventory/{warehouse_id}": {
            "put": op(
                "Set on_hand absolutely (admin)",
                {"200": reply("StockLevel")},
                auth=True,
                body="SetStock",
                params=[product_id, warehouse_id],
            ),
        },
        "/api/v1/products/{product_id}/inventory/{warehouse_id}/adjustments": {
            "post": op(
                "Apply a signed delta to on_hand (admin)",
                {"200": reply("StockLevel")},
                auth=True,
                body="AdjustStock",
                params=[product_id, warehouse_id],
            ),
        },
        "/api/v1/inventory": {
            "get": op(
                "Snapshot of a region's stock and the stream position it is at least as new as",
                {"200": {"description": "position and stock rows"}},
                params=[
                    query("region", REGION, "this node's region (default)"),
                    query("product_id", {"type": "string", "format": "uuid"}, "one product only"),
                ],
            ),
        },
        "/api/v1/warehouses": {
            "get": op(
                "List warehouses",
                {"200": {"description": "warehouses"}},
                params=[query("region", REGION, "only this region")],
            ),
            "post": op(
                "Create a warehouse (admin)",
                {"201": reply("Warehouse", "created")},
                auth=True,
                body="Warehouse",
            ),
        },
        "/api/v1/warehouses/{warehouse_id}": {
            "get": op("Read a warehouse", {"200": reply("Warehouse")}, params=[warehouse_id]),
        },
    }


def catalog_schemas() -> dict[str, Any]:
    return {
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
    }
