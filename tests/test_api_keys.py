"""API keys (hub/api_keys.py, hub/routes/api_keys.py) over real HTTP against a real hub, on both backends:
shown once and hashed at rest, scopes, revocation at once (and on another node within the cache's
time), rotation with an overlap, typos refused without a database read, expiry, last use, who manages
keys, strict bodies, and a rate limit per key."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest

from hub.api_keys import CHECKSUM_LENGTH, PREFIX, checksum, mint, new_key_id, parse
from hub.errors import Unauthenticated
from hub.keys import STORE
from hub.ratelimit.limiter import RatePolicy
from tests.conftest import Hub, hub_settings, running_hub, token

KEYS = "/api/v1/api-keys"
PRODUCTS = "/api/v1/products"


async def make_key(hub: Hub, *scopes: str, **extra: Any) -> dict[str, Any]:
    status, body, headers = await hub.call(
        "POST", KEYS, token=hub.admin, json={"name": "warehouse feed", "scopes": list(scopes), **extra}
    )
    assert status == 201, body
    assert headers["Location"] == f"{KEYS}/{body['id']}"
    assert headers["Cache-Control"] == "no-store"
    return dict(body)


async def key_record(hub: Hub, key_id: str) -> dict[str, Any]:
    status, body, _ = await hub.call("GET", f"{KEYS}/{key_id}", token=hub.admin)
    assert status == 200, body
    return dict(body)


async def stored_row(database_url: str, key_id: str) -> dict[str, Any]:
    """The key's row as the database holds it."""
    if database_url.startswith("postgres"):
        conn = await asyncpg.connect(database_url)
        try:
            row = await conn.fetchrow("SELECT * FROM api_keys WHERE id = $1", key_id)
        finally:
            await conn.close()
        assert row is not None
        return dict(row)
    with sqlite3.connect(database_url) as conn:
        conn.row_factory = sqlite3.Row
        found = conn.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
    assert found is not None
    return dict(found)


async def stock_write(hub: Hub, product_id: str, bearer: str, on_hand: int = 5) -> tuple[int, Any, Any]:
    return await hub.call(
        "PUT", f"{PRODUCTS}/{product_id}/inventory/par-1", token=bearer, json={"on_hand": on_hand}
    )


async def inventory_fixture(hub: Hub) -> str:
    product = await hub.product("FEED-1")
    await hub.warehouse("par-1")
    return str(product["id"])


# -- the format ---------------------------------------------------------------------------------


def test_a_key_is_prefix_id_secret_and_checksum_and_any_one_character_changed_is_caught():
    key_id = new_key_id()
    key = mint(key_id)
    assert key.startswith(f"{PREFIX}{key_id}_") and len(key) == 4 + 16 + 1 + 32 + 1 + 6
    assert parse(key) == key_id
    body = key[: -CHECKSUM_LENGTH - 1]
    assert key.endswith("_" + checksum(body))
    for at in range(len(PREFIX), len(key)):
        if key[at] == "_":
            continue
        typo = key[:at] + ("A" if key[at] != "A" else "B") + key[at + 1 :]
        with pytest.raises(Unauthenticated) as refused:
            parse(typo)
        assert refused.value.code == "invalid_api_key"
    assert mint(key_id) != key  # a fresh secret each time


# -- made, shown once, hashed at rest -----------------------------------------------------------


async def test_a_key_is_shown_once_and_only_its_sha256_is_stored(hub, database_url):
    made = await make_key(hub, "inventory:write", "reservations:write", expires_in=3600)
    key, key_id = made["key"], made["id"]
    assert key.startswith(f"shk_{key_id}_")
    assert made["prefix"] == f"shk_{key_id}"
    assert made["scopes"] == ["inventory:write", "reservations:write"]
    assert (made["state"], made["owner"], made["subject"]) == ("active", "root", f"apikey.{key_id}")
    assert made["expires_at"] and made["last_used_at"] is None and made["revoked_at"] is None

    record = await key_record(hub, key_id)
    assert "key" not in record and record["prefix"] == made["prefix"]
    status, listing, _ = await hub.call("GET", KEYS, token=hub.admin)
    assert status == 200 and [k["id"] for k in listing["items"]] == [key_id]
    assert "key" not in listing["items"][0]

    row = await stored_row(database_url, key_id)
    assert row["secret_hash"] == hashlib.sha256(key.encode()).hexdigest()
    secret = key.split("_")[2]
    assert not any(secret in str(value) for value in row.values())


