"""Reviews through a real hub: REST over HTTP, device sync over WebSocket and REST, live events on the
``reviews:`` channels on all three transports, moderation and the rules' refusals, on both backends."""

from __future__ import annotations

import json
import uuid
from typing import Any

import orjson

from crdt import codec
from crdt.hlc import HybridClock
from crdt.review import ModerationStatus, Review
from crdt.wire import encode_context
from tests import media_samples
from tests.conftest import Hub, token
from tests.realtime_helpers import JSON, MSGPACK, eu_hub, poll, sse_stream, ws_client
from tests.test_store_reviews import now_ms

MODERATOR = token("mod", "moderator")
CAROL = token("carol", "customer")


def auth(bearer: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {bearer}"}


async def product(hub: Hub, sku: str = "SERUM-1") -> str:
    return str((await hub.product(sku))["id"])


async def post_review(
    hub: Hub, product_id: str, who: str | None = None, **fields: Any
) -> tuple[int, dict[str, Any]]:
    body = {"rating": 5, "text": "Lovely serum, my skin drinks it", **fields}
    status, reply, _ = await hub.call(
        "POST", f"/api/v1/products/{product_id}/reviews", token=who or hub.alice, json=body
    )
    return status, reply


async def published(hub: Hub, product_id: str, **fields: Any) -> dict[str, Any]:
    status, reply = await post_review(hub, product_id, **fields)
    assert status == 201, reply
    assert reply["status"] == "published", reply
    return reply


async def rating(hub: Hub, product_id: str) -> dict[str, Any]:
    status, body, _ = await hub.call("GET", f"/api/v1/products/{product_id}/rating")
    assert status == 200, body
    return dict(body["rating"])


class Device:
    """A phone holding a review replica offline, syncing through the hub."""

    def __init__(self, replica: str, state: Review | None = None) -> None:
        self.replica = replica
        self.review = Review.new() if state is None else state.copy()
        self.clock = HybridClock(replica, now_ms)

    def _do(self, delta: Review) -> dict[str, Any]:
        self.review.apply(delta)
        return json.loads(json.dumps(codec.to_dict(delta)))

    def create(self, review_id: str, product_id: str, author: str, rating: int, text: str) -> dict[str, Any]:
        delta = self.review.create(review_id, product_id, author)
        work = self.review.merge(delta)
        for edit in (
            lambda r: r.set_rating(self.replica, rating, self.clock.now()),
            lambda r: r.set_text(self.replica, text, self.clock.now()),
        ):
            step = edit(work)  # each edit made on the review as the one before left it (a new dot)
            delta.apply(step)
            work.apply(step)
        return self._do(delta)

    def rate(self, value: int) -> dict[str, Any]:
        return self._do(self.review.set_rating(self.replica, value, self.clock.now()))

    def write(self, text: str) -> dict[str, Any]:
        return self._do(self.review.set_text(self.replica, text, self.clock.now()))

    def delete(self) -> dict[str, Any]:
        return self._do(self.review.delete(self.replica))

    def erase(self) -> dict[str, Any]:
        return self._do(self.review.erase(self.replica))

    def receive(self, state: dict[str, Any] | None) -> None:
        if state is not None:
            decoded = codec.from_dict(state)
            assert isinstance(decoded, Review)
            self.review.apply(decoded)

    async def sync(self, hub: Hub, review_id: str, bearer: str, *deltas: dict[str, Any]) -> dict[str, Any]:
        pushes = [{"mutation_id": f"m-{uuid.uuid4()}", "delta": d} for d in deltas]
        status, body, _ = await hub.call(
            "POST",
            f"/api/v1/reviews/{review_id}/sync",
            token=bearer,
            json={"context": encode_context(self.review.context), "pushes": pushes},
        )
        assert status == 200, body
        self.receive(body["state"])
        return dict(body)


# -- REST ----------------------------------------------------------------------------------------------


async def test_a_customer_posts_a_review_that_is_published_and_counted(hub):
    product_id = await product(hub)
    review = await published(hub, product_id, rating=4)
    assert review["rating"] == 4 and review["author"] == "alice" and review["version"] >= 1
    assert await rating(hub, product_id) == {
        "count": 1,
        "average": 4.0,
        "histogram": {"1": 0, "2": 0, "3": 0, "4": 1, "5": 0},
    }
    status, read, headers = await hub.call("GET", f"/api/v1/reviews/{review['id']}")
    assert status == 200 and read["text"] == review["text"] and "reasons" not in read
    assert headers["ETag"] == f'"{review["version"]}"'
    status, _, _ = await hub.call(
        "GET", f"/api/v1/reviews/{review['id']}", headers={"If-None-Match": headers["ETag"]}
    )
    assert status == 304


async def test_a_second_review_of_one_product_by_one_author_is_review_exists(hub):
    product_id = await product(hub)
    first = await published(hub, product_id)
    status, body = await post_review(hub, product_id, rating=1)
    assert status == 409 and body["code"] == "review_exists" and body["review_id"] == first["id"]


async def test_bad_inputs_are_coded_4xx_and_change_nothing(hub):
    product_id = await product(hub)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"rating": 0}, "validation_failed"),
        ({"rating": 6}, "validation_failed"),
        ({"rating": "5"}, "validation_failed"),
        ({"rating": 5, "text": "x" * 5001}, "validation_failed"),
        ({"rating": 5, "text": "\ud800 lone"}, "validation_failed"),
        ({"rating": 5, "media": [str(uuid.uuid4())]}, "unknown_media"),
        ({"rating": 5, "colour": "red"}, "validation_failed"),
    ]
    for body, code in cases:
        status, reply, _ = await hub.call(
            "POST", f"/api/v1/products/{product_id}/reviews", token=hub.alice, json=body
        )
        assert 400 <= status < 500 and reply["code"] == code, (body, status, reply)
    status, reply, _ = await hub.call(
        "POST", f"/api/v1/products/{uuid.uuid4()}/reviews", token=hub.alice, json={"rating": 5}
    )
    assert (status, reply["code"]) == (404, "product_not_found")
    status, listing, _ = await hub.call(
        "GET", f"/api/v1/products/{product_id}/reviews?status=pending,rejected,published", token=MODERATOR
    )
    assert status == 200 and listing["items"] == []
    assert (await rating(hub, product_id))["count"] == 0


