"""Personalization through a real hub over HTTP and WebSocket, on both backends: consent gates what is
collected, a scripted session changes the recommendations at once and on ``user:{sub}`` within a second,
stock leaving and coming back moves a product out of and into the list live, lists have ETags, opting
out and erasure delete the user's events (read back from the database itself), and the retention sweep
deletes what expired."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.conftest import Hub, hub_settings, redis_url, running_hub, token
from tests.privacy_helpers import raw_execute, raw_fetch
from tests.realtime_helpers import JSON, WsClient, eu_hub, ws_client
from tests.test_api_reviews import auth

CAROL = token("carol", "customer")
DAVE = token("dave", "customer")
MATERIALS = {
    "tee": {"material": "organic-cotton", "certification": ["GOTS", "Fair Trade"]},
    "shirt": {"material": "organic-cotton", "certification": ["GOTS"]},
    "jeans": {"material": "recycled-denim", "certification": ["GRS"]},
    "scarf": {"material": "linen"},
    "socks": {"material": "organic-cotton"},
    "coat": {"material": "wool", "certification": ["RWS"]},
}


class Shop:
    """Products of the sustainable-clothing shop, stocked at par-1 (region eu), by name."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.ids: dict[str, str] = {}

    async def build(self) -> Shop:
        for name, attributes in MATERIALS.items():
            product = await self.hub.product(f"ECO-{name.upper()}", attributes=attributes)
            self.ids[name] = product["id"]
            await self.hub.stock(product["id"], "par-1", 20)
        return self

    def names(self, product_ids: list[str]) -> list[str]:
        by_id = {v: k for k, v in self.ids.items()}
        return [by_id[p] for p in product_ids]

    def event(self, kind: str, name: str, **extra: Any) -> dict[str, Any]:
        return {"type": kind, "product_id": self.ids[name], "consent": "granted", **extra}


async def consent(hub: Hub, bearer: str, status: str = "granted") -> dict[str, Any]:
    code, body, _ = await hub.call("PUT", "/api/v1/me/consent", token=bearer, json={"status": status})
    assert code == 200, body
    return dict(body)


async def post(hub: Hub, bearer: str, events: list[dict[str, Any]]) -> tuple[int, Any]:
    code, body, _ = await hub.call("POST", "/api/v1/events", token=bearer, json={"events": events})
    return code, body


async def accepted(hub: Hub, bearer: str, events: list[dict[str, Any]]) -> None:
    code, body = await post(hub, bearer, events)
    assert (code, body["accepted"]) == (200, len(events)), body


async def recommendations(hub: Hub, bearer: str, query: str = "", **headers: str) -> tuple[int, Any, Any]:
    return await hub.call("GET", f"/api/v1/me/recommendations{query}", token=bearer, headers=headers)


async def listed(hub: Hub, shop: Shop, bearer: str, query: str = "") -> list[str]:
    code, body, _ = await recommendations(hub, bearer, query)
    assert code == 200, body
    return shop.names([item["product_id"] for item in body["items"]])


async def stored_events(database_url: str, sub: str) -> int:
    (row,) = await raw_fetch(database_url, "SELECT COUNT(*) AS n FROM behaviour_events WHERE sub = $1", sub)
    return int(row["n"])


async def others_shop_together(hub: Hub, shop: Shop) -> None:
    """Bob and Carol's sessions: the tee is viewed with the shirt (twice) and the jeans (once), and carted
    with the socks."""
    for bearer, second in ((hub.bob, "shirt"), (CAROL, "shirt"), (DAVE, "jeans")):
        await consent(hub, bearer)
        await accepted(hub, bearer, [shop.event("view", "tee"), shop.event("view", second)])
    await accepted(hub, CAROL, [shop.event("add_to_cart", "tee"), shop.event("add_to_cart", "socks")])


