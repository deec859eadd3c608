"""Warehouses and stock over real HTTP, on both backends."""

from __future__ import annotations

import uuid
from typing import Any

WAREHOUSES = "/api/v1/warehouses"


def inventory(pid: str) -> str:
    return f"/api/v1/products/{pid}/inventory"


def stock_path(pid: str, wid: str) -> str:
    return f"/api/v1/products/{pid}/inventory/{wid}"


async def adjust(hub: Any, pid: str, wid: str, delta: int, **extra: Any) -> tuple[int, Any]:
    status, body, _ = await hub.call(
        "POST", stock_path(pid, wid) + "/adjustments", token=hub.admin, json={"delta": delta, **extra}
    )
    return status, body


async def reserve(hub: Any, pid: str, wid: str, quantity: int) -> dict[str, Any]:
    status, body, _ = await hub.call(
        "POST",
        "/api/v1/reservations",
        token=hub.alice,
        json={"lines": [{"product_id": pid, "quantity": quantity, "warehouse_id": wid}]},
        headers={"Idempotency-Key": str(uuid.uuid4())},
    )
    assert status == 201, body
    return dict(body)


async def levels(hub: Any, pid: str) -> dict[str, Any]:
    status, body, _ = await hub.call("GET", inventory(pid))
    assert status == 200, body
    return dict(body)


# -- warehouses -------------------------------------------------------------------------------------


async def test_create_a_warehouse_returns_201_with_location(hub):
    status, body, headers = await hub.call(
        "POST", WAREHOUSES, token=hub.admin, json={"id": "par-1", "region": "eu", "name": "Paris 1"}
    )
    assert status == 201, body
    assert body == {"id": "par-1", "region": "eu", "name": "Paris 1"}
    assert headers["Location"] == f"{WAREHOUSES}/par-1"
    status, fetched, _ = await hub.call("GET", headers["Location"])
    assert status == 200
    assert fetched == body


async def test_list_warehouses_in_id_order_and_by_region(hub):
    await hub.warehouse("par-1", "eu")
    await hub.warehouse("nyc-1", "us")
    await hub.warehouse("ber-1", "eu")
    status, body, _ = await hub.call("GET", WAREHOUSES)
    assert status == 200
    assert [w["id"] for w in body["items"]] == ["ber-1", "nyc-1", "par-1"]
    _, body, _ = await hub.call("GET", f"{WAREHOUSES}?region=eu")
    assert [w["id"] for w in body["items"]] == ["ber-1", "par-1"]
    assert {w["region"] for w in body["items"]} == {"eu"}
    _, body, _ = await hub.call("GET", f"{WAREHOUSES}?region=mars")
    assert body["items"] == []


async def test_an_unknown_warehouse_is_404_warehouse_not_found(hub):
    status, body, headers = await hub.call("GET", f"{WAREHOUSES}/nowhere")
    assert status == 404
    assert body["code"] == "warehouse_not_found"
    assert headers["Content-Type"].startswith("application/problem+json")


async def test_a_duplicate_warehouse_id_is_409_and_keeps_the_first(hub):
    await hub.warehouse("par-1", "eu")
    status, body, _ = await hub.call(
        "POST", WAREHOUSES, token=hub.admin, json={"id": "par-1", "region": "us", "name": "other"}
    )
    assert status == 409
    assert body["code"] == "warehouse_exists"
    _, fetched, _ = await hub.call("GET", f"{WAREHOUSES}/par-1")
    assert fetched == {"id": "par-1", "region": "eu", "name": "par-1"}


async def test_creating_a_warehouse_needs_an_admin(hub):
    for who, expected in ((None, 401), (hub.alice, 403), (hub.service, 403)):
        status, body, _ = await hub.call(
            "POST", WAREHOUSES, token=who, json={"id": "sneaky", "region": "eu", "name": "x"}
        )
        assert status == expected, body
    status, _, _ = await hub.call("GET", f"{WAREHOUSES}/sneaky")
    assert status == 404