async def test_xss_text_round_trips_as_plain_text_in_json(hub):
    product_id = await product(hub)
    text = '<script>alert(1)</script><img src=x onerror=alert(2)> & "quotes"'
    review = await published(hub, product_id, text=text)
    status, read, headers = await hub.call("GET", f"/api/v1/reviews/{review['id']}")
    assert status == 200 and read["text"] == text
    assert headers["Content-Type"].startswith("application/json")


async def test_the_author_edits_and_deletes_and_others_cannot(hub):
    product_id = await product(hub)
    review = await published(hub, product_id, rating=5)
    path = f"/api/v1/reviews/{review['id']}"
    status, body, _ = await hub.call("PATCH", path, token=hub.bob, json={"rating": 1})
    assert (status, body["code"]) == (403, "not_author")
    status, body, _ = await hub.call("DELETE", path, token=hub.bob)
    assert (status, body["code"]) == (403, "not_author")
    status, body, _ = await hub.call("POST", f"{path}/moderation", token=hub.bob, json={"action": "reject"})
    assert (status, body["code"]) == (403, "forbidden")
    status, edited, _ = await hub.call("PATCH", path, token=hub.alice, json={"rating": 2, "text": "Meh now"})
    assert status == 200 and (edited["rating"], edited["text"], edited["status"]) == (
        2,
        "Meh now",
        "published",
    )
    assert (await rating(hub, product_id))["histogram"]["2"] == 1
    status, _, _ = await hub.call("DELETE", path, token=hub.alice)
    assert status == 204
    status, body, _ = await hub.call("GET", path)
    assert (status, body["code"]) == (404, "review_not_found")
    assert (await rating(hub, product_id))["count"] == 0


