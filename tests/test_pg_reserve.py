"""PostgreSQL's batched reservations (storage/pg_reserve.py) against the generic SqlStore path.

The Store contract suite already runs every reservation rule on PostgreSQL through the batches; these
tests pin what is particular to them: the server-side function gives the same bodies and the same
outbox deltas as the Python path, concurrent requests really share transactions, one request's key
or refusal stays its own inside a batch, and a batch survives its callers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from storage.errors import IdempotencyMismatch, StoreError
from storage.models import (
    IdempotentResult,
    NewProduct,
    ProductStatus,
    ReservationLineRequest,
    Warehouse,
)
from storage.postgres import PostgresStore
from storage.sql import SqlStore

WAREHOUSES = (("par-1", "eu"), ("par-2", "eu"), ("us-1", "us"))


@pytest.fixture
async def store(pg: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg)
    await s.open()
    await s.migrate()
    for wid, region in WAREHOUSES:
        await s.create_warehouse(Warehouse(wid, region, wid))
    yield s
    await s.close()


async def product(store: SqlStore, sku: str, stock: dict[str, int], **fields: Any) -> str:
    created = await store.create_product(NewProduct(sku=sku, name=sku, price=Decimal("1.00"), **fields))
    for wid, qty in stock.items():
        await store.set_stock(created.id, wid, qty)
    return created.id


def line(product_id: str, quantity: int = 1, **where: str) -> ReservationLineRequest:
    return ReservationLineRequest(product_id, quantity, **where)


async def entries(store: SqlStore) -> list[dict[str, Any]]:
    """Every outbox payload in seq order: stock deltas and the owners' ``reservation.*`` events."""

    async def work(tx: Any) -> list[Any]:
        return await tx.fetch("SELECT payload FROM outbox ORDER BY seq")

    return [json.loads(r["payload"]) for r in await store.db.run(work)]


async def outbox(store: SqlStore) -> list[dict[str, Any]]:
    """The stock deltas in the outbox, in seq order."""
    return [payload for payload in await entries(store) if "type" not in payload]


