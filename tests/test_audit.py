"""The audit log through a real hub, on both backends: what is recorded (privileged writes that
succeeded, with their request id) and what is not, who may read it, its filters and pages, and a table
the database itself keeps append-only."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import Hub, token
from tests.privacy_helpers import raw_error_types, raw_execute, raw_fetch

MODERATOR = token("mod", "moderator")


async def audit(hub: Hub, query: str = "", bearer: str | None = None) -> dict[str, Any]:
    status, body, _ = await hub.call("GET", f"/api/v1/audit{query}", token=bearer or hub.admin)
    assert status == 200, body
    return dict(body)


async def reserve(hub: Hub, product_id: str, who: str) -> str:
    status, body, _ = await hub.call(
        "POST",
        "/api/v1/reservations",
        token=who,
        json={"lines": [{"product_id": product_id, "quantity": 1}]},
        headers={"Idempotency-Key": f"k-{uuid.uuid4()}"},
    )
    assert status == 201, body
    return str(body["id"])


async def test_privileged_writes_are_recorded_with_who_what_target_and_request_id(hub):
    status, product, headers = await hub.call(
        "POST",
        "/api/v1/products",
        token=hub.admin,
        json={"sku": "LIP-1", "name": "Lipstick", "price": "9.90"},
        headers={"X-Request-Id": "client-req.42"},
    )
    assert status == 201 and headers["X-Request-Id"] == "client-req.42"
    await hub.warehouse("par-1", "eu")
    await hub.stock(product["id"], "par-1", 10)
    reservation_id = await reserve(hub, product["id"], hub.alice)  # a customer's: not recorded
    status, _, headers = await hub.call(
        "POST", f"/api/v1/reservations/{reservation_id}/commit", token=hub.service
    )
    assert status == 200
    commit_request = headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", commit_request)  # made by the hub when the client sent none
    status, review, _ = await hub.call(
        "POST", f"/api/v1/products/{product['id']}/reviews", token=hub.alice, json={"rating": 4}
    )
    assert status == 201, review
    status, _, _ = await hub.call(
        "POST", f"/api/v1/reviews/{review['id']}/moderation", token=MODERATOR, json={"action": "flag"}
    )
    assert status == 200

    items = (await audit(hub))["items"]
    assert [e["action"] for e in items] == [
        "moderate_review",
        "commit_reservation",
        "set_stock",
        "create_warehouse",
        "create_product",
    ]
    assert [e["seq"] for e in items] == sorted((e["seq"] for e in items), reverse=True)
    moderated, committed, stocked, warehouse, created = items
    assert moderated["actor"] == {"sub": "mod", "roles": ["moderator"]}
    assert moderated["target"] == {"kind": "review", "id": review["id"]}
    assert committed["actor"] == {"sub": "checkout", "roles": ["service"]}
    assert committed["target"] == {"kind": "reservation", "id": reservation_id}
    assert committed["request_id"] == commit_request
    assert committed["detail"] == {"method": "POST", "status": 200}
    assert stocked["target"] == {"kind": "product", "id": product["id"]}
    assert warehouse["target"] == {"kind": "warehouse", "id": "par-1"}  # (from the Location it created)
    assert created["target"] == {"kind": "product", "id": product["id"]}
    assert created["request_id"] == "client-req.42"
    assert created["actor"] == {"sub": "root", "roles": ["admin"]}
    at = datetime.fromisoformat(created["at"])
    assert abs(at - datetime.now(UTC)) < timedelta(minutes=1)


async def test_an_api_keys_writes_are_recorded_with_the_key(hub):
    status, made, _ = await hub.call(
        "POST",
        "/api/v1/api-keys",
        token=hub.admin,
        json={"name": "catalog feed", "scopes": ["catalog:write"]},
    )
    assert status == 201, made
    status, product, _ = await hub.call(
        "POST", "/api/v1/products", token=made["key"], json={"sku": "FEED-1", "name": "Feed", "price": "2"}
    )
    assert status == 201, product
    by_key, creation = (await audit(hub))["items"]
    assert (by_key["action"], by_key["actor"]["sub"]) == ("create_product", made["subject"])
    assert by_key["detail"]["api_key_id"] == made["id"]
    assert by_key["target"] == {"kind": "product", "id": product["id"]}
    # The key's creation is an admin's action too; its secret is in no entry.
    assert (creation["action"], creation["target"]) == (
        "create_api_key",
        {"kind": "api_key", "id": made["id"]},
    )
    assert made["key"] not in str(creation)


async def test_reads_refusals_and_customers_writes_are_not_actions_on_record(hub):
    product = await hub.product("SOAP-1")
    await hub.call("GET", f"/api/v1/products/{product['id']}", token=hub.admin)  # a read
    missing = str(uuid.uuid4())
    status, _, _ = await hub.call("PATCH", f"/api/v1/products/{missing}", token=hub.admin, json={"name": "x"})
    assert status == 404  # refused: nothing changed
    status, _, _ = await hub.call("POST", "/api/v1/products", token=hub.alice, json={"sku": "X"})
    assert status == 403
    status, _, _ = await hub.call(
        "POST", f"/api/v1/products/{product['id']}/reviews", token=hub.alice, json={"rating": 5}
    )
    assert status == 201  # a customer's own write
    # A request id that is not well-formed is not taken: the hub names the request itself.
    status, _, headers = await hub.call("GET", "/healthz", headers={"X-Request-Id": "no spaces <allowed>"})
    assert status == 200 and re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-Id"])
    assert [e["action"] for e in (await audit(hub))["items"]] == ["create_product"]


async def test_only_admins_read_the_audit_log(hub):
    status, body, _ = await hub.call("GET", "/api/v1/audit")
    assert (status, body["code"]) == (401, "unauthenticated")
    for bearer in (hub.alice, MODERATOR, hub.service):
        status, body, _ = await hub.call("GET", "/api/v1/audit", token=bearer)
        assert (status, body["code"]) == (403, "forbidden")


async def test_the_filters_match_actor_action_target_and_time(hub):
    first = await hub.product("A-1")
    await asyncio.sleep(0.01)
    middle = datetime.now(UTC)
    await asyncio.sleep(0.01)
    other_admin = token("ops-admin", "admin")
    status, second, _ = await hub.call(
        "POST", "/api/v1/products", token=other_admin, json={"sku": "A-2", "name": "A-2", "price": "1"}
    )
    assert status == 201
    await hub.call("PATCH", f"/api/v1/products/{first['id']}", token=hub.admin, json={"name": "renamed"})

    def actions(page: dict[str, Any]) -> list[str]:
        return [e["action"] for e in page["items"]]

    assert actions(await audit(hub, "?actor=ops-admin")) == ["create_product"]
    assert actions(await audit(hub, "?action=update_product")) == ["update_product"]
    assert actions(await audit(hub, f"?target={first['id']}")) == ["update_product", "create_product"]
    assert actions(await audit(hub, f"?target_kind=product&target={second['id']}")) == ["create_product"]
    assert actions(await audit(hub, "?target_kind=warehouse")) == []
    since = middle.isoformat().replace("+00:00", "Z")
    assert actions(await audit(hub, f"?since={since}")) == ["update_product", "create_product"]
    until = middle.isoformat()
    page = await audit(hub, "?" + "&".join([f"until={until.replace('+', '%2B')}", "actor=root"]))
    assert [e["target"]["id"] for e in page["items"]] == [first["id"]]
    for query, parameter in (
        ("?since=yesterday", "since"),
        ("?until=2025-01-01T00:00:00", "until"),  # no offset: which day is that?
        ("?actor=", "actor"),
        ("?action=DROP%20TABLE", "action"),
        ("?limit=0", "limit"),
        ("?acter=root", "acter"),  # a misspelt filter is refused, not ignored
    ):
        status, body, _ = await hub.call("GET", f"/api/v1/audit{query}", token=hub.admin)
        assert (status, body["code"], body.get("parameter")) == (400, "invalid_parameter", parameter), query


async def test_pages_follow_each_other_newest_first_without_repeats_or_gaps(hub):
    ids = [(await hub.product(f"P-{n}"))["id"] for n in range(7)]
    seen: list[dict[str, Any]] = []
    page = await audit(hub, "?action=create_product&limit=3")
    sizes = []
    while True:
        sizes.append(len(page["items"]))
        seen += page["items"]
        if page["next_cursor"] is None:
            assert "next" not in page
            break
        await hub.product(f"LATE-{len(seen)}")  # newer entries do not shift the pages already begun
        status, page, _ = await hub.call("GET", page["next"], token=hub.admin)
        assert status == 200, page
    assert sizes == [3, 3, 1]
    assert [e["target"]["id"] for e in seen] == list(reversed(ids))
    for cursor in ("garbage", "WyJuZXdlc3QiLCAxLCAyXQ"):  # not base64 JSON; another listing's
        status, body, _ = await hub.call("GET", f"/api/v1/audit?cursor={cursor}", token=hub.admin)
        assert (status, body["code"]) == (400, "invalid_cursor")


async def test_the_database_keeps_the_log_append_only(hub, database_url):
    await hub.product("KEEP-1")
    (row,) = await raw_fetch(database_url, "SELECT seq, actor_sub FROM audit_log")
    assert row["actor_sub"] == "root"
    errors = raw_error_types(database_url)
    for statement, args in (
        ("DELETE FROM audit_log", ()),
        ("UPDATE audit_log SET action = 'delete_product'", ()),
        ("UPDATE audit_log SET detail = '{}'", ()),
        ("UPDATE audit_log SET actor_sub = 'someone-else'", ()),  # only to a pseudonym
        ("UPDATE audit_log SET at = at + 1", ()),
    ):
        with pytest.raises(errors, match="append-only"):
            await raw_execute(database_url, statement, *args)
    # An erasure's pseudonymisation is the one change allowed, and only once.
    await raw_execute(database_url, "UPDATE audit_log SET actor_sub = 'erased:0123'")
    with pytest.raises(errors, match="append-only"):
        await raw_execute(database_url, "UPDATE audit_log SET actor_sub = 'erased:4567'")
    with pytest.raises(errors, match="append-only"):
        await raw_execute(database_url, "UPDATE audit_log SET actor_sub = 'root'")
    (row,) = await raw_fetch(database_url, "SELECT seq, actor_sub, action FROM audit_log")
    assert (row["actor_sub"], row["action"]) == ("erased:0123", "create_product")
