"""Channel names, their kinds and their streams (sync/channels.py, storage/streams.py)."""

from __future__ import annotations

import orjson
import pytest

from storage import streams
from sync.broker import Position, Publication
from sync.channels import (
    CART,
    INVENTORY,
    KINDS,
    PARTS_REQUESTS,
    REVIEWS,
    USER,
    Access,
    ChannelError,
    cart_channel,
    event_route,
    parse_channel_name,
    parts_requests_channel,
    user_channel,
)
from sync.events import Event

CART_ID = "7d4a3c1e-2b5f-4e6a-9c8d-0e1f2a3b4c5d"


def test_every_kind_names_its_access_and_its_event_types() -> None:
    assert KINDS == {
        "inventory": INVENTORY,
        "cart": CART,
        "user": USER,
        "reviews": REVIEWS,
        "parts-requests": PARTS_REQUESTS,
    }
    assert PARTS_REQUESTS.access is Access.SCHOOL and PARTS_REQUESTS.key_field == "school_id"
    assert INVENTORY.access is Access.PUBLIC and REVIEWS.access is Access.PUBLIC
    assert "review.status" in USER.event_types and "review.published" in REVIEWS.event_types
    assert not REVIEWS.event_types & USER.event_types
    assert CART.access is Access.CART_OWNER and "cart.delta" in CART.event_types
    assert USER.access is Access.SELF and "reservation.created" in USER.event_types
    assert not CART.event_types & USER.event_types  # an event type names one kind


@pytest.mark.parametrize(
    ("name", "kind", "key", "region"),
    [
        ("inventory:eu", INVENTORY, None, "eu"),
        ("reviews:eu", REVIEWS, None, "eu"),
        (f"reviews:us-1:{CART_ID.upper()}", REVIEWS, CART_ID, "us-1"),
        (f"cart:{CART_ID.upper()}", CART, CART_ID, None),
        ("user:alice", USER, "alice", None),
        ("user:svc.partner-7@shop", USER, "svc.partner-7@shop", None),
        ("parts-requests:lincoln-high-2", PARTS_REQUESTS, "lincoln-high-2", None),
    ],
)
def test_channel_names_parse_to_their_kind_and_key(
    name: str, kind: object, key: str | None, region: str | None
) -> None:
    parsed = parse_channel_name(name)
    assert (parsed.kind, parsed.key, parsed.region) == (kind, key, region)


@pytest.mark.parametrize(
    "name",
    [
        "cart:",
        "cart:not-a-uuid",
        "reviews:",
        "reviews:eu:not-a-uuid",
        "reviews:EU",
        f"reviews:eu:{CART_ID}:x",
        "user:",
        "user:a:b",
        "user:a,b",
        "cart:" + CART_ID + ":x",
        "orders:1",
        "parts-requests:",
        "parts-requests:Lincoln",
        "parts-requests:a:b",
        "parts-requests:-a",
        "x" * 129,
    ],
)
def test_malformed_private_channel_names_are_refused(name: str) -> None:
    with pytest.raises(ChannelError) as refused:
        parse_channel_name(name)
    assert refused.value.code == "invalid_channel"


def test_a_users_carts_and_own_channel_share_one_of_a_fixed_number_of_streams() -> None:
    cart = cart_channel("eu", CART_ID, "alice")
    user = user_channel("eu", "alice")
    assert cart.stream == user.stream == streams.user_stream("eu", "alice")
    assert cart.name == f"cart:{CART_ID}" and user.name == "user:alice"
    used = {streams.user_stream("eu", f"user-{n}") for n in range(1000)}
    assert used == set(streams.user_streams("eu"))  # 1,000 users spread over every shard, and no more
    assert len(used) == streams.USER_STREAM_SHARDS


def test_an_event_names_its_kind_type_and_key_and_inventory_events_keep_their_format() -> None:
    assert event_route("inventory.eu", {"product_id": "p"}) == (INVENTORY, "stock", "p")
    assert event_route("user.eu.1", {"type": "cart.delta", "cart_id": CART_ID}) == (
        CART,
        "cart.delta",
        CART_ID,
    )
    assert event_route("user.eu.1", {"type": "reservation.expired", "sub": "bob"})[2] == "bob"
    with pytest.raises(ChannelError):
        event_route("user.eu.1", {"type": "cart.unheard_of"})


def test_a_cart_event_is_sent_as_sse_event_cart() -> None:
    data = {"type": "cart.status", "sub": "alice", "cart_id": CART_ID, "status": "checked_out"}
    event = Event(Publication("user.eu.3", Position("e", 4), orjson.dumps(data)))
    assert event.sse("user:alice").startswith(b"id: e:4\nevent: user\ndata: ")
    assert orjson.loads(event.json("user:alice"))["data"] == data


def test_a_review_event_routes_to_its_products_reviews_channel() -> None:
    kind, event_type, key = event_route(
        streams.reviews_stream("eu"), {"type": "rating.changed", "product_id": CART_ID, "rating": {}}
    )
    assert (kind, event_type, key) == (REVIEWS, "rating.changed", CART_ID)
    assert streams.reviews_stream("eu") == "reviews.eu"


def test_a_schools_parts_events_go_to_one_of_its_regions_few_parts_streams() -> None:
    channel = parts_requests_channel("eu", "lincoln-high")
    assert channel.name == "parts-requests:lincoln-high"
    assert channel.stream == streams.parts_stream("eu", "lincoln-high")
    used = {streams.parts_stream("eu", f"school-{n}") for n in range(200)}
    assert used == set(streams.parts_streams("eu")) and len(used) == streams.PARTS_STREAM_SHARDS
    data = {"type": "parts_request.reserved", "school_id": "lincoln-high", "request_id": CART_ID}
    assert event_route(channel.stream, data) == (PARTS_REQUESTS, "parts_request.reserved", "lincoln-high")