async def test_a_key_reaches_the_routes_of_its_scopes_and_public_ones_and_no_other(hub):
    product_id = await inventory_fixture(hub)
    key = (await make_key(hub, "inventory:write"))["key"]

    status, body, _ = await stock_write(hub, product_id, key, on_hand=7)
    assert (status, body["on_hand"]) == (200, 7)
    status, body, _ = await hub.call(
        "POST", f"{PRODUCTS}/{product_id}/inventory/par-1/adjustments", token=key, json={"delta": 2}
    )
    assert (status, body["on_hand"]) == (200, 9)
    status, _, _ = await hub.call("GET", f"{PRODUCTS}/{product_id}/inventory", token=key)  # public
    assert status == 200

    refused = [
        ("POST", PRODUCTS, {"sku": "X-1", "name": "x", "price": "1.00"}, ["catalog:write"]),
        ("POST", "/api/v1/reservations", {"lines": []}, ["reservations:write"]),
        ("POST", "/api/v1/realtime/tickets", None, []),
        ("GET", KEYS, None, []),
    ]
    for method, path, payload, required in refused:
        status, body, headers = await hub.call(method, path, token=key, json=payload)
        assert (status, body["code"]) == (403, "insufficient_scope"), (path, body)
        assert body["required_scopes"] == required
        assert headers["WWW-Authenticate"].startswith('Bearer error="insufficient_scope"')
    # a moderators' filter on a public route is not a key's either (it holds no role)
    status, body, _ = await hub.call("GET", f"{PRODUCTS}/{product_id}/reviews?status=pending", token=key)
    assert (status, body["code"]) == (403, "forbidden")


async def test_a_key_acts_as_its_own_subject_with_no_role(hub):
    product_id = await inventory_fixture(hub)
    await hub.stock(product_id, "par-1", 10)
    made = await make_key(hub, "reservations:write")
    key, subject = made["key"], made["subject"]
    status, reservation, _ = await hub.call(
        "POST",
        "/api/v1/reservations",
        token=key,
        json={"lines": [{"product_id": product_id, "quantity": 1}]},
        headers={"Idempotency-Key": "order-1"},
    )
    assert status == 201 and reservation["owner"] == subject
    status, _, _ = await hub.call("GET", f"/api/v1/reservations/{reservation['id']}", token=key)
    assert status == 200
    status, body, _ = await hub.call("GET", f"/api/v1/reservations/{reservation['id']}", token=hub.alice)
    assert (status, body["code"]) == (404, "reservation_not_found")
    # a reservation of someone else's is not the key's (no service or admin reach)
    status, theirs, _ = await hub.call(
        "POST",
        "/api/v1/reservations",
        token=hub.alice,
        json={"lines": [{"product_id": product_id, "quantity": 1}]},
        headers={"Idempotency-Key": "order-2"},
    )
    assert status == 201
    status, body, _ = await hub.call("POST", f"/api/v1/reservations/{theirs['id']}/release", token=key)
    assert (status, body["code"]) == (404, "reservation_not_found")
    # on the real-time routes too: its own user channel, not another's
    poll = "/api/v1/poll?timeout=0&channels="
    status, _, _ = await hub.call("GET", f"{poll}user:{subject}", token=key)
    assert status == 200
    status, body, _ = await hub.call("GET", f"{poll}user:alice", token=key)
    assert (status, body["code"]) == (403, "channel_forbidden")


# -- revocation, rotation, expiry ---------------------------------------------------------------


