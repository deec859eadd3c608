"""Webhooks (hub/webhooks/, hub/routes/webhooks.py) over real HTTP against a real hub, on both backends, to a
real local receiver that verifies every signature with the Standard Webhooks spec's own library and fails,
times out and redirects as scripted: every event delivered, in order per key, duplicates only under one
webhook-id; SSRF refusals at creation and at delivery; dead letters, auto-disable with a notice on the
owner's channel, replays, the test ping; who may manage which endpoint; strict bodies."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import random
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from hub.keys import STORE
from hub.keys import WEBHOOKS as WORKER
from hub.pii import new_key_spec
from hub.webhooks.delivery import RetryPolicy
from hub.webhooks.signing import new_secret, secret_key, signature
from hub.webhooks.targets import AllowList, TargetRefused, refusal_reason, resolve_checked
from storage.db import Tx
from storage.webhooks import WebhookEndpoint
from tests.conftest import Hub, hub_settings, redis_url, running_hub
from tests.realtime_helpers import eventually, poll
from tests.webhook_helpers import WEBHOOKS, create_webhook, deliveries, receiver

REGION = "eu"
FAST = {
    "region": REGION,
    "webhook_allow_hosts": ("127.0.0.1",),
    "webhook_timeout_seconds": 0.5,
    "webhook_lease_seconds": 2.0,
    "webhook_retry_base_seconds": 0.05,
    "webhook_retry_max_seconds": 0.2,
    "webhook_poll_seconds": 0.1,
}


def webhook_hub(database_url: str, **overrides: Any) -> Any:
    return running_hub(hub_settings(database_url, **{**FAST, **overrides}))


async def api_key(hub: Hub, *scopes: str) -> tuple[str, str]:
    """(key, the subject it acts as)."""
    status, body, _ = await hub.call(
        "POST", "/api/v1/api-keys", token=hub.admin, json={"name": "partner", "scopes": list(scopes)}
    )
    assert status == 201, body
    return body["key"], body["subject"]


async def catalog(hub: Hub, *skus: str) -> list[str]:
    await hub.warehouse("par-1", REGION)
    return [str((await hub.product(sku))["id"]) for sku in skus]


def by_key(received: list[Any]) -> dict[tuple[str, str], list[tuple[int, str]]]:
    """Per product × warehouse, the (version, webhook-id) of every request, in arrival order."""
    seen: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
    for r in received:
        data = r.body["data"]
        seen[(data["product_id"], data["warehouse_id"])].append((data["version"], r.webhook_id))
    return seen


def assert_in_order_without_foreign_duplicates(received: list[Any]) -> None:
    ids_of: dict[tuple[str, str, int], set[str]] = defaultdict(set)
    for key, arrivals in by_key(received).items():
        versions = [v for v, _ in arrivals]
        assert versions == sorted(versions), f"out of order for {key}: {versions}"
        for version, webhook_id in arrivals:
            ids_of[(*key, version)].add(webhook_id)
    # an event sent twice (a retry after a timeout) went under the same webhook-id
    assert all(len(ids) == 1 for ids in ids_of.values()), ids_of


# -- delivery ---------------------------------------------------------------------------------------


async def test_stock_changes_arrive_signed_in_order_per_key_through_failures_timeouts_and_redirects(
    database_url,
):
    async with receiver() as target, webhook_hub(database_url) as hub:
        first, second = await catalog(hub, "A-1", "B-1")
        made = await create_webhook(hub, hub.admin, target.url, [{"type": "stock.changed"}])
        target.secret = made["secret"]
        assert made["secret"].startswith("whsec_") and made["enabled"] is True
        # the receiver fails twice, stalls past the hub's timeout once, redirects once, fails once more
        target.script.extend(["fail", "fail", "timeout", "redirect", "fail"])
        target.stall = 1.5
        for n in range(1, 11):
            await hub.stock(first, "par-1", n)
            await hub.stock(second, "par-1", 100 + n)

        def complete() -> bool:
            delivered = by_key(target.answered_ok())
            return all(
                sorted({v for v, _ in delivered.get((p, "par-1"), [])}) == list(range(1, 11))
                for p in (first, second)
            )

        await target.wait_until(complete, what="every stock version answered 2xx")
        await asyncio.sleep(0.3)  # any late retry of the stalled request lands too
        assert target.received and all(r.verified for r in target.received), "a signature failed"
        assert_in_order_without_foreign_duplicates(target.received)
        assert target.followed == [], "a redirect was followed"
        answers = {r.answered for r in target.received}
        assert {"fail", "timeout", "redirect", "ok"} <= answers

        body = target.answered_ok()[0].body
        assert set(body) == {"type", "timestamp", "position", "data"} and body["type"] == "stock.changed"
        assert body["position"].startswith(f"inventory.{REGION}@")
        assert body["data"]["sku"] in ("A-1", "B-1")

        log = await deliveries(hub, hub.admin, made["id"])
        codes = [entry["status_code"] for entry in log]
        assert 500 in codes and 302 in codes and 204 in codes
        errors = " ".join(entry["error"] or "" for entry in log)
        assert "timeout" in errors and "redirects are not followed" in errors
        assert {entry["outcome"] for entry in log} == {"delivered", "retry"}
        assert all(entry["latency_ms"] >= 0 for entry in log)


async def test_only_events_matching_the_types_and_filters_are_sent(database_url):
    async with receiver() as target, webhook_hub(database_url) as hub:
        await hub.warehouse("lyo-1", REGION)
        wanted, other = await catalog(hub, "KEEP-1", "SKIP-1")
        made = await create_webhook(
            hub,
            hub.admin,
            target.url,
            [{"type": "stock.*", "filters": {"sku": ["KEEP-1"], "warehouse_id": ["par-1"]}}],
        )
        target.secret = made["secret"]
        await hub.stock(other, "par-1", 5)  # another SKU
        await hub.stock(wanted, "lyo-1", 5)  # another warehouse
        await hub.stock(wanted, "par-1", 7)  # this one
        await target.wait_until(lambda: len(target.received) >= 1)
        await asyncio.sleep(0.5)
        assert [(r.body["data"]["sku"], r.body["data"]["warehouse_id"]) for r in target.received] == [
            ("KEEP-1", "par-1")
        ]


async def test_a_keys_endpoint_hears_its_own_reservations_and_an_admins_hears_everyones(database_url):
    async with receiver() as for_key, receiver() as for_admin, webhook_hub(database_url) as hub:
        (product,) = await catalog(hub, "RES-1")
        await hub.stock(product, "par-1", 50)
        key, subject = await api_key(hub, "webhooks:manage", "reservations:write")
        mine = await create_webhook(hub, key, for_key.url, [{"type": "reservation.*"}])
        everyone = await create_webhook(hub, hub.admin, for_admin.url, [{"type": "reservation.created"}])
        assert mine["owner"] == subject and everyone["owner"] == "root"
        for_key.secret, for_admin.secret = mine["secret"], everyone["secret"]
        line = {"lines": [{"product_id": product, "quantity": 1}]}
        made = {}
        for bearer, idem in ((key, "k-1"), (hub.alice, "a-1")):
            status, body, _ = await hub.call(
                "POST", "/api/v1/reservations", token=bearer, json=line, headers={"Idempotency-Key": idem}
            )
            assert status == 201, body
            made[bearer] = body["id"]
        for bearer in (key, hub.alice):
            status, body, _ = await hub.call(
                "POST", f"/api/v1/reservations/{made[bearer]}/release", token=bearer
            )
            assert status == 200, body
        await for_key.wait_until(lambda: len(for_key.received) >= 2)
        await for_admin.wait_until(lambda: len(for_admin.received) >= 2)
        await asyncio.sleep(0.5)
        assert all(r.verified for r in for_key.received + for_admin.received)
        # the key's: its own reservation, made then released, in that order (one key: the reservation)
        assert [(r.body["type"], r.body["data"]["reservation"]["id"]) for r in for_key.received] == [
            ("reservation.created", made[key]),
            ("reservation.released", made[key]),
        ]
        # the admin's: every user's, of the one type it asked for
        assert sorted((r.body["type"], r.body["data"]["sub"]) for r in for_admin.received) == sorted(
            [("reservation.created", subject), ("reservation.created", "alice")]
        )


async def test_a_patch_adds_event_types_from_then_on(database_url):
    async with receiver() as target, webhook_hub(database_url) as hub:
        (product,) = await catalog(hub, "LATE-1")
        made = await create_webhook(hub, hub.admin, target.url, [{"type": "review.published"}])
        target.secret = made["secret"]
        await hub.stock(product, "par-1", 1)  # not subscribed yet
        await asyncio.sleep(0.5)
        status, body, _ = await hub.call(
            "PATCH",
            f"{WEBHOOKS}/{made['id']}",
            token=hub.admin,
            json={"events": [{"type": "review.published"}, {"type": "stock.changed"}]},
        )
        assert status == 200 and [e["type"] for e in body["events"]] == ["review.published", "stock.changed"]
        await hub.stock(product, "par-1", 2)
        await hub.stock(product, "par-1", 3)
        await target.wait_until(lambda: len(target.received) >= 2)
        await asyncio.sleep(0.5)
        assert [r.body["data"]["on_hand"] for r in target.received] == [2, 3]
        assert all(r.verified for r in target.received)


async def _school(hub: Hub, school_id: str, key_id: str, key: str) -> str:
    """A school bound to the key, and an asset of it; the asset's id."""
    status, body, _ = await hub.call(
        "POST",
        "/api/v1/schools",
        token=hub.admin,
        json={"id": school_id, "name": school_id, "region": REGION, "api_keys": [key_id]},
    )
    assert status == 201, body
    status, asset, _ = await hub.call(
        "POST",
        f"/api/v1/schools/{school_id}/assets",
        token=key,
        json={"asset_tag": "BUS-7", "kind": "vehicle", "make": "Ford", "model": "F-450", "year": 2019},
    )
    assert status == 201, asset
    return str(asset["id"])


