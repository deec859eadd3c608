"""School parts requests (storage/parts.py, hub/routes/parts_requests.py) through a real hub over HTTP,
WebSocket and SSE, on both databases: the lifecycle, idempotent retries, fitment filters, who may act for
a school, the events on parts-requests:{school}; and on PostgreSQL, concurrent requests of several
schools for scarce parts that never oversell and are served first come, first served."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from hub.keys import STORE
from storage.attributes import AttributeFilter
from storage.models import ProductQuery
from storage.parts import EVENT_TYPES, PartsRequestQuery
from sync.channels import KIND_OF_TYPE, PARTS_REQUESTS
from tests.conftest import Hub, hub_settings, running_hub
from tests.realtime_helpers import sse_stream, ws_client

REGION = "eu"
PATH = "/api/v1/schools"


@dataclass
class School:
    id: str
    key: str  # its platform's API key
    key_id: str
    asset: str  # an asset's id: a Ford F-450 of 2019


async def make_key(hub: Hub, *scopes: str) -> tuple[str, str]:
    status, body, _ = await hub.call(
        "POST", "/api/v1/api-keys", token=hub.admin, json={"name": "platform", "scopes": list(scopes)}
    )
    assert status == 201, body
    return body["key"], body["id"]


async def make_school(hub: Hub, school_id: str, *, region: str = REGION) -> School:
    key, key_id = await make_key(hub, "parts-requests:write")
    status, body, _ = await hub.call(
        "POST",
        PATH,
        token=hub.admin,
        json={"id": school_id, "name": f"School {school_id}", "region": region, "api_keys": [key_id]},
    )
    assert status == 201, body
    assert body["api_keys"] == [key_id]
    status, asset, _ = await hub.call(
        "POST",
        f"{PATH}/{school_id}/assets",
        token=key,
        json={"asset_tag": "BUS-7", "kind": "vehicle", "make": "Ford", "model": "F-450", "year": 2019},
    )
    assert status == 201, asset
    return School(school_id, key, key_id, asset["id"])


@asynccontextmanager
async def parts_hub(database_url: str) -> AsyncIterator[Hub]:
    async with running_hub(hub_settings(database_url, region=REGION)) as hub:
        await hub.warehouse("par-1", REGION)
        await hub.warehouse("lyo-1", REGION)
        yield hub


async def submit(
    hub: Hub,
    school: School,
    lines: list[dict[str, Any]],
    *,
    key: str | None = None,
    policy: str = "all_or_none",
    needed_by: str = "2031-09-01",
    credential: str | None = None,
) -> tuple[int, Any, Any]:
    return await hub.call(
        "POST",
        f"{PATH}/{school.id}/parts-requests",
        token=credential or school.key,
        json={"asset_id": school.asset, "needed_by": needed_by, "policy": policy, "lines": lines},
        headers={"Idempotency-Key": key or str(uuid.uuid4())},
    )


async def move(
    hub: Hub,
    school: School,
    request_id: str,
    status: str,
    *,
    credential: str | None = None,
    version: int | None = None,
) -> tuple[int, Any, Any]:
    headers = {"If-Match": f'"{version}"'} if version is not None else None
    return await hub.call(
        "POST",
        f"{PATH}/{school.id}/parts-requests/{request_id}/transitions",
        token=credential or hub.admin,
        json={"status": status},
        headers=headers,
    )


async def read(hub: Hub, school: School, request_id: str) -> dict[str, Any]:
    status, body, _ = await hub.call(
        "GET", f"{PATH}/{school.id}/parts-requests/{request_id}", token=school.key
    )
    assert status == 200, body
    return dict(body)


async def stock_of(hub: Hub, product_id: str) -> dict[str, tuple[int, int]]:
    status, body, _ = await hub.call("GET", f"/api/v1/products/{product_id}/inventory")
    assert status == 200, body
    return {w["warehouse_id"]: (w["on_hand"], w["reserved"]) for w in body["warehouses"]}


def line_state(body: dict[str, Any]) -> list[tuple[int, int]]:
    return [(line["reserved"], line["backordered"]) for line in body["lines"]]


# -- the lifecycle ---------------------------------------------------------------------------------------


async def test_a_request_is_reserved_picked_shipped_and_delivered_and_illegal_moves_are_refused(database_url):
    async with parts_hub(database_url) as hub:
        school = await make_school(hub, "lincoln-high")
        pads = await hub.product("PAD-F450", category="brakes")
        await hub.stock(pads["id"], "par-1", 5)
        status, made, headers = await submit(hub, school, [{"sku": "PAD-F450", "quantity": 2}])
        assert status == 201, made
        assert headers["Idempotent-Replayed"] == "false"
        assert headers["Location"] == f"{PATH}/{school.id}/parts-requests/{made['id']}"
        assert made["status"] == "reserved" and made["version"] == 2  # created, then reserved
        assert made["school_id"] == school.id and made["asset_id"] == school.asset
        assert made["needed_by"] == "2031-09-01" and made["region"] == REGION
        assert line_state(made) == [(2, 0)] and made["lines"][0]["product_id"] == pads["id"]
        assert made["reservation_id"] is not None
        assert await stock_of(hub, pads["id"]) == {"par-1": (5, 2)}

        # the school's key may not record picking or shipping: the supplier does
        status, body, _ = await move(hub, school, made["id"], "picked", credential=school.key)
        assert (status, body["code"]) == (403, "transition_forbidden")
        # a stale If-Match is refused
        status, body, _ = await move(hub, school, made["id"], "picked", version=1)
        assert (status, body["code"]) == (412, "precondition_failed")
        # shipped before picked is not a transition
        status, body, _ = await move(hub, school, made["id"], "shipped")
        assert (status, body["code"]) == (409, "invalid_transition")
        assert (body["current_status"], body["requested_status"], body["allowed"]) == (
            "reserved",
            "shipped",
            "cancelled,picked",
        )
        status, picked, headers = await move(hub, school, made["id"], "picked", version=2)
        assert status == 200 and picked["status"] == "picked" and headers["ETag"] == '"3"'
        assert await stock_of(hub, pads["id"]) == {"par-1": (5, 2)}  # still held
        status, shipped, _ = await move(hub, school, made["id"], "shipped", version=3)
        assert status == 200 and shipped["status"] == "shipped"
        assert await stock_of(hub, pads["id"]) == {"par-1": (3, 0)}  # the units left on_hand
        status, body, _ = await move(hub, school, made["id"], "cancelled", credential=school.key)
        assert (status, body["code"]) == (409, "invalid_transition")  # shipped: too late to cancel
        status, delivered, _ = await move(hub, school, made["id"], "delivered", credential=school.key)
        assert status == 200 and delivered["status"] == "delivered" and delivered["version"] == 5
        # asking again for the status it has changes nothing
        status, again, _ = await move(hub, school, made["id"], "delivered", credential=school.key)
        assert status == 200 and again["version"] == 5
        # no status is asked for that the store decides itself
        status, body, _ = await move(hub, school, made["id"], "reserved")
        assert (status, body["code"]) == (400, "validation_failed")
        assert await read(hub, school, made["id"]) == delivered


async def test_policies_all_or_none_takes_a_line_from_one_warehouse_partial_takes_what_there_is(database_url):
    async with parts_hub(database_url) as hub:
        school = await make_school(hub, "roosevelt")
        filters = await hub.product("FLT-1")
        await hub.stock(filters["id"], "par-1", 3)
        await hub.stock(filters["id"], "lyo-1", 2)
        # 4 units: no warehouse has them all, so all_or_none backorders the whole line
        status, whole, _ = await submit(hub, school, [{"sku": "FLT-1", "quantity": 4}])
        assert status == 201 and whole["status"] == "backordered" and line_state(whole) == [(0, 4)]
        assert await stock_of(hub, filters["id"]) == {"lyo-1": (2, 0), "par-1": (3, 0)}
        # cancel it; partial takes 3 from par-1 then 1 from lyo-1 (most available first)
        assert (await move(hub, school, whole["id"], "cancelled", credential=school.key))[0] == 200
        status, part, _ = await submit(hub, school, [{"sku": "FLT-1", "quantity": 6}], policy="partial")
        assert status == 201 and part["status"] == "backordered" and line_state(part) == [(5, 1)]
        assert await stock_of(hub, filters["id"]) == {"lyo-1": (2, 2), "par-1": (3, 3)}


async def test_a_request_of_several_products_is_reserved_once_the_last_of_them_arrives(database_url):
    async with parts_hub(database_url) as hub:
        school = await make_school(hub, "harding")
        made = {sku: (await hub.product(sku))["id"] for sku in ("HOSE-1", "CLAMP-1", "FUSE-1")}
        await hub.stock(made["HOSE-1"], "par-1", 5)
        lines = [
            {"sku": "HOSE-1", "quantity": 2},
            {"sku": "CLAMP-1", "quantity": 4},
            {"sku": "FUSE-1", "quantity": 1},
            {"sku": "HOSE-1", "quantity": 1},
        ]
        status, made_request, _ = await submit(hub, school, lines, policy="partial")
        assert status == 201 and made_request["status"] == "backordered"
        assert line_state(made_request) == [(2, 0), (0, 4), (0, 1), (1, 0)]
        await hub.stock(made["CLAMP-1"], "lyo-1", 3)
        assert line_state(await read(hub, school, made_request["id"])) == [(2, 0), (3, 1), (0, 1), (1, 0)]
        await hub.stock(made["FUSE-1"], "par-1", 1)
        await hub.stock(made["CLAMP-1"], "par-1", 1)
        done = await read(hub, school, made_request["id"])
        assert done["status"] == "reserved" and line_state(done) == [(2, 0), (4, 0), (1, 0), (1, 0)]
        assert (await move(hub, school, made_request["id"], "picked"))[0] == 200
        assert (await move(hub, school, made_request["id"], "shipped"))[0] == 200
        assert await stock_of(hub, made["HOSE-1"]) == {"par-1": (2, 0)}
        assert await stock_of(hub, made["CLAMP-1"]) == {"lyo-1": (0, 0), "par-1": (0, 0)}
        assert await stock_of(hub, made["FUSE-1"]) == {"par-1": (0, 0)}


async def test_a_retry_with_the_same_key_answers_the_first_answer_and_makes_one_request(database_url):
    async with parts_hub(database_url) as hub:
        school = await make_school(hub, "kennedy")
        oil = await hub.product("OIL-5W30")
        await hub.stock(oil["id"], "par-1", 10)
        lines = [{"sku": "OIL-5W30", "quantity": 3}]
        status, first, headers = await submit(hub, school, lines, key="req-1")
        assert status == 201 and headers["Idempotent-Replayed"] == "false"
        # concurrent and later retries: the first answer, byte for byte, and nothing more reserved
        retries = await asyncio.gather(*(submit(hub, school, lines, key="req-1") for _ in range(5)))
        for status, body, headers in retries:
            assert status == 201 and headers["Idempotent-Replayed"] == "true"
            assert body == first
        # even after the request moved on, a retry replays what was first answered
        await move(hub, school, first["id"], "picked")
        status, body, _ = await submit(hub, school, lines, key="req-1")
        assert status == 201 and body == first
        # another body with the same key
        status, body, _ = await submit(hub, school, [{"sku": "OIL-5W30", "quantity": 4}], key="req-1")
        assert (status, body["code"]) == (422, "idempotency_key_reused")
        status, page, _ = await hub.call("GET", f"{PATH}/{school.id}/parts-requests", token=school.key)
        assert [r["id"] for r in page["items"]] == [first["id"]]
        assert await stock_of(hub, oil["id"]) == {"par-1": (10, 3)}
        # a new key racing itself (the same key sent at once, never seen before) makes one request too
        racing = await asyncio.gather(*(submit(hub, school, lines, key="req-2") for _ in range(6)))
        assert {body["id"] for _, body, _ in racing} == {racing[0][1]["id"]}
        assert sorted(h["Idempotent-Replayed"] for _, _, h in racing) == ["false"] + ["true"] * 5
        assert await stock_of(hub, oil["id"]) == {"par-1": (10, 6)}
        # the key is the school's: another school may use the same one
        other = await make_school(hub, "kennedy-annex")
        status, body, headers = await submit(hub, other, lines, key="req-1")
        assert status == 201 and headers["Idempotent-Replayed"] == "false" and body["school_id"] == other.id


async def test_requests_are_listed_newest_first_with_filters_and_cursor_pages(database_url):
    async with parts_hub(database_url) as hub:
        school = await make_school(hub, "jefferson")
        await hub.product("BELT-1")  # no stock: backordered
        status, second_asset, _ = await hub.call(
            "POST",
            f"{PATH}/{school.id}/assets",
            token=hub.admin,
            json={"asset_tag": "MOWER-2", "kind": "equipment", "make": "Toro", "model": "Z500", "year": None},
        )
        assert status == 201 and second_asset["year"] is None
        made = []
        for n in range(5):
            school_asset = (
                School(school.id, school.key, school.key_id, second_asset["id"]) if n % 2 else school
            )
            status, body, _ = await submit(
                hub, school_asset, [{"sku": "BELT-1", "quantity": 1}], needed_by=f"2031-0{n + 1}-15"
            )
            assert status == 201, body
            made.append(body["id"])
        await move(hub, school, made[0], "cancelled")

        async def listing(query: str) -> list[str]:
            ids, cursor = [], None
            while True:
                url = f"{PATH}/{school.id}/parts-requests?limit=2&{query}" + (
                    f"&cursor={cursor}" if cursor else ""
                )
                status, page, _ = await hub.call("GET", url, token=school.key)
                assert status == 200, page
                ids.extend(r["id"] for r in page["items"])
                cursor = page["next_cursor"]
                if cursor is None:
                    return ids

        assert await listing("") == made[::-1]
        assert await listing("status=cancelled") == [made[0]]
        assert await listing("status=backordered") == made[:0:-1]
        assert await listing(f"asset_id={second_asset['id']}") == [made[3], made[1]]
        assert await listing("needed_by_from=2031-02-01&needed_by_to=2031-04-15") == [
            made[3],
            made[2],
            made[1],
        ]
        for bad in ("status=lost", "needed_by_from=2031-02-30", "asset_id=nope", "cursor=zzz", "limit=0"):
            status, body, _ = await hub.call(
                "GET", f"{PATH}/{school.id}/parts-requests?{bad}", token=school.key
            )
            assert status == 400 and body["code"] in ("invalid_parameter", "invalid_cursor"), (bad, body)


# -- the queue -----------------------------------------------------------------------------------------


async def test_cancelling_releases_stock_and_the_next_backorder_gets_it(database_url):
    async with parts_hub(database_url) as hub:
        school = await make_school(hub, "adams")
        other = await make_school(hub, "monroe")
        rotor = await hub.product("ROTOR-1")
        await hub.stock(rotor["id"], "par-1", 2)
        _, holder, _ = await submit(hub, school, [{"sku": "ROTOR-1", "quantity": 2}])
        _, first, _ = await submit(hub, other, [{"sku": "ROTOR-1", "quantity": 1}])
        _, second, _ = await submit(hub, school, [{"sku": "ROTOR-1", "quantity": 2}], policy="partial")
        assert [holder["status"], first["status"], second["status"]] == [
            "reserved",
            "backordered",
            "backordered",
        ]
        assert line_state(second) == [(0, 2)]
        status, cancelled, _ = await move(hub, school, holder["id"], "cancelled", credential=school.key)
        assert status == 200 and cancelled["status"] == "cancelled" and line_state(cancelled) == [(0, 0)]
        # the two units went to the queue, in order: the first its whole line, the second what was left
        first, second = await read(hub, other, first["id"]), await read(hub, school, second["id"])
        assert first["status"] == "reserved" and line_state(first) == [(1, 0)]
        assert second["status"] == "backordered" and line_state(second) == [(1, 1)]
        assert await stock_of(hub, rotor["id"]) == {"par-1": (2, 2)}
        # one more unit finishes the second
        status, level, _ = await hub.call(
            "POST",
            f"/api/v1/products/{rotor['id']}/inventory/par-1/adjustments",
            token=hub.admin,
            json={"delta": 1},
        )
        assert status == 200 and (level["on_hand"], level["reserved"]) == (3, 3)  # the answer shows the fill
        second = await read(hub, school, second["id"])
        assert second["status"] == "reserved" and line_state(second) == [(2, 0)]
        # a shop customer's released reservation goes to the queue too
        await hub.call(
            "POST",
            f"/api/v1/products/{rotor['id']}/inventory/par-1/adjustments",
            token=hub.admin,
            json={"delta": 1},
        )
        status, held, _ = await hub.call(
            "POST",
            "/api/v1/reservations",
            token=hub.alice,
            json={"lines": [{"product_id": rotor["id"], "quantity": 1}]},
            headers={"Idempotency-Key": "alice-1"},
        )
        assert status == 201, held
        _, third, _ = await submit(hub, other, [{"sku": "ROTOR-1", "quantity": 1}])
        assert third["status"] == "backordered"
        status, _, _ = await hub.call("POST", f"/api/v1/reservations/{held['id']}/release", token=hub.alice)
        assert status == 200
        assert (await read(hub, other, third["id"]))["status"] == "reserved"
        # the product cannot be deleted while a request waits for it
        _, fourth, _ = await submit(hub, other, [{"sku": "ROTOR-1", "quantity": 1}])
        assert fourth["status"] == "backordered"
        status, body, _ = await hub.call("DELETE", f"/api/v1/products/{rotor['id']}", token=hub.admin)
        assert status == 409 and body["code"] in ("product_has_reservations", "product_has_backorders")


# -- fitment -----------------------------------------------------------------------------------------------


async def test_fitment_filters_match_paths_values_and_arrays_and_refuse_what_cannot_be_checked(database_url):
    async with parts_hub(database_url) as hub:
        made = {
            "F19": {"fitment": {"make": "Ford", "model": "F-450", "year": 2019}},
            "F18-20": {"fitment": {"make": "Ford", "model": "F-450", "year": [2018, 2019, 2020]}},
            "F21": {"fitment": {"make": "Ford", "model": "F-450", "year": 2021}},
            "FSTR": {"fitment": {"make": "Ford", "year": "2019"}},
            "CHEVY": {"fitment": {"make": "Chevrolet", "year": 2019}},
            "NESTED": {"fitment": {"make": {"name": "Ford"}, "year": 2019}},
            "FLAT": {"make": "Ford", "year": 2019, "eco": True},
            "NONE": {},
        }
        ids = {}
        for sku, attributes in made.items():
            ids[(await hub.product(sku, attributes=attributes))["id"]] = sku

        async def skus(query: str) -> set[str]:
            status, page, _ = await hub.call("GET", f"/api/v1/products?limit=200&{query}")
            assert status == 200, page
            return {ids[p["id"]] for p in page["items"]}

        assert await skus("attr.fitment.make=Ford&attr.fitment.year=2019") == {"F19", "F18-20", "FSTR"}
        assert await skus("attr.fitment.make=Ford") == {"F19", "F18-20", "F21", "FSTR"}
        assert await skus("attr.fitment.year=2020") == {"F18-20"}
        assert await skus("attr.fitment.model=F-450&attr.fitment.year=2021") == {"F21"}
        assert await skus("attr.make=Ford") == {"FLAT"}
        assert await skus("attr.eco=true") == {"FLAT"}
        assert await skus("attr.fitment.make=ford") == set()  # values are exact
        assert await skus("attr.fitment=Ford") == set()  # an object is never a value
        assert await skus("attr.fitment.make=Ford&category=none") == set()  # with the other filters
        for bad in (
            "attr.=x",
            "attr.fitment..make=x",
            "attr.1fitment=x",
            "attr.a.b.c.d.e=x",
            "attr.fit-ment=x",
            f"attr.{'a' * 129}=x",
            f"attr.fitment.make={'x' * 201}",
            "attr.fitment.make=",
            "attr.fitment.make=a%00b",
            "attr.fitment.make=a&attr.fitment.make=b",
            "&".join(f"attr.k{n}=v" for n in range(9)),
        ):
            status, body, _ = await hub.call("GET", f"/api/v1/products?{bad}")
            assert (status, body["code"]) == (400, "invalid_parameter"), (bad, body)


async def test_a_fitment_line_takes_the_fitting_product_with_the_most_stock(database_url):
    async with parts_hub(database_url) as hub:
        school = await make_school(hub, "wilson")
        fits = {"fitment": {"make": "Ford", "model": "F-450", "year": [2018, 2019]}}
        little = await hub.product("PAD-A", category="brakes", attributes=fits)
        plenty = await hub.product("PAD-B", category="brakes", attributes=fits)
        await hub.product("PAD-C", category="brakes", attributes={"fitment": {"make": "Ford", "year": 2015}})
        await hub.product("WIPER", category="wipers", attributes=fits)
        await hub.stock(little["id"], "par-1", 1)
        await hub.stock(plenty["id"], "par-1", 7)
        query = {"category": "brakes", "attributes": {"fitment.make": "Ford", "fitment.year": 2019}}
        status, made, _ = await submit(hub, school, [{"query": query, "quantity": 2}])
        assert status == 201, made
        assert made["lines"][0]["sku"] == "PAD-B" and made["lines"][0]["product_id"] == plenty["id"]
        assert made["lines"][0]["query"] == {
            "category": "brakes",
            "attributes": {"fitment.make": "Ford", "fitment.year": "2019"},
        }
        # fits_asset: the asset's make, model and year (a Ford F-450 of 2019)
        status, made, _ = await submit(
            hub, school, [{"query": {"category": "brakes", "fits_asset": True}, "quantity": 1}]
        )
        assert status == 201 and made["lines"][0]["sku"] == "PAD-B"
        assert made["lines"][0]["query"]["attributes"] == {
            "fitment.make": "Ford",
            "fitment.model": "F-450",
            "fitment.year": "2019",
        }
        status, body, _ = await submit(
            hub,
            school,
            [{"query": {"category": "brakes", "attributes": {"fitment.year": 1999}}, "quantity": 1}],
        )
        assert (status, body["code"], body["line"]) == (404, "fitting_product_not_found", 0)
        for line in (
            {"quantity": 1},
            {"sku": "PAD-B", "query": query, "quantity": 1},
            {"query": {}, "quantity": 1},
            {"query": {"fits_asset": False}, "quantity": 1},
            {"query": {"attributes": {"fitment..make": "Ford"}}, "quantity": 1},
            {"query": {"attributes": {"fitment.year": 2019.5}}, "quantity": 1},
            {"sku": "PAD-B", "quantity": 0},
        ):
            status, body, _ = await submit(hub, school, [line])
            assert (status, body["code"]) == (400, "validation_failed"), (line, body)
        status, body, _ = await submit(hub, school, [{"sku": "NOPE", "quantity": 1}])
        assert (status, body["code"], body["sku"]) == (404, "product_not_found", "NOPE")
        await hub.call(
            "PATCH", f"/api/v1/products/{little['id']}", token=hub.admin, json={"status": "discontinued"}
        )
        status, body, _ = await submit(hub, school, [{"sku": "PAD-A", "quantity": 1}])
        assert (status, body["code"]) == (409, "product_discontinued")


async def test_postgres_answers_attribute_filters_from_the_gin_index(pg):
    """The listing's own statement (storage.sql_catalog.product_listing), over 20,000 products of which
    0.5% fit: PostgreSQL's plan reads the GIN index on attributes::jsonb, not the table."""
    from storage.factory import open_store

    store = open_store(pg)
    await store.open()
    await store.migrate()
    try:
        conn = await asyncpg.connect(pg)
        try:
            rows = []
            for n in range(20_000):
                fits = (
                    {"make": "Ford", "year": 2019}
                    if n % 200 == 0
                    else {"make": "Make", "year": 1990 + n % 30}
                )
                rows.append(
                    (
                        str(uuid.uuid4()),
                        f"SKU-{n}",
                        f"part {n}",
                        "parts",
                        1000,
                        "active",
                        json.dumps({"fitment": fits}),
                        n,
                        n,
                    )
                )
            await conn.copy_records_to_table(
                "products",
                records=rows,
                columns=[
                    "id",
                    "sku",
                    "name",
                    "category",
                    "price_units",
                    "status",
                    "attributes",
                    "created_at",
                    "updated_at",
                ],
            )
            await conn.execute("ANALYZE products")
            query = ProductQuery(
                limit=50,
                attributes=(
                    AttributeFilter(("fitment", "make"), "Ford"),
                    AttributeFilter(("fitment", "year"), "2019"),
                ),
            )
            sql, args = store.product_listing(query)
            plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
            assert "products_attributes" in plan, plan
            assert '"Seq Scan"' not in plan, plan
            found = await store.list_products(query)
            assert len(found.items) == 50 and found.next_after is not None
            assert all(p.attributes["fitment"] == {"make": "Ford", "year": 2019} for p in found.items)
        finally:
            await conn.close()
    finally:
        await store.close()


