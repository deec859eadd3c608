"""The one Store contract suite: every guarantee of :mod:`storage.base`, run on every backend.

Each test takes the ``store`` (or ``database_url``) fixture, so conftest runs it once on a SQLite file
and once on a real PostgreSQL database over TCP. The tests only use the public Store methods, except
for a few read-only peeks (and one timestamp rewrite to force sort ties) through the store's own SQL
seam, ``store.db.run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from storage.errors import (
    Conflict,
    IdempotencyMismatch,
    InsufficientStock,
    InvalidTransition,
    NotFound,
    StoreError,
    StoreUnavailable,
    VersionMismatch,
)
from storage.factory import open_store
from storage.models import (
    IdempotentResult,
    InventoryDelta,
    NewProduct,
    OutboxEntry,
    Product,
    ProductQuery,
    ProductStatus,
    ReservationLineRequest,
    ReservationStatus,
    StockLevel,
    StockStatus,
    Warehouse,
)
from storage.sql import SqlStore
from tests.conftest import is_stock_entry, seed, stock_delta, wait_for_lock_waiters

SORTS = ["newest", "oldest", "name", "-name", "price", "-price"]
SORT_KEYS: dict[str, tuple[str, bool]] = {
    "newest": ("created_at", True),
    "oldest": ("created_at", False),
    "name": ("name", False),
    "-name": ("name", True),
    "price": ("price", False),
    "-price": ("price", True),
}


# -- helpers ------------------------------------------------------------------------------------


def now_us() -> int:
    return time.time_ns() // 1000


async def make_product(store: SqlStore, sku: str, **fields: Any) -> Product:
    fields.setdefault("name", sku)
    fields.setdefault("price", Decimal("10.00"))
    return await store.create_product(NewProduct(sku=sku, **fields))


async def make_warehouse(store: SqlStore, wid: str, region: str = "eu") -> Warehouse:
    return await store.create_warehouse(Warehouse(wid, region, f"Warehouse {wid}"))


async def level(store: SqlStore, product_id: str, warehouse_id: str) -> StockLevel:
    matches = [s for s in await store.get_inventory(product_id) if s.warehouse_id == warehouse_id]
    assert len(matches) == 1, f"no stock row for {product_id} in {warehouse_id}"
    return matches[0]


async def deltas(store: SqlStore) -> list[InventoryDelta]:
    return [stock_delta(entry) for entry in await store.read_outbox(limit=100_000) if is_stock_entry(entry)]


async def peek(store: SqlStore, sql: str, *args: Any) -> Any:
    """A single value read through the store's own SQL seam (read-only checks)."""

    async def work(tx: Any) -> Any:
        row = await tx.fetchrow(sql, *args)
        return None if row is None else next(iter(dict(row).values()))

    return await store.db.run(work)


async def execute(store: SqlStore, sql: str, *args: Any) -> int:
    async def work(tx: Any) -> int:
        return int(await tx.execute(sql, *args))

    return await store.db.run(work)


async def reserve(
    store: SqlStore,
    *lines: ReservationLineRequest,
    owner: str = "alice",
    key: str | None = None,
    request_hash: str = "hash-1",
    ttl: int = 600,
) -> IdempotentResult:
    return await store.reserve(owner, key or f"key-{time.time_ns()}", request_hash, list(lines), ttl)


def line(product_id: str, quantity: int = 1, **where: str) -> ReservationLineRequest:
    return ReservationLineRequest(product_id, quantity, **where)


async def all_product_ids(store: SqlStore, sort: str, limit: int, **filters: Any) -> list[str]:
    """Walk every page of a listing and return the ids in order."""
    ids: list[str] = []
    after = None
    for _ in range(10_000):
        page = await store.list_products(ProductQuery(limit=limit, sort=sort, after=after, **filters))
        assert len(page.items) <= limit
        ids.extend(p.id for p in page.items)
        if page.next_after is None:
            return ids
        assert page.items, "a page with a cursor must not be empty"
        after = page.next_after
    raise AssertionError("pagination did not terminate")


def expected_order(products: list[Product], sort: str) -> list[str]:
    attribute, descending = SORT_KEYS[sort]
    ordered = sorted(products, key=lambda p: (getattr(p, attribute), p.id), reverse=descending)
    return [p.id for p in ordered]


# -- lifecycle ----------------------------------------------------------------------------------


async def test_the_store_under_test_is_the_backend_named_by_the_database_url(store, database_url):
    expected = "postgres" if database_url.startswith("postgresql://") else "sqlite"
    assert store.backend == expected
    await store.ping()


async def test_ping_raises_store_unavailable_once_the_store_is_closed(database_url):
    other = open_store(database_url)
    await other.open()
    await other.ping()
    await other.close()
    with pytest.raises(StoreUnavailable):
        await other.ping()


# -- products -----------------------------------------------------------------------------------


async def test_a_created_product_reads_back_with_every_field(store):
    before = now_us()
    created = await store.create_product(
        NewProduct(
            sku="MUG-1",
            name="Mug",
            price=Decimal("12.50"),
            description="A blue mug",
            category="kitchen",
            status=ProductStatus.PREORDER,
            attributes={"colour": "blue"},
            low_stock_threshold=3,
        )
    )
    assert created.id
    assert (created.sku, created.name, created.description, created.category) == (
        "MUG-1",
        "Mug",
        "A blue mug",
        "kitchen",
    )
    assert created.price == Decimal("12.50")
    assert created.status is ProductStatus.PREORDER
    assert created.attributes == {"colour": "blue"}
    assert created.low_stock_threshold == 3
    assert created.version == 1
    assert before <= created.created_at == created.updated_at <= now_us()
    assert await store.get_product(created.id) == created


async def test_each_product_gets_its_own_id(store):
    ids = {(await make_product(store, f"SKU-{i}")).id for i in range(5)}
    assert len(ids) == 5


async def test_getting_an_unknown_product_returns_none(store):
    assert await store.get_product("00000000-0000-0000-0000-000000000000") is None


async def test_an_update_changes_only_the_given_fields_and_bumps_the_version(store):
    original = await make_product(store, "SKU-1", description="old", category="toys")
    updated = await store.update_product(original.id, {"name": "Renamed", "price": Decimal("3.25")})
    assert updated.name == "Renamed"
    assert updated.price == Decimal("3.25")
    assert updated.version == original.version + 1
    assert updated.updated_at >= original.updated_at
    assert updated.created_at == original.created_at
    assert (updated.sku, updated.description, updated.category, updated.status) == (
        original.sku,
        original.description,
        original.category,
        original.status,
    )
    assert await store.get_product(original.id) == updated


async def test_every_updatable_field_can_be_changed(store):
    original = await make_product(store, "SKU-1")
    changes = {
        "sku": "SKU-2",
        "name": "New name",
        "description": "New description",
        "category": "garden",
        "price": Decimal("99.95"),
        "status": ProductStatus.DISCONTINUED,
        "attributes": {"size": "XL"},
        "low_stock_threshold": 0,
    }
    updated = await store.update_product(original.id, changes)
    for name, value in changes.items():
        assert getattr(updated, name) == value, name
    assert updated.version == 2
    assert await store.get_product(original.id) == updated


async def test_an_update_with_the_current_expected_version_succeeds(store):
    product = await make_product(store, "SKU-1")
    first = await store.update_product(product.id, {"name": "A"}, expected_version=1)
    second = await store.update_product(product.id, {"name": "B"}, expected_version=2)
    assert (first.version, second.version, second.name) == (2, 3, "B")


async def test_an_update_with_a_stale_expected_version_raises_version_mismatch_and_changes_nothing(store):
    product = await make_product(store, "SKU-1")
    await store.update_product(product.id, {"name": "A"})
    with pytest.raises(VersionMismatch) as caught:
        await store.update_product(product.id, {"name": "B"}, expected_version=1)
    assert caught.value.details == {"expected": 1, "current": 2}
    stored = await store.get_product(product.id)
    assert stored is not None
    assert (stored.name, stored.version) == ("A", 2)


async def test_only_one_of_several_concurrent_updates_with_the_same_expected_version_wins(store):
    product = await make_product(store, "SKU-1")
    results = await asyncio.gather(
        *(store.update_product(product.id, {"name": f"N{i}"}, expected_version=1) for i in range(10)),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, Product)]
    assert len(winners) == 1
    assert all(isinstance(r, VersionMismatch) for r in results if not isinstance(r, Product))
    stored = await store.get_product(product.id)
    assert stored == winners[0]
    assert stored.version == 2


async def test_updating_an_unknown_product_raises_not_found(store):
    missing = "00000000-0000-0000-0000-000000000000"
    with pytest.raises(NotFound):
        await store.update_product(missing, {"name": "x"})
    with pytest.raises(NotFound):
        await store.update_product(missing, {"name": "x"}, expected_version=1)


async def test_updating_a_field_that_is_not_updatable_raises_value_error(store):
    product = await make_product(store, "SKU-1")
    with pytest.raises(ValueError):
        await store.update_product(product.id, {"version": 7})
    assert (await store.get_product(product.id)) == product


async def test_a_duplicate_sku_is_a_conflict(store):
    await make_product(store, "SKU-1")
    with pytest.raises(Conflict):
        await make_product(store, "SKU-1", name="another")
    page = await store.list_products(ProductQuery())
    assert [p.sku for p in page.items] == ["SKU-1"]