async def test_an_edit_that_the_screen_holds_leaves_the_public_listing_until_a_moderator_publishes(hub):
    product_id = await product(hub)
    review = await published(hub, product_id)
    path = f"/api/v1/reviews/{review['id']}"
    status, held, _ = await hub.call(
        "PATCH", path, token=hub.alice, json={"text": "Cheaper at www.example-shop.com, write to me"}
    )
    assert status == 200 and held["status"] == "pending" and "link" in held["reasons"]
    status, listing, _ = await hub.call("GET", f"/api/v1/products/{product_id}/reviews")
    assert listing["items"] == []
    status, _, _ = await hub.call("GET", path, token=hub.bob)
    assert status == 404  # unpublished: only its author and moderators see it
    status, queue, _ = await hub.call("GET", "/api/v1/moderation/queue", token=MODERATOR)
    assert status == 200 and [r["id"] for r in queue["items"]] == [review["id"]]
    # A decision on a version the moderator did not see is refused.
    status, body, _ = await hub.call(
        "POST",
        f"{path}/moderation",
        token=MODERATOR,
        json={"action": "publish", "version": held["version"] - 1},
    )
    assert (status, body["code"]) == (412, "precondition_failed")
    status, decided, _ = await hub.call(
        "POST", f"{path}/moderation", token=MODERATOR, json={"action": "publish", "version": held["version"]}
    )
    assert status == 200 and decided["status"] == "published"
    status, listing, _ = await hub.call("GET", f"/api/v1/products/{product_id}/reviews")
    assert [r["id"] for r in listing["items"]] == [review["id"]]
    status, body, _ = await hub.call("POST", f"{path}/moderation", token=MODERATOR, json={"action": "reject"})
    assert (status, body["code"]) == (400, "reason_required")


async def test_reports_flag_a_review_and_helpful_votes_count_once(hub):
    product_id = await product(hub)
    review = await published(hub, product_id)
    path = f"/api/v1/reviews/{review['id']}"
    status, vote, _ = await hub.call("POST", f"{path}/helpful", token=hub.bob)
    assert status == 200 and vote == {"review_id": review["id"], "helpful": 1, "counted": True}
    status, vote, _ = await hub.call("POST", f"{path}/helpful", token=hub.bob)
    assert vote["counted"] is False and vote["helpful"] == 1
    status, body, _ = await hub.call("POST", f"{path}/helpful", token=hub.alice)
    assert (status, body["code"]) == (409, "own_review")
    for n in range(3):
        status, body, _ = await hub.call(
            "POST", f"{path}/reports", token=token(f"reader{n}", "customer"), json={"reason": "spam"}
        )
        assert status == 202 and body["reported"] is True
    status, body, _ = await hub.call("GET", path, token=MODERATOR)
    assert body["status"] == "flagged" and body["reports"] == 3
    status, body, _ = await hub.call("POST", f"{path}/reports", token=hub.bob, json={"reason": "rude"})
    assert (status, body["code"]) == (400, "validation_failed")


async def test_listing_sorts_filters_searches_and_pages(hub):
    product_id = await product(hub)
    for n, (stars, text) in enumerate([(5, "hydrating and light"), (2, "sticky mess"), (4, "light scent")]):
        await published(hub, product_id, who=token(f"u{n}", "customer"), rating=stars, text=text)
    base = f"/api/v1/products/{product_id}/reviews"

    async def items(query: str) -> list[dict[str, Any]]:
        status, body, _ = await hub.call("GET", f"{base}?{query}")
        assert status == 200, body
        return list(body["items"])

    assert [r["rating"] for r in await items("sort=highest")] == [5, 4, 2]
    assert [r["rating"] for r in await items("sort=lowest")] == [2, 4, 5]
    assert [r["rating"] for r in await items("min_rating=4&sort=lowest")] == [4, 5]
    assert [r["text"] for r in await items("q=light")] == ["light scent", "hydrating and light"]
    status, first, _ = await hub.call("GET", f"{base}?limit=1&q=light%20scent%26%22%20OR")
    assert status == 200 and [r["text"] for r in first["items"]] == []  # every word: "or" is in none
    status, first, _ = await hub.call("GET", f"{base}?limit=1&q=light%20scent%26")
    assert [r["text"] for r in first["items"]] == ["light scent"] and first["next_cursor"] is None
    status, first, _ = await hub.call("GET", f"{base}?limit=2&q=and%20light")
    assert [r["text"] for r in first["items"]] == ["hydrating and light"] and first["next_cursor"] is None
    status, first, _ = await hub.call("GET", f"{base}?limit=2")
    assert len(first["items"]) == 2 and first["next_cursor"]
    status, following, _ = await hub.call("GET", first["next"])  # the next page's link, as given
    assert status == 200 and len(following["items"]) == 1
    status, rest, _ = await hub.call("GET", f"{base}?limit=2&cursor={first['next_cursor']}")
    assert len(rest["items"]) == 1 and rest["next_cursor"] is None
    for bad, code in [
        ("sort=best", "invalid_sort"),
        ("min_rating=0", "invalid_parameter"),
        ("cursor=abc", "invalid_cursor"),
        ("status=pending", "forbidden"),
    ]:
        status, body, _ = await hub.call("GET", f"{base}?{bad}")
        assert 400 <= status < 500 and body["code"] == code, (bad, body)
    status, body, _ = await hub.call("GET", f"{base}?sort=highest&cursor={first['next_cursor']}")
    assert (status, body["code"]) == (400, "invalid_cursor")


