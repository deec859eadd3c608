"""Reservation caps (storage/reservation_caps.py): units of a product per reservation and held per user,
over real HTTP against real hubs on both backends — refusals that change nothing, exempt roles,
idempotent retries that count once, checkouts, and concurrency (one user's simultaneous requests, on
one node and on two) that never passes the cap; and, on PostgreSQL, the batch function against the
generic path."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from hub import cli, cli_settings
from storage.models import NewProduct, ReservationLineRequest, ReservationOutcome, Warehouse
from storage.postgres import PostgresStore
from storage.reservation_caps import ReservationCaps
from storage.sql import SqlStore
from tests.conftest import Hub, hub_settings, running_hub, token

PER_LINE, PER_USER = 5, 8
CAPS = {"max_reserve_per_line": PER_LINE, "max_active_reserved_per_user": PER_USER}


@pytest.fixture
async def capped(database_url: str) -> AsyncIterator[Hub]:
    async with running_hub(hub_settings(database_url, **CAPS)) as hub:
        await hub.warehouse()
        yield hub


async def stocked(hub: Hub, sku: str = "CAP-1", on_hand: int = 1_000) -> str:
    product_id = str((await hub.product(sku))["id"])
    await hub.stock(product_id, "par-1", on_hand)
    return product_id


def lines(*items: tuple[str, int]) -> list[dict[str, Any]]:
    return [{"product_id": product_id, "quantity": quantity} for product_id, quantity in items]


async def reserve(
    hub: Hub, who: str, items: list[dict[str, Any]], key: str | None = None, **extra: Any
) -> tuple[int, Any, Any]:
    return await hub.call(
        "POST",
        "/api/v1/reservations",
        token=who,
        json={"lines": items, **extra},
        headers={"Idempotency-Key": key or uuid.uuid4().hex},
    )


async def reserved(hub: Hub, product_id: str) -> int:
    status, body, _ = await hub.call("GET", f"/api/v1/products/{product_id}/inventory")
    assert status == 200, body
    return int(body["total"]["reserved"])


def assert_capped(status: int, body: Any, headers: Any, **fields: Any) -> None:
    assert status == 422, body
    assert headers["Content-Type"].startswith("application/problem+json")
    assert body["code"] == "reservation_cap_exceeded"
    assert {name: body.get(name) for name in fields} == fields, body


async def test_a_reservation_past_the_line_cap_is_refused_and_changes_nothing(capped):
    p, q = await stocked(capped), await stocked(capped, "CAP-2")
    status, body, headers = await reserve(capped, capped.alice, lines((p, PER_LINE + 1)))
    assert_capped(status, body, headers, scope="reservation", cap=PER_LINE, requested=6, line=0, product_id=p)
    assert body["detail"] == "a reservation may take at most 5 units of a product"
    # Lines of one product count together: 3 + 3 is over 5 too, and the first line of it is named.
    status, body, headers = await reserve(capped, capped.alice, lines((q, 1), (p, 3), (p, 3)))
    assert_capped(status, body, headers, scope="reservation", requested=6, line=1, product_id=p)
    assert await reserved(capped, p) == 0 and await reserved(capped, q) == 0
    status, body, _ = await reserve(capped, capped.alice, lines((p, PER_LINE)))
    assert status == 201, body


async def test_a_user_holds_at_most_the_cap_of_a_product_across_reservations(capped):
    p, q = await stocked(capped), await stocked(capped, "CAP-2")
    status, first, _ = await reserve(capped, capped.alice, lines((p, 5)))
    assert status == 201, first
    status, body, headers = await reserve(capped, capped.alice, lines((q, 1), (p, 4)))
    assert_capped(
        status, body, headers, scope="user", cap=PER_USER, held=5, requested=4, line=1, product_id=p
    )
    assert body["detail"] == "one customer may hold at most 8 units of a product at once"
    assert await reserved(capped, q) == 0  # all or nothing: the line within its caps was not taken
    status, second, _ = await reserve(capped, capped.alice, lines((p, 3)))
    assert status == 201, second
    status, body, headers = await reserve(capped, capped.alice, lines((p, 1)))
    assert_capped(status, body, headers, scope="user", held=8, requested=1)
    # Per product, and per user.
    assert (await reserve(capped, capped.alice, lines((q, 5))))[0] == 201
    assert (await reserve(capped, capped.bob, lines((p, 5))))[0] == 201
    assert await reserved(capped, p) == 13

    # Released and committed reservations hold nothing any more.
    status, body, _ = await capped.call(
        "POST", f"/api/v1/reservations/{second['id']}/release", token=capped.alice
    )
    assert status == 200, body
    assert (await reserve(capped, capped.alice, lines((p, 3))))[0] == 201
    status, body, _ = await capped.call(
        "POST", f"/api/v1/reservations/{first['id']}/commit", token=capped.alice
    )
    assert status == 200, body
    assert (await reserve(capped, capped.alice, lines((p, 5))))[0] == 201
    status, body, headers = await reserve(capped, capped.alice, lines((p, 1)))
    assert_capped(status, body, headers, scope="user", held=8)


async def test_service_and_admin_tokens_are_exempt(capped):
    p = await stocked(capped)
    for who in (capped.service, capped.admin, token("ops", "customer", "admin")):
        for _ in range(2):
            status, body, _ = await reserve(capped, who, lines((p, 50)))
            assert status == 201, body
    assert await reserved(capped, p) == 300


async def test_caps_set_to_zero_are_off(database_url):
    settings = hub_settings(database_url, max_reserve_per_line=0, max_active_reserved_per_user=0)
    async with running_hub(settings) as hub:
        await hub.warehouse()
        p = await stocked(hub)
        for _ in range(3):
            status, body, _ = await reserve(hub, hub.alice, lines((p, 100)))
            assert status == 201, body


async def test_a_retried_key_replays_its_answer_and_counts_once(capped):
    p = await stocked(capped)
    status, first, headers = await reserve(capped, capped.alice, lines((p, 5)), key="order-1")
    assert status == 201 and headers["Idempotent-Replayed"] == "false"
    for _ in range(3):
        status, again, headers = await reserve(capped, capped.alice, lines((p, 5)), key="order-1")
        assert status == 201 and headers["Idempotent-Replayed"] == "true"
        assert again["id"] == first["id"]
    # Concurrent retries of one key too.
    retries = await asyncio.gather(
        *(reserve(capped, capped.alice, lines((p, 5)), key="order-1") for _ in range(10))
    )
    assert {(status, body["id"]) for status, body, _ in retries} == {(201, first["id"])}
    assert await reserved(capped, p) == 5
    # The 5 counted once: 3 more fit under 8.
    assert (await reserve(capped, capped.alice, lines((p, 3)), key="order-2"))[0] == 201

    # A refusal is an outcome too: its retry gets the same answer, even once the units are free again.
    status, refused, headers = await reserve(capped, capped.alice, lines((p, 2)), key="order-3")
    assert_capped(status, refused, headers, scope="user", held=8, requested=2)
    assert headers["Idempotent-Replayed"] == "false"
    status, body, _ = await capped.call(
        "POST", f"/api/v1/reservations/{first['id']}/release", token=capped.alice
    )
    assert status == 200, body
    status, again, headers = await reserve(capped, capped.alice, lines((p, 2)), key="order-3")
    assert status == 422 and headers["Idempotent-Replayed"] == "true" and again == refused
    assert (await reserve(capped, capped.alice, lines((p, 2)), key="order-4"))[0] == 201
    assert await reserved(capped, p) == 5


async def test_concurrent_reservations_of_one_user_never_pass_the_cap(capped):
    p = await stocked(capped)
    results = await asyncio.gather(*(reserve(capped, capped.alice, lines((p, 1))) for _ in range(20)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [201] * PER_USER + [422] * (20 - PER_USER), [b for _, b, _ in results]
    assert await reserved(capped, p) == PER_USER

    # Mixed sizes, and two products in some: never more than the cap of either.
    q = await stocked(capped, "CAP-2")
    requests = [lines((q, 1 + n % 3)) if n % 2 else lines((q, 1 + n % 3), (p, 1)) for n in range(20)]
    results = await asyncio.gather(*(reserve(capped, capped.bob, items) for items in requests))
    took = sum(
        line["quantity"]
        for status, body, _ in results
        if status == 201
        for line in body["lines"]
        if line["product_id"] == q
    )
    assert PER_USER - 2 <= took <= PER_USER  # a refusal asked for at most 3 over what was held
    assert await reserved(capped, q) == took
    assert all(status in (201, 422) for status, _, _ in results)


async def test_one_users_reservations_on_two_nodes_never_pass_the_cap(pg):
    settings = hub_settings(pg, **CAPS)
    async with running_hub(settings) as a, running_hub(settings) as b:
        await a.warehouse()
        p = await stocked(a)
        for quantity in (1, 2):
            sub = f"scalper-{quantity}"
            who = token(sub)
            results = await asyncio.gather(
                *(reserve((a, b)[n % 2], who, lines((p, quantity))) for n in range(20))
            )
            statuses = sorted(status for status, _, _ in results)
            taken = PER_USER // quantity
            assert statuses == [201] * taken + [422] * (20 - taken), [body for _, body, _ in results]
        assert await reserved(a, p) == 2 * PER_USER


async def test_a_checkout_is_capped_as_a_reservation_is(capped):
    p = await stocked(capped, "TEA")

    async def cart_with(quantity: int) -> str:
        cart_id = str(uuid.uuid4())
        status, body, _ = await capped.call(
            "POST",
            f"/api/v1/carts/{cart_id}/ops",
            token=capped.alice,
            json={
                "device_id": "web-1",
                "mutation_id": "m-1",
                "op": "add",
                "sku": "TEA",
                "quantity": quantity,
            },
        )
        assert status == 200, body
        return cart_id

    async def checkout(cart_id: str, key: str) -> tuple[int, Any, Any]:
        return await capped.call(
            "POST", f"/api/v1/carts/{cart_id}/checkout", token=capped.alice, headers={"Idempotency-Key": key}
        )

    big = await cart_with(6)
    status, body, headers = await checkout(big, "c-1")
    assert_capped(status, body, headers, scope="reservation", cap=PER_LINE, requested=6, product_id=p)
    status, cart, _ = await capped.call("GET", f"/api/v1/carts/{big}", token=capped.alice)
    assert status == 200 and cart["status"] == "open"  # a refused checkout leaves the cart open

    assert (await reserve(capped, capped.alice, lines((p, 5))))[0] == 201
    small = await cart_with(4)
    status, body, headers = await checkout(small, "c-2")
    assert_capped(status, body, headers, scope="user", cap=PER_USER, held=5, requested=4)
    status, again, headers = await checkout(small, "c-2")
    assert status == 422 and headers["Idempotent-Replayed"] == "true" and again == body
    assert await reserved(capped, p) == 5


async def test_reservations_past_their_expiry_hold_nothing(capped):
    p = await stocked(capped)
    status, body, _ = await reserve(capped, capped.alice, lines((p, 5)), ttl_seconds=1)
    assert status == 201, body
    assert (await reserve(capped, capped.alice, lines((p, 5))))[0] == 422
    await asyncio.sleep(1.1)  # overdue, whether or not the sweep has expired it yet
    assert (await reserve(capped, capped.alice, lines((p, 5))))[0] == 201


# -- PostgreSQL: the batch function and the generic path ------------------------------------------


@pytest.fixture
async def pg_store(pg: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg)
    await s.open()
    await s.migrate()
    await s.create_warehouse(Warehouse("par-1", "eu", "par-1"))
    yield s
    await s.close()


async def pg_product(store: PostgresStore, sku: str, on_hand: int = 1_000) -> str:
    created = await store.create_product(NewProduct(sku=sku, name=sku, price=Decimal("1.00")))
    await store.set_stock(created.id, "par-1", on_hand)
    return created.id


STORE_CAPS = ReservationCaps(per_reservation=PER_LINE, per_user=PER_USER)


async def test_the_batch_function_refuses_exactly_as_the_generic_path(pg_store):
    p, q = await pg_product(pg_store, "A"), await pg_product(pg_store, "B")
    answers = {}
    for path, reserve_with in (("generic", SqlStore.reserve), ("batch", PostgresStore.reserve)):
        owner = f"{path}-owner"

        async def attempt(
            key: str, *items: tuple[str, int], owner: str = owner, reserve_with: Any = reserve_with
        ) -> Any:
            wanted = [ReservationLineRequest(pid, qty) for pid, qty in items]
            return await reserve_with(pg_store, owner, key, key, wanted, 60, STORE_CAPS)

        assert (await attempt("k1", (p, 5))).status is ReservationOutcome.RESERVED
        answers[path] = [
            await attempt("k2", (q, 2), (p, 2), (p, 4)),  # over the line cap
            await attempt("k3", (q, 2), (p, 4)),  # over the user's
            await attempt("k3", (q, 2), (p, 4)),  # replayed
        ]
    generic, batch = answers["generic"], answers["batch"]
    assert [(r.status, r.body, r.replayed) for r in generic] == [
        (r.status, r.body, r.replayed) for r in batch
    ]
    assert [r.status for r in batch] == [ReservationOutcome.CAP_EXCEEDED] * 3
    assert batch[0].body["scope"] == "reservation" and batch[0].body["line"] == 1
    assert batch[1].body == {
        "code": "reservation_cap_exceeded",
        "detail": "one customer may hold at most 8 units of a product at once",
        "scope": "user",
        "cap": PER_USER,
        "product_id": p,
        "line": 1,
        "requested": 4,
        "held": 5,
    }
    assert [r.replayed for r in batch] == [False, False, True]
    assert sum(level.reserved for level in await pg_store.get_inventory(q)) == 0


async def test_concurrent_batches_and_generic_transactions_keep_one_cap(pg_store):
    p = await pg_product(pg_store, "HOT")

    async def attempt(n: int) -> ReservationOutcome:
        reserve_with = SqlStore.reserve if n % 2 else PostgresStore.reserve
        line = [ReservationLineRequest(p, 1)]
        result = await reserve_with(pg_store, "scalper", f"k{n}", f"h{n}", line, 60, STORE_CAPS)
        return result.status

    outcomes = await asyncio.gather(*(attempt(n) for n in range(40)))
    assert outcomes.count(ReservationOutcome.RESERVED) == PER_USER
    assert outcomes.count(ReservationOutcome.CAP_EXCEEDED) == 40 - PER_USER
    assert sum(level.reserved for level in await pg_store.get_inventory(p)) == PER_USER


async def test_in_a_batch_only_the_reservations_made_count(pg_store):
    scarce, plenty = await pg_product(pg_store, "SCARCE", on_hand=3), await pg_product(pg_store, "PLENTY")

    async def attempt(key: str, product_id: str, quantity: int) -> ReservationOutcome:
        line = [ReservationLineRequest(product_id, quantity)]
        return (await pg_store.reserve("buyer", key, key, line, 60, ReservationCaps(per_user=8))).status

    # Started together, they share a batch: the 6 refused for want of stock hold nothing (3 more fit),
    # the 5 reserved count (3 more fit, not 4).
    before = pg_store._batcher.transactions
    outcomes = await asyncio.gather(
        attempt("a", scarce, 6), attempt("b", scarce, 3), attempt("c", plenty, 5), attempt("d", plenty, 3)
    )
    assert pg_store._batcher.transactions == before + 1
    assert outcomes == [
        ReservationOutcome.INSUFFICIENT_STOCK,
        ReservationOutcome.RESERVED,
        ReservationOutcome.RESERVED,
        ReservationOutcome.RESERVED,
    ]
    assert await attempt("e", plenty, 1) is ReservationOutcome.CAP_EXCEEDED


# -- flags ----------------------------------------------------------------------------------------------


def test_the_cap_flags_set_the_settings_and_refuse_negative_caps(monkeypatch):
    monkeypatch.setenv("SYNCHUB_MAX_ACTIVE_RESERVED_PER_USER", "3")
    args = cli.build_parser().parse_args(["serve", "--max-reserve-per-line", "0", "--jwt-secret", "s" * 40])
    settings = cli_settings.settings_from(args)
    assert (settings.max_reserve_per_line, settings.max_active_reserved_per_user) == (0, 3)
    assert cli._FORWARDED["max_reserve_per_line"] == "MAX_RESERVE_PER_LINE"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "--max-reserve-per-line", "-1"])