async def test_a_warehouse_id_must_be_a_slug(hub):
    for bad in ("PAR-1", "-par", "par 1", "", "a" * 65):
        status, body, _ = await hub.call(
            "POST", WAREHOUSES, token=hub.admin, json={"id": bad, "region": "eu", "name": "x"}
        )
        assert status == 400, bad
        assert body["code"] == "validation_failed"
        assert body["errors"][0]["field"] == "id"
    _, body, _ = await hub.call("GET", WAREHOUSES)
    assert body["items"] == []


# -- set and adjust stock ---------------------------------------------------------------------------


async def test_put_stock_sets_on_hand_absolutely_and_bumps_the_version(hub):
    await hub.warehouse("par-1", "eu")
    product = await hub.product("INV-1")
    level = await hub.stock(product["id"], "par-1", 40)
    assert level == {
        "product_id": product["id"],
        "warehouse_id": "par-1",
        "region": "eu",
        "on_hand": 40,
        "reserved": 0,
        "available": 40,
        "status": "in_stock",
        "version": 1,
    }
    level = await hub.stock(product["id"], "par-1", 7)
    assert level["on_hand"] == 7
    assert level["version"] == 2
    level = await hub.stock(product["id"], "par-1", 0)
    assert level["on_hand"] == 0
    assert level["status"] == "out_of_stock"
    assert level["version"] == 3


async def test_put_stock_for_an_unknown_product_or_warehouse_is_404(hub):
    await hub.warehouse("par-1", "eu")
    product = await hub.product("INV-2")
    status, body, _ = await hub.call(
        "PUT", stock_path(product["id"], "nowhere"), token=hub.admin, json={"on_hand": 1}
    )
    assert status == 404
    assert body["code"] == "warehouse_not_found"
    missing = "00000000-0000-4000-8000-000000000000"
    status, body, _ = await hub.call(
        "PUT", stock_path(missing, "par-1"), token=hub.admin, json={"on_hand": 1}
    )
    assert status == 404
    assert body["code"] == "product_not_found"
    assert (await levels(hub, product["id"]))["warehouses"] == []


async def test_stock_writes_need_an_admin(hub):
    await hub.warehouse("par-1", "eu")
    product = await hub.product("INV-3")
    await hub.stock(product["id"], "par-1", 5)
    status, _, _ = await hub.call(
        "PUT", stock_path(product["id"], "par-1"), token=hub.alice, json={"on_hand": 99}
    )
    assert status == 403
    status, _, _ = await hub.call(
        "POST", stock_path(product["id"], "par-1") + "/adjustments", json={"delta": 99}
    )
    assert status == 401
    assert (await levels(hub, product["id"]))["warehouses"][0]["on_hand"] == 5


async def test_adjustments_apply_signed_deltas(hub):
    await hub.warehouse("par-1", "eu")
    product = await hub.product("ADJ-1")
    await hub.stock(product["id"], "par-1", 10)
    status, body = await adjust(hub, product["id"], "par-1", 5, reason="delivery")
    assert status == 200, body
    assert body["on_hand"] == 15
    assert body["version"] == 2
    status, body = await adjust(hub, product["id"], "par-1", -12)
    assert status == 200, body
    assert body["on_hand"] == 3
    assert body["available"] == 3
    assert body["status"] == "low_stock"
    status, body = await adjust(hub, product["id"], "par-1", -3)
    assert status == 200, body
    assert body["on_hand"] == 0
    assert body["status"] == "out_of_stock"


async def test_an_adjustment_below_zero_is_409_and_changes_nothing(hub):
    await hub.warehouse("par-1", "eu")
    product = await hub.product("ADJ-2")
    await hub.stock(product["id"], "par-1", 4)
    status, body = await adjust(hub, product["id"], "par-1", -5)
    assert status == 409
    assert body["code"] == "insufficient_stock"
    level = (await levels(hub, product["id"]))["warehouses"][0]
    assert level["on_hand"] == 4
    assert level["version"] == 1


