"""A user's personal data through a real hub, on both backends: the profile encrypted at rest (read back
from the database itself), key rotation, wrong keys and tampering, the export, and the erasure (reviews
through the CRDT's absorbing erasure, carts deleted, reservations and audit entries pseudonymised,
events on the channels), with an offline device that comes back afterwards."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable
from typing import Any

from crdt.wire import encode_context
from hub.media import signed_url
from hub.pii import new_key_spec
from tests import media_samples
from tests.conftest import JWT_SECRET, Hub, hub_settings, running_hub, token
from tests.privacy_helpers import pseudonym_of, raw_execute, raw_fetch
from tests.realtime_helpers import JSON, WsClient, eu_hub, ws_client
from tests.test_api_reviews import Device, auth

EMAIL, PHONE = "alice.liddell@example.com", "+33612345678"
PROFILE = {"display_name": "Alice L.", "email": EMAIL, "phone": PHONE}
K1, K2 = new_key_spec("k1"), new_key_spec("k2")


async def me(hub: Hub, bearer: str | None = None) -> dict[str, Any]:
    status, body, _ = await hub.call("GET", "/api/v1/me", token=bearer or hub.alice)
    assert status == 200, body
    return dict(body)


async def put_me(hub: Hub, body: Any, bearer: str | None = None, **headers: str) -> tuple[int, Any, Any]:
    return await hub.call("PUT", "/api/v1/me", token=bearer or hub.alice, json=body, headers=headers)


async def stored_profile(database_url: str, sub: str = "alice") -> dict[str, Any]:
    (row,) = await raw_fetch(database_url, "SELECT * FROM user_profiles WHERE sub = $1", sub)
    return row


# -- the profile -------------------------------------------------------------------------------------


async def test_a_profile_round_trips_and_its_email_and_phone_are_not_in_the_database(hub, database_url):
    empty = await me(hub)
    assert empty == {
        "sub": "alice",
        "display_name": None,
        "email": None,
        "phone": None,
        "version": 0,
        "created_at": None,
        "updated_at": None,
    }
    status, body, headers = await put_me(hub, PROFILE)
    assert status == 200, body
    assert {k: body[k] for k in PROFILE} == PROFILE and body["version"] == 1 and headers["ETag"] == '"1"'
    assert {k: (await me(hub))[k] for k in PROFILE} == PROFILE
    row = await stored_profile(database_url)
    assert row["display_name"] == "Alice L."  # shown to others: not a secret
    assert row["email_ciphertext"].startswith("pii1:") and row["phone_ciphertext"].startswith("pii1:")
    whole_row = json.dumps(row, default=str)
    for secret in (EMAIL, "alice.liddell", "example.com", PHONE, "612345678"):
        assert secret not in whole_row
    # Two writes of one value are two ciphertexts (a fresh nonce each): equal values cannot be spotted.
    status, _, _ = await put_me(hub, PROFILE)
    assert status == 200
    assert (await stored_profile(database_url))["email_ciphertext"] != row["email_ciphertext"]
    # PUT replaces the whole profile; If-Match guards a stale write.
    status, body, _ = await put_me(hub, {"display_name": "Al"}, **{"If-Match": '"2"'})
    assert status == 200 and (body["email"], body["phone"], body["version"]) == (None, None, 3)
    status, body, _ = await put_me(hub, PROFILE, **{"If-Match": '"2"'})
    assert (status, body["code"]) == (412, "precondition_failed")
    assert (await me(hub))["display_name"] == "Al"
    assert (await me(hub, hub.bob))["version"] == 0  # one user's profile is not another's


async def test_profile_fields_are_validated_and_unknown_fields_refused(hub):
    await put_me(hub, PROFILE)
    for body, field, code in (
        ({**PROFILE, "role": "admin"}, "role", "unknown_field"),
        ({"email": "not-an-address"}, "email", "invalid_format"),
        ({"email": "a@b"}, "email", "invalid_format"),
        ({"email": "a @example.com"}, "email", "invalid_format"),
        ({"email": "x" * 250 + "@example.com"}, "email", "too_long"),
        ({"phone": "0612345678"}, "phone", "invalid_format"),
        ({"phone": "+33 6 12 34 56 78"}, "phone", "too_long"),
        ({"display_name": ""}, "display_name", "too_short"),
        ({"display_name": "   "}, "display_name", "invalid_format"),
        ({"display_name": "a\nb"}, "display_name", "invalid_format"),
        ({"display_name": "x" * 101}, "display_name", "too_long"),
        ({"display_name": 7}, "display_name", "wrong_type"),
    ):
        status, reply, _ = await put_me(hub, body)
        assert (status, reply["code"]) == (400, "validation_failed"), body
        assert {"field": field, "code": code} in [
            {k: e[k] for k in ("field", "code")} for e in reply["errors"]
        ]
    status, reply, _ = await put_me(hub, [PROFILE])
    assert (status, reply["code"]) == (400, "validation_failed")
    assert {k: (await me(hub))[k] for k in PROFILE} == PROFILE  # nothing changed
    status, reply, _ = await hub.call("GET", "/api/v1/me", token=hub.service)
    assert (status, reply["code"]) == (403, "forbidden")  # services are not people


# -- keys ----------------------------------------------------------------------------------------------


async def test_a_new_current_key_reads_old_data_and_rewrites_it_on_the_next_write(database_url):
    async with running_hub(hub_settings(database_url, pii_keys=K1)) as hub:
        assert (await put_me(hub, PROFILE))[0] == 200
        assert (await put_me(hub, {**PROFILE, "email": "bob@example.com"}, hub.bob))[0] == 200
    assert (await stored_profile(database_url))["key_id"] == "k1"
    async with running_hub(hub_settings(database_url, pii_keys=f"{K2},{K1}")) as hub:
        assert {k: (await me(hub))[k] for k in PROFILE} == PROFILE  # old data, still read
        row = await stored_profile(database_url)
        # (a read rewrites nothing)
        assert row["key_id"] == "k1" and row["email_ciphertext"].startswith("pii1:k1:")
        assert (await put_me(hub, {**PROFILE, "display_name": "Alice"}))[0] == 200
        row = await stored_profile(database_url)
        assert row["key_id"] == "k2"
        assert row["email_ciphertext"].startswith("pii1:k2:")
        assert row["phone_ciphertext"].startswith("pii1:k2:")
        rows = await raw_fetch(database_url, "SELECT sub FROM user_profiles WHERE key_id = $1", "k1")
        assert [r["sub"] for r in rows] == ["bob"]  # what is still under the old key, found by its id
    async with running_hub(hub_settings(database_url, pii_keys=K2)) as hub:
        assert (await me(hub))["email"] == EMAIL  # rewritten: the old key is no longer needed for alice
        status, body, _ = await hub.call("GET", "/api/v1/me", token=hub.bob)
        assert (status, body["code"]) == (500, "pii_key_unknown")  # ...but still for bob
        assert "'k1'" in body["detail"] and "bob@example.com" not in json.dumps(body)


async def test_a_wrong_key_or_changed_data_is_a_clear_error_never_a_wrong_value(database_url):
    async with running_hub(hub_settings(database_url, pii_keys=K1)) as hub:
        assert (await put_me(hub, PROFILE))[0] == 200
        assert (await put_me(hub, {"phone": "+14155550123"}, hub.bob))[0] == 200
    same_id_other_bytes = new_key_spec("k1")
    async with running_hub(hub_settings(database_url, pii_keys=same_id_other_bytes)) as hub:
        for path in ("/api/v1/me", "/api/v1/me/export"):
            status, body, _ = await hub.call("GET", path, token=hub.alice)
            assert (status, body["code"]) == (500, "pii_undecryptable"), path
            assert EMAIL not in json.dumps(body) and PHONE not in json.dumps(body)
    row = await stored_profile(database_url)
    bob = await stored_profile(database_url, "bob")
    ciphertext = row["email_ciphertext"]
    flipped = ciphertext[:-3] + ("A" if ciphertext[-3] != "A" else "B") + ciphertext[-2:]
    for column, value in (
        ("email_ciphertext", flipped),  # a changed byte
        ("phone_ciphertext", bob["phone_ciphertext"]),  # bob's phone, moved into alice's row
        ("email_ciphertext", row["phone_ciphertext"]),  # alice's phone, moved into her email
        ("email_ciphertext", "not a ciphertext"),
    ):
        await raw_execute(database_url, f"UPDATE user_profiles SET {column} = $1 WHERE sub = 'alice'", value)
        async with running_hub(hub_settings(database_url, pii_keys=K1)) as hub:
            status, body, _ = await hub.call("GET", "/api/v1/me", token=hub.alice)
            assert (status, body["code"]) == (500, "pii_undecryptable"), (column, value)
            assert (await me(hub, hub.bob))["phone"] == "+14155550123"  # bob's row itself is intact
        await raw_execute(
            database_url,
            "UPDATE user_profiles SET email_ciphertext = $1, phone_ciphertext = $2 WHERE sub = 'alice'",
            row["email_ciphertext"],
            row["phone_ciphertext"],
        )
    async with running_hub(hub_settings(database_url, pii_keys=K1)) as hub:
        assert {k: (await me(hub))[k] for k in PROFILE} == PROFILE


# -- export and erasure -------------------------------------------------------------------------------


class World:
    """Alice and Bob with something of everything: profiles, reviews of one product, votes and a report,
    a cart, a reservation, and an admin's read of Alice's export in the audit log."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def build(self) -> World:
        hub = self.hub
        product = await hub.product("SERUM-1")
        self.product_id = str(product["id"])
        await hub.stock(self.product_id, "par-1", 10)
        assert (await put_me(hub, PROFILE))[0] == 200
        assert (await put_me(hub, {"display_name": "Bob"}, hub.bob))[0] == 200
        # Alice's uploads: a photo on her review and one she never attached; Bob's photo.
        self.photo_id = await self.upload(hub.alice)
        self.loose_photo_id = await self.upload(hub.alice)
        self.bob_photo_id = await self.upload(hub.bob)
        self.review_id = await self.review(
            hub.alice, 5, "Lovely serum, my skin drinks it", media=[self.photo_id]
        )
        self.bob_review_id = await self.review(
            hub.bob, 3, "Fine, but the bottle leaks a little", media=[self.bob_photo_id]
        )
        for path, body in (("helpful", None), ("reports", {"reason": "off_topic"})):
            status, reply, _ = await hub.call(
                "POST", f"/api/v1/reviews/{self.bob_review_id}/{path}", token=hub.alice, json=body
            )
            assert status in (200, 202), reply
        self.cart_id = str(uuid.uuid4())
        status, reply, _ = await hub.call(
            "POST",
            f"/api/v1/carts/{self.cart_id}/ops",
            token=hub.alice,
            json={"device_id": "web-1", "mutation_id": "m-1", "op": "add", "sku": "SERUM-1", "quantity": 2},
        )
        assert status == 200, reply
        status, reply, _ = await hub.call(
            "POST",
            "/api/v1/reservations",
            token=hub.alice,
            json={"lines": [{"product_id": self.product_id, "quantity": 1}]},
            headers={"Idempotency-Key": "order-1"},
        )
        assert status == 201, reply
        self.reservation_id = str(reply["id"])
        # Alice's phone holds her review, offline from now on.
        self.phone = Device("alice-phone")
        await self.phone.sync(hub, self.review_id, hub.alice)
        assert self.phone.review.value() is not None
        return self

    async def review(self, bearer: str, rating: int, text: str, media: list[str]) -> str:
        status, reply, _ = await self.hub.call(
            "POST",
            f"/api/v1/products/{self.product_id}/reviews",
            token=bearer,
            json={"rating": rating, "text": text, "media": media},
        )
        assert status == 201 and reply["status"] == "published", reply
        return str(reply["id"])

    async def upload(self, bearer: str) -> str:
        status, reply, _ = await self.hub.call(
            "POST",
            "/api/v1/media",
            token=bearer,
            data=io.BytesIO(media_samples.GIF),
            headers={"Content-Type": "image/gif"},
        )
        assert status == 201, reply
        return str(reply["id"])

    async def media_status(self, media_id: str) -> int:
        """What fetching ``media_id`` through a URL the hub signed for it answers (200: still stored)."""
        url = signed_url(JWT_SECRET, media_id, 600)[0]
        async with self.hub.session.get(self.hub.base + url) as response:
            await response.read()
            return response.status

    async def rating(self) -> dict[str, Any]:
        status, body, _ = await self.hub.call("GET", f"/api/v1/products/{self.product_id}/rating")
        assert status == 200
        return dict(body["rating"])

    async def listed(self) -> list[str]:
        status, body, _ = await self.hub.call("GET", f"/api/v1/products/{self.product_id}/reviews")
        assert status == 200
        return [item["id"] for item in body["items"]]


