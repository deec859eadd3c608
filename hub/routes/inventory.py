"""Warehouses and stock: /api/v1/warehouses and /api/v1/products/{id}/inventory."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from hub.auth import require
from hub.errors import BadRequest, NotFoundError
from hub.keys import BROKER, SETTINGS, STORE
from hub.responses import json_response
from hub.validation import Field, integer, path_uuid, query_text, read_json, string, uuid_string, validate
from storage.models import StockLevel, StockStatus, Warehouse, stock_status
from sync.channels import inventory_stream
from sync.cursor import format_position

routes = web.RouteTableDef()

SLUG = r"[a-z0-9][a-z0-9\-]{0,63}"
REGION_PATTERN = r"[a-z0-9][a-z0-9\-]{0,31}"
_IS_SLUG = re.compile(SLUG)
MAX_STOCK = 1_000_000_000
WAREHOUSE_FIELDS = {
    "id": Field(string(1, 64, SLUG), required=True),
    "region": Field(string(1, 32, REGION_PATTERN), required=True),
    "name": Field(string(1, 200), required=True),
}
SET_STOCK_FIELDS = {"on_hand": Field(integer(0, MAX_STOCK), required=True)}
ADJUST_FIELDS = {
    "delta": Field(integer(-MAX_STOCK, MAX_STOCK, nonzero=True), required=True),
    "reason": Field(string(0, 200)),
}


def warehouse_to_dict(warehouse: Warehouse) -> dict[str, Any]:
    return {"id": warehouse.id, "region": warehouse.region, "name": warehouse.name}


def level_to_dict(level: StockLevel) -> dict[str, Any]:
    return {
        "product_id": level.product_id,
        "warehouse_id": level.warehouse_id,
        "region": level.region,
        "on_hand": level.on_hand,
        "reserved": level.reserved,
        "available": level.available,
        "status": level.status.value,
        "version": level.version,
    }


def path_warehouse_id(request: web.Request) -> str:
    """The warehouse id of the path; one that breaks the id format cannot exist."""
    raw = request.match_info["warehouse_id"]
    if not _IS_SLUG.fullmatch(raw):
        raise NotFoundError("no such warehouse", code="warehouse_not_found")
    return raw


@routes.get("/api/v1/warehouses", name="list_warehouses")
async def list_warehouses(request: web.Request) -> web.StreamResponse:
    region = query_text(request, "region", string(1, 32, REGION_PATTERN))
    warehouses = await request.app[STORE].list_warehouses(region)
    return json_response({"items": [warehouse_to_dict(w) for w in warehouses]})


@routes.post("/api/v1/warehouses", name="create_warehouse")
async def create_warehouse(request: web.Request) -> web.StreamResponse:
    require(request, "admin")
    data = validate(await read_json(request), WAREHOUSE_FIELDS)
    warehouse = await request.app[STORE].create_warehouse(Warehouse(**data))
    return json_response(
        warehouse_to_dict(warehouse), status=201, headers={"Location": f"/api/v1/warehouses/{warehouse.id}"}
    )


@routes.get("/api/v1/warehouses/{warehouse_id}", name="get_warehouse")
async def get_warehouse(request: web.Request) -> web.StreamResponse:
    found = await request.app[STORE].get_warehouse(path_warehouse_id(request))
    if found is None:
        raise NotFoundError("no such warehouse", code="warehouse_not_found")
    return json_response(warehouse_to_dict(found))


def _totals(levels: list[StockLevel], product_status: str, threshold: int) -> dict[str, Any]:
    on_hand = sum(lv.on_hand for lv in levels)
    reserved = sum(lv.reserved for lv in levels)
    return {
        "on_hand": on_hand,
        "reserved": reserved,
        "available": on_hand - reserved,
        "status": stock_status(product_status, on_hand - reserved, threshold).value,
    }


@routes.get("/api/v1/products/{product_id}/inventory", name="get_inventory")
async def get_inventory(request: web.Request) -> web.StreamResponse:
    product_id = path_uuid(request, "product_id")
    store = request.app[STORE]
    product = await store.get_product(product_id)
    if product is None:
        raise NotFoundError("no such product", code="product_not_found", product_id=product_id)
    levels = await store.get_inventory(product_id)
    regions: dict[str, list[StockLevel]] = {}
    for level in levels:
        regions.setdefault(level.region, []).append(level)
    status, threshold = product.status.value, product.low_stock_threshold
    total = _totals(levels, status, threshold)
    if not levels:
        total["status"] = (
            StockStatus.OUT_OF_STOCK.value if status == "active" else stock_status(status, 0, threshold).value
        )
    return json_response(
        {
            "product_id": product.id,
            "sku": product.sku,
            "warehouses": [level_to_dict(lv) for lv in levels],
            "regions": [
                {"region": region, **_totals(group, status, threshold)}
                for region, group in sorted(regions.items())
            ],
            "total": total,
        }
    )


SNAPSHOT_PAGE = 1000


async def snapshot_items(
    app: web.Application, region: str, product_id: str | None = None
) -> list[dict[str, Any]]:
    """Every current stock row of a region (or of one product there): what a resync starts from."""
    store = app[STORE]
    items: list[dict[str, Any]] = []
    after: tuple[str, str] | None = None
    while True:
        page = await store.list_stock(region, product_id, after, SNAPSHOT_PAGE)
        items.extend({**level_to_dict(level), "sku": sku} for level, sku in page)
        if len(page) < SNAPSHOT_PAGE:
            return items
        after = (page[-1][0].product_id, page[-1][0].warehouse_id)


@routes.get("/api/v1/inventory", name="inventory_snapshot")
async def inventory_snapshot(request: web.Request) -> web.StreamResponse:
    """The current stock of a region, with the stream position it is at least as new as: a client that
    resyncs applies these rows, then events after ``position`` (dropping any with an older version)."""
    region = query_text(request, "region", string(1, 32, REGION_PATTERN)) or request.app[SETTINGS].region
    product_id = None
    if "product_id" in request.query:
        product_id = query_text(request, "product_id", uuid_string)
    if region != request.app[SETTINGS].region:
        raise BadRequest(
            f"this node serves region {request.app[SETTINGS].region!r}", code="channel_not_served"
        )
    # The position first, the rows second: every change after the position is at least as new as the rows.
    position = await request.app[BROKER].top(inventory_stream(region))
    items = await snapshot_items(request.app, region, product_id)
    return json_response({"region": region, "position": format_position(position), "items": items})


@routes.put("/api/v1/products/{product_id}/inventory/{warehouse_id}", name="set_stock")
async def set_stock(request: web.Request) -> web.StreamResponse:
    require(request, "admin")
    product_id = path_uuid(request, "product_id")
    data = validate(await read_json(request), SET_STOCK_FIELDS)
    level = await request.app[STORE].set_stock(product_id, path_warehouse_id(request), data["on_hand"])
    return json_response(level_to_dict(level))


@routes.post("/api/v1/products/{product_id}/inventory/{warehouse_id}/adjustments", name="adjust_stock")
async def adjust_stock(request: web.Request) -> web.StreamResponse:
    require(request, "admin")
    product_id = path_uuid(request, "product_id")
    data = validate(await read_json(request), ADJUST_FIELDS)
    level = await request.app[STORE].adjust_stock(product_id, path_warehouse_id(request), data["delta"])
    return json_response(level_to_dict(level))