async def test_a_first_adjustment_creates_the_stock_row(hub):
    await hub.warehouse("par-1", "eu")
    await hub.warehouse("ber-1", "eu")
    product = await hub.product("ADJ-3")
    status, body = await adjust(hub, product["id"], "par-1", 6)
    assert status == 200, body
    assert body["on_hand"] == 6
    assert body["reserved"] == 0
    assert body["version"] == 1
    status, body = await adjust(hub, product["id"], "ber-1", -1)
    assert status == 409
    assert body["code"] == "insufficient_stock"
    assert [lv["warehouse_id"] for lv in (await levels(hub, product["id"]))["warehouses"]] == ["par-1"]


async def test_a_zero_adjustment_is_refused(hub):
    await hub.warehouse("par-1", "eu")
    product = await hub.product("ADJ-4")
    await hub.stock(product["id"], "par-1", 4)
    status, body = await adjust(hub, product["id"], "par-1", 0)
    assert status == 400
    assert body["code"] == "validation_failed"
    assert body["errors"][0]["field"] == "delta"
    assert (await levels(hub, product["id"]))["warehouses"][0]["version"] == 1


# -- inventory view ---------------------------------------------------------------------------------


async def test_inventory_has_per_warehouse_and_per_region_totals(hub):
    await hub.warehouse("par-1", "eu")
    await hub.warehouse("ber-1", "eu")
    await hub.warehouse("nyc-1", "us")
    product = await hub.product("TOT-1", low_stock_threshold=5)
    await hub.stock(product["id"], "par-1", 10)
    await hub.stock(product["id"], "ber-1", 3)
    await hub.stock(product["id"], "nyc-1", 0)
    body = await levels(hub, product["id"])
    assert body["product_id"] == product["id"]
    assert body["sku"] == "TOT-1"
    assert [
        (w["warehouse_id"], w["region"], w["on_hand"], w["available"], w["status"])
        for w in body["warehouses"]
    ] == [
        ("ber-1", "eu", 3, 3, "low_stock"),
        ("nyc-1", "us", 0, 0, "out_of_stock"),
        ("par-1", "eu", 10, 10, "in_stock"),
    ]
    assert body["regions"] == [
        {"region": "eu", "on_hand": 13, "reserved": 0, "available": 13, "status": "in_stock"},
        {"region": "us", "on_hand": 0, "reserved": 0, "available": 0, "status": "out_of_stock"},
    ]
    assert body["total"] == {"on_hand": 13, "reserved": 0, "available": 13, "status": "in_stock"}


async def test_inventory_counts_reserved_units_out_of_available(hub):
    await hub.warehouse("par-1", "eu")
    await hub.warehouse("nyc-1", "us")
    product = await hub.product("TOT-2", low_stock_threshold=2)
    await hub.stock(product["id"], "par-1", 10)
    await hub.stock(product["id"], "nyc-1", 4)
    await reserve(hub, product["id"], "par-1", 8)
    await reserve(hub, product["id"], "nyc-1", 4)
    body = await levels(hub, product["id"])
    by_wh = {w["warehouse_id"]: w for w in body["warehouses"]}
    assert (by_wh["par-1"]["on_hand"], by_wh["par-1"]["reserved"], by_wh["par-1"]["available"]) == (10, 8, 2)
    assert by_wh["par-1"]["status"] == "low_stock"
    assert (by_wh["nyc-1"]["reserved"], by_wh["nyc-1"]["available"]) == (4, 0)
    assert by_wh["nyc-1"]["status"] == "out_of_stock"
    assert body["regions"] == [
        {"region": "eu", "on_hand": 10, "reserved": 8, "available": 2, "status": "low_stock"},
        {"region": "us", "on_hand": 4, "reserved": 4, "available": 0, "status": "out_of_stock"},
    ]
    assert body["total"] == {"on_hand": 14, "reserved": 12, "available": 2, "status": "low_stock"}