# -- device sync ---------------------------------------------------------------------------------------


async def test_two_offline_devices_converge_by_the_review_rules_through_rest_sync(hub):
    product_id = await product(hub)
    review_id = str(uuid.uuid4())
    phone = Device("alice-phone")
    created = await phone.sync(
        hub, review_id, hub.alice, phone.create(review_id, product_id, "alice", 3, "ok")
    )
    assert created["acks"][0]["status"] == "applied" and created["review"]["status"] == "published", created
    tablet = Device("alice-tablet")
    await tablet.sync(hub, review_id, hub.alice)
    assert tablet.review.value() == phone.review.value()
    tablet.clock = HybridClock("alice-tablet", lambda: now_ms() + 50)
    offline_phone, offline_tablet = phone.rate(4), tablet.rate(1)
    await tablet.sync(hub, review_id, hub.alice, offline_tablet)
    reply = await phone.sync(hub, review_id, hub.alice, offline_phone)
    await tablet.sync(hub, review_id, hub.alice)
    assert reply["review"]["rating"] == 1 and reply["review"]["conflicts"]["rating"] == [4]
    phone_value, tablet_value = phone.review.value(), tablet.review.value()
    assert phone_value is not None and phone_value == tablet_value and phone_value.rating == 1
    assert phone.review.status() is ModerationStatus.PUBLISHED


async def test_delete_beats_a_concurrent_edit_and_erasure_beats_a_stale_device(hub):
    product_id = await product(hub)
    review_id = str(uuid.uuid4())
    phone = Device("alice-p2")
    await phone.sync(hub, review_id, hub.alice, phone.create(review_id, product_id, "alice", 5, "secret"))
    stale = Device("alice-t2", phone.review)
    await phone.sync(hub, review_id, hub.alice, phone.erase())
    reply = await stale.sync(hub, review_id, hub.alice, stale.write("bring it back"))
    assert reply["acks"][0]["status"] == "applied"
    assert stale.review.erased and stale.review.value() is None and not stale.review.has_content()
    status, body, _ = await hub.call("GET", f"/api/v1/reviews/{review_id}", token=hub.alice)
    assert (status, body["code"]) == (404, "review_not_found")
    assert (await rating(hub, product_id))["count"] == 0


async def test_a_client_delta_that_sets_moderation_is_refused(hub):
    product_id = await product(hub)
    review_id = str(uuid.uuid4())
    phone = Device("alice-p3")
    phone.create(review_id, product_id, "alice", 1, "bad http://spam.example.com")
    forged = phone.review.merge(phone.review.moderate(50, ModerationStatus.PUBLISHED))
    reply = await phone.sync(hub, review_id, hub.alice, codec.to_dict(forged))
    assert reply["acks"][0]["code"] == "moderation_forbidden" and reply["review"] is None
    status, _body, _ = await hub.call("GET", f"/api/v1/reviews/{review_id}", token=hub.alice)
    assert status == 404