async def change_event(
    ws: WsClient, wanted: Callable[[dict[str, Any]], bool], within: float = 5.0
) -> dict[str, Any]:
    """The next recommendations.changed event ``wanted`` accepts (earlier ones skipped)."""
    deadline = time.monotonic() + within
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, "no such recommendations.changed event arrived"
        message = await ws.recv(remaining)
        if message["type"] != "event" or message["data"]["type"] != "recommendations.changed":
            continue
        if wanted(message["data"]):
            return dict(message["data"])


async def quiet(ws: WsClient, seconds: float) -> None:
    """Read (and drop) what arrives for ``seconds``."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            await ws.recv(remaining)
        except TimeoutError:
            return


# -- consent ---------------------------------------------------------------------------------------------


async def test_events_without_consent_are_refused_and_nothing_is_stored(database_url):
    async with eu_hub(database_url) as hub:
        shop = await Shop(hub).build()
        code, body, _ = await hub.call("GET", "/api/v1/me/consent", token=hub.alice)
        assert (code, body["status"], body["updated_at"], body["retention_days"]) == (200, "unset", None, 90)
        view = shop.event("view", "tee")
        code, body = await post(hub, hub.alice, [view])
        assert (code, body["code"]) == (403, "consent_required"), body
        await consent(hub, hub.alice)
        # Granted on record, but one event of the batch was recorded without it: the whole batch refused.
        code, body = await post(hub, hub.alice, [view, {**view, "consent": "revoked"}])
        assert (code, body["code"]) == (403, "consent_required"), body
        # An event that does not say: malformed.
        code, body = await post(hub, hub.alice, [{"type": "view", "product_id": shop.ids["tee"]}])
        assert (code, body["code"]) == (400, "validation_failed")
        assert {"field": "events[0].consent", "code": "required"} in [
            {k: e[k] for k in ("field", "code")} for e in body["errors"]
        ]
        assert await stored_events(database_url, "alice") == 0
        await accepted(hub, hub.alice, [view])
        assert await stored_events(database_url, "alice") == 1
        code, body, _ = await hub.call("GET", "/api/v1/me/consent", token=hub.alice)
        assert body["status"] == "granted" and body["updated_at"].endswith("Z")
        code, body = await post(hub, hub.admin, [view])
        assert (code, body["code"]) == (403, "forbidden")  # a shopper's events only


async def test_a_batch_is_checked_whole_and_unknown_fields_are_refused(database_url):
    async with eu_hub(database_url) as hub:
        shop = await Shop(hub).build()
        await consent(hub, hub.alice)
        good = shop.event("view", "tee")
        future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        ancient = (datetime.now(UTC) - timedelta(days=91)).isoformat()
        for events, field, code in (
            ([{**good, "price": 3}], "events[0].price", "unknown_field"),
            ([{**good, "query": "tee"}], "events[0].query", "unknown_field"),  # (a search's field)
            ([{"type": "click", "consent": "granted"}], "events[0].type", "invalid_choice"),
            ([{**good, "product_id": "not-a-uuid"}], "events[0].product_id", "invalid_format"),
            ([{"type": "search", "consent": "granted"}], "events[0].query", "required"),
            ([{"type": "search", "consent": "granted", "query": ""}], "events[0].query", "invalid_format"),
            (
                [{"type": "filter", "consent": "granted", "attributes": {}}],
                "events[0].attributes",
                "out_of_range",
            ),
            (
                [{"type": "filter", "consent": "granted", "attributes": {"material": 3}}],
                "events[0].attributes.material",
                "invalid_format",
            ),
            ([{**good, "consent": "maybe"}], "events[0].consent", "invalid_choice"),
            ([{**good, "ts": future}], "events[0].ts", "out_of_range"),
            ([{**good, "ts": ancient}], "events[0].ts", "out_of_range"),
            ([{**good, "ts": "yesterday"}], "events[0].ts", "invalid_format"),
            ([{**good, "region": "EU!"}], "events[0].region", "invalid_format"),
            ([good, 7], "events[1]", "wrong_type"),
            ([good] * 101, "events", "out_of_range"),
            ([], "events", "out_of_range"),
        ):
            status, body = await post(hub, hub.alice, events)
            assert (status, body["code"]) == (400, "validation_failed"), (events, body)
            assert {"field": field, "code": code} in [
                {k: e[k] for k in ("field", "code")} for e in body["errors"]
            ], (field, body)
        status, body, _ = await hub.call(
            "POST", "/api/v1/events", token=hub.alice, json={"events": [good], "batch": 1}
        )
        assert (status, body["code"]) == (400, "validation_failed")
        status, body, _ = await hub.call("POST", "/api/v1/events", token=hub.alice, data=b"{", headers={})
        assert status == 415  # (not JSON's media type)
        status, body, _ = await hub.call(
            "POST",
            "/api/v1/events",
            token=hub.alice,
            data=b'{"events": [',
            headers={"Content-Type": "application/json"},
        )
        assert (status, body["code"]) == (400, "malformed_json")
        assert await stored_events(database_url, "alice") == 0
        # Every kind, with a time and a region of its own, goes in.
        await accepted(
            hub,
            hub.alice,
            [
                {**good, "ts": (datetime.now(UTC) - timedelta(days=3)).isoformat().replace("+00:00", "Z")},
                shop.event("wishlist", "coat", region="us"),
                shop.event("add_to_cart", "scarf"),
                {"type": "search", "consent": "granted", "query": "organic tee"},
                {
                    "type": "filter",
                    "consent": "granted",
                    "attributes": {"material": ["linen", "wool"], "size": "M"},
                },
            ],
        )
        assert await stored_events(database_url, "alice") == 5


# -- recommendations -------------------------------------------------------------------------------------


async def test_a_scripted_session_changes_the_recommendations_within_a_second_and_on_the_user_channel(
    database_url,
):
    async with eu_hub(database_url) as hub:
        shop = await Shop(hub).build()
        await others_shop_together(hub, shop)
        await consent(hub, hub.alice)
        async with ws_client(hub, JSON, headers=auth(hub.alice)) as ws:
            await ws.subscribe("user:alice")
            # The list before Alice did anything: the region's trending products.
            first = await change_event(ws, lambda d: True)
            assert first["personalized"] is True and first["region"] == "eu"
            before = await listed(hub, shop, hub.alice)
            # tee: 3 views and a cart (weights 1 and 3); socks: a cart; shirt: 2 views; jeans: 1 view
            assert before == ["tee", "socks", "shirt", "jeans"]
            await quiet(ws, 1.2)  # a second since the last event: the next one may go at once
            started = time.monotonic()
            await accepted(hub, hub.alice, [shop.event("view", "tee")])
            # Read right after: the batch's increments were committed with it.
            now = await listed(hub, shop, hub.alice)
            # shirt: co-viewed twice with the tee, its material and certification; socks: its material,
            # trending; jeans: co-viewed once. The tee itself, seen: left out.
            assert now == ["shirt", "socks", "jeans"]
            changed = await change_event(ws, lambda d: d["items"] and shop.names(d["items"])[0] == "shirt")
            assert time.monotonic() - started < 1.0
            assert shop.names(changed["items"]) == now
            _, _, headers = await recommendations(hub, hub.alice)
            assert changed["etag"] == headers["ETag"]  # the event names the list a GET answers
            # Adding the tee to the cart: what others carted with it comes first.
            await accepted(hub, hub.alice, [shop.event("add_to_cart", "tee")])
            changed = await change_event(ws, lambda d: shop.names(d["items"])[0] == "socks")
            _code, body, _ = await recommendations(hub, hub.alice)
            socks = body["items"][0]
            assert socks["reasons"][:1] == ["co_carted"] and socks["stock_status"] == "in_stock"
            assert "preferred:material=organic-cotton" in socks["reasons"]  # the tee's material


async def test_an_out_of_stock_product_leaves_the_list_live_and_comes_back(database_url):
    async with eu_hub(database_url) as hub:
        shop = await Shop(hub).build()
        await others_shop_together(hub, shop)
        await consent(hub, hub.alice)
        await accepted(hub, hub.alice, [shop.event("view", "tee")])
        async with ws_client(hub, JSON, headers=auth(hub.alice)) as ws:
            await ws.subscribe("user:alice")
            await change_event(ws, lambda d: "shirt" in shop.names(d["items"]))
            await hub.stock(shop.ids["shirt"], "par-1", 0)
            gone = await change_event(ws, lambda d: "shirt" not in shop.names(d["items"]))
            assert set(shop.names(gone["items"])) == {"socks", "jeans"}
            assert "shirt" not in await listed(hub, shop, hub.alice)
            await hub.stock(shop.ids["shirt"], "par-1", 3)  # (low stock: 3 ≤ the threshold of 5)
            back = await change_event(ws, lambda d: "shirt" in shop.names(d["items"]))
            assert shop.names(back["items"])[0] == "shirt"
            code, body, _ = await recommendations(hub, hub.alice)
            assert body["items"][0]["stock_status"] == "low_stock"
            # Discontinued: gone as well.
            code, body, _ = await hub.call(
                "PATCH",
                f"/api/v1/products/{shop.ids['shirt']}",
                token=hub.admin,
                json={"status": "discontinued"},
            )
            assert code == 200, body
            await change_event(ws, lambda d: "shirt" not in shop.names(d["items"]))


async def test_lists_have_etags_are_private_and_filter_by_attribute(database_url):
    async with eu_hub(database_url) as hub:
        shop = await Shop(hub).build()
        await others_shop_together(hub, shop)
        await consent(hub, hub.alice)
        await accepted(hub, hub.alice, [shop.event("view", "tee")])
        code, body, headers = await recommendations(hub, hub.alice)
        assert code == 200 and headers["Cache-Control"].startswith("private")
        etag = headers["ETag"]
        code, _, again = await recommendations(hub, hub.alice, **{"If-None-Match": etag})
        assert code == 304 and again["ETag"] == etag
        assert (await recommendations(hub, hub.bob, **{"If-None-Match": etag}))[0] == 200  # another's list
        await accepted(hub, hub.alice, [shop.event("view", "shirt")])
        code, _, changed = await recommendations(hub, hub.alice, **{"If-None-Match": etag})
        assert code == 200 and changed["ETag"] != etag
        # Sustainability filters: every one must match, arrays hold the value.
        assert await listed(hub, shop, hub.alice, "?attr.material=organic-cotton") == ["socks"]
        both = await listed(hub, shop, hub.alice, "?attr.material=recycled-denim&attr.certification=GRS")
        assert both == ["jeans"]
        assert await listed(hub, shop, hub.alice, "?attr.certification=GOTS") == []  # (tee, shirt: seen)
        assert len(await listed(hub, shop, hub.alice, "?limit=1")) == 1
        for query in ("?attr.=x", "?attr.a..b=x", "?attr.material=", "?limit=0", "?limit=51"):
            code, body, _ = await recommendations(hub, hub.alice, query)
            assert (code, body["code"]) == (400, "invalid_parameter"), query


async def test_opting_out_stops_collection_and_removes_the_users_events(database_url):
    async with eu_hub(database_url) as hub:
        shop = await Shop(hub).build()
        await others_shop_together(hub, shop)
        await consent(hub, hub.alice)
        await accepted(hub, hub.alice, [shop.event("view", "tee"), shop.event("add_to_cart", "jeans")])
        assert await stored_events(database_url, "alice") == 2
        code, body, _ = await recommendations(hub, hub.alice)
        assert body["personalized"] is True and body["items"][0]["reasons"][0] in ("co_carted", "co_viewed")
        revoked = await consent(hub, hub.alice, "revoked")
        assert (revoked["status"], revoked["events_deleted"]) == ("revoked", 2)
        assert revoked["preferences_deleted"] > 0
        assert await stored_events(database_url, "alice") == 0
        assert await raw_fetch(database_url, "SELECT * FROM user_preferences WHERE sub = 'alice'") == []
        (row,) = await raw_fetch(database_url, "SELECT recent FROM personalization_users WHERE sub = 'alice'")
        assert row["recent"] == ""
        # Collection stopped: refused, nothing stored, even with events that claim consent.
        code, body = await post(hub, hub.alice, [shop.event("view", "coat")])
        assert (code, body["code"]) == (403, "consent_required")
        assert await stored_events(database_url, "alice") == 0
        # The list is no longer theirs: the region's trending products.
        code, body, _ = await recommendations(hub, hub.alice)
        assert body["personalized"] is False
        assert all(item["reasons"] == ["trending"] for item in body["items"])
        # Others' events stay, and so do the anonymous counts they fed.
        assert await stored_events(database_url, "bob") == 2
        code, body, _ = await hub.call("GET", "/api/v1/me/export", token=hub.alice)
        assert body["personalization"]["consent"]["status"] == "revoked"
        assert body["personalization"]["events"] == [] and body["personalization"]["preferences"] == []
        # Granting again collects again.
        await consent(hub, hub.alice)
        await accepted(hub, hub.alice, [shop.event("view", "coat")])


async def test_the_export_holds_the_users_events_and_erasure_deletes_them(database_url):
    async with eu_hub(database_url) as hub:
        shop = await Shop(hub).build()
        await consent(hub, hub.alice)
        await consent(hub, hub.bob)
        await accepted(
            hub,
            hub.alice,
            [
                shop.event("view", "tee"),
                shop.event("view", "shirt"),
                {"type": "search", "consent": "granted", "query": "linen scarf"},
            ],
        )
        await accepted(hub, hub.bob, [shop.event("view", "tee")])
        code, body, _ = await hub.call("GET", "/api/v1/me/export", token=hub.alice)
        mine = body["personalization"]
        assert mine["consent"]["status"] == "granted"
        assert [(e["type"], e.get("product_id"), e.get("query")) for e in mine["events"]] == [
            ("view", shop.ids["tee"], None),
            ("view", shop.ids["shirt"], None),
            ("search", None, "linen scarf"),
        ]
        assert all(e["consent_granted_at"] == mine["consent"]["updated_at"] for e in mine["events"])
        assert {(p["attribute"], p["value"]) for p in mine["preferences"]} >= {("material", "organic-cotton")}
        code, erased, _ = await hub.call("DELETE", "/api/v1/me", token=hub.alice)
        assert code == 200 and erased["behaviour_events_deleted"] == 3
        assert await stored_events(database_url, "alice") == 0
        for table in ("personalization_users", "user_preferences"):
            assert await raw_fetch(database_url, f"SELECT * FROM {table} WHERE sub = 'alice'") == []
        assert await stored_events(database_url, "bob") == 1
        code, body = await post(hub, hub.alice, [shop.event("view", "tee")])
        assert (code, body["code"]) == (403, "consent_required")  # the consent went with them
        code, again, _ = await hub.call("DELETE", "/api/v1/me", token=hub.alice)
        assert again["behaviour_events_deleted"] == 0


async def test_the_retention_sweep_deletes_expired_events_and_stale_preferences(database_url):
    settings = hub_settings(
        database_url, region="eu", event_retention_days=1, event_purge_interval_seconds=0.1
    )
    async with running_hub(settings) as hub:
        await hub.warehouse("par-1", "eu")
        shop = await Shop(hub).build()
        await consent(hub, hub.alice)
        almost_a_day = (datetime.now(UTC) - timedelta(days=1) + timedelta(seconds=2)).isoformat()
        await accepted(hub, hub.alice, [shop.event("view", "coat", ts=almost_a_day)])
        await accepted(hub, hub.alice, [shop.event("view", "tee")])
        assert await stored_events(database_url, "alice") == 2
        # A preference nothing fed for the retention period goes too (written back as a day old here).
        await raw_execute(
            database_url,
            "UPDATE user_preferences SET updated_at = updated_at - 86400000000 WHERE value = 'wool'",
        )
        deadline = time.monotonic() + 6
        while await stored_events(database_url, "alice") > 1:
            assert time.monotonic() < deadline, "the expired event was not purged"
            await asyncio.sleep(0.1)
        (left,) = await raw_fetch(database_url, "SELECT product_id FROM behaviour_events WHERE sub = 'alice'")
        assert left["product_id"] == shop.ids["tee"]
        values = {r["value"] for r in await raw_fetch(database_url, "SELECT value FROM user_preferences")}
        assert "wool" not in values and "organic-cotton" in values


async def test_a_user_hears_of_changes_at_most_once_a_second(database_url):
    async with eu_hub(database_url) as hub:
        shop = await Shop(hub).build()
        await others_shop_together(hub, shop)
        await consent(hub, hub.alice)
        async with ws_client(hub, JSON, headers=auth(hub.alice)) as ws:
            await ws.subscribe("user:alice")
            names = list(MATERIALS)
            for round_ in range(12):  # a change every 0.15 s for 1.8 s
                await accepted(hub, hub.alice, [shop.event("view", names[round_ % len(names)])])
                await asyncio.sleep(0.15)
            arrivals = []
            deadline = time.monotonic() + 3.0
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    message = await ws.recv(remaining)
                except TimeoutError:
                    break
                if message["type"] == "event" and message["data"]["type"] == "recommendations.changed":
                    arrivals.append(message["data"]["ts"] / 1e6)
            assert len(arrivals) >= 2  # the first at once, the burst's last state later
            gaps = [b - a for a, b in itertools.pairwise(arrivals)]
            assert all(gap >= 0.99 for gap in gaps), gaps


async def test_a_batch_taken_on_another_node_reaches_the_user_listening_on_this_one(pg, redis_prefix):
    settings = hub_settings(pg, region="eu", redis_url=redis_url(), redis_prefix=redis_prefix)
    async with running_hub(settings) as listening, running_hub(settings) as taking:
        await listening.warehouse("par-1", "eu")
        shop = await Shop(listening).build()
        await others_shop_together(listening, shop)
        await consent(listening, listening.alice)
        async with ws_client(listening, JSON, headers=auth(listening.alice)) as ws:
            await ws.subscribe("user:alice")
            await change_event(ws, lambda d: True)
            # The listening node marks the user's row within a second.
            deadline = time.monotonic() + 5
            while not (
                await raw_fetch(
                    pg, "SELECT 1 FROM personalization_users WHERE sub = 'alice' AND listening_until > 0"
                )
            ):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            await accepted(taking, taking.alice, [shop.event("view", "tee")])
            changed = await change_event(ws, lambda d: shop.names(d["items"])[:1] == ["shirt"])
            assert changed["personalized"] is True


async def test_a_users_concurrent_batches_are_each_stored_and_counted_once(database_url):
    async with eu_hub(database_url) as hub:
        shop = await Shop(hub).build()
        await consent(hub, hub.alice)
        batches = [[shop.event("view", name) for name in MATERIALS] for _ in range(8)]
        results = await asyncio.gather(*(post(hub, hub.alice, batch) for batch in batches))
        assert [code for code, _ in results] == [200] * 8, results
        assert await stored_events(database_url, "alice") == 48
        (trend,) = await raw_fetch(database_url, "SELECT SUM(count) AS n FROM trending")
        assert int(trend["n"]) == 48  # every view counted in the region's trending, once
        # The six products pair once each (15 pairs, both ways): the seven batches that came after the
        # first found them seen within the window — none was folded on a state another had changed.
        (pairs,) = await raw_fetch(database_url, "SELECT COUNT(*) AS n, SUM(count) AS total FROM co_viewed")
        assert (int(pairs["n"]), int(pairs["total"])) == (30, 30)