async def test_a_school_platforms_endpoint_hears_its_own_schools_parts_requests(database_url):
    async with receiver() as for_key, receiver() as for_admin, webhook_hub(database_url) as hub:
        (product,) = await catalog(hub, "PAD-1")
        await hub.stock(product, "par-1", 10)
        key, subject = await api_key(hub, "parts-requests:write", "webhooks:manage")
        other, other_subject = await api_key(hub, "parts-requests:write")
        assets = {
            "lincoln": await _school(hub, "lincoln", subject.removeprefix("apikey."), key),
            "other": await _school(hub, "other", other_subject.removeprefix("apikey."), other),
        }
        bare, _ = await api_key(hub, "webhooks:manage")
        status, body, _ = await hub.call(
            "POST", WEBHOOKS, token=bare, json={"url": for_key.url, "events": [{"type": "parts_request.*"}]}
        )
        assert (status, body["code"], body["required_scopes"]) == (
            403,
            "insufficient_scope",
            ["parts-requests:write"],
        )
        mine = await create_webhook(hub, key, for_key.url, [{"type": "parts_request.*"}])
        everyone = await create_webhook(hub, hub.admin, for_admin.url, [{"type": "parts_request.reserved"}])
        for_key.secret, for_admin.secret = mine["secret"], everyone["secret"]
        made = {}
        for school, bearer in (("lincoln", key), ("other", other)):
            status, body, _ = await hub.call(
                "POST",
                f"/api/v1/schools/{school}/parts-requests",
                token=bearer,
                json={
                    "asset_id": assets[school],
                    "needed_by": "2031-09-01",
                    "lines": [{"sku": "PAD-1", "quantity": 1}],
                },
                headers={"Idempotency-Key": f"req-{school}"},
            )
            assert status == 201, body
            made[school] = body["id"]
        await for_key.wait_until(lambda: len(for_key.received) >= 2)
        await for_admin.wait_until(lambda: len(for_admin.received) >= 2)
        await asyncio.sleep(0.5)
        assert [(r.body["type"], r.body["data"]["request_id"]) for r in for_key.received] == [
            ("parts_request.created", made["lincoln"]),
            ("parts_request.reserved", made["lincoln"]),
        ]
        assert sorted(r.body["data"]["school_id"] for r in for_admin.received) == ["lincoln", "other"]
        assert {r.body["type"] for r in for_admin.received} == {"parts_request.reserved"}
        assert all(r.verified for r in for_key.received + for_admin.received)