async def test_another_user_cannot_push_to_or_read_someone_elses_review(hub):
    product_id = await product(hub)
    review = await published(hub, product_id)
    stranger = Device("bob-device")
    status, body, _ = await hub.call(
        "POST",
        f"/api/v1/reviews/{review['id']}/sync",
        token=hub.bob,
        json={"pushes": [{"mutation_id": "x", "delta": stranger.rate(1)}]},
    )
    assert (status, body["code"]) == (404, "review_not_found")
    assert (await rating(hub, product_id))["histogram"]["5"] == 1


async def test_websocket_devices_sync_and_push_reviews_in_json_and_msgpack(hub):
    product_id = await product(hub)
    review_id = str(uuid.uuid4())
    phone = Device("alice-ws")
    delta = phone.create(review_id, product_id, "alice", 4, "Soft and fresh")
    async with ws_client(hub, JSON, headers=auth(hub.alice)) as ws:
        ack = await ws.request(
            {"type": "push", "id": 1, "review": review_id, "mutation_id": "ws-1", "delta": delta}
        )
        assert ack["type"] == "ack" and ack["status"] == "applied" and ack["review_status"] == "published"
        again = await ws.request(
            {"type": "push", "id": 2, "review": review_id, "mutation_id": "ws-1", "delta": delta}
        )
        assert again["status"] == "duplicate"
        forged = codec.to_dict(phone.review.moderate(9, ModerationStatus.PUBLISHED))
        refused = await ws.request(
            {"type": "push", "id": 3, "review": review_id, "mutation_id": "ws-2", "delta": forged}
        )
        assert refused["type"] == "error" and refused["code"] == "moderation_forbidden"
    async with ws_client(hub, MSGPACK, headers=auth(hub.alice)) as ws:
        synced = await ws.request({"type": "sync", "id": 1, "review": review_id, "context": None})
        assert synced["type"] == "synced" and synced["status"] == "published"
        state = codec.from_msgpack(synced["delta"])
        assert isinstance(state, Review) and state.value() == phone.review.merge(state).value()
    async with ws_client(hub, JSON, headers=auth(hub.bob)) as ws:
        other = await ws.request({"type": "sync", "id": 1, "review": review_id, "context": None})
        assert other["delta"] is None and other["status"] is None  # not revealed to another user


# -- live ----------------------------------------------------------------------------------------------


async def test_published_reviews_reach_every_transport_and_unpublished_content_never_does(database_url):
    async with eu_hub(database_url) as hub:
        product_id = await product(hub)
        channel = f"reviews:eu:{product_id}"
        status, polled = await poll(hub, channel, wait=0)
        assert status == 200, polled
        cursor = polled["cursor"]
        async with ws_client(hub, JSON) as ws, sse_stream(hub, channel) as sse:
            subscribed = await ws.subscribe(channel)
            assert subscribed["type"] == "subscribed"
            await sse.opening()
            # Held (a link): nothing public. Then a clean one: published, with the aggregate.
            status, held = await post_review(
                hub, product_id, who=hub.bob, text="go to http://cheap.example.com"
            )
            assert status == 201 and held["status"] == "pending"
            await published(hub, product_id, rating=4, text="Calms my skin")
            events = await ws.events(2)
            assert [e["data"]["type"] for e in events] == ["review.published", "rating.changed"]
            assert events[0]["data"]["review"]["text"] == "Calms my skin"
            assert events[1]["data"]["rating"]["count"] == 1
            sse_events = [orjson.loads((await sse.next_event()).data) for _ in range(2)]
            assert [e["data"]["type"] for e in sse_events] == ["review.published", "rating.changed"]
            await ws.assert_nothing_pending()
        status, polled = await poll(hub, channel, cursor=cursor, wait=2)
        assert status == 200, polled
        texts = json.dumps(polled["events"])
        assert "cheap.example.com" not in texts and "Calms my skin" in texts