def told(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [payload for payload in payloads if "type" in payload]


# Each scenario: (stock per product, lines as (product, quantity, where)). Products are named by letter.
SCENARIOS: list[tuple[dict[str, dict[str, int]], list[tuple[str, int, dict[str, str]]]]] = [
    ({"a": {"par-1": 10}}, [("a", 3, {})]),
    ({"a": {"par-1": 2, "par-2": 9, "us-1": 50}}, [("a", 4, {"region": "eu"})]),
    ({"a": {"par-1": 5}, "b": {"us-1": 5, "par-2": 1}}, [("b", 2, {"warehouse_id": "us-1"}), ("a", 5, {})]),
    # the second line cannot be served: the first must not stay reserved
    ({"a": {"par-1": 5}, "b": {"par-1": 1}}, [("a", 2, {}), ("b", 2, {})]),
    ({"a": {"par-1": 5}}, [("a", 6, {})]),
    ({"a": {"par-1": 5}}, [("a", 1, {"warehouse_id": "par-2"})]),
    ({"a": {"us-1": 5}}, [("a", 1, {"region": "eu"})]),
    ({"a": {"par-1": 5}}, [("a", 1, {}), ("missing", 1, {})]),
    # low stock (threshold 5) and out of stock in the deltas
    ({"a": {"par-1": 7}}, [("a", 3, {})]),
    ({"a": {"par-1": 3}}, [("a", 3, {})]),
]
MISSING = "00000000-0000-4000-8000-000000000000"


async def run_scenario(
    store: PostgresStore, prefix: str, stock: dict[str, dict[str, int]], lines: list[Any], generic: bool
) -> tuple[IdempotentResult, list[dict[str, Any]], dict[str, str]]:
    ids = {name: await product(store, f"{prefix}-{name}", levels) for name, levels in stock.items()}
    ids["missing"] = MISSING
    before = len(await entries(store))
    requests = [line(ids[name], qty, **where) for name, qty, where in lines]
    reserve = SqlStore.reserve if generic else PostgresStore.reserve
    result = await reserve(store, "alice", f"{prefix}-key", "hash", requests, 60)
    return result, (await entries(store))[before:], {v: k for k, v in ids.items()}


def normalised(value: Any, names: dict[str, str], prefix: str) -> Any:
    """The value with product ids and SKUs replaced by the scenario's letters, times and ids dropped."""
    if isinstance(value, dict):
        return {
            k: normalised(v, names, prefix)
            for k, v in value.items()
            if k not in ("id", "ts", "created_at", "updated_at", "expires_at")
        }
    if isinstance(value, list):
        return [normalised(v, names, prefix) for v in value]
    if isinstance(value, str):
        return names.get(value, value.removeprefix(f"{prefix}-"))
    return value


@pytest.mark.parametrize("scenario", range(len(SCENARIOS)))
async def test_the_batch_function_answers_and_emits_exactly_as_the_generic_path(store, scenario):
    stock, lines = SCENARIOS[scenario]
    generic, generic_deltas, generic_names = await run_scenario(store, f"g{scenario}", stock, lines, True)
    batched, batched_deltas, batched_names = await run_scenario(store, f"b{scenario}", stock, lines, False)

    assert (batched.status, batched.replayed) == (generic.status, generic.replayed)
    assert normalised(batched.body, batched_names, f"b{scenario}") == normalised(
        generic.body, generic_names, f"g{scenario}"
    )

    # Both paths take lines in product-id order, and ids are random: compare deltas per product.
    def per_product(deltas: list[dict[str, Any]], names: dict[str, str], prefix: str) -> list[Any]:
        return sorted(
            (normalised(d, names, prefix) for d in deltas), key=lambda d: (d["product_id"], d["version"])
        )

    assert per_product(
        [d for d in batched_deltas if "type" not in d], batched_names, f"b{scenario}"
    ) == per_product([d for d in generic_deltas if "type" not in d], generic_names, f"g{scenario}")
    # The owner is told of a created reservation alike, with the next number of their counter.
    batched_told, generic_told = told(batched_deltas), told(generic_deltas)
    assert [
        (e["type"], normalised(e["reservation"], batched_names, f"b{scenario}")) for e in batched_told
    ] == [(e["type"], normalised(e["reservation"], generic_names, f"g{scenario}")) for e in generic_told]
    assert len(batched_told) == (1 if batched.status == 201 else 0)
    for event in batched_told:
        assert (event["sub"], event["version"]) == ("alice", generic_told[0]["version"] + 1)
        assert event["reservation"] == batched.body
    if batched.status == 201:
        body = batched.body
        assert body["expires_at"] - body["created_at"] == 60_000_000
        assert body["updated_at"] == body["created_at"] == batched_deltas[0]["ts"]
        assert await store.get_reservation(body["id"]) is not None


async def test_a_discontinued_product_is_refused_as_by_the_generic_path(store):
    pid = await product(store, "OLD", {"par-1": 5})
    await store.update_product(pid, {"status": ProductStatus.DISCONTINUED})
    batched = await store.reserve("alice", "k1", "h", [line(pid)], 60)
    generic = await SqlStore.reserve(store, "alice", "k2", "h", [line(pid)], 60)
    assert (
        (batched.status, batched.body)
        == (generic.status, generic.body)
        == (
            409,
            {
                "code": "insufficient_stock",
                "detail": "the product is discontinued",
                "line": 0,
                "product_id": pid,
            },
        )
    )


async def test_a_preorder_product_emits_the_preorder_status_as_by_the_generic_path(store):
    pid = await product(store, "SOON", {"par-1": 5}, status=ProductStatus.PREORDER, low_stock_threshold=2)
    generic = await SqlStore.reserve(store, "alice", "k1", "h", [line(pid, 3)], 60)
    batched = await store.reserve("alice", "k2", "h", [line(pid, 1)], 60)
    assert generic.status == batched.status == 201
    first, second = (await outbox(store))[-2:]
    assert first["status"] == second["status"] == "preorder"
    assert (second["available"], second["reserved"], second["version"]) == (1, 4, first["version"] + 1)


async def test_concurrent_reservations_of_one_sku_share_transactions_and_never_oversell(store):
    pid = await product(store, "HOT", {"par-1": 100})
    results = await asyncio.gather(
        *(store.reserve(f"user-{i}", f"k-{i}", "h", [line(pid)], 60) for i in range(300))
    )

    assert sorted(r.status for r in results).count(201) == 100
    assert {r.status for r in results} == {201, 409}
    level = (await store.get_inventory(pid))[0]
    assert (level.on_hand, level.reserved, level.available) == (100, 100, 0)
    # one delta per successful reservation, versions contiguous after set_stock's version 1
    deltas = [d for d in await outbox(store) if d["product_id"] == pid]
    assert [d["version"] for d in deltas] == list(range(1, 102))
    assert deltas[-1]["status"] == "out_of_stock"
    assert store._batcher.transactions < 300 / 4, store._batcher.transactions


async def test_a_key_repeated_inside_one_batch_is_claimed_once_and_replayed(store):
    pid = await product(store, "DUP", {"par-1": 10})
    first, again, other_body, other_key = await asyncio.gather(
        store.reserve("alice", "order-1", "h1", [line(pid, 2)], 60),
        store.reserve("alice", "order-1", "h1", [line(pid, 2)], 60),
        store.reserve("alice", "order-1", "h2", [line(pid, 3)], 60),
        store.reserve("bob", "order-1", "h1", [line(pid, 2)], 60),
        return_exceptions=True,
    )
    assert isinstance(first, IdempotentResult) and isinstance(again, IdempotentResult)
    assert (first.status, first.replayed) == (201, False)
    assert (again.status, again.body, again.replayed) == (201, first.body, True)
    assert isinstance(other_body, IdempotencyMismatch)
    assert isinstance(other_key, IdempotentResult) and not other_key.replayed
    assert (await store.get_inventory(pid))[0].reserved == 4
    assert store._batcher.transactions == 1


async def test_a_database_error_fails_every_request_of_its_batch_and_commits_nothing(store):
    pid = await product(store, "ERR", {"par-1": 10})
    # A NUL cannot be stored in PostgreSQL text: the whole transaction fails (the HTTP layer never
    # lets such an id through; here it stands for any database error).
    good, bad = await asyncio.gather(
        store.reserve("alice", "good", "h", [line(pid)], 60),
        store.reserve("alice", "bad", "h", [line("bad\x00id")], 60),
        return_exceptions=True,
    )
    assert isinstance(good, StoreError) and isinstance(bad, StoreError)
    assert (await store.get_inventory(pid))[0].reserved == 0
    retried = await store.reserve("alice", "good", "h", [line(pid)], 60)
    assert (retried.status, retried.replayed) == (201, False)


async def test_a_caller_that_gives_up_does_not_cancel_its_batch(store):
    pid = await product(store, "GONE", {"par-1": 10})
    waiting = asyncio.create_task(store.reserve("alice", "order-9", "h", [line(pid)], 60))
    await asyncio.sleep(0)  # queued and its batch started
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await store._batcher.close()  # the batch finishes regardless
    retry = await store.reserve("alice", "order-9", "h", [line(pid)], 60)
    assert (retry.status, retry.replayed) == (201, True)
    assert (await store.get_inventory(pid))[0].reserved == 1


async def test_the_same_key_raced_from_two_nodes_reserves_once(store, pg):
    """Two hub nodes (two stores, two batchers) get the same retried request at the same moment."""
    pid = await product(store, "RACE", {"par-1": 1000})
    other = PostgresStore(pg)
    await other.open()
    try:
        for round_no in range(20):
            key = f"race-{round_no}"
            results = await asyncio.gather(
                *(s.reserve("alice", key, "h", [line(pid)], 60) for s in (store, other, store, other))
            )
            assert sorted(r.replayed for r in results) == [False, True, True, True], round_no
            assert len({r.body["id"] for r in results}) == 1
    finally:
        await other.close()
    assert (await store.get_inventory(pid))[0].reserved == 20
