"""Reservations over real HTTP: never oversell, idempotent retries, commit/release/expiry."""

from __future__ import annotations

import asyncio
import uuid

from tests.conftest import Hub, hub_settings, running_hub, token


async def _setup(hub: Hub, on_hand: int) -> str:
    await hub.warehouse("par-1", "eu")
    product = await hub.product("FLASH-1")
    await hub.stock(product["id"], "par-1", on_hand)
    return str(product["id"])


async def _inventory(hub: Hub, product_id: str) -> dict:
    status, body, _ = await hub.call("GET", f"/api/v1/products/{product_id}/inventory")
    assert status == 200
    return dict(body["total"])


def _reserve_body(product_id: str, quantity: int = 1) -> dict:
    return {"lines": [{"product_id": product_id, "quantity": quantity}]}


async def test_500_concurrent_reservations_on_50_units_reserve_exactly_50(hub: Hub) -> None:
    product_id = await _setup(hub, 50)
    shoppers = [token(f"shopper-{i}", "customer") for i in range(500)]

    async def attempt(i: int) -> int:
        status, body, _ = await hub.call(
            "POST",
            "/api/v1/reservations",
            token=shoppers[i],
            json=_reserve_body(product_id),
            headers={"Idempotency-Key": f"flash-{i}"},
        )
        assert status in (201, 409), body
        if status == 409:
            assert body["code"] == "insufficient_stock"
        return status

    statuses = await asyncio.gather(*(attempt(i) for i in range(500)))
    assert statuses.count(201) == 50
    assert statuses.count(409) == 450
    total = await _inventory(hub, product_id)
    assert total == {"on_hand": 50, "reserved": 50, "available": 0, "status": "out_of_stock"}


async def test_concurrent_retries_with_one_idempotency_key_reserve_once(hub: Hub) -> None:
    product_id = await _setup(hub, 100)

    async def attempt() -> tuple[int, str, str]:
        status, body, headers = await hub.call(
            "POST",
            "/api/v1/reservations",
            token=hub.alice,
            json=_reserve_body(product_id, 3),
            headers={"Idempotency-Key": "checkout-42"},
        )
        return status, body["id"], headers["Idempotent-Replayed"]

    results = await asyncio.gather(*(attempt() for _ in range(50)))
    assert {status for status, _, _ in results} == {201}
    assert len({rid for _, rid, _ in results}) == 1
    assert sorted(replayed for _, _, replayed in results).count("false") == 1
    assert (await _inventory(hub, product_id))["reserved"] == 3


async def test_a_retry_replays_a_failure_too(hub: Hub) -> None:
    product_id = await _setup(hub, 2)
    first = await hub.call(
        "POST",
        "/api/v1/reservations",
        token=hub.alice,
        json=_reserve_body(product_id, 5),
        headers={"Idempotency-Key": "too-many"},
    )
    assert first[0] == 409 and first[2]["Idempotent-Replayed"] == "false"
    await hub.stock(product_id, "par-1", 10)  # stock arrives, but the key's outcome is settled
    again = await hub.call(
        "POST",
        "/api/v1/reservations",
        token=hub.alice,
        json=_reserve_body(product_id, 5),
        headers={"Idempotency-Key": "too-many"},
    )
    assert again[0] == 409 and again[2]["Idempotent-Replayed"] == "true"
    assert again[1]["code"] == first[1]["code"] == "insufficient_stock"
    assert (await _inventory(hub, product_id))["reserved"] == 0


async def test_a_reservation_is_all_lines_or_none(hub: Hub) -> None:
    plenty = await _setup(hub, 10)
    scarce = (await hub.product("SCARCE-1"))["id"]
    await hub.stock(scarce, "par-1", 1)
    status, body, _ = await hub.call(
        "POST",
        "/api/v1/reservations",
        token=hub.alice,
        json={"lines": [{"product_id": plenty, "quantity": 4}, {"product_id": scarce, "quantity": 2}]},
        headers={"Idempotency-Key": "both"},
    )
    assert status == 409 and body["code"] == "insufficient_stock" and body["line"] == 1
    assert (await _inventory(hub, plenty))["reserved"] == 0
    assert (await _inventory(hub, scarce))["reserved"] == 0


