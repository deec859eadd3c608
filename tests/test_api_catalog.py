"""The catalog over real HTTP: /api/v1/products on both backends."""

from __future__ import annotations

import gzip
import json
import re
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import brotli
import pytest

PRODUCTS = "/api/v1/products"
NEXT_LINK = re.compile(r'<([^>]+)>;\s*rel="next"')


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def walk(hub: Any, first: str, *, via_link: bool = False) -> tuple[list[dict[str, Any]], int]:
    """Every item of a listing, following next_cursor (or the Link header); also the page count."""
    items: list[dict[str, Any]] = []
    path: str | None = first
    pages = 0
    while path is not None:
        status, body, headers = await hub.call("GET", path)
        assert status == 200, body
        pages += 1
        assert pages < 100, "the listing never ends"
        items.extend(body["items"])
        link = headers.get("Link")
        if body["next_cursor"] is None:
            assert link is None
            path = None
            continue
        assert body["items"], "a page with a next cursor must not be empty"
        assert link is not None
        match = NEXT_LINK.fullmatch(link.strip())
        assert match is not None, link
        target = match.group(1)
        assert parse_qs(urlsplit(target).query)["cursor"] == [body["next_cursor"]]
        if via_link:
            path = target
        else:
            base, _, query = first.partition("?")
            params = {k: v for k, v in parse_qs(query).items() if k != "cursor"}
            rebuilt = "&".join(f"{k}={v[0]}" for k, v in params.items())
            path = (
                f"{base}?{rebuilt}&cursor={body['next_cursor']}"
                if rebuilt
                else (f"{base}?cursor={body['next_cursor']}")
            )
    return items, pages


# -- create / read / update / delete ----------------------------------------------------------------


async def test_create_returns_201_with_location_etag_and_the_product(hub):
    status, body, headers = await hub.call(
        "POST",
        PRODUCTS,
        token=hub.admin,
        json={
            "sku": "MUG-1",
            "name": "Mug",
            "price": "12.5",
            "category": "kitchen",
            "description": "a mug",
            "attributes": {"colour": "blue", "ml": 350},
            "low_stock_threshold": 3,
        },
    )
    assert status == 201, body
    assert headers["Location"] == f"{PRODUCTS}/{body['id']}"
    assert headers["ETag"] == '"1-0"'
    assert body["sku"] == "MUG-1"
    assert body["name"] == "Mug"
    assert body["price"] == "12.50"
    assert body["category"] == "kitchen"
    assert body["status"] == "active"
    assert body["attributes"] == {"colour": "blue", "ml": 350}
    assert body["low_stock_threshold"] == 3
    assert body["version"] == 1
    assert body["created_at"] == body["updated_at"]

    status, fetched, headers = await hub.call("GET", headers["Location"])
    assert status == 200
    assert fetched == body
    assert headers["ETag"] == '"1-0"'


async def test_defaults_are_filled_in_on_create(hub):
    product = await hub.product("PLAIN-1", "3.00")
    assert product["description"] == ""
    assert product["category"] == ""
    assert product["status"] == "active"
    assert product["attributes"] == {}
    assert product["low_stock_threshold"] == 5


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("12.50", "12.50"),
        ("12.5", "12.50"),
        ("0.0001", "0.0001"),
        ("1234.5678", "1234.5678"),
        ("100", "100.00"),
        ("0", "0.00"),
        ("1e2", "100.00"),
        ("999999999.9999", "999999999.9999"),
        (7, "7.00"),
    ],
)
async def test_price_is_returned_as_an_exact_decimal_string(hub, given, shown):
    status, body, _ = await hub.call(
        "POST", PRODUCTS, token=hub.admin, json={"sku": "P-1", "name": "p", "price": given}
    )
    assert status == 201, body
    assert body["price"] == shown
    _, fetched, _ = await hub.call("GET", f"{PRODUCTS}/{body['id']}")
    assert fetched["price"] == shown
    _, listed, _ = await hub.call("GET", PRODUCTS)
    assert [p["price"] for p in listed["items"]] == [shown]