# -- SSRF ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link_local"),  # the cloud's metadata service
        ("100.64.0.1", "reserved"),  # carrier-grade NAT
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "private"),
        ("255.255.255.255", "private"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link_local"),
        ("fc00::1", "private"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "private"),
        ("64:ff9b::a9fe:a9fe", "link_local"),  # NAT64 of 169.254.169.254
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_only_public_unicast_addresses_are_targets(address, reason):
    assert refusal_reason(ipaddress.ip_address(address)) == reason


async def test_the_allow_list_names_hosts_addresses_and_networks():
    allow = AllowList.parse(["localhost", "10.0.0.0/8", "::1"])
    assert await resolve_checked("localhost", 80, allow)
    assert await resolve_checked("10.9.8.7", 80, allow)
    assert await resolve_checked("::1", 80, allow)
    with pytest.raises(TargetRefused) as refused:
        await resolve_checked("127.0.0.1", 80, allow)
    assert (refused.value.code, refused.value.reason) == ("webhook_target_forbidden", "loopback")
    with pytest.raises(ValueError):
        AllowList.parse(["http://x/"])


SSRF_TARGETS = [
    ("http://127.0.0.1:{port}/hook", "webhook_target_forbidden", "loopback"),
    ("http://10.0.0.7/hook", "webhook_target_forbidden", "private"),
    ("http://169.254.169.254/latest/meta-data/", "webhook_target_forbidden", "link_local"),
    ("http://[::1]:{port}/hook", "webhook_target_forbidden", "loopback"),
    ("http://[::ffff:127.0.0.1]:{port}/hook", "webhook_target_forbidden", "loopback"),
    ("http://[fe80::1]/hook", "webhook_target_forbidden", "link_local"),
    ("http://224.0.0.251/hook", "webhook_target_forbidden", "multicast"),
    ("http://localhost:{port}/hook", "webhook_target_forbidden", "loopback"),  # a name resolving to loopback
    ("http://no-such-host.invalid/hook", "webhook_target_unresolvable", "unresolvable"),
]


async def test_private_loopback_link_local_and_multicast_targets_are_refused_with_a_stable_code(database_url):
    async with receiver() as target, webhook_hub(database_url, webhook_allow_hosts=()) as hub:
        for template, code, reason in SSRF_TARGETS:
            url = template.format(port=target.port)
            status, body, _ = await hub.call(
                "POST", WEBHOOKS, token=hub.admin, json={"url": url, "events": [{"type": "stock.changed"}]}
            )
            assert (status, body["code"], body["reason"]) == (422, code, reason), (url, body)
        # and when an endpoint's URL is changed to one
        made = await create_webhook(hub, hub.admin, "https://93.184.215.14/hook", [{"type": "stock.changed"}])
        status, body, _ = await hub.call(
            "PATCH",
            f"{WEBHOOKS}/{made['id']}",
            token=hub.admin,
            json={"url": f"http://127.0.0.1:{target.port}/"},
        )
        assert (status, body["code"]) == (422, "webhook_target_forbidden")
        status, listing, _ = await hub.call("GET", WEBHOOKS, token=hub.admin)
        assert [w["url"] for w in listing["items"]] == ["https://93.184.215.14/hook"]
        assert target.received == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_the_target_is_checked_again_at_every_delivery(database_url, host):
    """An endpoint whose host now is, or resolves to, a loopback address (DNS rebinding; here its stored URL
    is changed behind the API's back) is refused at delivery — an IP literal before the request, a name by
    the resolver the connection uses: nothing reaches the receiver, the log says why."""
    async with receiver() as target, webhook_hub(database_url, webhook_allow_hosts=()) as hub:
        made = await create_webhook(hub, hub.admin, "https://93.184.215.14/hook", [{"type": "stock.changed"}])
        rebound = target.url.replace("127.0.0.1", host)

        async def rebind(tx: Tx) -> None:
            await tx.execute(
                "UPDATE webhook_endpoints SET url = $1, version = version + 1 WHERE id = $2",
                rebound,
                made["id"],
            )

        await hub.app[STORE].db.run(rebind)
        await asyncio.sleep(1.0)  # a lease round sees the new version
        status, _, _ = await hub.call("POST", f"{WEBHOOKS}/{made['id']}/test", token=hub.admin)
        assert status == 202

        async def refused() -> bool:
            return any(
                "webhook_target_forbidden" in (e["error"] or "")
                for e in await deliveries(hub, hub.admin, made["id"])
            )

        await eventually(refused, within=10, what="the refused attempt in the log")
        assert target.received == []


async def test_an_allowed_host_name_is_delivered_to_through_the_checking_resolver(database_url):
    async with receiver() as target, webhook_hub(database_url, webhook_allow_hosts=("localhost",)) as hub:
        made = await create_webhook(
            hub, hub.admin, target.url.replace("127.0.0.1", "localhost"), [{"type": "stock.changed"}]
        )
        target.secret = made["secret"]
        status, _, _ = await hub.call("POST", f"{WEBHOOKS}/{made['id']}/test", token=hub.admin)
        assert status == 202
        await target.wait_until(lambda: len(target.received) == 1)
        assert target.received[0].verified


# -- the test ping, dead letters, auto-disable, replays ---------------------------------------------


async def test_a_test_ping_is_signed_and_logged(database_url):
    async with receiver() as target, webhook_hub(database_url) as hub:
        key, _ = await api_key(hub, "webhooks:manage")
        made = await create_webhook(hub, key, target.url, [{"type": "review.published"}])
        target.secret = made["secret"]
        status, body, _ = await hub.call("POST", f"{WEBHOOKS}/{made['id']}/test", token=key)
        assert status == 202 and body["event_type"] == "webhook.ping"
        await target.wait_until(lambda: len(target.received) == 1)
        ping = target.received[0]
        assert ping.verified and ping.webhook_id == body["message_id"]
        assert ping.body["type"] == "webhook.ping" and ping.body["data"]["webhook_id"] == made["id"]
        assert abs(int(ping.timestamp) - time.time()) < 30

        async def logged() -> bool:
            return [(e["message_id"], e["outcome"]) for e in await deliveries(hub, key, made["id"])] == [
                (body["message_id"], "delivered")
            ]

        await eventually(logged, within=5, what="the ping in the delivery log")


async def test_a_failing_endpoint_dead_letters_then_is_disabled_with_a_notice_to_its_owner(database_url):
    settings = {
        "webhook_retry_window_seconds": 1.0,
        "webhook_max_attempts": 3,
        "webhook_disable_after_dead_letters": 2,
        "webhook_disable_after_seconds": 3600.0,
    }
    async with receiver() as target, webhook_hub(database_url, **settings) as hub:
        (product,) = await catalog(hub, "DOWN-1")
        key, subject = await api_key(hub, "webhooks:manage")
        made = await create_webhook(hub, key, target.url, [{"type": "stock.changed"}])
        target.secret = made["secret"]
        target.default = "fail"
        status, start = await poll(hub, f"user:{subject}", wait=0, headers={"Authorization": f"Bearer {key}"})
        assert status == 200, start
        for n in (1, 2, 3):
            await hub.stock(product, "par-1", n)

        async def disabled() -> bool:
            status, body, _ = await hub.call("GET", f"{WEBHOOKS}/{made['id']}", token=key)
            return status == 200 and body["enabled"] is False

        await eventually(disabled, within=20, what="the endpoint disabled")
        status, body, _ = await hub.call("GET", f"{WEBHOOKS}/{made['id']}", token=key)
        assert body["disabled_reason"] == "failing" and body["dead_letters"] >= 2 and body["failing_since"]
        # the owner hears of it on its own channel
        status, notice = await poll(
            hub, f"user:{subject}", cursor=start["cursor"], wait=5, headers={"Authorization": f"Bearer {key}"}
        )
        assert status == 200, notice
        told = [e["data"] for e in notice["events"] if e["data"]["type"] == "webhook.disabled"]
        assert told and told[0]["webhook_id"] == made["id"] and told[0]["reason"] == "failing"
        # the dead letters, each after its attempts, every attempt logged
        status, dead, _ = await hub.call("GET", f"{WEBHOOKS}/{made['id']}/dead-letters", token=key)
        assert status == 200 and len(dead["items"]) >= 2
        letter = dead["items"][-1]
        assert letter["payload"]["type"] == "stock.changed" and "HTTP 500" in letter["last_error"]
        log = await deliveries(hub, key, made["id"])
        assert {e["outcome"] for e in log} == {"retry", "dead"}
        assert all(e["status_code"] == 500 for e in log)
        # disabled, it is sent nothing more; a test ping is refused until it is enabled again
        count = len(target.received)
        await hub.stock(product, "par-1", 10)
        await asyncio.sleep(1.0)
        assert len(target.received) == count
        status, body, _ = await hub.call("POST", f"{WEBHOOKS}/{made['id']}/test", token=key)
        assert (status, body["code"]) == (409, "webhook_disabled")

        # fixed and enabled again: a dead letter replayed arrives under its own webhook-id
        target.default = "ok"
        status, body, _ = await hub.call(
            "PATCH", f"{WEBHOOKS}/{made['id']}", token=key, json={"enabled": True}
        )
        assert status == 200 and body["enabled"] is True and body["disabled_reason"] is None
        status, body, _ = await hub.call(
            "POST", f"{WEBHOOKS}/{made['id']}/replay", token=key, json={"message_id": letter["message_id"]}
        )
        assert (status, body["queued"]) == (202, 1)
        await target.wait_until(
            lambda: any(r.webhook_id == letter["message_id"] and r.answered == "ok" for r in target.received)
        )
        status, body, _ = await hub.call(
            "POST", f"{WEBHOOKS}/{made['id']}/replay", token=key, json={"message_id": letter["message_id"]}
        )
        assert (status, body["code"]) == (404, "dead_letter_not_found")  # delivered now: no longer dead


async def test_a_replay_sends_messages_again_under_their_own_ids(database_url):
    async with receiver() as target, webhook_hub(database_url) as hub:
        (product,) = await catalog(hub, "AGAIN-1")
        made = await create_webhook(hub, hub.admin, target.url, [{"type": "stock.changed"}])
        target.secret = made["secret"]
        for n in range(1, 6):
            await hub.stock(product, "par-1", n)
        await target.wait_until(lambda: len(target.received) == 5)
        first = list(target.received)
        assert [r.body["data"]["version"] for r in first] == [1, 2, 3, 4, 5]
        after_second = first[1].body["position"]
        status, body, _ = await hub.call(
            "POST", f"{WEBHOOKS}/{made['id']}/replay", token=hub.admin, json={"since_position": after_second}
        )
        assert (status, body["queued"]) == (202, 3)
        await target.wait_until(lambda: len(target.received) == 8)
        assert [(r.webhook_id, r.body["data"]["version"]) for r in target.received[5:]] == [
            (r.webhook_id, r.body["data"]["version"]) for r in first[2:]
        ]
        assert all(r.verified for r in target.received)
        since = datetime.fromisoformat(first[3].body["timestamp"]).astimezone(UTC).isoformat()
        status, body, _ = await hub.call(
            "POST", f"{WEBHOOKS}/{made['id']}/replay", token=hub.admin, json={"since_time": since}
        )
        assert (status, body["queued"]) == (202, 2)
        await target.wait_until(lambda: len(target.received) == 10)
        assert [r.body["data"]["version"] for r in target.received[8:]] == [4, 5]
        for wrong in (
            {},
            {"since_time": since, "message_id": "msg_" + "a" * 24},
            {"since_time": "yesterday"},
        ):
            status, body, _ = await hub.call(
                "POST", f"{WEBHOOKS}/{made['id']}/replay", token=hub.admin, json=wrong
            )
            assert (status, body["code"]) == (400, "validation_failed"), wrong


# -- who manages what --------------------------------------------------------------------------------


async def test_keys_need_webhooks_manage_and_see_only_their_own_endpoints(database_url):
    async with receiver() as target, webhook_hub(database_url) as hub:
        without, _ = await api_key(hub, "inventory:write")
        status, body, _ = await hub.call(
            "POST", WEBHOOKS, token=without, json={"url": target.url, "events": [{"type": "stock.changed"}]}
        )
        assert (status, body["code"], body["required_scopes"]) == (
            403,
            "insufficient_scope",
            ["webhooks:manage"],
        )
        status, body, _ = await hub.call("GET", WEBHOOKS, token=hub.alice)
        assert (status, body["code"]) == (403, "forbidden")

        first, first_sub = await api_key(hub, "webhooks:manage")
        second, _ = await api_key(hub, "webhooks:manage")
        theirs = await create_webhook(hub, first, target.url, [{"type": "stock.changed"}])
        mine = await create_webhook(
            hub, second, target.url, [{"type": "review.*"}], description="reviews feed"
        )
        # private events need a scope that reads them
        status, body, _ = await hub.call(
            "POST", WEBHOOKS, token=second, json={"url": target.url, "events": [{"type": "reservation.*"}]}
        )
        assert (status, body["code"]) == (403, "insufficient_scope")
        assert body["required_scopes"] == ["reservations:read", "reservations:write"]

        status, listing, _ = await hub.call("GET", WEBHOOKS, token=second)
        assert [w["id"] for w in listing["items"]] == [mine["id"]]
        assert "secret" not in listing["items"][0]
        for method, suffix, payload in (
            ("GET", "", None),
            ("PATCH", "", {"description": "mine now"}),
            ("DELETE", "", None),
            ("POST", "/test", None),
            ("POST", "/replay", {"since_time": "2025-01-01T00:00:00Z"}),
            ("GET", "/deliveries", None),
            ("GET", "/dead-letters", None),
        ):
            status, body, _ = await hub.call(
                method, f"{WEBHOOKS}/{theirs['id']}{suffix}", token=second, json=payload
            )
            assert (status, body["code"]) == (404, "webhook_not_found"), (method, suffix)
        # an admin sees and manages every endpoint
        status, listing, _ = await hub.call("GET", WEBHOOKS, token=hub.admin)
        assert {w["id"] for w in listing["items"]} == {theirs["id"], mine["id"]}
        status, body, _ = await hub.call("GET", f"{WEBHOOKS}/{theirs['id']}", token=hub.admin)
        assert status == 200 and body["owner"] == first_sub and "secret" not in body
        # a revoked key's endpoints stop: disabled at the next lease round
        key_id = first_sub.removeprefix("apikey.")
        status, _, _ = await hub.call("DELETE", f"/api/v1/api-keys/{key_id}", token=hub.admin)
        assert status == 204

        async def stopped() -> bool:
            _, body, _ = await hub.call("GET", f"{WEBHOOKS}/{theirs['id']}", token=hub.admin)
            return body["enabled"] is False and body["disabled_reason"] == "owner_revoked"

        await eventually(stopped, within=5, what="the revoked key's endpoint disabled")


async def test_the_secret_is_shown_once_and_stored_encrypted(database_url):
    async with webhook_hub(database_url) as hub:
        made = await create_webhook(hub, hub.admin, "https://93.184.215.14/hook", [{"type": "stock.changed"}])
        key = base64.b64decode(made["secret"].removeprefix("whsec_"))
        assert len(key) == 32
        status, body, headers = await hub.call("GET", f"{WEBHOOKS}/{made['id']}", token=hub.admin)
        assert status == 200 and "secret" not in body and headers["ETag"] == '"1"'

        async def row(tx: Tx) -> Any:
            return await tx.fetchrow("SELECT * FROM webhook_endpoints WHERE id = $1", made["id"])

        stored = dict(await hub.app[STORE].db.run(row, readonly=True))
        assert stored["secret_ciphertext"].startswith("pii1:")
        encoded = made["secret"].removeprefix("whsec_")
        assert not any(encoded in str(v) or made["secret"] in str(v) for v in stored.values())


async def test_bodies_are_strict(database_url):
    async with webhook_hub(database_url) as hub:
        url = "https://93.184.215.14/hook"
        refused = [
            {"url": url, "events": [{"type": "stock.changed"}], "color": "blue"},  # unknown field
            {"url": url, "events": []},
            {"url": url, "events": [{"type": "stock.vanished"}]},
            {
                "url": url,
                "events": [{"type": "reservation.*", "filters": {"sku": ["A-1"]}}],
            },  # no such filter
            {"url": url, "events": [{"type": "stock.changed", "filters": {"sku": []}}]},
            {"url": url, "events": [{"type": "stock.changed", "extra": 1}]},
            {"url": "ftp://93.184.215.14/hook", "events": [{"type": "stock.changed"}]},
            {"url": "https://user:pw@93.184.215.14/hook", "events": [{"type": "stock.changed"}]},
            {"url": "https://93.184.215.14/hook#frag", "events": [{"type": "stock.changed"}]},
            {"url": url, "events": [{"type": "stock.changed"}], "enabled": "yes"},
        ]
        for body in refused:
            status, answer, _ = await hub.call("POST", WEBHOOKS, token=hub.admin, json=body)
            assert (status, answer["code"]) == (400, "validation_failed"), (body, answer)
        made = await create_webhook(hub, hub.admin, url, [{"type": "stock.changed"}])
        status, answer, _ = await hub.call("PATCH", f"{WEBHOOKS}/{made['id']}", token=hub.admin, json={})
        assert (status, answer["code"]) == (400, "validation_failed")
        status, answer, _ = await hub.call(
            "PATCH",
            f"{WEBHOOKS}/{made['id']}",
            token=hub.admin,
            json={"enabled": False},
            headers={"If-Match": '"7"'},
        )
        assert (status, answer["code"]) == (412, "precondition_failed")
        status, answer, headers = await hub.call(
            "PATCH",
            f"{WEBHOOKS}/{made['id']}",
            token=hub.admin,
            json={"enabled": False},
            headers={"If-Match": '"1"'},
        )
        assert status == 200 and answer["enabled"] is False and answer["disabled_reason"] == "owner"
        assert headers["ETag"] == '"2"'
        status, _, _ = await hub.call("DELETE", f"{WEBHOOKS}/{made['id']}", token=hub.admin)
        assert status == 204
        status, answer, _ = await hub.call("GET", f"{WEBHOOKS}/{made['id']}", token=hub.admin)
        assert (status, answer["code"]) == (404, "webhook_not_found")
        status, answer, _ = await hub.call("GET", f"{WEBHOOKS}/not-a-uuid", token=hub.admin)
        assert (status, answer["code"]) == (400, "invalid_id")


# -- signatures and the retry schedule, alone ----------------------------------------------------------


def test_our_signature_is_the_one_the_spec_library_computes_and_verifies():
    secret = new_secret()
    body = b'{"type":"stock.changed","data":{"x":"\\u00e9"}}'
    now = datetime.now(UTC)
    ours = signature(secret_key(secret), "msg_abc", int(now.timestamp()), body)
    assert ours == Webhook(secret).sign("msg_abc", now, body)
    expected = hmac.new(
        secret_key(secret), f"msg_abc.{int(now.timestamp())}.".encode() + body, hashlib.sha256
    )
    assert ours == "v1," + base64.b64encode(expected.digest()).decode()
    headers = {
        "webhook-id": "msg_abc",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": ours,
    }
    Webhook(secret).verify(body, headers)
    with pytest.raises(ValueError):
        secret_key("whsec_" + base64.b64encode(b"short").decode())


def test_retries_back_off_exponentially_with_full_jitter_within_the_window_then_die():
    policy = RetryPolicy(base_seconds=5, max_seconds=6 * 3600, window_seconds=24 * 3600, max_attempts=20)
    rng = random.Random(7)
    start = 1_000_000_000_000_000
    now, delays = start, []
    for attempt in range(1, 100):
        upcoming = policy.next_attempt(attempt, start, now, rng)
        if upcoming is None:
            break
        cap = min(6 * 3600, 5 * 2 ** (attempt - 1))
        assert 0 <= (upcoming - now) / 1e6 <= cap
        delays.append((upcoming - now) / 1e6)
        now = upcoming
    assert len(delays) < 20  # dead before the 20th attempt, or at the window's end
    assert (now - start) / 1e6 <= 24 * 3600  # never scheduled past the window
    assert policy.next_attempt(20, start, start, rng) is None  # the 20th failed attempt is the last
    assert policy.next_attempt(1, start, start + 24 * 3600 * 10**6, rng) is None  # the window is over


# -- one node at a time ------------------------------------------------------------------------------


async def test_leases_go_to_one_holder_at_a_time_and_free_up_when_they_expire(store):
    now = time.time_ns() // 1000
    made = []
    for n in range(4):
        endpoint = WebhookEndpoint(
            str(uuid.uuid4()),
            "root",
            True,
            f"https://93.184.215.{n}/",
            "",
            (),
            "c",
            True,
            None,
            None,
            None,
            0,
            1,
            now,
            now,
        )
        made.append((await store.create_webhook(endpoint, {})).id)
    until = now + 10_000_000
    first, second = await asyncio.gather(
        store.claim_webhook_leases("node-a:1", "eu", made, now, until),
        store.claim_webhook_leases("node-b:1", "eu", made, now, until),
    )
    assert first | second == set(made) and not first & second
    holder = "node-a:1" if first else "node-b:1"
    assert await store.claim_webhook_leases(holder, "eu", made, now, until) == set(made)  # renewed
    assert await store.claim_webhook_leases("node-c:1", "eu", made, now + 1, until) == set()
    assert await store.claim_webhook_leases("node-c:1", "us", made, now, until) == set(made)  # per region
    assert set((await store.webhook_leases("eu", now)).values()) == {holder}
    # expired: anyone may take them; given back: at once
    assert await store.claim_webhook_leases("node-c:1", "eu", made[:2], until + 1, until + 10) == set(
        made[:2]
    )
    await store.release_webhook_leases(holder, "eu", made[2:])
    assert await store.claim_webhook_leases("node-c:1", "eu", made[2:], now + 2, until) == set(made[2:])


async def test_two_nodes_deliver_each_event_once_and_the_survivor_takes_over(pg, redis_prefix):
    """Two hubs on one PostgreSQL and Redis: one holds the endpoint's lease, so no event goes out twice;
    the holder stopped gives its lease back, and the other delivers the rest."""
    shared = {"redis_url": redis_url(), "redis_prefix": redis_prefix, "pii_keys": new_key_spec("shared")}
    stacks = [contextlib.AsyncExitStack(), contextlib.AsyncExitStack()]
    async with receiver() as target:
        try:
            hubs = [await stack.enter_async_context(webhook_hub(pg, **shared)) for stack in stacks]
            (product,) = await catalog(hubs[0], "TWO-1")
            made = await create_webhook(hubs[0], hubs[0].admin, target.url, [{"type": "stock.changed"}])
            target.secret = made["secret"]

            async def held() -> bool:
                return sum(bool(hub.app[WORKER].leased) for hub in hubs) == 1

            await eventually(held, within=5, what="one node holding the lease")
            holder = next(n for n, hub in enumerate(hubs) if hub.app[WORKER].leased)
            for n in range(1, 21):
                await hubs[n % 2].stock(product, "par-1", n)  # written through both nodes
            await target.wait_until(lambda: len(target.received) >= 20)
            await asyncio.sleep(0.5)
            assert [r.body["data"]["version"] for r in target.received] == list(range(1, 21))
            await stacks[holder].aclose()  # the holder stops: it gives its lease back
            survivor = hubs[1 - holder]
            for n in range(21, 31):
                await survivor.stock(product, "par-1", n)
            await target.wait_until(lambda: len(target.received) >= 30, within=20)
            await asyncio.sleep(0.5)
            assert survivor.app[WORKER].leased == [made["id"]]
        finally:
            for stack in stacks:
                await stack.aclose()
    assert [r.body["data"]["version"] for r in target.received] == list(range(1, 31))
    assert len({r.webhook_id for r in target.received}) == 30 and all(r.verified for r in target.received)