async def test_changing_the_sku_to_one_already_taken_is_a_conflict_and_changes_nothing(store):
    first = await make_product(store, "SKU-1")
    second = await make_product(store, "SKU-2")
    with pytest.raises(Conflict):
        await store.update_product(second.id, {"sku": "SKU-1", "name": "clash"})
    assert await store.get_product(second.id) == second
    assert await store.get_product(first.id) == first


async def test_a_product_can_keep_its_own_sku_on_update(store):
    product = await make_product(store, "SKU-1")
    updated = await store.update_product(product.id, {"sku": "SKU-1"})
    assert updated.sku == "SKU-1"
    assert updated.version == 2


async def test_delete_removes_the_product_and_cascades_its_stock(store):
    product_id = await seed(store, "SKU-1", {"par-1": 5, "us-1": 2})
    keep_id = await seed(store, "SKU-2", {"par-1": 7})
    await store.delete_product(product_id)
    assert await store.get_product(product_id) is None
    with pytest.raises(NotFound):
        await store.get_inventory(product_id)
    assert await peek(store, "SELECT COUNT(*) AS n FROM stock WHERE product_id = $1", product_id) == 0
    # Warehouses and other products' stock are untouched.
    assert {w.id for w in await store.list_warehouses()} == {"par-1", "us-1"}
    assert (await level(store, keep_id, "par-1")).on_hand == 7


async def test_delete_with_the_current_expected_version_succeeds(store):
    product = await make_product(store, "SKU-1")
    await store.update_product(product.id, {"name": "v2"})
    await store.delete_product(product.id, expected_version=2)
    assert await store.get_product(product.id) is None


async def test_delete_with_a_stale_expected_version_raises_version_mismatch_and_keeps_the_product(store):
    product_id = await seed(store, "SKU-1", {"par-1": 5})
    await store.update_product(product_id, {"name": "v2"})
    with pytest.raises(VersionMismatch):
        await store.delete_product(product_id, expected_version=1)
    stored = await store.get_product(product_id)
    assert stored is not None and stored.version == 2
    assert (await level(store, product_id, "par-1")).on_hand == 5


async def test_deleting_an_unknown_product_raises_not_found(store):
    with pytest.raises(NotFound):
        await store.delete_product("00000000-0000-0000-0000-000000000000")
    with pytest.raises(NotFound):
        await store.delete_product("00000000-0000-0000-0000-000000000000", expected_version=1)


async def test_delete_is_refused_with_conflict_while_a_pending_reservation_holds_the_product(store):
    product_id = await seed(store, "SKU-1", {"par-1": 5})
    result = await reserve(store, line(product_id, 2))
    assert result.status == 201
    with pytest.raises(Conflict):
        await store.delete_product(product_id)
    assert await store.get_product(product_id) is not None
    assert (await level(store, product_id, "par-1")).reserved == 2
    # Once the reservation is settled the product can go.
    await store.release_reservation(result.body["id"])
    await store.delete_product(product_id)
    assert await store.get_product(product_id) is None


async def test_a_committed_reservation_does_not_block_deleting_the_product(store):
    product_id = await seed(store, "SKU-1", {"par-1": 5})
    result = await reserve(store, line(product_id, 2))
    await store.commit_reservation(result.body["id"])
    await store.delete_product(product_id)
    assert await store.get_product(product_id) is None


async def _pending_reservations_of_missing_products(store: SqlStore) -> int:
    return int(
        await peek(
            store,
            "SELECT COUNT(*) AS n FROM reservations r JOIN reservation_lines l ON l.reservation_id = r.id"
            " WHERE r.status = 'pending' AND NOT EXISTS (SELECT 1 FROM products p WHERE p.id = l.product_id)",
        )
    )


async def test_a_delete_racing_a_reservation_never_leaves_a_pending_reservation_on_a_deleted_product(
    store, database_url
):
    product_id = await seed(store, "SKU-1", {"par-1": 3})
    if store.backend == "sqlite":
        # SQLite runs one transaction at a time: any interleaving is one order or the other.
        deleted, reserved = await asyncio.gather(
            store.delete_product(product_id), reserve(store, line(product_id, 1)), return_exceptions=True
        )
    else:
        # Force the interleaving on PostgreSQL: the reservation is waiting to update the stock row
        # when the delete checks for pending reservations (none committed yet) and cascades.
        blocker = await asyncpg.connect(database_url)
        try:
            holding = blocker.transaction()
            await holding.start()
            await blocker.execute("SELECT 1 FROM stock WHERE product_id = $1 FOR UPDATE", product_id)
            reserving = asyncio.create_task(reserve(store, line(product_id, 1)))
            await wait_for_lock_waiters(database_url, 1)
            deleting = asyncio.create_task(store.delete_product(product_id))
            await wait_for_lock_waiters(database_url, 2)
            await holding.rollback()
            deleted, reserved = await asyncio.gather(deleting, reserving, return_exceptions=True)
        finally:
            await blocker.close()
    assert deleted is None or isinstance(deleted, Conflict), deleted
    assert isinstance(reserved, IdempotentResult), reserved
    # Either the delete lost (Conflict) or the reservation did (409): never both succeed.
    assert not (deleted is None and reserved.status == 201), (
        "the product was deleted under a pending reservation"
    )
    assert await _pending_reservations_of_missing_products(store) == 0


@pytest.mark.parametrize(
    "price",
    [
        Decimal("0.0001"),
        Decimal("0.01"),
        Decimal("0"),
        Decimal("19.99"),
        Decimal("12.5"),
        Decimal("1234.5678"),
        Decimal("99999999999.9999"),
        Decimal("922337203685477.5807"),  # the largest BIGINT of 1/10,000 units
    ],
)
async def test_prices_round_trip_exactly(store, price):
    created = await make_product(store, "SKU-P", price=price)
    assert created.price == price
    stored = await store.get_product(created.id)
    assert stored is not None and stored.price == price
    listed = await store.list_products(ProductQuery(price_min=price, price_max=price))
    assert [p.id for p in listed.items] == [created.id]
    assert listed.items[0].price == price
    other = await store.update_product(created.id, {"price": Decimal("1.00")})
    assert other.price == Decimal("1.00")
    back = await store.update_product(created.id, {"price": price})
    assert back.price == price
    stored = await store.get_product(created.id)
    assert stored is not None and stored.price == price


@pytest.mark.parametrize("price", [Decimal("922337203685477.5808"), Decimal("1e30")])
async def test_a_price_beyond_the_storable_range_is_refused_without_leaking_a_driver_error(store, price):
    # storage/db.py: "Drivers' exceptions never leave an adapter". A StoreError from the adapter or a
    # ValueError from validating the price are both fine; OverflowError / asyncpg.DataError are not.
    with pytest.raises((StoreError, ValueError)) as caught:
        await make_product(store, "SKU-HUGE", price=price)
    assert not type(caught.value).__module__.startswith(("asyncpg", "sqlite3"))
    assert (await store.list_products(ProductQuery())).items == []
    product = await make_product(store, "SKU-1")
    with pytest.raises((StoreError, ValueError)):
        await store.update_product(product.id, {"price": price})
    assert await store.get_product(product.id) == product


async def test_prices_always_show_at_least_cents(store):
    created = await make_product(store, "SKU-1", price=Decimal("12.5"))
    stored = await store.get_product(created.id)
    assert stored is not None
    assert str(stored.price) == "12.50"
    assert str((await make_product(store, "SKU-2", price=Decimal("0.0001"))).price) == "0.0001"


async def test_attributes_round_trip_as_json(store):
    attributes = {
        "colour": "blue",
        "sizes": ["S", "M", "L"],
        "weight_g": 350,
        "ratio": 0.25,
        "fragile": True,
        "recycled": False,
        "warranty": None,
        "nested": {"a": {"b": [1, {"c": "d"}]}},
        "unicode": "Grüße, 日本, emoji 🚀",
        "quote": 'it\'s "quoted" \\ back',
    }
    created = await make_product(store, "SKU-1", attributes=attributes)
    assert created.attributes == attributes
    stored = await store.get_product(created.id)
    assert stored is not None and stored.attributes == attributes
    updated = await store.update_product(created.id, {"attributes": {"only": "this"}})
    assert updated.attributes == {"only": "this"}
    stored = await store.get_product(created.id)
    assert stored is not None and stored.attributes == {"only": "this"}


async def test_empty_attributes_round_trip(store):
    created = await make_product(store, "SKU-1")
    stored = await store.get_product(created.id)
    assert created.attributes == {} and stored is not None and stored.attributes == {}


# -- list_products ------------------------------------------------------------------------------


async def _catalog_with_ties(store: SqlStore) -> list[Product]:
    """Products whose names, prices and creation times all have ties (only the id breaks them)."""
    specs = [
        ("apple", "5.00"),
        ("Zebra", "5.00"),
        ("apple", "1.00"),
        ("banana", "20.00"),
        ("Éclair", "5.00"),
        ("banana", "0.0001"),
        ("apple", "20.00"),
        ("cherry", "7.50"),
        ("Apple", "7.50"),
    ]
    products = [
        await make_product(store, f"SKU-{i}", name=name, price=Decimal(price))
        for i, (name, price) in enumerate(specs)
    ]
    # Force creation-time ties: three groups of three products created "in the same microsecond".
    base = now_us()
    for i, product in enumerate(products):
        await execute(store, "UPDATE products SET created_at = $1 WHERE id = $2", base + i % 3, product.id)
    return [p for p in [await store.get_product(p.id) for p in products] if p is not None]