async def events_until(ws: WsClient, *wanted: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """The first event matching each of ``wanted`` (in the order they come), skipping others (20 at most)."""
    found: list[dict[str, Any] | None] = [None] * len(wanted)
    for _ in range(20):
        if all(f is not None for f in found):
            break
        (event,) = await ws.events(1)
        for index, matches in enumerate(wanted):
            if found[index] is None and matches(event["data"]):
                found[index] = event
                break
    assert all(f is not None for f in found), found
    return [f for f in found if f is not None]


async def export(hub: Hub, path: str = "/api/v1/me/export", bearer: str | None = None) -> dict[str, Any]:
    status, body, _ = await hub.call("GET", path, token=bearer or hub.alice)
    assert status == 200, body
    return dict(body)


async def test_the_export_holds_everything_about_the_user(database_url):
    async with eu_hub(database_url) as hub:
        world = await World(hub).build()
        by_admin = await export(hub, "/api/v1/users/alice/export", hub.admin)
        mine = await export(hub)
        for body in (by_admin, mine):
            assert body["sub"] == "alice"
            assert {k: body["profile"][k] for k in PROFILE} == PROFILE
            assert [c["id"] for c in body["carts"]] == [world.cart_id]
            assert body["carts"][0]["value"] == {"SERUM-1": 2}
            assert [r["id"] for r in body["reviews"]] == [world.review_id]
            assert body["reviews"][0]["text"] == "Lovely serum, my skin drinks it"
            assert [v["review_id"] for v in body["helpful_votes"]] == [world.bob_review_id]
            assert [(r["review_id"], r["reason"]) for r in body["reports"]] == [
                (world.bob_review_id, "off_topic")
            ]
            assert [r["id"] for r in body["reservations"]] == [world.reservation_id]
            assert body["reservations"][0]["lines"][0]["quantity"] == 1
            assert sorted(m["id"] for m in body["media"]) == sorted([world.photo_id, world.loose_photo_id])
            assert {m["content_type"] for m in body["media"]} == {"image/gif"}
            for item in body["media"]:
                async with hub.session.get(hub.base + item["url"]) as fetched:
                    assert fetched.status == 200 and await fetched.read()
            replicas = {d["replica_id"] for d in body["devices"]}
            assert "web-1" in replicas and any(r.startswith("rest.") for r in replicas)
            assert "Bob" not in json.dumps(body) and "bottle leaks" not in json.dumps(body)
        # The admin's read is on record, and is itself in Alice's next export.
        assert [(e["action"], e["actor"]["sub"], e["target"]) for e in mine["audit"]] == [
            ("export_user", "root", {"kind": "user", "id": "alice"})
        ]
        for bearer in (hub.alice, token("mod", "moderator"), hub.service):
            status, body, _ = await hub.call("GET", "/api/v1/users/bob/export", token=bearer)
            assert (status, body["code"]) == (403, "forbidden")


async def test_erasure_removes_the_user_everywhere_and_an_offline_device_cannot_bring_a_review_back(
    database_url,
):
    async with eu_hub(database_url) as hub:
        world = await World(hub).build()
        await export(hub, "/api/v1/users/alice/export", hub.admin)  # an audit entry about alice
        assert await world.rating() == {
            "count": 2,
            "average": 4.0,
            "histogram": {"1": 0, "2": 0, "3": 1, "4": 0, "5": 1},
        }
        alias = pseudonym_of("alice")
        async with (
            ws_client(hub, JSON, headers=auth(hub.alice)) as mine,
            ws_client(hub, JSON) as public,
        ):
            await mine.subscribe(f"cart:{world.cart_id}")
            await mine.subscribe("user:alice")
            await public.subscribe(f"reviews:eu:{world.product_id}")
            status, erased, _ = await hub.call("DELETE", "/api/v1/me", token=hub.alice)
            assert status == 200, erased
            assert erased == {
                "pseudonym": alias,
                "reviews_erased": 1,
                "media_deleted": 2,
                "carts_deleted": 1,
                "reservations_pseudonymised": 1,
                "reviews_pseudonymised": 1,
                "reviews_left": 0,
                "votes_pseudonymised": 1,
                "reports_pseudonymised": 1,
                "audit_entries_pseudonymised": 1,
                "profile_deleted": 1,
                "behaviour_events_deleted": 0,
                "audit_seq": erased["audit_seq"],
            }
            # Announced where the user and the product's readers follow them.
            # (PostgreSQL's relay publishes after the commits: events of the set-up may come first)
            erasure_events = await events_until(
                mine,
                lambda d: d["type"] == "review.status" and d["status"] == "erased",
                lambda d: d["type"] == "cart.deleted" and d["cart_id"] == world.cart_id,
                lambda d: d["type"] == "cart.status" and d["status"] == "deleted",
            )
            assert erasure_events[1]["channel"] == f"cart:{world.cart_id}"
            removed, rating = await events_until(
                public,
                lambda d: d["type"] == "review.removed" and d["review"]["id"] == world.review_id,
                lambda d: (
                    d["type"] == "rating.changed"
                    and d["rating"] == {**d["rating"], "count": 1, "average": 3.0}
                ),
            )
            # (the aggregate without alice's 5 stars: bob's 3 alone — not the count of 1 it had once)
            assert rating["data"]["rating"]["average"] == 3.0 and "text" not in removed["data"]["review"]

        # The review: gone from the listing and the aggregate, unreadable, and the phone that comes back
        # online with an edit of it is refused — the review is no longer the user's, and its content
        # was absorbed by the erasure anyway.
        assert await world.listed() == [world.bob_review_id]
        assert (await world.rating())["count"] == 1 and (await world.rating())["average"] == 3.0
        for bearer in (hub.alice, None):
            status, body, _ = await hub.call("GET", f"/api/v1/reviews/{world.review_id}", token=bearer)
            assert (status, body["code"]) == (404, "review_not_found")
        comeback = world.phone.write("I am back, and so is my review")
        status, body, _ = await hub.call(
            "POST",
            f"/api/v1/reviews/{world.review_id}/sync",
            token=hub.alice,
            json={
                "context": encode_context(world.phone.review.context),
                "pushes": [{"mutation_id": "m-comeback", "delta": comeback}],
            },
        )
        assert (status, body["code"]) == (404, "review_not_found")
        assert await world.listed() == [world.bob_review_id]
        assert (await world.rating())["count"] == 1
        (stored,) = await raw_fetch(
            database_url, "SELECT author, status, body FROM reviews WHERE id = $1", world.review_id
        )
        assert stored == {"author": alias, "status": "erased", "body": None}

        # Her uploads: gone from the media store, whatever URL was signed for them; Bob's stays.
        for media_id in (world.photo_id, world.loose_photo_id):
            assert await world.media_status(media_id) == 404, media_id
        assert await world.media_status(world.bob_photo_id) == 200

        # The cart: gone for its owner, and its id cannot be taken again.
        status, body, _ = await hub.call("GET", f"/api/v1/carts/{world.cart_id}", token=hub.alice)
        assert (status, body["code"]) == (404, "cart_not_found")
        status, body, _ = await hub.call(
            "POST",
            f"/api/v1/carts/{world.cart_id}/ops",
            token=hub.alice,
            json={"device_id": "web-1", "mutation_id": "m-2", "op": "add", "sku": "SERUM-1"},
        )
        assert (status, body["code"]) == (404, "cart_not_found")
        status, body, _ = await hub.call("GET", f"/api/v1/carts/{world.cart_id}", token=hub.admin)
        assert status == 200 and body["owner"] == alias and body["value"] == {}

        # The reservation stays (stock was reserved), under the pseudonym.
        status, body, _ = await hub.call(
            "GET", f"/api/v1/reservations/{world.reservation_id}", token=hub.admin
        )
        assert status == 200 and body["owner"] == alias and body["status"] == "pending"

        # The audit log: the admin's read of the export now names the pseudonym; the erasure is on
        # record, by the pseudonym (the user erased themselves), with what it changed.
        page = (await hub.call("GET", "/api/v1/audit", token=hub.admin))[1]
        assert [e["action"] for e in page["items"]][:2] == ["erase_me", "export_user"]
        erase_entry, export_entry = page["items"][:2]
        assert export_entry["target"] == {"kind": "user", "id": alias}
        assert erase_entry["actor"]["sub"] == alias and erase_entry["target"] == {"kind": "user", "id": alias}
        assert erase_entry["seq"] == erased["audit_seq"]
        assert erase_entry["detail"]["carts_deleted"] == 1 and erase_entry["detail"]["reviews_erased"] == 1
        assert erase_entry["detail"]["media_deleted"] == 2

        # Nothing left of alice, as the API or the database tells it.
        assert (await me(hub))["version"] == 0
        left = await export(hub)
        assert left["profile"] is None
        for key in ("carts", "reviews", "helpful_votes", "reports", "reservations", "audit", "media"):
            assert left[key] == [], key
        for table, column in (
            ("user_profiles", "sub"),
            ("reviews", "author"),
            ("review_votes", "voter"),
            ("review_reports", "reporter"),
            ("carts", "owner"),
            ("reservations", "owner"),
            ("idempotency_keys", "owner"),
            ("audit_log", "actor_sub"),
            ("audit_log", "target_id"),
        ):
            rows = await raw_fetch(database_url, f"SELECT * FROM {table} WHERE {column} = 'alice'")
            assert rows == [], (table, column)
        profiles = await raw_fetch(database_url, "SELECT * FROM user_profiles")
        assert [p["sub"] for p in profiles] == ["bob"]

        # Erasing again is fine, and finds nothing more.
        status, again, _ = await hub.call("DELETE", "/api/v1/me", token=hub.alice)
        assert status == 200 and again["pseudonym"] == alias
        assert {k: v for k, v in again.items() if k not in ("pseudonym", "audit_seq")} == dict.fromkeys(
            [k for k in erased if k not in ("pseudonym", "audit_seq")], 0
        )


async def test_an_admin_erases_any_user_and_is_on_record_as_the_actor(database_url):
    async with eu_hub(database_url) as hub:
        world = await World(hub).build()
        for bearer in (hub.alice, token("mod", "moderator"), hub.service):
            status, body, _ = await hub.call("DELETE", "/api/v1/users/bob", token=bearer)
            assert (status, body["code"]) == (403, "forbidden")
        status, erased, _ = await hub.call("DELETE", "/api/v1/users/bob", token=hub.admin)
        assert status == 200, erased
        assert erased["pseudonym"] == pseudonym_of("bob") and erased["reviews_erased"] == 1
        assert erased["profile_deleted"] == 1
        assert await world.listed() == [world.review_id]
        assert (await world.rating())["count"] == 1
        (entry,) = (await hub.call("GET", "/api/v1/audit?action=erase_user", token=hub.admin))[1]["items"]
        assert entry["actor"]["sub"] == "root" and entry["target"] == {
            "kind": "user",
            "id": pseudonym_of("bob"),
        }
        # Alice's vote and report on Bob's (now erased) review are hers still: not erased with him.
        assert len((await export(hub))["helpful_votes"]) == 1
        # A user the hub never saw: nothing to erase, and that is an answer, not an error.
        status, nobody, _ = await hub.call("DELETE", f"/api/v1/users/{uuid.uuid4()}", token=hub.admin)
        assert status == 200 and nobody["carts_deleted"] == 0 and nobody["profile_deleted"] == 0
