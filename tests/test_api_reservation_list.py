"""GET /api/v1/reservations over real HTTP, on both stores: the caller's own reservations, newest first,
with their lines, page by page; another user's only for admin and service tokens (``sub``)."""

from __future__ import annotations

from typing import Any

from tests.conftest import Hub

LIST = "/api/v1/reservations"


async def _reserve(hub: Hub, who: str, product_id: str, key: str, quantity: int = 1) -> dict[str, Any]:
    status, body, _ = await hub.call(
        "POST",
        LIST,
        token=who,
        json={"lines": [{"product_id": product_id, "warehouse_id": "par-1", "quantity": quantity}]},
        headers={"Idempotency-Key": key},
    )
    assert status == 201, body
    return dict(body)


async def _stocked(hub: Hub) -> str:
    await hub.warehouse("par-1", "eu")
    product = await hub.product("LIST-1")
    await hub.stock(product["id"], "par-1", 100)
    return str(product["id"])


async def _all_pages(hub: Hub, who: str, query: str = "") -> list[list[dict[str, Any]]]:
    pages, cursor = [], None
    while True:
        path = f"{LIST}?limit=2{query}" + (f"&cursor={cursor}" if cursor else "")
        status, body, headers = await hub.call("GET", path, token=who)
        assert status == 200, body
        assert headers["Cache-Control"] == "no-store"  # a user's own data
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages


async def test_a_user_lists_their_own_reservations_newest_first_page_by_page(hub: Hub) -> None:
    product_id = await _stocked(hub)
    made = [await _reserve(hub, hub.alice, product_id, f"a-{i}", quantity=i + 1) for i in range(5)]
    await _reserve(hub, hub.bob, product_id, "b-0")
    committed = made[1]["id"]
    status, _, _ = await hub.call("POST", f"{LIST}/{committed}/commit", token=hub.alice)
    assert status == 200

    pages = await _all_pages(hub, hub.alice)
    assert [len(page) for page in pages] == [2, 2, 1]
    listed = [item for page in pages for item in page]
    assert [r["id"] for r in listed] == [r["id"] for r in reversed(made)]
    assert all(r["owner"] == "alice" for r in listed)
    by_id = {r["id"]: r for r in listed}
    assert by_id[committed]["status"] == "committed"
    assert by_id[made[4]["id"]]["lines"] == [
        {"product_id": product_id, "warehouse_id": "par-1", "quantity": 5}
    ]
    assert by_id[made[4]["id"]] == {**made[4], "updated_at": by_id[made[4]["id"]]["updated_at"]}

    [bobs] = await _all_pages(hub, hub.bob)
    assert [r["owner"] for r in bobs] == ["bob"]


async def test_only_admin_and_service_tokens_list_another_users_reservations(hub: Hub) -> None:
    product_id = await _stocked(hub)
    mine = await _reserve(hub, hub.alice, product_id, "a-0")

    status, body, _ = await hub.call("GET", f"{LIST}?sub=alice", token=hub.bob)
    assert status == 403 and body["code"] == "forbidden"
    for who in (hub.admin, hub.service):
        status, body, _ = await hub.call("GET", f"{LIST}?sub=alice", token=who)
        assert status == 200 and [r["id"] for r in body["items"]] == [mine["id"]]
    status, body, _ = await hub.call("GET", LIST, token=hub.admin)  # without sub: the admin's own
    assert status == 200 and body == {"items": [], "next_cursor": None}
    status, body, _ = await hub.call("GET", f"{LIST}?sub=alice", token=hub.alice)  # oneself, named
    assert status == 200 and len(body["items"]) == 1


async def test_a_listing_needs_a_token_and_refuses_bad_parameters(hub: Hub) -> None:
    status, body, _ = await hub.call("GET", LIST)
    assert status == 401 and body["code"] == "unauthenticated"
    for query, code in (
        ("cursor=not-a-cursor", "invalid_cursor"),
        ("cursor=WyJ4IiwxXQ", "invalid_cursor"),  # ["x", 1]: a list, of the wrong types
        ("limit=0", "invalid_parameter"),
        ("limit=201", "invalid_parameter"),
        ("sub=", "invalid_parameter"),
    ):
        status, body, _ = await hub.call("GET", f"{LIST}?{query}", token=hub.alice)
        assert status == 400 and body["code"] == code, (query, body)