# -- who may act for a school --------------------------------------------------------------------------


async def test_only_the_schools_own_keys_and_the_supplier_reach_a_school(database_url):
    async with parts_hub(database_url) as hub:
        mine = await make_school(hub, "grant")
        theirs = await make_school(hub, "hayes")
        await hub.product("BULB-1")
        _, made, _ = await submit(hub, theirs, [{"sku": "BULB-1", "quantity": 1}])
        for method, path in (
            ("GET", f"{PATH}/{theirs.id}"),
            ("GET", f"{PATH}/{theirs.id}/assets"),
            ("GET", f"{PATH}/{theirs.id}/assets/{theirs.asset}"),
            ("GET", f"{PATH}/{theirs.id}/parts-requests"),
            ("GET", f"{PATH}/{theirs.id}/parts-requests/{made['id']}"),
            ("POST", f"{PATH}/{theirs.id}/parts-requests/{made['id']}/transitions"),
            ("GET", f"{PATH}/no-such-school"),
        ):
            status, body, _ = await hub.call(method, path, token=mine.key, json={"status": "cancelled"})
            assert (status, body["code"]) == (404, "school_not_found"), (method, path, body)
        status, body, _ = await submit(hub, theirs, [{"sku": "BULB-1", "quantity": 1}], credential=mine.key)
        assert (status, body["code"]) == (404, "school_not_found")
        # its own school's request of another school's id is not found either
        status, body, _ = await hub.call(
            "GET", f"{PATH}/{mine.id}/parts-requests/{made['id']}", token=mine.key
        )
        assert (status, body["code"]) == (404, "parts_request_not_found")
        # a key without the scope, a customer's token
        unscoped, _ = await make_key(hub, "inventory:write")
        status, body, _ = await hub.call("GET", f"{PATH}/{mine.id}/parts-requests", token=unscoped)
        assert (status, body["code"]) == (403, "insufficient_scope")
        status, body, _ = await hub.call("GET", f"{PATH}/{mine.id}/parts-requests", token=hub.alice)
        assert (status, body["code"]) == (403, "forbidden")
        # keys never make schools nor bind keys; they list their own schools only
        status, body, _ = await hub.call(
            "POST", PATH, token=mine.key, json={"id": "rogue", "name": "x", "region": REGION}
        )
        assert (status, body["code"]) == (403, "insufficient_scope")
        status, page, _ = await hub.call("GET", PATH, token=mine.key)
        assert [s["id"] for s in page["items"]] == [mine.id]
        status, page, _ = await hub.call("GET", PATH, token=hub.service)
        assert [s["id"] for s in page["items"]] == ["grant", "hayes"]
        # a rotated key stays bound; binding names keys that exist
        status, rotated, _ = await hub.call(
            "POST", f"/api/v1/api-keys/{mine.key_id}/rotate", token=hub.admin, json={"overlap_seconds": 0}
        )
        assert status == 201, rotated
        status, body, _ = await hub.call("GET", f"{PATH}/{mine.id}", token=rotated["key"])
        assert status == 200 and body["api_keys"] == [mine.key_id]
        status, body, _ = await hub.call(
            "PATCH", f"{PATH}/{mine.id}", token=hub.admin, json={"api_keys": ["A" * 16]}
        )
        assert (status, body["code"]) == (404, "api_key_not_found")
        # unbinding: the key no longer reaches the school
        status, body, headers = await hub.call(
            "PATCH", f"{PATH}/{mine.id}", token=hub.admin, json={"api_keys": []}, headers={"If-Match": '"1"'}
        )
        assert status == 200 and body["api_keys"] == [] and headers["ETag"] == '"2"'
        status, body, _ = await hub.call("GET", f"{PATH}/{mine.id}", token=rotated["key"])
        assert (status, body["code"]) == (404, "school_not_found")
        status, body, _ = await hub.call(
            "POST", PATH, token=hub.admin, json={"id": "grant", "name": "again", "region": REGION}
        )
        assert (status, body["code"]) == (409, "school_exists")
        status, body, _ = await hub.call(
            "POST",
            f"{PATH}/{theirs.id}/assets",
            token=theirs.key,
            json={"asset_tag": "BUS-7", "kind": "vehicle", "make": "x", "model": "y"},
        )
        assert (status, body["code"]) == (409, "asset_tag_taken")