async def test_a_json_number_price_is_read_exactly_not_through_a_float(hub):
    raw = b'{"sku": "F-1", "name": "f", "price": 0.1001}'
    status, body, _ = await hub.call(
        "POST", PRODUCTS, token=hub.admin, data=raw, headers={"Content-Type": "application/json"}
    )
    assert status == 201, body
    assert body["price"] == "0.1001"


async def test_a_duplicate_sku_is_refused_with_409_sku_taken(hub):
    await hub.product("DUP-1")
    status, body, _ = await hub.call(
        "POST", PRODUCTS, token=hub.admin, json={"sku": "DUP-1", "name": "again", "price": "1"}
    )
    assert status == 409
    assert body["code"] == "sku_taken"
    _, listed, _ = await hub.call("GET", PRODUCTS)
    assert [p["name"] for p in listed["items"]] == ["DUP-1"]


async def test_patch_changes_only_the_given_fields_and_bumps_the_version(hub):
    product = await hub.product("PATCH-1", "10.00", category="a", description="keep me")
    status, body, headers = await hub.call(
        "PATCH", f"{PRODUCTS}/{product['id']}", token=hub.admin, json={"price": "11.25", "category": "b"}
    )
    assert status == 200, body
    assert headers["ETag"] == '"2-0"'
    assert body["version"] == 2
    assert body["price"] == "11.25"
    assert body["category"] == "b"
    assert body["description"] == "keep me"
    assert body["created_at"] == product["created_at"]
    assert ts(body["updated_at"]) >= ts(product["updated_at"])
    _, fetched, _ = await hub.call("GET", f"{PRODUCTS}/{product['id']}")
    assert fetched == body


async def test_delete_removes_the_product(hub):
    product = await hub.product("DEL-1")
    status, body, _ = await hub.call("DELETE", f"{PRODUCTS}/{product['id']}", token=hub.admin)
    assert status == 204, body
    status, body, _ = await hub.call("GET", f"{PRODUCTS}/{product['id']}")
    assert status == 404
    assert body["code"] == "product_not_found"
    status, body, _ = await hub.call("DELETE", f"{PRODUCTS}/{product['id']}", token=hub.admin)
    assert status == 404
    assert body["code"] == "product_not_found"
    _, listed, _ = await hub.call("GET", PRODUCTS)
    assert listed["items"] == []


async def test_an_unknown_product_is_404_product_not_found(hub):
    missing = "00000000-0000-4000-8000-000000000000"
    for method in ("GET", "PATCH", "DELETE"):
        status, body, _ = await hub.call(
            method,
            f"{PRODUCTS}/{missing}",
            token=hub.admin,
            json={"name": "x"} if method == "PATCH" else None,
        )
        assert status == 404, (method, body)
        assert body["code"] == "product_not_found"


async def test_writes_need_an_admin(hub):
    product = await hub.product("ROLE-1")
    for method, path, body in (
        ("POST", PRODUCTS, {"sku": "ROLE-2", "name": "x", "price": "1"}),
        ("PATCH", f"{PRODUCTS}/{product['id']}", {"name": "hacked"}),
        ("DELETE", f"{PRODUCTS}/{product['id']}", None),
    ):
        status, problem, _ = await hub.call(method, path, token=hub.alice, json=body)
        assert status == 403, (method, problem)
        assert problem["code"] == "forbidden"
    _, fetched, _ = await hub.call("GET", f"{PRODUCTS}/{product['id']}")
    assert fetched == product


# -- conditional requests ---------------------------------------------------------------------------


async def test_get_has_an_etag_and_if_none_match_answers_304(hub):
    product = await hub.product("ETAG-1")
    path = f"{PRODUCTS}/{product['id']}"
    status, _, headers = await hub.call("GET", path)
    assert status == 200
    etag = headers["ETag"]
    assert etag == '"1-0"'  # the product's version, then its rating's

    status, body, headers = await hub.call("GET", path, headers={"If-None-Match": etag})
    assert status == 304
    assert body is None
    assert headers["ETag"] == etag

    for header in ('W/"1-0"', '"7-0", "1-0"', "*"):
        status, _, _ = await hub.call("GET", path, headers={"If-None-Match": header})
        assert status == 304, header

    status, body, _ = await hub.call("GET", path, headers={"If-None-Match": '"2"'})
    assert status == 200
    assert body["version"] == 1


