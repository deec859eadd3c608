"""Bad input gets a clear 4xx with a stable ``code`` and changes nothing.

Every case checks the status, the problem+json shape (type/title/status/code/detail) and then, through
ordinary GETs, that no product, stock level, warehouse or reservation changed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

PRODUCTS = "/api/v1/products"
RESERVATIONS = "/api/v1/reservations"
JSON = {"Content-Type": "application/json"}
MISSING = "00000000-0000-4000-8000-000000000000"


@dataclass
class World:
    pid: str
    wid: str = "par-1"


async def make_world(hub: Any) -> World:
    await hub.warehouse("par-1", "eu")
    product = await hub.product("SKU-1", "10.00")
    await hub.stock(product["id"], "par-1", 10)
    return World(pid=product["id"])


async def snapshot(hub: Any, world: World) -> dict[str, Any]:
    """Everything a bad request could have changed, read over HTTP."""
    status, products, _ = await hub.call("GET", f"{PRODUCTS}?limit=200")
    assert status == 200, products
    status, stock, _ = await hub.call("GET", f"{PRODUCTS}/{world.pid}/inventory")
    assert status == 200, stock
    status, warehouses, _ = await hub.call("GET", "/api/v1/warehouses")
    assert status == 200, warehouses
    assert stock["total"]["reserved"] == 0  # no reservation holds anything
    return {"products": products["items"], "stock": stock, "warehouses": warehouses["items"]}


def assert_problem(status: int, body: Any, headers: Any, expected_status: int, code: str) -> None:
    assert status == expected_status, body
    assert headers["Content-Type"].split(";")[0].strip() == "application/problem+json"
    assert isinstance(body, dict), body
    assert body["status"] == expected_status
    assert body["code"] == code, body
    assert body["type"] == f"https://synchub.dev/errors/{code}"
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]


def cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")


def nested(depth: int) -> bytes:
    inner = "1"
    for _ in range(depth):
        inner = '{"a":' + inner + "}"
    return ('{"sku":"N-1","name":"n","price":"1","attributes":' + inner + "}").encode()


@dataclass
class Case:
    method: str
    path: str
    status: int
    code: str
    json: Any = None
    data: bytes | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    who: str | None = "admin"  # admin, alice or None
    idempotency: bool = False  # send a fresh Idempotency-Key


def product(**fields: Any) -> dict[str, Any]:
    return {"sku": "NEW-1", "name": "new", "price": "1.00", **fields}


def line(**fields: Any) -> dict[str, Any]:
    return {"product_id": "{pid}", "quantity": 1, **fields}


def raw(body: str | bytes, content_type: str = "application/json") -> dict[str, Any]:
    return {
        "data": body.encode() if isinstance(body, str) else body,
        "headers": {"Content-Type": content_type},
    }


def create(status: int, code: str, **kw: Any) -> Case:
    return Case("POST", PRODUCTS, status, code, **kw)


def set_stock(status: int, code: str, **kw: Any) -> Case:
    return Case("PUT", "/api/v1/products/{pid}/inventory/{wid}", status, code, **kw)


def adjust(status: int, code: str, **kw: Any) -> Case:
    return Case("POST", "/api/v1/products/{pid}/inventory/{wid}/adjustments", status, code, **kw)


def reserve(status: int, code: str, **kw: Any) -> Case:
    kw.setdefault("who", "alice")
    kw.setdefault("idempotency", True)
    return Case("POST", RESERVATIONS, status, code, **kw)


def listing(query: str, status: int = 400, code: str = "invalid_parameter") -> Case:
    return Case("GET", f"{PRODUCTS}?{query}", status, code, who=None)


V = "validation_failed"
CASES: dict[str, Case] = {
    # -- not JSON at all
    "malformed json": create(400, "malformed_json", **raw('{"sku": "X", ')),
    "trailing garbage": create(400, "malformed_json", **raw('{"sku": "X"} x')),
    "empty body": create(400, "malformed_json", **raw(b"")),
    "single quotes": create(400, "malformed_json", **raw("{'sku': 'X'}")),
    "invalid utf-8": create(400, "malformed_json", **raw(b'{"sku": "\xff\xfe"}')),
    "NaN literal": create(400, "malformed_json", **raw('{"sku":"X","name":"x","price":NaN}')),
    "Infinity literal": create(400, "malformed_json", **raw('{"sku":"X","name":"x","price":Infinity}')),
    "-Infinity literal": set_stock(400, "malformed_json", **raw('{"on_hand": -Infinity}')),
    "NaN quantity": reserve(
        400, "malformed_json", **raw('{"lines":[{"product_id":"{pid}","quantity":NaN}]}')
    ),
    "integer literal of 5000 digits": set_stock(
        400, "malformed_json", **raw('{"on_hand": ' + "9" * 5000 + "}")
    ),
    "nested 50 deep": create(400, "malformed_json", **raw(nested(50))),
    "nested 30000 deep": create(400, "malformed_json", **raw("[" * 30000 + "]" * 30000)),
    # -- JSON, but not an object
    "a list": create(400, V, json=[product()]),
    "a string": create(400, V, json="hello"),
    "null": create(400, V, **raw("null")),
    "a number": set_stock(400, V, **raw("5")),
    "reservation as a list": reserve(400, V, json=[line()]),
    # -- unknown and missing fields
    "unknown product field": create(400, V, json=product(colour="red")),
    "unknown stock field": set_stock(400, V, json={"on_hand": 5, "reserved": 5}),
    "unknown line field": reserve(400, V, json={"lines": [line(price="0.01")]}),
    "missing sku and price": create(400, V, json={"name": "x"}),
    "empty object": create(400, V, json={}),
    "missing on_hand": set_stock(400, V, json={}),
    "missing delta": adjust(400, V, json={"reason": "x"}),
    "missing lines": reserve(400, V, json={}),
    "missing quantity": reserve(400, V, json={"lines": [{"product_id": "{pid}"}]}),
    "empty lines": reserve(400, V, json={"lines": []}),
    "lines not a list": reserve(400, V, json={"lines": {"product_id": "{pid}", "quantity": 1}}),
    # -- wrong types
    "string quantity": reserve(400, V, json={"lines": [line(quantity="1")]}),
    "boolean quantity": reserve(400, V, json={"lines": [line(quantity=True)]}),
    "float quantity 1.5": reserve(400, V, **raw('{"lines":[{"product_id":"{pid}","quantity":1.5}]}')),
    "null quantity": reserve(400, V, json={"lines": [line(quantity=None)]}),
    "price as boolean": create(400, V, json=product(price=True)),
    "price as object": create(400, V, json=product(price={"amount": 1})),
    "price as word": create(400, V, json=product(price="twelve")),
    "price NaN string": create(400, V, json=product(price="NaN")),
    "price Infinity string": create(400, V, json=product(price="Infinity")),
    "string on_hand": set_stock(400, V, json={"on_hand": "5"}),
    "boolean on_hand": set_stock(400, V, json={"on_hand": False}),
    "float delta": adjust(400, V, **raw('{"delta": 2.5}')),
    "sku as number": create(400, V, json=product(sku=12)),
    "attributes as list": create(400, V, json=product(attributes=[1, 2])),
    "product_id not a uuid": reserve(400, V, json={"lines": [line(product_id="abc")]}),
    "warehouse and region": reserve(400, V, json={"lines": [line(warehouse_id="{wid}", region="eu")]}),
    "bad status": create(400, V, json=product(status="sold")),
    # -- out of range
    "quantity -1": reserve(400, V, json={"lines": [line(quantity=-1)]}),
    "quantity 0": reserve(400, V, json={"lines": [line(quantity=0)]}),
    "quantity 10**9": reserve(400, V, json={"lines": [line(quantity=10**9)]}),
    "ttl 0": reserve(400, V, json={"lines": [line()], "ttl_seconds": 0}),
    "on_hand -5": set_stock(400, V, json={"on_hand": -5}),
    "on_hand 10**12": set_stock(400, V, json={"on_hand": 10**12}),
    "delta 10**12": adjust(400, V, json={"delta": 10**12}),
    "delta 0": adjust(400, V, json={"delta": 0}),
    "price with 5 decimal places": create(400, V, json=product(price="1.00001")),
    "price 0.00001": create(400, V, json=product(price="0.00001")),
    "negative price": create(400, V, json=product(price="-0.01")),
    "price above the maximum": create(400, V, json=product(price="1000000000.01")),
    "negative threshold": create(400, V, json=product(low_stock_threshold=-1)),
    "101 lines": reserve(400, V, json={"lines": [line()] * 101}),
    # -- strings
    "empty sku": create(400, V, json=product(sku="")),
    "sku with spaces": create(400, V, json=product(sku="A B")),
    "injection in sku": create(400, V, json=product(sku="'; DROP TABLE products; --")),
    "NUL in name": create(400, V, json=product(name="a\x00b")),
    "name too long": create(400, V, json=product(name="n" * 201)),
    # -- bad ids in paths
    "bad uuid on GET": Case("GET", f"{PRODUCTS}/not-a-uuid", 400, "invalid_id", who=None),
    "bad uuid on PATCH": Case("PATCH", f"{PRODUCTS}/123", 400, "invalid_id", json={"name": "x"}),
    "bad uuid on DELETE": Case("DELETE", f"{PRODUCTS}/{{pid}}x", 400, "invalid_id"),
    "bad uuid on inventory": Case("GET", f"{PRODUCTS}/zzz/inventory", 400, "invalid_id", who=None),
    "bad uuid on PUT stock": Case(
        "PUT", f"{PRODUCTS}/zzz/inventory/par-1", 400, "invalid_id", json={"on_hand": 1}
    ),
    "bad uuid on adjust": Case(
        "POST", f"{PRODUCTS}/zzz/inventory/par-1/adjustments", 400, "invalid_id", json={"delta": 1}
    ),
    "bad uuid on reservation": Case("GET", f"{RESERVATIONS}/nope", 400, "invalid_id", who="alice"),
    "bad uuid on commit": Case("POST", f"{RESERVATIONS}/nope/commit", 400, "invalid_id", who="alice"),
    "unknown product": Case("PATCH", f"{PRODUCTS}/{MISSING}", 404, "product_not_found", json={"name": "x"}),
    "unknown reservation": Case(
        "POST", f"{RESERVATIONS}/{MISSING}/release", 404, "reservation_not_found", who="alice"
    ),
    "unknown warehouse for stock": Case(
        "PUT", f"{PRODUCTS}/{{pid}}/inventory/nowhere", 404, "warehouse_not_found", json={"on_hand": 1}
    ),
    "reserve unknown product": reserve(404, "product_not_found", json={"lines": [line(product_id=MISSING)]}),
    "reserve more than on hand": reserve(409, "insufficient_stock", json={"lines": [line(quantity=11)]}),
    "duplicate sku": create(409, "sku_taken", json=product(sku="SKU-1")),
    "duplicate warehouse": Case(
        "POST",
        "/api/v1/warehouses",
        409,
        "warehouse_exists",
        json={"id": "par-1", "region": "us", "name": "x"},
    ),
    "patch that changes nothing": Case("PATCH", f"{PRODUCTS}/{{pid}}", 400, V, json={}),
    "patch with unknown field": Case("PATCH", f"{PRODUCTS}/{{pid}}", 400, V, json={"version": 99}),
    "patch price as boolean": Case("PATCH", f"{PRODUCTS}/{{pid}}", 400, V, json={"price": False}),
    # -- query parameters
    "unknown sort": listing("sort=cheapest", code="invalid_sort"),
    "sort injection": listing("sort=name;DROP%20TABLE%20products", code="invalid_sort"),
    "garbage cursor": listing("cursor=!!not-base64!!", code="invalid_cursor"),
    "cursor of a dict": listing("cursor=" + cursor({"a": 1}), code="invalid_cursor"),
    "cursor of two items": listing("cursor=" + cursor(["newest", 1]), code="invalid_cursor"),
    "cursor with a string for a time": listing(
        "cursor=" + cursor(["newest", "yesterday", MISSING]), code="invalid_cursor"
    ),
    "cursor with a number for an id": listing(
        "sort=name&cursor=" + cursor(["name", "a", 5]), code="invalid_cursor"
    ),
    "cursor of json garbage": listing(
        "cursor=" + base64.urlsafe_b64encode(b"\xff\xfe{").decode(), code="invalid_cursor"
    ),
    "non-ascii cursor": listing("cursor=%C3%A9t%C3%A9", code="invalid_cursor"),
    "limit 0": listing("limit=0"),
    "limit 201": listing("limit=201"),
    "limit -1": listing("limit=-1"),
    "limit abc": listing("limit=abc"),
    "limit 1.5": listing("limit=1.5"),
    "unknown field": listing("fields=sku,password"),
    "empty fields": listing("fields="),
    "unknown status": listing("status=sold"),
    "price_min abc": listing("price_min=abc"),
    "price_min negative": listing("price_min=-1"),
    "price_max NaN": listing("price_max=NaN"),
    "price_max Infinity": listing("price_max=Infinity"),
    # -- transport
    "text/plain body": create(
        415, "unsupported_media_type", data="sku=X", headers={"Content-Type": "text/plain"}
    ),
    "form body": create(
        415,
        "unsupported_media_type",
        data="sku=X",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ),
    "octet-stream stock": set_stock(
        415,
        "unsupported_media_type",
        data=b'{"on_hand": 1}',
        headers={"Content-Type": "application/octet-stream"},
    ),
    "text/plain reservation": reserve(
        415, "unsupported_media_type", data='{"lines": []}', headers={"Content-Type": "text/plain"}
    ),
    "oversized body": create(413, "body_too_large", **raw(json.dumps(product(description="x" * 100 * 1024)))),
    "unknown route": Case("GET", "/api/v1/nothing-here", 404, "not_found", who=None),
    "unknown version": Case("GET", "/api/v2/products", 404, "not_found", who=None),
    "unknown route with a body": Case("POST", "/api/v1/productz", 404, "not_found", json=product()),
    "PUT on the collection": Case("PUT", PRODUCTS, 405, "method_not_allowed", json=product()),
    "DELETE on warehouses": Case("DELETE", "/api/v1/warehouses", 405, "method_not_allowed"),
    "POST on a product": Case("POST", f"{PRODUCTS}/{{pid}}", 405, "method_not_allowed", json={"name": "x"}),
    # -- idempotency
    "no idempotency key": reserve(
        400, "idempotency_key_required", json={"lines": [line()]}, idempotency=False
    ),
    "idempotency key with a space": reserve(
        400,
        "invalid_idempotency_key",
        json={"lines": [line()]},
        idempotency=False,
        headers={"Idempotency-Key": "a b"},
    ),
    "idempotency key too long": reserve(
        400,
        "invalid_idempotency_key",
        json={"lines": [line()]},
        idempotency=False,
        headers={"Idempotency-Key": "k" * 256},
    ),
}


def fill(value: Any, world: World) -> Any:
    if isinstance(value, str):
        return value.replace("{pid}", world.pid).replace("{wid}", world.wid)
    if isinstance(value, bytes):
        return value.replace(b"{pid}", world.pid.encode()).replace(b"{wid}", world.wid.encode())
    if isinstance(value, list):
        return [fill(v, world) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, world) for k, v in value.items()}
    return value


@pytest.mark.parametrize("name", list(CASES))
async def test_bad_input_gets_a_clear_4xx_with_a_stable_code_and_changes_nothing(hub, name):
    case = CASES[name]
    world = await make_world(hub)
    before = await snapshot(hub, world)
    headers = dict(case.headers)
    if case.idempotency:
        headers["Idempotency-Key"] = str(uuid.uuid4())
    who = {"admin": hub.admin, "alice": hub.alice, None: None}[case.who]
    status, body, response_headers = await hub.call(
        case.method,
        fill(case.path, world),
        token=who,
        json=fill(case.json, world),
        data=fill(case.data, world),
        headers=headers,
    )
    assert_problem(status, body, response_headers, case.status, case.code)
    if case.code == "validation_failed" and case.status == 400 and "errors" in body:
        assert all({"field", "code", "message"} <= set(e) for e in body["errors"])
    if case.code == "method_not_allowed":
        assert response_headers.get("Allow")
    assert await snapshot(hub, world) == before


async def test_validation_reports_every_problem_at_once(hub):
    status, body, headers = await hub.call(
        "POST", PRODUCTS, token=hub.admin, json={"sku": "", "price": True, "colour": "red"}
    )
    assert_problem(status, body, headers, 400, "validation_failed")
    found = {(e["field"], e["code"]) for e in body["errors"]}
    assert found == {
        ("sku", "too_short"),
        ("price", "wrong_type"),
        ("colour", "unknown_field"),
        ("name", "required"),
    }


# -- injection strings in filters -------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "category='; DROP TABLE products; --",
        "in_stock_region=' OR 1=1 --",
        "category=x' OR '1'='1",
        "in_stock_region=eu') OR EXISTS(SELECT 1) --",
        "category=%25",
    ],
)
async def test_injection_strings_in_filters_are_refused_and_break_nothing(hub, query):
    # A filter is held to the format of the field it filters, so these never reach the database.
    world = await make_world(hub)
    before = await snapshot(hub, world)
    status, body, headers = await hub.call("GET", f"{PRODUCTS}?{query}")
    assert_problem(status, body, headers, 400, "invalid_parameter")
    assert body["parameter"] == query.split("=", 1)[0]
    # The products table is still there and still answers.
    assert await snapshot(hub, world) == before
    await hub.product("AFTER-1")
    _, body, _ = await hub.call("GET", PRODUCTS)
    assert sorted(p["sku"] for p in body["items"]) == ["AFTER-1", "SKU-1"]


async def test_a_like_wildcard_in_a_well_formed_filter_matches_nothing(hub):
    world = await make_world(hub)
    for query in ("category=_", "category=.", "in_stock_region=e-"):
        status, body, _ = await hub.call("GET", f"{PRODUCTS}?{query}")
        assert status == 200, body
        assert body["items"] == [] and body["next_cursor"] is None
    assert len((await snapshot(hub, world))["products"]) == 1


async def test_injection_strings_in_a_warehouse_path_are_just_unknown_warehouses(hub):
    world = await make_world(hub)
    before = await snapshot(hub, world)
    for wid in ("par-1' OR '1'='1", "x; DROP TABLE warehouses"):
        status, body, headers = await hub.call("GET", f"/api/v1/warehouses/{wid}")
        assert_problem(status, body, headers, 404, "warehouse_not_found")
    assert await snapshot(hub, world) == before


async def test_a_nul_byte_in_a_filter_is_refused_on_every_backend(hub):
    # PostgreSQL refuses NUL in text; that must not surface as a server error.
    world = await make_world(hub)
    for query in ("category=a%00b", "in_stock_region=eu%00"):
        status, body, headers = await hub.call("GET", f"{PRODUCTS}?{query}")
        assert_problem(status, body, headers, 400, "invalid_parameter")
    assert len((await snapshot(hub, world))["products"]) == 1


async def test_a_nul_byte_in_a_warehouse_id_is_an_unknown_warehouse_on_every_backend(hub):
    world = await make_world(hub)
    before = await snapshot(hub, world)
    status, body, headers = await hub.call("GET", "/api/v1/warehouses/par%00-1")
    assert_problem(status, body, headers, 404, "warehouse_not_found")
    status, body, headers = await hub.call(
        "PUT", f"{PRODUCTS}/{world.pid}/inventory/par%00-1", token=hub.admin, json={"on_hand": 1}
    )
    assert_problem(status, body, headers, 404, "warehouse_not_found")
    assert await snapshot(hub, world) == before


@pytest.mark.parametrize(
    "forged",
    [
        ["newest", 2**64 - 1, MISSING],
        ["newest", -(2**63), MISSING],
        ["price", 2**63, MISSING],
        ["newest", 5, "a\x00b"],
        ["name", "a\x00b", MISSING],
    ],
    ids=["u64 time", "i64 min time", "price above i64", "NUL in id", "NUL in name"],
)
async def test_a_forged_cursor_is_never_a_server_error(hub, forged):
    # A cursor the server never issued is either refused as invalid_cursor or (if harmless) read as a
    # position; it must never reach the database as a value the database cannot hold.
    await make_world(hub)
    query = f"sort={forged[0]}&cursor={cursor(forged)}"
    status, body, headers = await hub.call("GET", f"{PRODUCTS}?{query}")
    assert status in (200, 400), body
    if status == 400:
        assert_problem(status, body, headers, 400, "invalid_cursor")


@pytest.mark.parametrize("bound", ["price_min=1e30", "price_max=99999999999999999999", "price_min=1e400"])
async def test_a_huge_price_bound_is_not_a_server_error(hub, bound):
    await make_world(hub)
    status, body, headers = await hub.call("GET", f"{PRODUCTS}?{bound}")
    assert status in (200, 400), body
    if status == 400:
        assert_problem(status, body, headers, 400, "invalid_parameter")
    elif bound.startswith("price_min"):
        assert body["items"] == []


# -- denial of service through numbers --------------------------------------------------------------


async def test_an_integer_with_a_huge_exponent_is_refused_without_converting_it(hub):
    # Turning 1e999999999 into a Python int would occupy the event loop for hours: the range check
    # must come first. Were it converted, the wait_for below would give up and the test fail.
    world = await make_world(hub)
    before = await snapshot(hub, world)
    status, body, headers = await asyncio.wait_for(
        hub.call(
            "PUT",
            f"{PRODUCTS}/{world.pid}/inventory/par-1",
            token=hub.admin,
            data=b'{"on_hand": 1e999999999}',
            headers=JSON,
        ),
        timeout=30,
    )
    assert_problem(status, body, headers, 400, "validation_failed")
    assert body["errors"][0]["code"] == "out_of_range"
    assert await snapshot(hub, world) == before


async def test_a_price_bound_with_a_huge_exponent_is_refused_without_converting_it(hub):
    await make_world(hub)
    status, body, headers = await asyncio.wait_for(
        hub.call("GET", f"{PRODUCTS}?price_min=1e999999999"), timeout=30
    )
    assert_problem(status, body, headers, 400, "invalid_parameter")
    assert body["parameter"] == "price_min"


# -- idempotency ------------------------------------------------------------------------------------


async def test_the_same_idempotency_key_with_a_different_body_is_422_and_stock_is_unchanged(hub):
    world = await make_world(hub)
    key = str(uuid.uuid4())
    status, first, _ = await hub.call(
        "POST",
        RESERVATIONS,
        token=hub.alice,
        json={"lines": [{"product_id": world.pid, "quantity": 2}]},
        headers={"Idempotency-Key": key},
    )
    assert status == 201, first
    _, stock_before, _ = await hub.call("GET", f"{PRODUCTS}/{world.pid}/inventory")
    assert stock_before["total"]["reserved"] == 2

    status, body, headers = await hub.call(
        "POST",
        RESERVATIONS,
        token=hub.alice,
        json={"lines": [{"product_id": world.pid, "quantity": 3}]},
        headers={"Idempotency-Key": key},
    )
    assert_problem(status, body, headers, 422, "idempotency_key_reused")
    _, stock_after, _ = await hub.call("GET", f"{PRODUCTS}/{world.pid}/inventory")
    assert stock_after == stock_before
    status, still, _ = await hub.call("GET", f"{RESERVATIONS}/{first['id']}", token=hub.alice)
    assert status == 200
    assert still["lines"][0]["quantity"] == 2


async def test_a_reservation_without_an_idempotency_key_reserves_nothing(hub):
    world = await make_world(hub)
    before = await snapshot(hub, world)
    for _ in range(3):
        status, body, headers = await hub.call(
            "POST", RESERVATIONS, token=hub.alice, json={"lines": [{"product_id": world.pid, "quantity": 1}]}
        )
        assert_problem(status, body, headers, 400, "idempotency_key_required")
    assert await snapshot(hub, world) == before


# -- problem details are problem details everywhere -------------------------------------------------


async def test_a_405_names_the_allowed_methods(hub):
    status, body, headers = await hub.call("PUT", PRODUCTS, token=hub.admin, json=product())
    assert_problem(status, body, headers, 405, "method_not_allowed")
    allowed = {m.strip() for m in headers["Allow"].split(",")}
    assert {"GET", "POST"} <= allowed
    assert "PUT" not in allowed


async def test_a_404_for_an_unknown_route_does_not_echo_more_than_the_path(hub):
    status, body, headers = await hub.call("GET", "/api/v1/nope?secret=hunter2")
    assert_problem(status, body, headers, 404, "not_found")
    assert "hunter2" not in json.dumps(body)