# -- events on parts-requests:{school} ----------------------------------------------------------------


def test_the_channel_kind_carries_exactly_the_stores_event_types():
    assert PARTS_REQUESTS.event_types == EVENT_TYPES
    assert all(KIND_OF_TYPE[t] is PARTS_REQUESTS for t in EVENT_TYPES)


async def test_status_changes_arrive_on_websocket_sse_and_long_poll_for_the_school_only(database_url):
    async with parts_hub(database_url) as hub:
        school = await make_school(hub, "taft")
        other = await make_school(hub, "polk")
        chain = await hub.product("CHAIN-1")
        channel = f"parts-requests:{school.id}"
        status, start, _ = await hub.call(
            "GET", f"/api/v1/poll?channels={channel}&timeout=0", token=school.key
        )
        assert status == 200, start
        async with (
            ws_client(hub, headers={"Authorization": f"Bearer {school.key}"}) as ws,
            sse_stream(hub, channel, headers={"Authorization": f"Bearer {hub.admin}"}) as sse,
        ):
            await ws.subscribe(channel)
            await sse.opening()
            _, made, _ = await submit(hub, school, [{"sku": "CHAIN-1", "quantity": 2}], policy="partial")
            await hub.stock(chain["id"], "par-1", 1)  # half of it
            await hub.stock(chain["id"], "par-1", 2)  # the rest
            await move(hub, school, made["id"], "picked")
            await move(hub, school, made["id"], "shipped")
            await move(hub, school, made["id"], "delivered", credential=school.key)
            _, unrelated, _ = await submit(
                hub, other, [{"sku": "CHAIN-1", "quantity": 1}]
            )  # not this channel
            expected = [
                ("parts_request.created", "requested", 1, [(0, 0)]),
                ("parts_request.backordered", "backordered", 2, [(0, 2)]),
                ("parts_request.line_filled", "backordered", 3, [(1, 1)]),
                ("parts_request.reserved", "reserved", 4, [(2, 0)]),
                ("parts_request.picked", "picked", 5, [(2, 0)]),
                ("parts_request.shipped", "shipped", 6, [(2, 0)]),
                ("parts_request.delivered", "delivered", 7, [(2, 0)]),
            ]
            over_ws = [m["data"] for m in await ws.events(len(expected))]
            over_sse = []
            for _ in expected:
                message = await sse.next_event()
                assert message.event == "parts-requests", message
                over_sse.append(message.json()["data"])
            await ws.assert_nothing_pending()
        for received in (over_ws, over_sse):
            assert [(e["type"], e["status"], e["version"], line_state(e)) for e in received] == expected
            for event in received:
                assert event["school_id"] == school.id and event["request_id"] == made["id"]
                assert event["asset_id"] == school.asset and event["needed_by"] == "2031-09-01"
                assert event["policy"] == "partial" and isinstance(event["ts"], int)
                assert event["lines"][0]["sku"] == "CHAIN-1" and event["lines"][0]["quantity"] == 2
        assert (over_ws[2]["line"], over_ws[2]["filled"]) == (0, 1)
        assert unrelated["id"] not in {e["request_id"] for e in over_ws}
        # long-poll from before: the same seven, in order
        status, polled, _ = await hub.call(
            "GET", f"/api/v1/poll?channels={channel}&cursor={start['cursor']}&timeout=5", token=school.key
        )
        assert status == 200, polled
        assert [e["data"]["type"] for e in polled["events"]] == [e[0] for e in expected]
        # another school's key, a customer's token, no token, a malformed name
        for credential, name, code, http in (
            (other.key, channel, "school_not_found", 404),
            (hub.alice, channel, "school_not_found", 404),
            (None, channel, "unauthenticated", 401),
            (school.key, "parts-requests:Not_A_School", "invalid_channel", 400),
            (school.key, "parts-requests:nobody", "school_not_found", 404),
        ):
            status, body, _ = await hub.call("GET", f"/api/v1/sse?channels={name}", token=credential)
            assert (status, body["code"]) == (http, code), (credential, name, body)
            headers = {"Authorization": f"Bearer {credential}"} if credential else None
            async with ws_client(hub, headers=headers) as ws:
                reply = await ws.request({"type": "subscribe", "channel": name})
                assert (reply["type"], reply["code"]) == ("error", code), reply