@pytest.mark.parametrize("sort", SORTS)
async def test_every_sort_orders_rows_with_ties_broken_by_id(store, sort):
    products = await _catalog_with_ties(store)
    page = await store.list_products(ProductQuery(limit=100, sort=sort))
    assert [p.id for p in page.items] == expected_order(products, sort)
    assert page.next_after is None


async def test_name_sorting_is_by_code_point_on_every_backend(store):
    for name in ["b", "B", "a", "É", "Z", "é", "ab", "a b"]:
        await make_product(store, f"SKU-{name}", name=name)
    page = await store.list_products(ProductQuery(sort="name"))
    assert [p.name for p in page.items] == ["B", "Z", "a", "a b", "ab", "b", "É", "é"]


@pytest.mark.parametrize("sort", SORTS)
@pytest.mark.parametrize("limit", [1, 2, 4])
async def test_keyset_pagination_walks_every_row_exactly_once(store, sort, limit):
    products = await _catalog_with_ties(store)
    ids = await all_product_ids(store, sort, limit)
    assert ids == expected_order(products, sort)


async def test_a_page_that_ends_exactly_at_the_last_row_has_no_cursor(store):
    for i in range(3):
        await make_product(store, f"SKU-{i}")
    page = await store.list_products(ProductQuery(limit=3))
    assert len(page.items) == 3 and page.next_after is None
    page = await store.list_products(ProductQuery(limit=2))
    assert len(page.items) == 2 and page.next_after is not None
    last = await store.list_products(ProductQuery(limit=2, after=page.next_after))
    assert len(last.items) == 1 and last.next_after is None


async def test_an_empty_catalog_lists_nothing(store):
    page = await store.list_products(ProductQuery())
    assert page.items == [] and page.next_after is None


@pytest.mark.parametrize("sort", SORTS)
async def test_pagination_is_stable_under_inserts_between_page_fetches(store, sort):
    original = [
        await make_product(
            store, f"ORIG-{i:02}", name=f"name-{i % 6:02}", price=Decimal(f"{(i % 5) * 10}.00")
        )
        for i in range(15)
    ]
    original_ids = [p.id for p in (await store.list_products(ProductQuery(limit=100, sort=sort))).items]
    assert sorted(original_ids) == sorted(p.id for p in original)

    seen: list[str] = []
    after = None
    inserted = 0
    while True:
        page = await store.list_products(ProductQuery(limit=4, sort=sort, after=after))
        seen.extend(p.id for p in page.items)
        if page.next_after is None:
            break
        after = page.next_after
        # New rows that sort before, among and after the rows already seen.
        for name, price in [("aaa", "0.00"), (f"name-{inserted % 6:02}", "20.00"), ("zzz", "999.00")]:
            await make_product(store, f"NEW-{inserted:03}", name=name, price=Decimal(price))
            inserted += 1
    counts = Counter(seen)
    assert [i for i, n in counts.items() if n > 1] == [], "a row was repeated"
    assert [i for i in original_ids if i not in counts] == [], "a row of the original set was skipped"
    # The original rows keep their relative order.
    assert [i for i in seen if i in set(original_ids)] == original_ids
    assert inserted > 0


async def test_listing_filters_by_category_status_and_price_range(store):
    mug = await make_product(store, "MUG", category="kitchen", price=Decimal("5.00"))
    pan = await make_product(store, "PAN", category="kitchen", price=Decimal("25.00"))
    old = await make_product(
        store, "OLD", category="kitchen", price=Decimal("15.00"), status=ProductStatus.DISCONTINUED
    )
    ball = await make_product(store, "BALL", category="toys", price=Decimal("15.00"))
    soon = await make_product(
        store, "SOON", category="toys", price=Decimal("15.0001"), status=ProductStatus.PREORDER
    )

    async def ids(**filters: Any) -> set[str]:
        return set(await all_product_ids(store, "name", 2, **filters))

    assert await ids(category="kitchen") == {mug.id, pan.id, old.id}
    assert await ids(category="toys") == {ball.id, soon.id}
    assert await ids(category="garden") == set()
    assert await ids(status=ProductStatus.DISCONTINUED) == {old.id}
    assert await ids(status=ProductStatus.PREORDER) == {soon.id}
    assert await ids(status=ProductStatus.ACTIVE) == {mug.id, pan.id, ball.id}
    assert await ids(price_min=Decimal("15.00")) == {pan.id, old.id, ball.id, soon.id}
    assert await ids(price_max=Decimal("15.00")) == {mug.id, old.id, ball.id}
    assert await ids(price_min=Decimal("15.00"), price_max=Decimal("15.00")) == {old.id, ball.id}
    assert await ids(price_min=Decimal("15.0001"), price_max=Decimal("24.9999")) == {soon.id}
    assert await ids(category="kitchen", status=ProductStatus.ACTIVE, price_max=Decimal("10")) == {mug.id}


async def test_in_stock_region_lists_only_products_with_available_units_in_that_region(store):
    in_eu = await seed(store, "IN-EU", {"par-1": 5})
    only_us = await seed(store, "ONLY-US", {"us-1": 5})
    reserved_out = await seed(store, "RESERVED-OUT", {"par-1": 2})
    assert (await reserve(store, line(reserved_out, 2))).status == 201
    zero = await seed(store, "ZERO", {"par-1": 0})
    await make_product(store, "NO-STOCK")
    partly = await seed(store, "PARTLY", {"par-1": 3, "par-2": 0})
    assert (await reserve(store, line(partly, 2, warehouse_id="par-1"))).status == 201

    eu = set(await all_product_ids(store, "oldest", 2, in_stock_region="eu"))
    assert eu == {in_eu, partly}
    assert zero not in eu
    assert set(await all_product_ids(store, "oldest", 2, in_stock_region="us")) == {only_us}
    assert await all_product_ids(store, "oldest", 2, in_stock_region="apac") == []


@pytest.mark.parametrize(
    ("sort", "cursor_value"),
    [
        ("name", 42),
        ("-name", 42),
        ("price", "10.00"),
        ("-price", "cheap"),
        ("newest", "yesterday"),
        ("oldest", "2024-01-01"),
        ("price", True),
        ("newest", False),
        ("price", 2**63),
        ("-price", -(2**63) - 1),
        ("oldest", 10**30),
        ("name", None),
        ("price", 10.5),
    ],
)
async def test_a_cursor_value_of_the_wrong_type_raises_value_error(store, sort, cursor_value):
    await make_product(store, "SKU-1")
    with pytest.raises(ValueError):
        await store.list_products(ProductQuery(sort=sort, after=(cursor_value, "some-id")))


async def test_a_cursor_with_a_non_text_id_raises_value_error(store):
    with pytest.raises(ValueError):
        await store.list_products(ProductQuery(sort="price", after=(100, 7)))


# -- warehouses ---------------------------------------------------------------------------------


async def test_a_created_warehouse_reads_back(store):
    created = await make_warehouse(store, "par-1", "eu")
    assert created == Warehouse("par-1", "eu", "Warehouse par-1")
    assert await store.get_warehouse("par-1") == created
    assert await store.get_warehouse("nowhere") is None


async def test_a_duplicate_warehouse_id_is_a_conflict(store):
    await make_warehouse(store, "par-1", "eu")
    with pytest.raises(Conflict):
        await make_warehouse(store, "par-1", "us")
    assert await store.get_warehouse("par-1") == Warehouse("par-1", "eu", "Warehouse par-1")


async def test_warehouses_are_listed_in_id_order_and_filtered_by_region(store):
    for wid, region in [("us-2", "us"), ("par-1", "eu"), ("ber-1", "eu"), ("us-1", "us")]:
        await make_warehouse(store, wid, region)
    assert [w.id for w in await store.list_warehouses()] == ["ber-1", "par-1", "us-1", "us-2"]
    assert [w.id for w in await store.list_warehouses("eu")] == ["ber-1", "par-1"]
    assert [w.id for w in await store.list_warehouses("us")] == ["us-1", "us-2"]
    assert await store.list_warehouses("apac") == []


# -- stock --------------------------------------------------------------------------------------


async def test_set_stock_creates_the_row_then_overwrites_it_one_version_per_change(store):
    product = await make_product(store, "SKU-1")
    await make_warehouse(store, "par-1", "eu")
    first = await store.set_stock(product.id, "par-1", 10)
    assert (first.on_hand, first.reserved, first.available, first.version) == (10, 0, 10, 1)
    assert (first.product_id, first.warehouse_id, first.region) == (product.id, "par-1", "eu")
    second = await store.set_stock(product.id, "par-1", 4)
    assert (second.on_hand, second.version) == (4, 2)
    same = await store.set_stock(product.id, "par-1", 4)
    assert (same.on_hand, same.version) == (4, 3)
    assert await level(store, product.id, "par-1") == same