async def test_a_revoked_key_is_refused_at_once_on_every_transport(hub):
    product_id = await inventory_fixture(hub)
    made = await make_key(hub, "inventory:write")
    key = made["key"]
    assert (await stock_write(hub, product_id, key))[0] == 200  # read and kept by this node

    status, _, _ = await hub.call("DELETE", f"{KEYS}/{made['id']}", token=hub.admin)
    assert status == 204
    status, body, headers = await stock_write(hub, product_id, key)
    assert (status, body["code"]) == (401, "api_key_revoked")
    assert headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    status, body, _ = await hub.call("GET", "/api/v1/poll?timeout=0&channels=inventory:eu", token=key)
    assert (status, body["code"]) == (401, "api_key_revoked")

    record = await key_record(hub, made["id"])
    assert record["state"] == "revoked" and record["revoked_at"]
    status, _, _ = await hub.call("DELETE", f"{KEYS}/{made['id']}", token=hub.admin)  # again: no change
    assert status == 204
    assert (await key_record(hub, made["id"]))["revoked_at"] == record["revoked_at"]
    status, body, _ = await hub.call("POST", f"{KEYS}/{made['id']}/rotate", token=hub.admin, json={})
    assert (status, body["code"], body["state"]) == (409, "api_key_not_rotatable", "revoked")


async def test_a_rotated_key_works_with_its_successor_inside_the_overlap_and_not_after(hub):
    product_id = await inventory_fixture(hub)
    old = await make_key(hub, "inventory:write")
    assert (await stock_write(hub, product_id, old["key"]))[0] == 200

    status, rotated, headers = await hub.call(
        "POST", f"{KEYS}/{old['id']}/rotate", token=hub.admin, json={"overlap_seconds": 1}
    )
    assert status == 201, rotated
    new_key = rotated["key"]
    assert new_key != old["key"] and rotated["id"] != old["id"]
    assert rotated["rotated_from"] == old["id"] and rotated["scopes"] == old["scopes"]
    assert rotated["subject"] == old["subject"]  # one subject across the chain
    assert rotated["previous"]["state"] == "rotating" and rotated["previous"]["replaced_by"] == rotated["id"]
    assert headers["Location"] == f"{KEYS}/{rotated['id']}"

    assert (await stock_write(hub, product_id, old["key"]))[0] == 200  # inside the overlap: both
    assert (await stock_write(hub, product_id, new_key))[0] == 200
    status, body, _ = await hub.call("POST", f"{KEYS}/{old['id']}/rotate", token=hub.admin, json={})
    assert (status, body["code"]) == (409, "api_key_not_rotatable")  # once per key

    await asyncio.sleep(1.1)
    status, body, _ = await stock_write(hub, product_id, old["key"])
    assert (status, body["code"]) == (401, "api_key_rotated")
    assert (await stock_write(hub, product_id, new_key))[0] == 200
    assert (await key_record(hub, old["id"]))["state"] == "rotated"


async def test_a_rotation_with_no_overlap_refuses_the_old_key_at_once_and_defaults_to_a_day(hub):
    product_id = await inventory_fixture(hub)
    first = await make_key(hub, "inventory:write")
    assert (await stock_write(hub, product_id, first["key"]))[0] == 200
    status, second, _ = await hub.call("POST", f"{KEYS}/{first['id']}/rotate", token=hub.admin)  # no body
    assert status == 201, second
    overlap = datetime.fromisoformat(second["previous"]["overlap_ends_at"])
    assert overlap - datetime.fromisoformat(second["created_at"]) == timedelta(hours=24)

    status, third, _ = await hub.call(
        "POST", f"{KEYS}/{second['id']}/rotate", token=hub.admin, json={"overlap_seconds": 0}
    )
    assert status == 201, third
    status, body, _ = await stock_write(hub, product_id, second["key"])
    assert (status, body["code"]) == (401, "api_key_rotated")
    assert (await stock_write(hub, product_id, third["key"]))[0] == 200
    assert (await stock_write(hub, product_id, first["key"]))[0] == 200  # its own overlap runs on


async def test_an_expired_key_is_refused(hub):
    product_id = await inventory_fixture(hub)
    made = await make_key(hub, "inventory:write", expires_in=1)
    assert (await stock_write(hub, product_id, made["key"]))[0] == 200
    await asyncio.sleep(1.1)
    status, body, _ = await stock_write(hub, product_id, made["key"])
    assert (status, body["code"]) == (401, "api_key_expired")
    assert (await key_record(hub, made["id"]))["state"] == "expired"
    status, body, _ = await hub.call("POST", f"{KEYS}/{made['id']}/rotate", token=hub.admin, json={})
    assert (status, body["code"]) == (409, "api_key_not_rotatable")