async def test_a_school_of_another_region_is_not_served_here(database_url):
    async with parts_hub(database_url) as hub:
        far = await make_school(hub, "nome", region="us")
        status, body, _ = await hub.call(
            "GET", f"/api/v1/sse?channels=parts-requests:{far.id}", token=far.key
        )
        assert (status, body["code"]) == (400, "channel_not_served")


# -- concurrency, on PostgreSQL ------------------------------------------------------------------------


def _serve_fifo(queue: list[dict[str, Any]], units: int) -> int:
    """What the queue must look like once ``units`` are available at its one warehouse: the head first,
    all of its line for all_or_none, and nobody behind a head it cannot serve. The units left."""
    for entry in queue:
        need = entry["quantity"] - entry["reserved"]
        if need == 0:
            continue
        taken = min(units, need)
        if entry["policy"] == "all_or_none" and taken < need:
            return units
        entry["reserved"] += taken
        units -= taken
        if taken < need:
            return units
    return units


async def _all_requests(hub: Hub, schools: list[School]) -> list[Any]:
    found = []
    for school in schools:
        page = await hub.app[STORE].list_parts_requests(PartsRequestQuery(school.id, limit=200))
        found.extend(page.items)
    return sorted(found, key=lambda r: (r.created_at, r.id))


async def _check_no_oversell(hub: Hub, schools: list[School], product_id: str) -> list[Any]:
    requests = await _all_requests(hub, schools)
    on_hand, reserved = (await stock_of(hub, product_id))["par-1"]
    held = sum(line.reserved for r in requests for line in r.lines)
    assert held == reserved <= on_hand, (held, reserved, on_hand)
    for r in requests:
        for line in r.lines:
            assert line.reserved + line.backordered == line.quantity or r.status.value == "cancelled"
    # nobody got units while someone who asked before still waited for that product
    waiting_before = False
    for r in requests:
        if r.status.value == "cancelled":
            continue
        got = r.lines[0].reserved
        if waiting_before:
            assert got == 0, f"{r.id} was served ahead of an earlier request"
        waiting_before = waiting_before or r.lines[0].backordered > 0
    return requests