async def test_adjust_stock_adds_and_subtracts_one_version_per_change(store):
    product_id = await seed(store, "SKU-1", {"par-1": 10})
    up = await store.adjust_stock(product_id, "par-1", 5)
    assert (up.on_hand, up.version) == (15, 2)
    down = await store.adjust_stock(product_id, "par-1", -12)
    assert (down.on_hand, down.available, down.version) == (3, 3, 3)
    to_zero = await store.adjust_stock(product_id, "par-1", -3)
    assert (to_zero.on_hand, to_zero.version) == (0, 4)
    assert await level(store, product_id, "par-1") == to_zero


async def test_adjust_stock_creates_the_first_row(store):
    product = await make_product(store, "SKU-1")
    await make_warehouse(store, "par-1")
    created = await store.adjust_stock(product.id, "par-1", 7)
    assert (created.on_hand, created.reserved, created.version) == (7, 0, 1)
    assert [d.version for d in await deltas(store)] == [1]


async def test_a_negative_first_adjustment_raises_insufficient_stock_and_creates_nothing(store):
    product = await make_product(store, "SKU-1")
    await make_warehouse(store, "par-1")
    with pytest.raises(InsufficientStock):
        await store.adjust_stock(product.id, "par-1", -1)
    assert await store.get_inventory(product.id) == []
    assert await deltas(store) == []


async def test_adjusting_on_hand_below_zero_raises_insufficient_stock_and_changes_nothing(store):
    product_id = await seed(store, "SKU-1", {"par-1": 3})
    before = await level(store, product_id, "par-1")
    outbox_before = await deltas(store)
    with pytest.raises(InsufficientStock):
        await store.adjust_stock(product_id, "par-1", -4)
    assert await level(store, product_id, "par-1") == before
    assert await deltas(store) == outbox_before


async def test_setting_stock_below_reserved_raises_insufficient_stock_and_changes_nothing(store):
    product_id = await seed(store, "SKU-1", {"par-1": 10})
    assert (await reserve(store, line(product_id, 6))).status == 201
    before = await level(store, product_id, "par-1")
    outbox_before = await deltas(store)
    with pytest.raises(InsufficientStock):
        await store.set_stock(product_id, "par-1", 5)
    assert await level(store, product_id, "par-1") == before
    assert await deltas(store) == outbox_before
    # Exactly the reserved quantity is allowed: nothing left available.
    at_reserved = await store.set_stock(product_id, "par-1", 6)
    assert (at_reserved.on_hand, at_reserved.reserved, at_reserved.available) == (6, 6, 0)
    assert at_reserved.version == before.version + 1


async def test_adjusting_stock_below_reserved_raises_insufficient_stock_and_changes_nothing(store):
    product_id = await seed(store, "SKU-1", {"par-1": 10})
    assert (await reserve(store, line(product_id, 6))).status == 201
    before = await level(store, product_id, "par-1")
    outbox_before = await deltas(store)
    with pytest.raises(InsufficientStock):
        await store.adjust_stock(product_id, "par-1", -5)
    assert await level(store, product_id, "par-1") == before
    assert await deltas(store) == outbox_before
    at_reserved = await store.adjust_stock(product_id, "par-1", -4)
    assert (at_reserved.on_hand, at_reserved.available) == (6, 0)


async def test_stock_operations_on_an_unknown_product_or_warehouse_raise_not_found(store):
    product_id = await seed(store, "SKU-1", {"par-1": 1})
    missing = "00000000-0000-0000-0000-000000000000"
    with pytest.raises(NotFound):
        await store.set_stock(missing, "par-1", 5)
    with pytest.raises(NotFound):
        await store.set_stock(product_id, "nowhere", 5)
    with pytest.raises(NotFound):
        await store.adjust_stock(missing, "par-1", 5)
    with pytest.raises(NotFound):
        await store.adjust_stock(product_id, "nowhere", 5)
    with pytest.raises(NotFound):
        await store.get_inventory(missing)
    assert [s.warehouse_id for s in await store.get_inventory(product_id)] == ["par-1"]
    assert len(await deltas(store)) == 1


async def test_get_inventory_lists_every_warehouse_in_id_order(store):
    product_id = await seed(store, "SKU-1", {"par-2": 1, "us-1": 2, "ber-1": 3})
    inventory = await store.get_inventory(product_id)
    assert [(s.warehouse_id, s.region, s.on_hand) for s in inventory] == [
        ("ber-1", "eu", 3),
        ("par-2", "eu", 1),
        ("us-1", "us", 2),
    ]
    assert await store.get_inventory((await make_product(store, "EMPTY")).id) == []


async def test_derived_stock_status_follows_available_units_and_the_low_stock_threshold(store):
    product = await make_product(store, "SKU-1", low_stock_threshold=3)
    await make_warehouse(store, "par-1")
    assert (await store.set_stock(product.id, "par-1", 10)).status is StockStatus.IN_STOCK
    assert (await store.set_stock(product.id, "par-1", 4)).status is StockStatus.IN_STOCK
    assert (await store.set_stock(product.id, "par-1", 3)).status is StockStatus.LOW_STOCK
    assert (await store.set_stock(product.id, "par-1", 1)).status is StockStatus.LOW_STOCK
    assert (await store.set_stock(product.id, "par-1", 0)).status is StockStatus.OUT_OF_STOCK
    # Reserved units do not count as available.
    await store.set_stock(product.id, "par-1", 8)
    assert (await reserve(store, line(product.id, 5))).status == 201
    assert (await level(store, product.id, "par-1")).status is StockStatus.LOW_STOCK
    assert (await reserve(store, line(product.id, 3))).status == 201
    assert (await level(store, product.id, "par-1")).status is StockStatus.OUT_OF_STOCK


async def test_a_zero_threshold_never_reports_low_stock(store):
    product = await make_product(store, "SKU-1", low_stock_threshold=0)
    await make_warehouse(store, "par-1")
    assert (await store.set_stock(product.id, "par-1", 1)).status is StockStatus.IN_STOCK
    assert (await store.set_stock(product.id, "par-1", 0)).status is StockStatus.OUT_OF_STOCK


@pytest.mark.parametrize(
    ("product_status", "stock_status"),
    [(ProductStatus.PREORDER, StockStatus.PREORDER), (ProductStatus.DISCONTINUED, StockStatus.DISCONTINUED)],
)
async def test_derived_stock_status_reflects_preorder_and_discontinued_products(
    store, product_status, stock_status
):
    product = await make_product(store, "SKU-1", status=product_status)
    await make_warehouse(store, "par-1")
    assert (await store.set_stock(product.id, "par-1", 100)).status is stock_status
    assert (await store.set_stock(product.id, "par-1", 0)).status is stock_status
    assert (await level(store, product.id, "par-1")).status is stock_status


# -- reservations -------------------------------------------------------------------------------


async def test_a_reservation_reserves_every_line(store):
    a = await seed(store, "A", {"par-1": 5})
    b = await seed(store, "B", {"par-1": 5, "us-1": 5})
    before = now_us()
    result = await reserve(store, line(b, 2, warehouse_id="us-1"), line(a, 3), owner="alice", ttl=60)
    assert result.status == 201 and result.replayed is False
    body = result.body
    assert body["owner"] == "alice" and body["status"] == "pending"
    assert body["lines"] == [
        {"product_id": b, "warehouse_id": "us-1", "quantity": 2},
        {"product_id": a, "warehouse_id": "par-1", "quantity": 3},
    ]
    assert before <= body["created_at"] <= now_us()
    assert body["expires_at"] == body["created_at"] + 60_000_000
    assert (await level(store, a, "par-1")).reserved == 3
    assert (await level(store, b, "us-1")).reserved == 2
    assert (await level(store, b, "par-1")).reserved == 0

    stored = await store.get_reservation(body["id"])
    assert stored is not None
    assert stored.status is ReservationStatus.PENDING
    assert [(ln.product_id, ln.warehouse_id, ln.quantity) for ln in stored.lines] == [
        (b, "us-1", 2),
        (a, "par-1", 3),
    ]
    assert (stored.owner, stored.created_at, stored.expires_at) == (
        "alice",
        body["created_at"],
        body["expires_at"],
    )


async def test_a_reservation_reserves_every_line_or_none(store):
    a = await seed(store, "A", {"par-1": 5})
    b = await seed(store, "B", {"par-1": 1})
    c = await seed(store, "C", {"par-1": 5})
    before = {p: await level(store, p, "par-1") for p in (a, b, c)}
    outbox_before = await store.read_outbox()

    result = await reserve(store, line(a, 2), line(b, 2), line(c, 2))
    assert result.status == 409
    assert result.body["code"] == "insufficient_stock"
    assert result.body["line"] == 1 and result.body["product_id"] == b
    for p in (a, b, c):
        assert await level(store, p, "par-1") == before[p]
    assert await store.read_outbox() == outbox_before
    assert await peek(store, "SELECT COUNT(*) AS n FROM reservations") == 0
    assert await peek(store, "SELECT COUNT(*) AS n FROM reservation_lines") == 0


async def test_a_reservation_of_an_unknown_product_is_refused_with_404_and_reserves_nothing(store):
    a = await seed(store, "A", {"par-1": 5})
    missing = "00000000-0000-0000-0000-000000000000"
    result = await reserve(store, line(a, 1), line(missing, 1))
    assert result.status == 404
    assert result.body["code"] == "product_not_found"
    assert result.body["line"] == 1 and result.body["product_id"] == missing
    assert (await level(store, a, "par-1")).reserved == 0
    assert len(await store.read_outbox()) == 1