async def test_malformed_keys_and_bad_checksums_are_refused_without_reading_the_database(hub):
    made = await make_key(hub, "inventory:write")
    store = hub.app[STORE]
    reads: list[str] = []
    original = store.get_api_key

    async def counted(key_id: str) -> Any:
        reads.append(key_id)
        return await original(key_id)

    store.get_api_key = counted  # type: ignore[method-assign]
    try:
        key = made["key"]
        last = key[-1]
        typos = [
            "shk_",
            "shk_nothing",
            key[:-1] + ("A" if last != "A" else "B"),  # the checksum
            key[:30] + ("x" if key[30] != "x" else "y") + key[31:],  # the secret
            key + "0",
            key[:-7] + "-" + key[-6:],
        ]
        for typo in typos:
            status, body, _ = await hub.call("GET", PRODUCTS, token=typo)
            assert (status, body["code"]) == (401, "invalid_api_key"), typo
        assert reads == []

        # Well formed, with a good checksum: the database is asked, and says no.
        for stranger in (mint(new_key_id()), mint(made["id"])):
            status, body, _ = await hub.call("GET", PRODUCTS, token=stranger)
            assert (status, body["code"]) == (401, "invalid_api_key")
        assert len(reads) == 2
    finally:
        del store.get_api_key


async def test_last_used_at_is_recorded_once_a_minute_not_per_request(hub, database_url):
    product_id = await inventory_fixture(hub)
    made = await make_key(hub, "inventory:write")
    assert (await stock_write(hub, product_id, made["key"]))[0] == 200
    deadline = time.monotonic() + 3
    while (row := await stored_row(database_url, made["id"]))["last_used_at"] is None:
        assert time.monotonic() < deadline, "last_used_at was never written"
        await asyncio.sleep(0.05)
    first = row["last_used_at"]
    assert abs(first / 1e6 - time.time()) < 5
    for _ in range(5):
        assert (await stock_write(hub, product_id, made["key"]))[0] == 200
    await asyncio.sleep(0.3)
    assert (await stored_row(database_url, made["id"]))["last_used_at"] == first
    assert (await key_record(hub, made["id"]))["last_used_at"]


# -- who manages keys, and what they send -------------------------------------------------------


async def test_only_admins_manage_keys(hub):
    made = await make_key(hub, *sorted(["catalog:write", "inventory:write", "reservations:write"]))
    routes = [
        ("POST", KEYS, {"name": "x", "scopes": ["inventory:write"]}),
        ("GET", KEYS, None),
        ("GET", f"{KEYS}/{made['id']}", None),
        ("DELETE", f"{KEYS}/{made['id']}", None),
        ("POST", f"{KEYS}/{made['id']}/rotate", {}),
    ]
    for method, path, payload in routes:
        status, body, _ = await hub.call(method, path, json=payload)
        assert (status, body["code"]) == (401, "unauthenticated"), path
        for who in (hub.alice, hub.service, token("mod", "moderator")):
            status, body, _ = await hub.call(method, path, token=who, json=payload)
            assert (status, body["code"]) == (403, "forbidden"), (path, body)
        status, body, _ = await hub.call(method, path, token=made["key"], json=payload)
        assert (status, body["code"]) == (403, "insufficient_scope"), (path, body)
    assert (await key_record(hub, made["id"]))["state"] == "active"