async def test_concurrent_requests_of_several_schools_never_oversell_and_backorders_fill_in_request_order(pg):
    async with parts_hub(pg) as hub:
        schools = [await make_school(hub, f"district-{n}") for n in range(4)]
        pads = await hub.product("PAD-SCARCE")
        await hub.stock(pads["id"], "par-1", 7)
        plan = [(schools[n % 4], 1 + n % 3, "partial" if n % 2 else "all_or_none") for n in range(24)]
        answers = await asyncio.gather(
            *(submit(hub, school, [{"sku": "PAD-SCARCE", "quantity": q}], policy=p) for school, q, p in plan)
        )
        assert all(status == 201 for status, _, _ in answers), answers
        requests = await _check_no_oversell(hub, schools, pads["id"])
        taken = sum(r.lines[0].reserved for r in requests)
        assert 5 <= taken <= 7  # what there was (an all_or_none head may leave a unit it cannot use)
        queue = [
            {
                "id": r.id,
                "quantity": r.lines[0].quantity,
                "reserved": r.lines[0].reserved,
                "policy": r.policy.value,
            }
            for r in requests
            if r.status.value == "backordered"
        ]
        assert len(queue) >= 10
        # stock arrives in steps; after each the queue is served exactly as first come, first served says
        spare = 7 - taken
        for step in (1, 2, 1, 3, 2, 4, 5, 30):
            status, _, _ = await hub.call(
                "POST",
                f"/api/v1/products/{pads['id']}/inventory/par-1/adjustments",
                token=hub.admin,
                json={"delta": step},
            )
            assert status == 200
            spare = _serve_fifo(queue, spare + step)
            by_id = {r.id: r for r in await _check_no_oversell(hub, schools, pads["id"])}
            assert [by_id[e["id"]].lines[0].reserved for e in queue] == [e["reserved"] for e in queue], step
        assert all(by_id[e["id"]].status.value == "reserved" for e in queue)