async def test_a_reservation_of_a_discontinued_product_is_refused(store):
    product_id = await seed(store, "SKU-1", {"par-1": 5})
    await store.update_product(product_id, {"status": ProductStatus.DISCONTINUED})
    result = await reserve(store, line(product_id, 1))
    assert result.status == 409
    assert (await level(store, product_id, "par-1")).reserved == 0


async def test_a_line_with_an_explicit_warehouse_takes_stock_only_from_that_warehouse(store):
    product_id = await seed(store, "SKU-1", {"par-1": 2, "par-2": 50})
    result = await reserve(store, line(product_id, 2, warehouse_id="par-1"))
    assert result.status == 201
    assert result.body["lines"][0]["warehouse_id"] == "par-1"
    assert (await level(store, product_id, "par-1")).reserved == 2
    assert (await level(store, product_id, "par-2")).reserved == 0
    # That warehouse is now empty: an explicit line does not fall back to another one.
    refused = await reserve(store, line(product_id, 1, warehouse_id="par-1"))
    assert refused.status == 409
    assert (await level(store, product_id, "par-2")).reserved == 0
    # A warehouse without a stock row for the product cannot serve it either.
    await make_warehouse(store, "par-3")
    assert (await reserve(store, line(product_id, 1, warehouse_id="par-3"))).status == 409


async def test_a_line_with_a_region_takes_stock_only_from_that_region(store):
    product_id = await seed(store, "SKU-1", {"par-1": 3, "us-1": 100, "us-2": 1})
    result = await reserve(store, line(product_id, 3, region="eu"))
    assert result.status == 201
    assert result.body["lines"][0]["warehouse_id"] == "par-1"
    refused = await reserve(store, line(product_id, 1, region="eu"))
    assert refused.status == 409
    assert (await level(store, product_id, "us-1")).reserved == 0
    assert (await reserve(store, line(product_id, 1, region="apac"))).status == 409


async def test_a_line_without_a_warehouse_takes_the_one_with_most_available(store):
    product_id = await seed(store, "SKU-1", {"a-1": 4, "b-1": 9, "c-1": 6})
    chosen = []
    for _ in range(4):
        result = await reserve(store, line(product_id, 3))
        assert result.status == 201
        chosen.append(result.body["lines"][0]["warehouse_id"])
    # available: a4 b9 c6 -> b (9) -> b6 c6 tie, by id -> b (6) -> c (6) -> a4 b3 c3 -> a
    assert chosen == ["b-1", "b-1", "c-1", "a-1"]
    levels = {s.warehouse_id: s.available for s in await store.get_inventory(product_id)}
    assert levels == {"a-1": 1, "b-1": 3, "c-1": 3}


async def test_an_automatic_line_is_not_split_across_warehouses(store):
    product_id = await seed(store, "SKU-1", {"par-1": 3, "par-2": 3})
    result = await reserve(store, line(product_id, 5))
    assert result.status == 409
    assert all(s.reserved == 0 for s in await store.get_inventory(product_id))


async def test_two_lines_for_one_product_are_both_reserved(store):
    product_id = await seed(store, "SKU-1", {"par-1": 5})
    result = await reserve(store, line(product_id, 2), line(product_id, 3))
    assert result.status == 201
    assert [ln["quantity"] for ln in result.body["lines"]] == [2, 3]
    assert (await level(store, product_id, "par-1")).available == 0
    assert (await reserve(store, line(product_id, 3), line(product_id, 3), key="k2")).status == 409


async def test_an_idempotent_retry_replays_the_same_body_and_reserves_nothing_more(store):
    product_id = await seed(store, "SKU-1", {"par-1": 10})
    first = await reserve(store, line(product_id, 3), key="order-1", request_hash="h")
    assert first.status == 201 and first.replayed is False
    after_first = await level(store, product_id, "par-1")
    outbox_after_first = await store.read_outbox()
    for _ in range(3):
        retry = await reserve(store, line(product_id, 3), key="order-1", request_hash="h")
        assert retry.replayed is True
        assert retry.status == 201
        assert retry.body == first.body
    assert await level(store, product_id, "par-1") == after_first
    assert await store.read_outbox() == outbox_after_first
    assert await peek(store, "SELECT COUNT(*) AS n FROM reservations") == 1


async def test_a_retry_is_replayed_even_after_the_reservation_moved_on(store):
    product_id = await seed(store, "SKU-1", {"par-1": 10})
    first = await reserve(store, line(product_id, 3), key="order-1")
    await store.commit_reservation(first.body["id"])
    retry = await reserve(store, line(product_id, 3), key="order-1")
    assert (retry.status, retry.body, retry.replayed) == (201, first.body, True)
    assert (await level(store, product_id, "par-1")).on_hand == 7


async def test_reusing_a_key_with_a_different_request_hash_raises_idempotency_mismatch(store):
    product_id = await seed(store, "SKU-1", {"par-1": 10})
    await reserve(store, line(product_id, 3), key="order-1", request_hash="h1")
    before = await level(store, product_id, "par-1")
    with pytest.raises(IdempotencyMismatch):
        await reserve(store, line(product_id, 4), key="order-1", request_hash="h2")
    assert await level(store, product_id, "par-1") == before
    # The original outcome is still there for a true retry.
    assert (await reserve(store, line(product_id, 3), key="order-1", request_hash="h1")).replayed is True


async def test_the_same_key_under_another_owner_is_independent(store):
    product_id = await seed(store, "SKU-1", {"par-1": 10})
    alice = await reserve(store, line(product_id, 3), owner="alice", key="order-1", request_hash="h1")
    bob = await reserve(store, line(product_id, 4), owner="bob", key="order-1", request_hash="h2")
    assert alice.status == bob.status == 201
    assert not alice.replayed and not bob.replayed
    assert alice.body["id"] != bob.body["id"]
    assert bob.body["owner"] == "bob"
    assert (await level(store, product_id, "par-1")).reserved == 7


async def test_a_failed_outcome_is_replayed_for_the_same_key(store):
    product_id = await seed(store, "SKU-1", {"par-1": 1})
    failed = await reserve(store, line(product_id, 5), key="order-1")
    assert failed.status == 409 and failed.replayed is False
    # Even once the stock would allow it, the stored failure is what a retry gets.
    await store.set_stock(product_id, "par-1", 100)
    retry = await reserve(store, line(product_id, 5), key="order-1")
    assert (retry.status, retry.body, retry.replayed) == (409, failed.body, True)
    assert (await level(store, product_id, "par-1")).reserved == 0
    assert await peek(store, "SELECT COUNT(*) AS n FROM reservations") == 0


async def test_a_404_outcome_is_replayed_for_the_same_key(store):
    missing = "00000000-0000-0000-0000-000000000000"
    failed = await reserve(store, line(missing, 1), key="order-1")
    retry = await reserve(store, line(missing, 1), key="order-1")
    assert (failed.status, failed.replayed) == (404, False)
    assert (retry.status, retry.body, retry.replayed) == (404, failed.body, True)


async def test_committing_moves_the_reserved_units_out_of_on_hand(store):
    product_id = await seed(store, "SKU-1", {"par-1": 10, "us-1": 4})
    result = await reserve(store, line(product_id, 3, warehouse_id="par-1"), line(product_id, 4, region="us"))
    committed = await store.commit_reservation(result.body["id"])
    assert committed.status is ReservationStatus.COMMITTED
    assert committed.id == result.body["id"] and len(committed.lines) == 2
    par = await level(store, product_id, "par-1")
    us = await level(store, product_id, "us-1")
    assert (par.on_hand, par.reserved, par.available) == (7, 0, 7)
    assert (us.on_hand, us.reserved, us.available, us.status) == (0, 0, 0, StockStatus.OUT_OF_STOCK)
    stored = await store.get_reservation(result.body["id"])
    assert stored is not None and stored.status is ReservationStatus.COMMITTED


async def test_releasing_returns_the_units_to_available(store):
    product_id = await seed(store, "SKU-1", {"par-1": 10})
    result = await reserve(store, line(product_id, 3))
    released = await store.release_reservation(result.body["id"])
    assert released.status is ReservationStatus.RELEASED
    after = await level(store, product_id, "par-1")
    assert (after.on_hand, after.reserved, after.available) == (10, 0, 10)
    stored = await store.get_reservation(result.body["id"])
    assert stored is not None and stored.status is ReservationStatus.RELEASED


async def test_committing_twice_is_a_no_op(store):
    product_id = await seed(store, "SKU-1", {"par-1": 10})
    result = await reserve(store, line(product_id, 3))
    first = await store.commit_reservation(result.body["id"])
    after_first = await level(store, product_id, "par-1")
    outbox_after_first = await store.read_outbox()
    second = await store.commit_reservation(result.body["id"])
    assert second.status is ReservationStatus.COMMITTED
    assert second == first
    assert await level(store, product_id, "par-1") == after_first
    assert after_first.on_hand == 7
    assert await store.read_outbox() == outbox_after_first


async def test_releasing_twice_is_a_no_op(store):
    product_id = await seed(store, "SKU-1", {"par-1": 10})
    result = await reserve(store, line(product_id, 3))
    await store.release_reservation(result.body["id"])
    after_first = await level(store, product_id, "par-1")
    again = await store.release_reservation(result.body["id"])
    assert again.status is ReservationStatus.RELEASED
    assert await level(store, product_id, "par-1") == after_first
    assert after_first.reserved == 0 and after_first.on_hand == 10