async def test_the_author_hears_the_status_of_their_review_on_their_user_channel(database_url):
    async with eu_hub(database_url) as hub:
        product_id = await product(hub)
        async with ws_client(hub, JSON, headers=auth(hub.alice)) as ws:
            await ws.subscribe("user:alice")
            status, held = await post_review(hub, product_id, text="mail me: alice@example.com")
            assert status == 201 and held["status"] == "pending"
            (event,) = await ws.events(1)
            assert event["data"]["type"] == "review.status" and event["data"]["status"] == "pending"
            await hub.call(
                "POST",
                f"/api/v1/reviews/{held['id']}/moderation",
                token=MODERATOR,
                json={"action": "publish"},
            )
            (event,) = await ws.events(1)
            assert (event["data"]["status"], event["data"]["review_id"]) == ("published", held["id"])


# -- the catalog's view ----------------------------------------------------------------------------------


async def test_product_reads_carry_the_rating_and_their_etag_follows_it(hub):
    product_id = await product(hub)
    status, before, headers = await hub.call("GET", f"/api/v1/products/{product_id}")
    assert status == 200 and before["rating"] == {
        "count": 0,
        "average": None,
        "histogram": {"1": 0, "2": 0, "3": 0, "4": 0, "5": 0},
    }
    assert before["links"]["reviews"] == f"/api/v1/products/{product_id}/reviews"
    etag = headers["ETag"]
    await published(hub, product_id, rating=3)
    status, after, headers = await hub.call(
        "GET", f"/api/v1/products/{product_id}", headers={"If-None-Match": etag}
    )
    assert status == 200 and after["rating"]["count"] == 1 and headers["ETag"] != etag
    # The product's own version is unchanged: an admin's If-Match from before the review still holds.
    assert after["version"] == before["version"]
    status, patched, _ = await hub.call(
        "PATCH",
        f"/api/v1/products/{product_id}",
        token=hub.admin,
        json={"name": "renamed"},
        headers={"If-Match": etag},
    )
    assert status == 200, patched


async def test_the_catalog_filters_by_minimum_rating_and_sorts_by_rating(hub):
    good, fair, unrated = await product(hub, "GOOD"), await product(hub, "FAIR"), await product(hub, "NONE")
    await published(hub, good, rating=5)
    await published(hub, good, who=hub.bob, rating=4, text="Good value for the price")
    await published(hub, fair, rating=3, text="Fine but nothing special")
    status, body, _ = await hub.call("GET", "/api/v1/products?min_rating=4.5")
    assert status == 200 and [p["id"] for p in body["items"]] == [good]
    status, body, _ = await hub.call("GET", "/api/v1/products?sort=-rating")
    assert [p["id"] for p in body["items"]] == [good, fair, unrated]
    status, body, _ = await hub.call("GET", "/api/v1/products?min_rating=6")
    assert (status, body["code"]) == (400, "invalid_parameter")


# -- media ---------------------------------------------------------------------------------------------


async def upload_png(hub: Hub, who: str) -> str:
    status, body, _ = await hub.call(
        "POST", "/api/v1/media", token=who, data=media_samples.png(), headers={"Content-Type": "image/png"}
    )
    assert status == 201, body
    return str(body["id"])


async def test_reviews_carry_the_authors_uploads_as_signed_urls_and_refuse_anyone_elses(hub):
    product_id = await product(hub)
    mine, theirs = await upload_png(hub, hub.alice), await upload_png(hub, hub.bob)
    status, body = await post_review(hub, product_id, media=[theirs])
    assert (status, body["code"], body["media"]) == (422, "unknown_media", [theirs])
    review = await published(hub, product_id, media=[mine])
    (attached,) = review["media"]
    assert attached["id"] == mine and "sig=" in attached["url"] and "exp=" in attached["url"]
    async with hub.session.get(hub.base + attached["url"]) as response:
        assert response.status == 200 and response.headers["Content-Type"] == "image/png"
    status, listing, _ = await hub.call("GET", f"/api/v1/products/{product_id}/reviews?with_media=true")
    assert [r["id"] for r in listing["items"]] == [review["id"]]
    status, edited, _ = await hub.call(
        "PATCH", f"/api/v1/reviews/{review['id']}", token=hub.alice, json={"media": []}
    )
    assert status == 200 and edited["media"] == []
    status, listing, _ = await hub.call("GET", f"/api/v1/products/{product_id}/reviews?with_media=true")
    assert listing["items"] == []