async def test_if_none_match_stops_matching_once_the_product_changes(hub):
    product = await hub.product("ETAG-2")
    path = f"{PRODUCTS}/{product['id']}"
    status, _, _ = await hub.call("PATCH", path, token=hub.admin, json={"name": "renamed"})
    assert status == 200
    status, body, headers = await hub.call("GET", path, headers={"If-None-Match": '"1"'})
    assert status == 200
    assert body["name"] == "renamed"
    assert headers["ETag"] == '"2-0"'


async def test_patch_with_the_current_if_match_succeeds(hub):
    product = await hub.product("IFM-1")
    path = f"{PRODUCTS}/{product['id']}"
    _, _, headers = await hub.call("GET", path)
    status, body, headers = await hub.call(
        "PATCH", path, token=hub.admin, json={"name": "v2"}, headers={"If-Match": headers["ETag"]}
    )
    assert status == 200, body
    assert body["name"] == "v2"
    assert headers["ETag"] == '"2-0"'
    status, body, _ = await hub.call(
        "PATCH", path, token=hub.admin, json={"name": "v3"}, headers={"If-Match": '"2"'}
    )
    assert status == 200, body
    assert body["version"] == 3


async def test_patch_with_a_stale_if_match_is_412_and_changes_nothing(hub):
    product = await hub.product("IFM-2", "5.00")
    path = f"{PRODUCTS}/{product['id']}"
    status, current, _ = await hub.call("PATCH", path, token=hub.admin, json={"name": "second"})
    assert status == 200
    status, body, headers = await hub.call(
        "PATCH",
        path,
        token=hub.admin,
        json={"name": "lost update", "price": "1"},
        headers={"If-Match": '"1"'},
    )
    assert status == 412
    assert headers["Content-Type"].startswith("application/problem+json")
    assert body["code"] == "precondition_failed"
    assert body["status"] == 412
    _, fetched, headers = await hub.call("GET", path)
    assert fetched == current
    assert fetched["name"] == "second"
    assert fetched["price"] == "5.00"
    assert headers["ETag"] == '"2-0"'


async def test_if_match_that_names_no_version_is_refused(hub):
    product = await hub.product("IFM-3")
    path = f"{PRODUCTS}/{product['id']}"
    status, body, _ = await hub.call(
        "PATCH", path, token=hub.admin, json={"name": "x"}, headers={"If-Match": '"not-a-version"'}
    )
    assert status == 412
    assert body["code"] == "precondition_failed"
    status, body, _ = await hub.call(
        "PATCH", path, token=hub.admin, json={"name": "x"}, headers={"If-Match": "unquoted"}
    )
    assert status == 400
    assert body["code"] == "invalid_precondition"
    _, fetched, _ = await hub.call("GET", path)
    assert fetched == product


async def test_delete_with_a_stale_if_match_is_412_and_keeps_the_product(hub):
    product = await hub.product("IFM-4")
    path = f"{PRODUCTS}/{product['id']}"
    await hub.call("PATCH", path, token=hub.admin, json={"name": "v2"})
    status, body, _ = await hub.call("DELETE", path, token=hub.admin, headers={"If-Match": '"1"'})
    assert status == 412
    assert body["code"] == "precondition_failed"
    status, fetched, _ = await hub.call("GET", path)
    assert status == 200
    assert fetched["version"] == 2
    status, _, _ = await hub.call("DELETE", path, token=hub.admin, headers={"If-Match": '"2"'})
    assert status == 204
    status, _, _ = await hub.call("GET", path)
    assert status == 404