async def test_releasing_a_committed_reservation_raises_invalid_transition(store):
    product_id = await seed(store, "SKU-1", {"par-1": 10})
    result = await reserve(store, line(product_id, 3))
    await store.commit_reservation(result.body["id"])
    before = await level(store, product_id, "par-1")
    with pytest.raises(InvalidTransition):
        await store.release_reservation(result.body["id"])
    assert await level(store, product_id, "par-1") == before
    stored = await store.get_reservation(result.body["id"])
    assert stored is not None and stored.status is ReservationStatus.COMMITTED


async def test_committing_a_released_reservation_raises_invalid_transition(store):
    product_id = await seed(store, "SKU-1", {"par-1": 10})
    result = await reserve(store, line(product_id, 3))
    await store.release_reservation(result.body["id"])
    with pytest.raises(InvalidTransition):
        await store.commit_reservation(result.body["id"])
    after = await level(store, product_id, "par-1")
    assert (after.on_hand, after.reserved) == (10, 0)


async def test_an_unknown_reservation_is_not_found(store):
    missing = "00000000-0000-0000-0000-000000000000"
    assert await store.get_reservation(missing) is None
    with pytest.raises(NotFound):
        await store.commit_reservation(missing)
    with pytest.raises(NotFound):
        await store.release_reservation(missing)


async def test_an_expired_reservation_returns_its_stock(store):
    product_id = await seed(store, "SKU-1", {"par-1": 10})
    short = await reserve(store, line(product_id, 3), ttl=1)
    long = await reserve(store, line(product_id, 2), ttl=600)
    assert await store.expire_reservations() == []
    assert (await level(store, product_id, "par-1")).reserved == 5
    await asyncio.sleep(1.1)
    expired = await store.expire_reservations()
    assert [r.id for r in expired] == [short.body["id"]]
    assert expired[0].status is ReservationStatus.EXPIRED
    after = await level(store, product_id, "par-1")
    assert (after.on_hand, after.reserved, after.available) == (10, 2, 8)
    assert (await store.outbox_backlog())[0] == len(await store.read_outbox())
    assert (await deltas(store))[-1].reserved == 2
    stored = await store.get_reservation(short.body["id"])
    assert stored is not None and stored.status is ReservationStatus.EXPIRED
    still = await store.get_reservation(long.body["id"])
    assert still is not None and still.status is ReservationStatus.PENDING
    # Nothing more to do on the next run.
    assert await store.expire_reservations() == []


async def test_an_expired_reservation_cannot_be_committed_or_released(store):
    product_id = await seed(store, "SKU-1", {"par-1": 10})
    result = await reserve(store, line(product_id, 3), ttl=1)
    await asyncio.sleep(1.1)
    assert [r.id for r in await store.expire_reservations()] == [result.body["id"]]
    before = await level(store, product_id, "par-1")
    with pytest.raises(InvalidTransition):
        await store.commit_reservation(result.body["id"])
    with pytest.raises(InvalidTransition):
        await store.release_reservation(result.body["id"])
    assert await level(store, product_id, "par-1") == before
    assert (before.on_hand, before.reserved) == (10, 0)


async def test_expiry_leaves_committed_and_released_reservations_alone(store):
    product_id = await seed(store, "SKU-1", {"par-1": 10})
    committed = await reserve(store, line(product_id, 3), ttl=1)
    released = await reserve(store, line(product_id, 2), ttl=1)
    await store.commit_reservation(committed.body["id"])
    await store.release_reservation(released.body["id"])
    await asyncio.sleep(1.1)  # both are past their expiry time now
    assert await store.expire_reservations() == []
    after = await level(store, product_id, "par-1")
    assert (after.on_hand, after.reserved) == (7, 0)


async def test_a_reservation_past_its_expiry_cannot_be_committed_before_the_sweep(store):
    product_id = await seed(store, "SKU-1", {"par-1": 10})
    overdue = await reserve(store, line(product_id, 3), ttl=0)
    with pytest.raises(InvalidTransition) as caught:
        await store.commit_reservation(overdue.body["id"])
    assert caught.value.details["current_status"] == "expired"
    assert (await level(store, product_id, "par-1")).on_hand == 10
    assert [r.id for r in await store.expire_reservations()] == [overdue.body["id"]]
    assert (await level(store, product_id, "par-1")).reserved == 0


async def test_expire_reservations_respects_its_limit(store):
    product_id = await seed(store, "SKU-1", {"par-1": 10})
    ids = [(await reserve(store, line(product_id, 1), ttl=0)).body["id"] for _ in range(5)]
    first = await store.expire_reservations(limit=2)
    second = await store.expire_reservations(limit=2)
    third = await store.expire_reservations(limit=2)
    assert [len(first), len(second), len(third)] == [2, 2, 1]
    assert sorted(r.id for r in first + second + third) == sorted(ids)
    assert (await level(store, product_id, "par-1")).reserved == 0


async def test_expiry_works_from_a_fresh_store_opened_on_the_same_database(store, database_url):
    product_id = await seed(store, "SKU-1", {"par-1": 10})
    result = await reserve(store, line(product_id, 4), ttl=1)
    await asyncio.sleep(1.1)
    restarted = open_store(database_url)
    await restarted.open()
    try:
        assert await restarted.migrate() == []
        expired = await restarted.expire_reservations()
        assert [r.id for r in expired] == [result.body["id"]]
        assert (await level(restarted, product_id, "par-1")).reserved == 0
    finally:
        await restarted.close()
    after = await level(store, product_id, "par-1")
    assert (after.on_hand, after.reserved) == (10, 0)
    stored = await store.get_reservation(result.body["id"])
    assert stored is not None and stored.status is ReservationStatus.EXPIRED


# -- concurrency --------------------------------------------------------------------------------


async def test_two_hundred_concurrent_single_unit_reservations_sell_exactly_fifty(store):
    product_id = await seed(store, "SKU-1", {"par-1": 50})
    results = await asyncio.gather(
        *(reserve(store, line(product_id, 1), owner=f"user-{i}", key=f"k-{i}") for i in range(200))
    )
    statuses = Counter(r.status for r in results)
    assert statuses == {201: 50, 409: 150}
    after = await level(store, product_id, "par-1")
    assert (after.on_hand, after.reserved, after.available) == (50, 50, 0)
    assert after.version == 51
    assert await peek(store, "SELECT COUNT(*) AS n FROM reservations") == 50
    assert [d.version for d in await deltas(store)] == list(range(1, 52))


async def test_concurrent_reservations_across_warehouses_never_oversell(store):
    product_id = await seed(store, "SKU-1", {"par-1": 10, "par-2": 7, "us-1": 5})
    results = await asyncio.gather(*(reserve(store, line(product_id, 2), key=f"k-{i}") for i in range(40)))
    assert Counter(r.status for r in results)[201] == 5 + 3 + 2
    inventory = {s.warehouse_id: s for s in await store.get_inventory(product_id)}
    assert {w: s.reserved for w, s in inventory.items()} == {"par-1": 10, "par-2": 6, "us-1": 4}
    assert all(s.available >= 0 for s in inventory.values())


async def test_concurrent_multi_line_reservations_in_opposite_orders_never_oversell(store):
    a = await seed(store, "A", {"par-1": 30})
    b = await seed(store, "B", {"par-1": 30})
    results = await asyncio.gather(
        *(
            reserve(store, *((line(a), line(b)) if i % 2 else (line(b), line(a))), key=f"k-{i}")
            for i in range(80)
        )
    )
    assert Counter(r.status for r in results) == {201: 30, 409: 50}
    assert (await level(store, a, "par-1")).reserved == 30
    assert (await level(store, b, "par-1")).reserved == 30


async def test_concurrent_reservations_with_one_idempotency_key_produce_one_reservation(store):
    product_id = await seed(store, "SKU-1", {"par-1": 100})
    results = await asyncio.gather(
        *(reserve(store, line(product_id, 3), key="same-key", request_hash="h") for _ in range(30))
    )
    assert {r.status for r in results} == {201}
    assert len({r.body["id"] for r in results}) == 1
    assert [r.replayed for r in results].count(False) == 1
    assert all(r.body == results[0].body for r in results)
    assert await peek(store, "SELECT COUNT(*) AS n FROM reservations") == 1
    assert (await level(store, product_id, "par-1")).reserved == 3


async def test_concurrent_adjustments_are_all_applied_with_gapless_versions(store):
    product_id = await seed(store, "SKU-1", {"par-1": 0})
    levels = await asyncio.gather(*(store.adjust_stock(product_id, "par-1", 1) for _ in range(100)))
    after = await level(store, product_id, "par-1")
    assert after.on_hand == 100
    assert after.version == 101
    assert sorted(s.version for s in levels) == list(range(2, 102))
    outbox = await deltas(store)
    assert [d.version for d in outbox] == list(range(1, 102))
    assert [d.on_hand for d in outbox] == list(range(0, 101))