async def test_bodies_ids_and_cursors_are_checked(hub):
    bad_bodies = [
        ({"name": "x", "scopes": ["inventory:write"], "owner": "mallory"}, "owner", "unknown_field"),
        ({"name": "x", "scopes": ["inventory:write"], "expires_at": 1}, "expires_at", "unknown_field"),
        ({"name": "x", "scopes": ["admin"]}, "scopes", "invalid_choice"),
        ({"name": "x", "scopes": []}, "scopes", "out_of_range"),
        ({"name": "x", "scopes": ["inventory:write", "inventory:write"]}, "scopes", "duplicate_item"),
        ({"name": "", "scopes": ["inventory:write"]}, "name", "too_short"),
        ({"scopes": ["inventory:write"]}, "name", "required"),
        ({"name": "x", "scopes": ["inventory:write"], "expires_in": 0}, "expires_in", "out_of_range"),
    ]
    for payload, field, code in bad_bodies:
        status, body, _ = await hub.call("POST", KEYS, token=hub.admin, json=payload)
        assert (status, body["code"]) == (400, "validation_failed"), payload
        assert {"field": field, "code": code} in [
            {"field": e["field"], "code": e["code"]} for e in body["errors"]
        ]

    made = await make_key(hub, "inventory:write")
    rotate = f"{KEYS}/{made['id']}/rotate"
    for payload in ({"overlap": 10}, {"overlap_seconds": -1}, {"overlap_seconds": 10**9}):
        status, body, _ = await hub.call("POST", rotate, token=hub.admin, json=payload)
        assert (status, body["code"]) == (400, "validation_failed"), payload
    assert (await key_record(hub, made["id"]))["state"] == "active"  # nothing changed

    for path in (f"{KEYS}/not-an-id", f"{KEYS}/{made['id']}x"):
        status, body, _ = await hub.call("GET", path, token=hub.admin)
        assert (status, body["code"]) == (400, "invalid_id")
    unknown = new_key_id()
    for method, path in (
        ("GET", f"{KEYS}/{unknown}"),
        ("DELETE", f"{KEYS}/{unknown}"),
        ("POST", f"{KEYS}/{unknown}/rotate"),
    ):
        status, body, _ = await hub.call(method, path, token=hub.admin, json={} if method == "POST" else None)
        assert (status, body["code"]) == (404, "api_key_not_found"), path
    status, body, _ = await hub.call("GET", f"{KEYS}?cursor=bm9wZQ", token=hub.admin)
    assert (status, body["code"]) == (400, "invalid_cursor")


async def test_the_listing_pages_newest_first(hub):
    ids = [(await make_key(hub, "inventory:write", name=f"k{n}"))["id"] for n in range(5)]
    seen: list[str] = []
    cursor = ""
    while True:
        status, page, _ = await hub.call("GET", f"{KEYS}?limit=2{cursor}", token=hub.admin)
        assert status == 200 and len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert seen == list(reversed(ids))


# -- across nodes, and rate limits --------------------------------------------------------------


async def test_a_revocation_reaches_another_node_within_its_cache_time(pg):
    settings = hub_settings(pg, api_key_cache_seconds=0.5)
    async with running_hub(settings) as first, running_hub(settings) as second:
        made = await make_key(first, "inventory:write")
        status, _, _ = await second.call("GET", PRODUCTS, token=made["key"])  # kept by the second node
        assert status == 200
        status, _, _ = await first.call("DELETE", f"{KEYS}/{made['id']}", token=first.admin)
        assert status == 204
        revoked_at = time.monotonic()
        status, body, _ = await first.call("GET", PRODUCTS, token=made["key"])
        assert (status, body["code"]) == (401, "api_key_revoked")
        while True:
            status, body, _ = await second.call("GET", PRODUCTS, token=made["key"])
            if status == 401:
                break
            assert time.monotonic() - revoked_at < 0.5 + 0.25, "the other node kept the key too long"
            await asyncio.sleep(0.02)
        assert body["code"] == "api_key_revoked"


async def test_each_key_has_its_own_rate_limit(tmp_path):
    settings = hub_settings(
        str(tmp_path / "hub.sqlite3"),
        rate_limit_write=RatePolicy(1, 60.0, 2),
        rate_limit_exempt_roles=("service", "admin"),  # the admin's set-up does not count here
    )
    async with running_hub(settings) as hub:
        product_id = await inventory_fixture(hub)
        first = (await make_key(hub, "inventory:write", name="a"))["key"]
        second = (await make_key(hub, "inventory:write", name="b"))["key"]
        for _ in range(2):
            assert (await stock_write(hub, product_id, first))[0] == 200
        status, body, headers = await stock_write(hub, product_id, first)
        assert (status, body["code"]) == (429, "rate_limited")
        assert headers["RateLimit-Policy"] == '"write";q=2;w=120'
        # another key from the same address has its own budget
        assert (await stock_write(hub, product_id, second))[0] == 200