async def test_a_compressed_product_has_a_weak_etag_that_still_works_for_conditionals(hub):
    product = await hub.product("BIG-1", description="d" * 3000)
    path = f"{PRODUCTS}/{product['id']}"
    status, body, headers = await hub.call("GET", path, headers={"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert headers["ETag"] == 'W/"1-0"'
    assert body["description"] == "d" * 3000
    status, _, _ = await hub.call(
        "GET", path, headers={"If-None-Match": 'W/"1-0"', "Accept-Encoding": "gzip"}
    )
    assert status == 304
    status, body, _ = await hub.call(
        "PATCH", path, token=hub.admin, json={"name": "renamed"}, headers={"If-Match": 'W/"1"'}
    )
    assert status == 200, body
    assert body["version"] == 2


# -- listing: pagination ----------------------------------------------------------------------------


@pytest.mark.parametrize("count", [7, 6])
async def test_cursor_pagination_walks_every_product_exactly_once(hub, count):
    created = [await hub.product(f"PG-{i}", f"{i}.00") for i in range(count)]
    items, pages = await walk(hub, f"{PRODUCTS}?limit=3")
    assert pages == -(-count // 3)  # no empty trailing page
    assert sorted(p["id"] for p in items) == sorted(p["id"] for p in created)
    assert len({p["id"] for p in items}) == count
    # newest first
    keys = [(ts(p["created_at"]), p["id"]) for p in items]
    assert keys == sorted(keys, reverse=True)


async def test_the_link_header_leads_through_all_pages_and_keeps_the_other_parameters(hub):
    for i in range(5):
        await hub.product(f"LK-{i}", "2.00", category="tools")
    await hub.product("LK-other", "2.00", category="toys")
    items, pages = await walk(hub, f"{PRODUCTS}?limit=2&category=tools&sort=price", via_link=True)
    assert pages == 3
    assert sorted(p["sku"] for p in items) == [f"LK-{i}" for i in range(5)]


@pytest.mark.parametrize("sort", ["newest", "oldest", "name", "-name", "price", "-price"])
async def test_every_sort_pages_in_a_stable_total_order_even_with_ties(hub, sort):
    # Ties on price and on name: the id breaks them, and no page boundary loses or repeats a row.
    specs = [
        ("b", "5.00"),
        ("a", "5.00"),
        ("b", "1.00"),
        ("B", "5.00"),
        ("é", "0.0001"),
        ("a", "9.99"),
        ("z", "5.00"),
        ("Z", "5.0001"),
        ("a", "5.00"),
    ]
    for i, (name, price) in enumerate(specs):
        status, body, _ = await hub.call(
            "POST", PRODUCTS, token=hub.admin, json={"sku": f"S-{i}", "name": name, "price": price}
        )
        assert status == 201, body
    everything, _ = await walk(hub, f"{PRODUCTS}?limit=200&sort={sort}")
    paged, pages = await walk(hub, f"{PRODUCTS}?limit=2&sort={sort}")
    assert pages == 5
    assert [p["id"] for p in paged] == [p["id"] for p in everything]
    assert len(everything) == len(specs)

    def key(p: dict[str, Any]) -> tuple[Any, str]:
        column = sort.lstrip("-")
        if column in ("newest", "oldest"):
            return ts(p["created_at"]), p["id"]
        if column == "price":
            return Decimal(p["price"]), p["id"]
        return p["name"], p["id"]  # code point order, identical on both backends

    descending = sort.startswith("-") or sort == "newest"
    assert [key(p) for p in everything] == sorted((key(p) for p in everything), reverse=descending)


async def test_a_cursor_from_one_sort_is_refused_by_another(hub):
    for i in range(3):
        await hub.product(f"CS-{i}")
    _, body, _ = await hub.call("GET", f"{PRODUCTS}?limit=1&sort=price")
    assert body["next_cursor"]
    status, problem, _ = await hub.call("GET", f"{PRODUCTS}?limit=1&sort=name&cursor={body['next_cursor']}")
    assert status == 400
    assert problem["code"] == "invalid_cursor"


# -- listing: filters -------------------------------------------------------------------------------


async def test_filter_by_category(hub):
    await hub.product("C-1", category="tools")
    await hub.product("C-2", category="toys")
    await hub.product("C-3", category="tools")
    await hub.product("C-4")
    _, body, _ = await hub.call("GET", f"{PRODUCTS}?category=tools")
    assert sorted(p["sku"] for p in body["items"]) == ["C-1", "C-3"]
    _, body, _ = await hub.call("GET", f"{PRODUCTS}?category=Tools")
    assert body["items"] == []


async def test_filter_by_status(hub):
    await hub.product("ST-1")
    await hub.product("ST-2", status="preorder")
    await hub.product("ST-3", status="discontinued")
    for status_name, expected in (("active", "ST-1"), ("preorder", "ST-2"), ("discontinued", "ST-3")):
        _, body, _ = await hub.call("GET", f"{PRODUCTS}?status={status_name}")
        assert [p["sku"] for p in body["items"]] == [expected]


async def test_filter_by_price_range_is_inclusive_and_exact(hub):
    for sku, price in (
        ("PR-1", "0.9999"),
        ("PR-2", "1.00"),
        ("PR-3", "5.50"),
        ("PR-4", "10.00"),
        ("PR-5", "10.0001"),
    ):
        await hub.product(sku, price)
    _, body, _ = await hub.call("GET", f"{PRODUCTS}?price_min=1&price_max=10&sort=price")
    assert [p["sku"] for p in body["items"]] == ["PR-2", "PR-3", "PR-4"]
    _, body, _ = await hub.call("GET", f"{PRODUCTS}?price_min=10.0001&sort=price")
    assert [p["sku"] for p in body["items"]] == ["PR-5"]
    _, body, _ = await hub.call("GET", f"{PRODUCTS}?price_max=0.9999")
    assert [p["sku"] for p in body["items"]] == ["PR-1"]
    _, body, _ = await hub.call("GET", f"{PRODUCTS}?price_min=6&price_max=5")
    assert body["items"] == []


async def test_filter_by_in_stock_region_counts_only_available_units(hub):
    await hub.warehouse("par-1", "eu")
    await hub.warehouse("ber-1", "eu")
    await hub.warehouse("nyc-1", "us")
    eu = await hub.product("R-EU")
    us = await hub.product("R-US")
    empty = await hub.product("R-EMPTY")
    held = await hub.product("R-HELD")
    await hub.product("R-NONE")
    await hub.stock(eu["id"], "ber-1", 3)
    await hub.stock(us["id"], "nyc-1", 10)
    await hub.stock(empty["id"], "par-1", 0)
    await hub.stock(held["id"], "par-1", 2)
    status, body, _ = await hub.call(
        "POST",
        "/api/v1/reservations",
        token=hub.alice,
        json={"lines": [{"product_id": held["id"], "quantity": 2, "warehouse_id": "par-1"}]},
        headers={"Idempotency-Key": "hold-all"},
    )
    assert status == 201, body

    _, body, _ = await hub.call("GET", f"{PRODUCTS}?in_stock_region=eu")
    assert [p["sku"] for p in body["items"]] == ["R-EU"]
    _, body, _ = await hub.call("GET", f"{PRODUCTS}?in_stock_region=us")
    assert [p["sku"] for p in body["items"]] == ["R-US"]
    _, body, _ = await hub.call("GET", f"{PRODUCTS}?in_stock_region=asia")
    assert body["items"] == []


async def test_filters_combine(hub):
    await hub.product("CB-1", "5.00", category="tools")
    await hub.product("CB-2", "50.00", category="tools")
    await hub.product("CB-3", "5.00", category="toys")
    await hub.product("CB-4", "5.00", category="tools", status="preorder")
    _, body, _ = await hub.call("GET", f"{PRODUCTS}?category=tools&status=active&price_max=10")
    assert [p["sku"] for p in body["items"]] == ["CB-1"]


# -- listing: sparse fieldsets ----------------------------------------------------------------------


async def test_sparse_fields_return_only_those_fields_plus_id(hub):
    product = await hub.product("SF-1", "12.50")
    _, body, _ = await hub.call("GET", f"{PRODUCTS}?fields=sku,price")
    assert body["items"] == [{"id": product["id"], "sku": "SF-1", "price": "12.50"}]
    status, body, _ = await hub.call("GET", f"{PRODUCTS}/{product['id']}?fields=sku,price")
    assert status == 200
    assert body == {"id": product["id"], "sku": "SF-1", "price": "12.50"}
    _, body, _ = await hub.call("GET", f"{PRODUCTS}?fields=name")
    assert body["items"] == [{"id": product["id"], "name": "SF-1"}]


async def test_sparse_fields_with_an_unknown_name_are_refused(hub):
    product = await hub.product("SF-2")
    for path in (f"{PRODUCTS}?fields=sku,password", f"{PRODUCTS}/{product['id']}?fields=secret"):
        status, body, _ = await hub.call("GET", path)
        assert status == 400, path
        assert body["code"] == "invalid_parameter"


# -- listing: compression and ETag ------------------------------------------------------------------


async def big_catalog(hub: Any) -> None:
    for i in range(12):
        await hub.product(f"BIG-{i:02}", "9.99", description="a fairly long description " * 8)


async def raw_get(hub: Any, path: str, headers: dict[str, str]) -> tuple[int, bytes, Any]:
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(hub.base + path, headers=headers) as response,
    ):
        return response.status, await response.read(), response.headers


async def test_a_large_list_is_brotli_encoded_when_the_client_accepts_br(hub):
    await big_catalog(hub)
    _, plain, _ = await raw_get(hub, PRODUCTS, {"Accept-Encoding": "identity"})
    status, raw, headers = await raw_get(hub, PRODUCTS, {"Accept-Encoding": "br"})
    assert status == 200
    assert headers["Content-Encoding"] == "br"
    assert "Accept-Encoding" in headers.get("Vary", "")
    assert int(headers["Content-Length"]) == len(raw)
    assert len(raw) < len(plain)
    assert json.loads(brotli.decompress(raw)) == json.loads(plain)


async def test_a_large_list_is_gzip_encoded_when_the_client_accepts_only_gzip(hub):
    await big_catalog(hub)
    _, plain, _ = await raw_get(hub, PRODUCTS, {"Accept-Encoding": "identity"})
    for accept in ("gzip", "gzip, deflate", "br;q=0, gzip", "br;q=0.5, gzip;q=0.9"):
        status, raw, headers = await raw_get(hub, PRODUCTS, {"Accept-Encoding": accept})
        assert status == 200
        assert headers["Content-Encoding"] == "gzip", accept
        assert json.loads(gzip.decompress(raw)) == json.loads(plain)


async def test_a_large_list_is_not_encoded_when_the_client_accepts_no_compression(hub):
    await big_catalog(hub)
    for accept in ("identity", "deflate", "br;q=0, gzip;q=0"):
        status, raw, headers = await raw_get(hub, PRODUCTS, {"Accept-Encoding": accept})
        assert status == 200
        assert "Content-Encoding" not in headers, accept
        assert len(json.loads(raw)["items"]) == 12


async def test_a_small_response_is_never_compressed(hub):
    product = await hub.product("SMALL-1")
    status, raw, headers = await raw_get(hub, f"{PRODUCTS}/{product['id']}", {"Accept-Encoding": "br, gzip"})
    assert status == 200
    assert "Content-Encoding" not in headers
    assert json.loads(raw)["sku"] == "SMALL-1"


async def test_the_list_has_an_etag_and_if_none_match_answers_304_until_it_changes(hub):
    await hub.product("LE-1")
    status, body, headers = await hub.call("GET", PRODUCTS)
    assert status == 200
    etag = headers["ETag"]
    status, body, headers = await hub.call("GET", PRODUCTS, headers={"If-None-Match": etag})
    assert status == 304
    assert body is None
    assert headers["ETag"] == etag
    # The tag names the content, so different queries have different tags.
    _, _, other = await hub.call("GET", f"{PRODUCTS}?fields=sku")
    assert other["ETag"] != etag

    await hub.product("LE-2")
    status, body, headers = await hub.call("GET", PRODUCTS, headers={"If-None-Match": etag})
    assert status == 200
    assert len(body["items"]) == 2
    assert headers["ETag"] != etag


async def test_the_list_etag_is_the_same_whatever_the_encoding(hub):
    await big_catalog(hub)
    _, _, plain = await raw_get(hub, PRODUCTS, {"Accept-Encoding": "identity"})
    _, _, brotli_headers = await raw_get(hub, PRODUCTS, {"Accept-Encoding": "br"})
    assert brotli_headers["Content-Encoding"] == "br"
    assert plain["ETag"] == brotli_headers["ETag"]
    status, _, _ = await raw_get(hub, PRODUCTS, {"Accept-Encoding": "br", "If-None-Match": plain["ETag"]})
    assert status == 304