async def test_concurrent_commits_and_releases_settle_each_reservation_exactly_once(store):
    product_id = await seed(store, "SKU-1", {"par-1": 100})
    ids = [(await reserve(store, line(product_id, 2), key=f"k-{i}")).body["id"] for i in range(20)]
    calls = []
    for rid in ids:
        calls += [
            store.commit_reservation(rid),
            store.release_reservation(rid),
            store.commit_reservation(rid),
        ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(not isinstance(r, Exception) or isinstance(r, InvalidTransition) for r in results), results
    final = {rid: (await store.get_reservation(rid)).status for rid in ids}  # type: ignore[union-attr]
    committed = sum(1 for s in final.values() if s is ReservationStatus.COMMITTED)
    released = sum(1 for s in final.values() if s is ReservationStatus.RELEASED)
    assert committed + released == 20
    after = await level(store, product_id, "par-1")
    assert (after.on_hand, after.reserved) == (100 - 2 * committed, 0)
    assert after.version == 1 + 20 + 20


async def test_an_expiry_racing_a_commit_settles_the_reservation_once(store):
    product_id = await seed(store, "SKU-1", {"par-1": 100})
    ids = [(await reserve(store, line(product_id, 1), key=f"k-{i}", ttl=0)).body["id"] for i in range(20)]
    results = await asyncio.gather(
        store.expire_reservations(), *(store.commit_reservation(rid) for rid in ids), return_exceptions=True
    )
    expired_ids = {r.id for r in results[0]}  # type: ignore[union-attr]
    for rid, outcome in zip(ids, results[1:], strict=True):
        assert (rid in expired_ids) == isinstance(outcome, InvalidTransition), (rid, outcome)
    final = [(await store.get_reservation(rid)).status for rid in ids]  # type: ignore[union-attr]
    committed = final.count(ReservationStatus.COMMITTED)
    assert committed + final.count(ReservationStatus.EXPIRED) == 20
    assert len(expired_ids) == 20 - committed
    after = await level(store, product_id, "par-1")
    assert (after.on_hand, after.reserved) == (100 - committed, 0)


async def test_concurrent_expiry_sweeps_report_each_reservation_once(store):
    product_id = await seed(store, "SKU-1", {"par-1": 100})
    ids = [(await reserve(store, line(product_id, 1), key=f"k-{i}", ttl=0)).body["id"] for i in range(40)]
    sweeps = await asyncio.gather(*(store.expire_reservations() for _ in range(4)))
    reported = [r.id for sweep in sweeps for r in sweep]
    assert sorted(reported) == sorted(ids), "a reservation was reported expired by more than one sweep"
    after = await level(store, product_id, "par-1")
    assert (after.on_hand, after.reserved, after.version) == (100, 0, 1 + 40 + 40)


async def test_a_cancelled_operation_leaves_the_store_usable(store):
    # A request handler may be cancelled at any await (client gone, timeout). Block the event loop
    # briefly so that the driver has started the operation before the cancellation lands.
    product = await make_product(store, "SKU-1")
    for i in range(3):
        task = asyncio.create_task(store.update_product(product.id, {"name": f"N{i}"}))
        await asyncio.sleep(0)
        time.sleep(0.05)  # noqa: ASYNC251 - deliberately let the driver run while the loop is blocked
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.ping()
    created = await make_product(store, "SKU-2")
    assert await store.get_product(created.id) == created


# -- outbox -------------------------------------------------------------------------------------


async def test_every_stock_change_writes_one_outbox_entry_describing_the_row(store):
    product = await make_product(store, "SKU-1", low_stock_threshold=2)
    await make_warehouse(store, "par-1", "eu")
    assert await deltas(store) == []

    changes = [
        store.set_stock(product.id, "par-1", 10),
        store.adjust_stock(product.id, "par-1", -1),
    ]
    levels = [await c for c in changes]
    result = await reserve(store, line(product.id, 4))
    levels.append(await level(store, product.id, "par-1"))
    await store.commit_reservation(result.body["id"])
    levels.append(await level(store, product.id, "par-1"))
    other = await reserve(store, line(product.id, 4))
    levels.append(await level(store, product.id, "par-1"))
    await store.release_reservation(other.body["id"])
    levels.append(await level(store, product.id, "par-1"))

    outbox = await deltas(store)
    assert len(outbox) == len(levels) == 6
    for delta, stock in zip(outbox, levels, strict=True):
        assert delta.product_id == product.id and delta.sku == "SKU-1"
        assert (delta.warehouse_id, delta.region) == ("par-1", "eu")
        assert (delta.on_hand, delta.reserved, delta.available) == (
            stock.on_hand,
            stock.reserved,
            stock.available,
        )
        assert delta.version == stock.version
        assert delta.status == stock.status.value
        assert delta.ts == stock.updated_at
    assert [(d.on_hand, d.reserved) for d in outbox] == [(10, 0), (9, 0), (9, 4), (5, 0), (5, 4), (5, 0)]


async def test_outbox_versions_per_product_and_warehouse_increase_by_one_in_seq_order(store):
    a = await seed(store, "A", {"par-1": 20, "us-1": 20})
    b = await seed(store, "B", {"par-1": 20})
    work = [
        store.adjust_stock(a, "par-1", 1),
        reserve(store, line(a, 2, warehouse_id="us-1"), line(b, 1), key="k1"),
        store.set_stock(b, "par-1", 30),
        store.update_product(a, {"status": ProductStatus.PREORDER}),
        reserve(store, line(a, 1, warehouse_id="par-1"), key="k2"),
        store.adjust_stock(a, "us-1", -3),
    ]
    for coro in work:
        await coro
    # And a concurrent burst on top.
    await asyncio.gather(
        *(store.adjust_stock(a, "par-1", 1) for _ in range(10)),
        *(store.adjust_stock(b, "par-1", -1) for _ in range(10)),
        *(reserve(store, line(a, 1, warehouse_id="us-1"), key=f"burst-{i}") for i in range(10)),
    )
    entries = await store.read_outbox(limit=10_000)
    assert [e.seq for e in entries] == sorted(e.seq for e in entries)
    assert len({e.seq for e in entries}) == len(entries)
    # Every key's versions (a product × warehouse's, the reserving user's) grow by one in seq order.
    by_key: dict[str, list[int]] = {}
    for entry in entries:
        by_key.setdefault(entry.key, []).append(entry.version)
    for key, seen in by_key.items():
        assert seen == list(range(1, len(seen) + 1)), key
    assert "user:alice" in by_key  # the reservations told their owner, in their own order
    stock = [stock_delta(entry) for entry in entries if is_stock_entry(entry)]
    versions: dict[tuple[str, str], list[int]] = {}
    for delta in stock:
        versions.setdefault((delta.product_id, delta.warehouse_id), []).append(delta.version)
    for key, seen in versions.items():
        assert by_key[f"{key[0]}/{key[1]}"] == seen
        assert (await level(store, *key)).version == seen[-1]


class Announcements:
    """An outbox listener that writes down what it is told."""

    def __init__(self) -> None:
        self.committed: list[list[OutboxEntry]] = []
        self.changed = 0

    async def outbox_committed(self, entries: Sequence[OutboxEntry]) -> None:
        self.committed.append(list(entries))

    def outbox_changed(self) -> None:
        self.changed += 1


async def test_each_committed_transaction_announces_its_outbox_entries_and_nothing_else_does(store):
    a = await seed(store, "A", {"par-1": 20, "us-1": 20})
    b = await seed(store, "B", {"par-1": 20})
    before = {entry.seq for entry in await store.read_outbox(limit=10_000)}
    told = Announcements()
    unwatch = store.watch_outbox(told)

    # Seven transactions that append (fourteen entries), each announced once...
    await store.adjust_stock(a, "par-1", 1)
    # two stock entries and the owner's reservation.created
    first = await reserve(store, line(a, 2, warehouse_id="us-1"), line(b, 1), key="k1")
    await store.set_stock(b, "par-1", 30)
    await store.update_product(a, {"status": ProductStatus.PREORDER})  # one per warehouse: two
    await store.commit_reservation(first.body["id"])  # two lines: two, and reservation.committed
    short = await reserve(store, line(a, 1, warehouse_id="par-1"), key="k2", ttl=1)
    await asyncio.sleep(1.1)
    assert [r.id for r in await store.expire_reservations()] == [short.body["id"]]
    # ...and what appends nothing, or rolls back, announces nothing.
    with pytest.raises(InsufficientStock):
        await store.adjust_stock(b, "par-1", -1000)
    # Lines are taken in product order: the first is taken, then rolled back with its outbox entry.
    taken, refused = sorted([a, b])
    assert (await reserve(store, line(taken, 1), line(refused, 1000), key="k3")).status == 409
    assert (await reserve(store, line(a, 2, warehouse_id="us-1"), line(b, 1), key="k1")).replayed
    await store.update_product(a, {"name": "renamed"})
    assert await store.expire_reservations() == []

    appended = [entry for entry in await store.read_outbox(limit=10_000) if entry.seq not in before]
    assert len(appended) == 14
    assert [e.key for e in appended if e.key.startswith("user:")] == ["user:alice"] * 4
    if store.backend == "sqlite":
        # The only writer: the entries themselves, per transaction, in commit order.
        assert [len(batch) for batch in told.committed] == [1, 3, 1, 2, 3, 2, 2]
        assert [entry for batch in told.committed for entry in batch] == appended
        assert told.changed == 0
    else:
        # Concurrent writers: only reading the outbox puts their entries in order.
        assert told.committed == []
        assert told.changed == 7

    unwatch()
    await store.adjust_stock(a, "par-1", 1)
    assert len(told.committed) + told.changed == 7


async def test_outbox_entries_stay_until_acknowledged(store):
    product_id = await seed(store, "SKU-1", {"par-1": 1})
    for i in range(4):
        await store.adjust_stock(product_id, "par-1", i + 1)
    first_read = await store.read_outbox()
    assert len(first_read) == 5
    assert await store.read_outbox() == first_read
    await store.ack_outbox([first_read[0].seq, first_read[1].seq])
    remaining = await store.read_outbox()
    assert remaining == first_read[2:]
    await store.ack_outbox([e.seq for e in remaining])
    assert await store.read_outbox() == []
    await store.adjust_stock(product_id, "par-1", 1)
    (fresh,) = await store.read_outbox()
    assert fresh.seq > first_read[-1].seq
    assert stock_delta(fresh).version == 6


async def test_outbox_entries_survive_reopening_the_store(store, database_url):
    product_id = await seed(store, "SKU-1", {"par-1": 1})
    await store.adjust_stock(product_id, "par-1", 2)
    expected = await store.read_outbox()
    other = open_store(database_url)
    await other.open()
    try:
        assert await other.read_outbox() == expected
    finally:
        await other.close()


async def test_read_outbox_respects_its_limit_in_seq_order(store):
    product_id = await seed(store, "SKU-1", {"par-1": 0})
    for _ in range(6):
        await store.adjust_stock(product_id, "par-1", 1)
    everything = await store.read_outbox()
    assert [stock_delta(e).version for e in everything] == [1, 2, 3, 4, 5, 6, 7]
    assert await store.read_outbox(limit=3) == everything[:3]
    await store.ack_outbox([e.seq for e in everything[:3]])
    assert await store.read_outbox(limit=3) == everything[3:6]


async def test_acking_a_non_contiguous_set_deletes_only_those_entries(store):
    product_id = await seed(store, "SKU-1", {"par-1": 0})
    for _ in range(7):
        await store.adjust_stock(product_id, "par-1", 1)
    entries = await store.read_outbox()
    assert len(entries) == 8
    acked = [entries[i].seq for i in (6, 0, 3, 4)]
    await store.ack_outbox(acked)
    assert [e.seq for e in await store.read_outbox()] == [entries[i].seq for i in (1, 2, 5, 7)]


async def test_acking_a_set_with_a_repeated_seq_deletes_only_those_entries(store):
    product_id = await seed(store, "SKU-1", {"par-1": 0})
    for _ in range(4):
        await store.adjust_stock(product_id, "par-1", 1)
    entries = await store.read_outbox()
    # Sequence numbers 1st, 3rd and 3rd again: three values spanning three seqs, but not the 2nd.
    await store.ack_outbox([entries[0].seq, entries[2].seq, entries[2].seq])
    assert [e.seq for e in await store.read_outbox()] == [entries[i].seq for i in (1, 3, 4)]


async def test_acking_nothing_or_unknown_seqs_changes_nothing(store):
    await seed(store, "SKU-1", {"par-1": 0})
    entries = await store.read_outbox()
    await store.ack_outbox([])
    await store.ack_outbox([entries[-1].seq + 1000, entries[-1].seq + 2000])
    assert await store.read_outbox() == entries
    await store.ack_outbox([entries[0].seq, entries[0].seq])  # acking twice is harmless
    await store.ack_outbox([entries[0].seq])
    assert await store.read_outbox() == entries[1:]


async def test_outbox_backlog_counts_entries_and_reports_the_oldest_timestamp(store):
    assert await store.outbox_backlog() == (0, None)
    before = now_us()
    product_id = await seed(store, "SKU-1", {"par-1": 0})
    for _ in range(3):
        await store.adjust_stock(product_id, "par-1", 1)
    count, oldest = await store.outbox_backlog()
    entries = await store.read_outbox()
    assert count == 4 == len(entries)
    assert isinstance(oldest, int)
    assert before <= oldest <= now_us()
    assert oldest == stock_delta(entries[0]).ts
    await store.ack_outbox([entries[0].seq])
    count, oldest = await store.outbox_backlog()
    assert count == 3 and oldest == stock_delta(entries[1]).ts
    await store.ack_outbox([e.seq for e in entries[1:]])
    assert await store.outbox_backlog() == (0, None)


async def test_a_product_status_change_emits_one_entry_per_stock_row_with_the_new_status(store):
    product_id = await seed(store, "SKU-1", {"par-1": 10, "par-2": 0, "us-1": 3})
    await store.ack_outbox([e.seq for e in await store.read_outbox()])
    before = {s.warehouse_id: s for s in await store.get_inventory(product_id)}

    await store.update_product(product_id, {"status": ProductStatus.DISCONTINUED})
    outbox = await deltas(store)
    assert sorted(d.warehouse_id for d in outbox) == ["par-1", "par-2", "us-1"]
    for delta in outbox:
        previous = before[delta.warehouse_id]
        assert delta.status == "discontinued"
        assert delta.version == previous.version + 1
        assert (delta.on_hand, delta.reserved) == (previous.on_hand, previous.reserved)
    assert all(s.status is StockStatus.DISCONTINUED for s in await store.get_inventory(product_id))

    await store.ack_outbox([e.seq for e in await store.read_outbox()])
    await store.update_product(product_id, {"status": ProductStatus.ACTIVE})
    statuses = {d.warehouse_id: d.status for d in await deltas(store)}
    assert statuses == {"par-1": "in_stock", "par-2": "out_of_stock", "us-1": "low_stock"}


async def test_a_status_change_of_a_product_without_stock_emits_nothing(store):
    product = await make_product(store, "SKU-1")
    updated = await store.update_product(product.id, {"status": ProductStatus.PREORDER})
    assert updated.status is ProductStatus.PREORDER
    assert await deltas(store) == []


async def test_a_low_stock_threshold_change_emits_the_new_derived_status(store):
    product_id = await seed(store, "SKU-1", {"par-1": 8})
    await store.ack_outbox([e.seq for e in await store.read_outbox()])
    await store.update_product(product_id, {"low_stock_threshold": 10})
    (delta,) = await deltas(store)
    assert (delta.status, delta.version) == ("low_stock", 2)


async def test_a_sku_change_emits_entries_carrying_the_new_sku(store):
    product_id = await seed(store, "OLD-SKU", {"par-1": 8, "par-2": 1})
    await store.ack_outbox([e.seq for e in await store.read_outbox()])
    await store.update_product(product_id, {"sku": "NEW-SKU"})
    outbox = await deltas(store)
    assert sorted(d.warehouse_id for d in outbox) == ["par-1", "par-2"]
    assert {d.sku for d in outbox} == {"NEW-SKU"}


async def test_a_failed_stock_change_writes_nothing_to_the_outbox(store):
    product_id = await seed(store, "SKU-1", {"par-1": 2})
    entries = await store.read_outbox()
    with pytest.raises(InsufficientStock):
        await store.adjust_stock(product_id, "par-1", -3)
    with pytest.raises(NotFound):
        await store.set_stock(product_id, "nowhere", 3)
    assert (await reserve(store, line(product_id, 3))).status == 409
    assert (await reserve(store, line(product_id, 1), key="k", request_hash="a")).status == 201
    with pytest.raises(IdempotencyMismatch):
        await reserve(store, line(product_id, 1), key="k", request_hash="b")
    # The successful first call of the pair above wrote one stock entry and told its owner, the
    # mismatch nothing.
    after = await store.read_outbox()
    assert after[: len(entries)] == entries
    assert [e.stream.split(".")[0] for e in after[len(entries) :]] == ["inventory", "user"]


# -- idempotency keys ---------------------------------------------------------------------------


async def test_purge_idempotency_keys_deletes_only_keys_older_than_the_cutoff(store):
    product_id = await seed(store, "SKU-1", {"par-1": 10})
    old = await reserve(store, line(product_id, 1), key="old", request_hash="h")
    await asyncio.sleep(0.01)
    cutoff = now_us()
    await asyncio.sleep(0.01)
    new = await reserve(store, line(product_id, 1), key="new", request_hash="h")

    assert await store.purge_idempotency_keys(cutoff) == 1
    assert await store.purge_idempotency_keys(cutoff) == 0
    # The new key is still remembered...
    replay = await reserve(store, line(product_id, 1), key="new", request_hash="h")
    assert (replay.replayed, replay.body) == (True, new.body)
    # ...the old one is forgotten: the same key now makes a new reservation.
    fresh = await reserve(store, line(product_id, 1), key="old", request_hash="h")
    assert fresh.replayed is False and fresh.body["id"] != old.body["id"]
    assert (await level(store, product_id, "par-1")).reserved == 3
    # Purging keys does not touch the reservations themselves.
    still = await store.get_reservation(old.body["id"])
    assert still is not None and still.status is ReservationStatus.PENDING


async def test_concurrent_first_adjustments_of_a_warehouse_do_not_collide(store):
    product_id = await seed(store, "SKU-1")
    await store.create_warehouse(Warehouse("par-1", "eu", "par-1"))
    await asyncio.gather(*(store.adjust_stock(product_id, "par-1", 1) for _ in range(20)))
    row = await level(store, product_id, "par-1")
    assert (row.on_hand, row.version) == (20, 20)