async def test_inventory_of_a_product_without_stock_is_out_of_stock(hub):
    product = await hub.product("TOT-3")
    body = await levels(hub, product["id"])
    assert body["warehouses"] == []
    assert body["regions"] == []
    assert body["total"] == {"on_hand": 0, "reserved": 0, "available": 0, "status": "out_of_stock"}


async def test_the_product_status_overrides_the_stock_status(hub):
    await hub.warehouse("par-1", "eu")
    pre = await hub.product("TOT-4", status="preorder")
    gone = await hub.product("TOT-5", status="discontinued")
    none_yet = await hub.product("TOT-6", status="preorder")
    await hub.stock(pre["id"], "par-1", 0)
    await hub.stock(gone["id"], "par-1", 50)
    body = await levels(hub, pre["id"])
    assert body["warehouses"][0]["status"] == "preorder"
    assert body["regions"][0]["status"] == "preorder"
    assert body["total"]["status"] == "preorder"
    body = await levels(hub, gone["id"])
    assert body["warehouses"][0]["status"] == "discontinued"
    assert body["total"]["status"] == "discontinued"
    assert (await levels(hub, none_yet["id"]))["total"]["status"] == "preorder"


async def test_changing_the_threshold_or_status_changes_the_derived_status(hub):
    await hub.warehouse("par-1", "eu")
    product = await hub.product("TOT-7", low_stock_threshold=5)
    await hub.stock(product["id"], "par-1", 8)
    assert (await levels(hub, product["id"]))["total"]["status"] == "in_stock"
    status, _, _ = await hub.call(
        "PATCH", f"/api/v1/products/{product['id']}", token=hub.admin, json={"low_stock_threshold": 8}
    )
    assert status == 200
    body = await levels(hub, product["id"])
    assert body["total"]["status"] == "low_stock"
    assert body["warehouses"][0]["status"] == "low_stock"
    assert body["warehouses"][0]["version"] == 2  # subscribers learn of the new status
    status, _, _ = await hub.call(
        "PATCH", f"/api/v1/products/{product['id']}", token=hub.admin, json={"status": "discontinued"}
    )
    assert status == 200
    assert (await levels(hub, product["id"]))["warehouses"][0]["status"] == "discontinued"


async def test_inventory_of_an_unknown_product_is_404(hub):
    status, body, _ = await hub.call("GET", inventory("00000000-0000-4000-8000-000000000000"))
    assert status == 404
    assert body["code"] == "product_not_found"


# -- reserved units are protected -------------------------------------------------------------------


async def test_adjusting_below_the_reserved_quantity_is_409_insufficient_stock(hub):
    await hub.warehouse("par-1", "eu")
    product = await hub.product("RSV-1")
    await hub.stock(product["id"], "par-1", 10)
    await reserve(hub, product["id"], "par-1", 6)
    status, body = await adjust(hub, product["id"], "par-1", -5)
    assert status == 409, body
    assert body["code"] == "insufficient_stock"
    level = (await levels(hub, product["id"]))["warehouses"][0]
    assert (level["on_hand"], level["reserved"], level["available"]) == (10, 6, 4)
    status, body = await adjust(hub, product["id"], "par-1", -4)
    assert status == 200, body
    assert (body["on_hand"], body["reserved"], body["available"]) == (6, 6, 0)


async def test_setting_stock_below_the_reserved_quantity_is_409_insufficient_stock(hub):
    await hub.warehouse("par-1", "eu")
    product = await hub.product("RSV-2")
    await hub.stock(product["id"], "par-1", 10)
    await reserve(hub, product["id"], "par-1", 6)
    status, body, _ = await hub.call(
        "PUT", stock_path(product["id"], "par-1"), token=hub.admin, json={"on_hand": 5}
    )
    assert status == 409
    assert body["code"] == "insufficient_stock"
    level = (await levels(hub, product["id"]))["warehouses"][0]
    assert (level["on_hand"], level["reserved"]) == (10, 6)
    level = await hub.stock(product["id"], "par-1", 6)
    assert (level["on_hand"], level["reserved"], level["available"]) == (6, 6, 0)