async def test_stock_racing_new_requests_and_cancellations_never_oversells_nor_lets_anyone_skip_ahead(pg):
    async with parts_hub(pg) as hub:
        schools = [await make_school(hub, f"county-{n}") for n in range(3)]
        belts = await hub.product("BELT-SCARCE")
        await hub.stock(belts["id"], "par-1", 2)
        first = await asyncio.gather(
            *(submit(hub, schools[n % 3], [{"sku": "BELT-SCARCE", "quantity": 2}]) for n in range(6))
        )
        url = f"/api/v1/products/{belts['id']}/inventory/par-1/adjustments"
        work = [
            *(
                submit(hub, schools[n % 3], [{"sku": "BELT-SCARCE", "quantity": 1 + n % 2}], policy="partial")
                for n in range(12)
            ),
            *(hub.call("POST", url, token=hub.admin, json={"delta": 1}) for _ in range(10)),
            *(
                move(hub, schools[n % 3], body["id"], "cancelled")
                for n, (_, body, _) in enumerate(first)
                if n % 2
            ),
        ]
        results = await asyncio.gather(*work)
        assert all(status in (200, 201) for status, _, _ in results), [r for r in results if r[0] >= 300]
        await _check_no_oversell(hub, schools, belts["id"])
        await hub.call("POST", url, token=hub.admin, json={"delta": 40})
        requests = await _check_no_oversell(hub, schools, belts["id"])
        assert {r.status.value for r in requests} == {"reserved", "cancelled"}