async def test_commit_takes_stock_out_and_release_gives_it_back(hub: Hub) -> None:
    product_id = await _setup(hub, 10)
    created = []
    for key in ("a", "b"):
        status, body, headers = await hub.call(
            "POST",
            "/api/v1/reservations",
            token=hub.alice,
            json=_reserve_body(product_id, 2),
            headers={"Idempotency-Key": key},
        )
        assert status == 201 and headers["Location"] == f"/api/v1/reservations/{body['id']}"
        created.append(body["id"])
    status, body, _ = await hub.call("POST", f"/api/v1/reservations/{created[0]}/commit", token=hub.alice)
    assert status == 200 and body["status"] == "committed"
    status, body, _ = await hub.call("POST", f"/api/v1/reservations/{created[1]}/release", token=hub.service)
    assert status == 200 and body["status"] == "released"
    assert await _inventory(hub, product_id) == {
        "on_hand": 8,
        "reserved": 0,
        "available": 8,
        "status": "in_stock",
    }
    status, body, _ = await hub.call("POST", f"/api/v1/reservations/{created[0]}/release", token=hub.alice)
    assert status == 409 and body["code"] == "invalid_transition"
    status, body, _ = await hub.call("POST", f"/api/v1/reservations/{created[0]}/commit", token=hub.alice)
    assert status == 200 and body["status"] == "committed"  # committing again is a no-op
    assert (await _inventory(hub, product_id))["on_hand"] == 8


async def test_another_customers_reservation_is_not_found(hub: Hub) -> None:
    product_id = await _setup(hub, 10)
    status, body, _ = await hub.call(
        "POST",
        "/api/v1/reservations",
        token=hub.alice,
        json=_reserve_body(product_id),
        headers={"Idempotency-Key": "mine"},
    )
    assert status == 201
    for method, path in (("GET", ""), ("POST", "/commit"), ("POST", "/release")):
        status, problem, _ = await hub.call(method, f"/api/v1/reservations/{body['id']}{path}", token=hub.bob)
        assert status == 404 and problem["code"] == "reservation_not_found"
    assert (await _inventory(hub, product_id))["reserved"] == 1
    status, _, _ = await hub.call("GET", f"/api/v1/reservations/{uuid.uuid4()}", token=hub.alice)
    assert status == 404


async def test_an_expired_reservation_returns_its_stock_by_itself(hub: Hub) -> None:
    product_id = await _setup(hub, 5)
    status, body, _ = await hub.call(
        "POST",
        "/api/v1/reservations",
        token=hub.alice,
        json={**_reserve_body(product_id, 5), "ttl_seconds": 1},
        headers={"Idempotency-Key": "short"},
    )
    assert status == 201
    assert (await _inventory(hub, product_id))["available"] == 0
    for _ in range(60):
        await asyncio.sleep(0.1)
        if (await _inventory(hub, product_id))["available"] == 5:
            break
    assert (await _inventory(hub, product_id))["available"] == 5
    status, reservation, _ = await hub.call("GET", f"/api/v1/reservations/{body['id']}", token=hub.alice)
    assert reservation["status"] == "expired"
    status, problem, _ = await hub.call("POST", f"/api/v1/reservations/{body['id']}/commit", token=hub.alice)
    assert status == 409 and problem["code"] == "invalid_transition"


async def test_reservations_that_expire_while_the_hub_is_down_are_released_at_start(
    database_url: str,
) -> None:
    # A long sweep interval: only the sweep a starting hub runs at once can release the stock in time.
    settings = hub_settings(database_url, expiry_interval=60.0)
    async with running_hub(settings) as first:
        product_id = await _setup(first, 5)
        status, _, _ = await first.call(
            "POST",
            "/api/v1/reservations",
            token=first.alice,
            json={**_reserve_body(product_id, 4), "ttl_seconds": 1},
            headers={"Idempotency-Key": "down"},
        )
        assert status == 201
        assert (await _inventory(first, product_id))["available"] == 1
    await asyncio.sleep(1.2)  # the reservation expires while no hub runs
    async with running_hub(settings) as second:
        total = await _inventory(second, product_id)
        for _ in range(50):
            if total["available"] == 5:
                break
            await asyncio.sleep(0.05)
            total = await _inventory(second, product_id)
        assert total == {"on_hand": 5, "reserved": 0, "available": 5, "status": "low_stock"}