async def test_needed_by_and_the_body_are_checked(database_url):
    async with parts_hub(database_url) as hub:
        school = await make_school(hub, "coolidge")
        await hub.product("X-1")
        for needed_by in ("2031-02-30", "31-01-01", "2031-1-1", "20310101", 20310101):
            status, body, _ = await submit(hub, school, [{"sku": "X-1", "quantity": 1}], needed_by=needed_by)  # type: ignore[arg-type]
            assert (status, body["code"]) == (400, "validation_failed"), (needed_by, body)
        status, body, _ = await hub.call(
            "POST",
            f"{PATH}/{school.id}/parts-requests",
            token=school.key,
            json={
                "asset_id": school.asset,
                "needed_by": "2031-01-01",
                "lines": [{"sku": "X-1", "quantity": 1}],
            },
        )
        assert (status, body["code"]) == (400, "idempotency_key_required")
        status, body, _ = await hub.call(
            "POST",
            f"{PATH}/{school.id}/parts-requests",
            token=school.key,
            json={
                "asset_id": str(uuid.uuid4()),
                "needed_by": "2031-01-01",
                "lines": [{"sku": "X-1", "quantity": 1}],
            },
            headers={"Idempotency-Key": "k"},
        )
        assert (status, body["code"]) == (404, "asset_not_found")
        status, body, _ = await submit(hub, school, [{"sku": "X-1", "quantity": 1}], policy="some")
        assert (status, body["code"]) == (400, "validation_failed")


async def test_requests_of_two_scarce_products_racing_stock_of_both_never_oversell_either(pg):
    """Requests naming two products in either order, stock arriving for both and cancellations, all at
    once: every call answers (a deadlock, if any, is retried inside), and each product's units held are
    exactly what the requests hold, never more than on hand."""
    async with parts_hub(pg) as hub:
        schools = [await make_school(hub, f"union-{n}") for n in range(3)]
        ids = {sku: (await hub.product(sku))["id"] for sku in ("AXLE-1", "GEAR-1")}
        await hub.stock(ids["AXLE-1"], "par-1", 3)
        await hub.stock(ids["GEAR-1"], "par-1", 3)

        def lines(n: int) -> list[dict[str, Any]]:
            pair = [{"sku": "AXLE-1", "quantity": 1 + n % 2}, {"sku": "GEAR-1", "quantity": 1 + (n + 1) % 2}]
            return pair if n % 2 else pair[::-1]

        first = await asyncio.gather(
            *(submit(hub, schools[n % 3], lines(n), policy="partial") for n in range(8))
        )
        work = [
            *(
                submit(hub, schools[n % 3], lines(n), policy=("partial", "all_or_none")[n % 2])
                for n in range(16)
            ),
            *(
                hub.call(
                    "POST",
                    f"/api/v1/products/{ids[sku]}/inventory/par-1/adjustments",
                    token=hub.admin,
                    json={"delta": 1},
                )
                for sku in ("AXLE-1", "GEAR-1")
                for _ in range(6)
            ),
            *(
                move(hub, schools[n % 3], body["id"], "cancelled")
                for n, (_, body, _) in enumerate(first)
                if n % 3 == 0
            ),
        ]
        results = await asyncio.gather(*work)
        assert all(status in (200, 201) for status, _, _ in results), [r for r in results if r[0] >= 300]
        requests = await _all_requests(hub, schools)
        for sku, product_id in ids.items():
            on_hand, reserved = (await stock_of(hub, product_id))["par-1"]
            held = sum(line.reserved for r in requests for line in r.lines if line.product_id == product_id)
            assert held == reserved <= on_hand, (sku, held, reserved, on_hand)
