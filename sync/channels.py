"""Channels: what a client follows, and the kinds of channel the hub knows.

    inventory:{region}                 every stock change of the region            (public)
    inventory:{region}:{product_id}    stock changes of one product in the region  (public)
    cart:{cart_id}                     one cart's deltas and status                (its owner's devices)
    user:{sub}                         one user's reservations', carts' and reviews' status, and their
                                       recommendations' changes (that user)
    reviews:{region}                   published reviews and rating aggregates of the region (public)
    reviews:{region}:{product_id}      the same for one product                    (public)
    parts-requests:{school_id}         a school's parts requests' status changes   (the school's API keys)

Each kind (:data:`KINDS`) declares who may follow it, the event types it carries and how an event
names its key. Access is *checked by the hub* (``hub/channel_access.py``) at subscribe and at every
resume, on every transport, with the connection's principal; this module only names the rules.

Streams. A channel is a view of one broker stream, and one position (cursor) is valid for every channel
of that stream:

* ``inventory.{region}`` carries the region's stock changes;
* ``reviews.{region}`` carries the published reviews (published, changed, removed) and products' rating
  aggregates written by the region's nodes — never unpublished content;
* ``user.{region}.{n}`` carries the private events of the users whose name hashes to shard ``n``
  (:func:`user_stream`, named in :mod:`storage.streams`, which writes them into the outbox): a
  user's ``user:`` channel and all their ``cart:`` channels share one stream, so
  a cart's deltas, its checkout and the reservation that follows reach the user in one order. A fixed
  number of shards (:data:`USER_STREAM_SHARDS`, the same on every node) keeps the broker's stream count
  small — not one Redis stream per user — and the engine indexes feeds by key, so an event costs only
  its own subscribers.
* ``parts.{region}.{n}`` carries the parts requests' events of the schools whose id hashes to shard ``n``
  (:data:`~storage.streams.PARTS_STREAM_SHARDS` of them), ``region`` the school's: one school's requests
  reach its followers in one order. A node serves the parts channels of its own region's schools.

A node started with ``--region eu`` serves the channels of region ``eu`` only. A cart lives in the region
where it was made (the store writes all its events to that region's user stream, and the hub resolves
its channel there); a user channel is served in the node's region.
"""

from __future__ import annotations

import enum
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from storage.streams import (
    USER_STREAM_SHARDS,
    inventory_stream,
    parts_stream,
    parts_streams,
    reviews_stream,
    user_stream,
    user_streams,
)

_REGION = re.compile(r"[a-z0-9][a-z0-9\-]{0,31}")
# A user's name (a token's ``sub``) as it may appear in a channel name: no ':' or ',' (channel and
# list separators), no control characters.
_SUB = re.compile(r"[A-Za-z0-9._@+\-|=]{1,100}")
_SCHOOL = re.compile(r"[a-z0-9][a-z0-9\-]{0,63}")  # a school's id (hub/routes/schools.py)
MAX_CHANNEL_LENGTH = 128


class ChannelError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Access(enum.Enum):
    PUBLIC = "public"  # anyone, with or without a token
    CART_OWNER = "cart_owner"  # the cart's owner (and service/admin tokens, read only)
    SELF = "self"  # the user named by the channel (and service/admin tokens, read only)
    SCHOOL = "school"  # the school's API keys (and service/admin tokens, read only)


@dataclass(frozen=True, slots=True)
class ChannelKind:
    name: str
    access: Access
    event_types: frozenset[str]
    key_field: str  # the field of an event's data that names the channel's key
    sse_event: str  # the SSE ``event:`` name of its events


INVENTORY = ChannelKind(
    "inventory", Access.PUBLIC, frozenset({"stock"}), key_field="product_id", sse_event="inventory"
)
CART = ChannelKind(
    "cart",
    Access.CART_OWNER,
    frozenset({"cart.delta", "cart.closed", "cart.deleted"}),
    key_field="cart_id",
    sse_event="cart",
)
USER = ChannelKind(
    "user",
    Access.SELF,
    frozenset(
        {
            "cart.status",
            "review.status",
            "reservation.created",
            "reservation.committed",
            "reservation.released",
            "reservation.expired",
            "webhook.disabled",
            "recommendations.changed",
        }
    ),
    key_field="sub",
    sse_event="user",
)
REVIEWS = ChannelKind(
    "reviews",
    Access.PUBLIC,
    frozenset({"review.published", "review.changed", "review.removed", "rating.changed"}),
    key_field="product_id",
    sse_event="reviews",
)
# (storage.parts.EVENT_TYPES names the same; tests/test_parts_requests.py checks that they agree)
PARTS_REQUESTS = ChannelKind(
    "parts-requests",
    Access.SCHOOL,
    frozenset(
        {
            "parts_request.created",
            "parts_request.reserved",
            "parts_request.backordered",
            "parts_request.line_filled",
            "parts_request.picked",
            "parts_request.shipped",
            "parts_request.delivered",
            "parts_request.cancelled",
        }
    ),
    key_field="school_id",
    sse_event="parts-requests",
)
KINDS: dict[str, ChannelKind] = {kind.name: kind for kind in (INVENTORY, CART, USER, REVIEWS, PARTS_REQUESTS)}
# Every typed event names the one kind of channel it is published to.
KIND_OF_TYPE: dict[str, ChannelKind] = {
    t: kind for kind in (CART, USER, REVIEWS, PARTS_REQUESTS) for t in kind.event_types
}
# Kinds whose channels name a region and, optionally, a product: inventory:{region}[:{product}].
REGIONAL = (INVENTORY, REVIEWS)


@dataclass(frozen=True, slots=True)
class Channel:
    kind: ChannelKind
    region: str
    key: str | None  # product id, cart id or user; None: every key of the stream (inventory:{region})
    stream: str
    # Made once: a fan-out reads them once per delivery (and a new string is hashed anew by each lookup).
    name: str = field(init=False, repr=False, compare=False)
    route: str | None = field(init=False, repr=False, compare=False)  # the engine's index of the feed

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", channel_name(self.kind, self.region, self.key))
        object.__setattr__(self, "route", None if self.key is None else route_key(self.kind, self.key))

    @property
    def product_id(self) -> str | None:
        """The product of an inventory or reviews channel (None for the whole region)."""
        return self.key if self.kind in REGIONAL else None

    @property
    def public(self) -> bool:
        return self.kind.access is Access.PUBLIC

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class ChannelName:
    """A channel name as parsed, before the hub resolved its stream (a cart's depends on its owner)."""

    kind: ChannelKind
    key: str | None
    region: str | None  # inventory channels name theirs; the others are served in the node's region

    @property
    def name(self) -> str:
        """The name as the hub writes it (a product or cart UUID in its canonical form)."""
        return channel_name(self.kind, self.region, self.key)


def channel_name(kind: ChannelKind, region: str | None, key: str | None) -> str:
    """A channel's name: ``inventory:{region}[:{product}]``, ``reviews:{region}[:{product}]``,
    ``cart:{id}``, ``user:{sub}``."""
    if kind in REGIONAL:
        return f"{kind.name}:{region}" if key is None else f"{kind.name}:{region}:{key}"
    return f"{kind.name}:{key}"


def route_key(kind: ChannelKind, key: str) -> str:
    return f"{kind.name}:{key}"


def inventory_channel(region: str, product_id: str | None = None) -> Channel:
    return Channel(INVENTORY, region, product_id, inventory_stream(region))


def reviews_channel(region: str, product_id: str | None = None) -> Channel:
    return Channel(REVIEWS, region, product_id, reviews_stream(region))


def cart_channel(region: str, cart_id: str, owner: str) -> Channel:
    return Channel(CART, region, cart_id, user_stream(region, owner))


def user_channel(region: str, sub: str) -> Channel:
    return Channel(USER, region, sub, user_stream(region, sub))


def parts_requests_channel(region: str, school_id: str) -> Channel:
    """``parts-requests:{school_id}``, on the stream of the school's region."""
    return Channel(PARTS_REQUESTS, region, school_id, parts_stream(region, school_id))


__all__ = [
    "CART",
    "INVENTORY",
    "KINDS",
    "PARTS_REQUESTS",
    "REGIONAL",
    "REVIEWS",
    "USER",
    "USER_STREAM_SHARDS",
    "Access",
    "Channel",
    "ChannelError",
    "ChannelKind",
    "ChannelName",
    "cart_channel",
    "channel_name",
    "event_route",
    "inventory_channel",
    "inventory_stream",
    "parse_channel",
    "parse_channel_name",
    "parts_requests_channel",
    "parts_stream",
    "parts_streams",
    "reviews_channel",
    "reviews_stream",
    "route_key",
    "user_channel",
    "user_stream",
    "user_streams",
]


def parse_channel_name(name: str) -> ChannelName:
    if len(name) > MAX_CHANNEL_LENGTH:
        raise ChannelError("invalid_channel", "channel names are at most 128 characters")
    kind_name, _, rest = name.partition(":")
    kind = KINDS.get(kind_name)
    if kind is None or not rest:
        raise ChannelError(
            "invalid_channel",
            "a channel is inventory:{region}[:{product_id}], reviews:{region}[:{product_id}],"
            " cart:{cart_id}, user:{sub} or parts-requests:{school_id}",
        )
    if kind in REGIONAL:
        parts = rest.split(":")
        if len(parts) > 2:
            raise ChannelError(
                "invalid_channel",
                f"a channel is {kind.name}:{{region}} or {kind.name}:{{region}}:{{product_id}}",
            )
        if not _REGION.fullmatch(parts[0]):
            raise ChannelError("invalid_channel", f"{parts[0]!r} is not a region name")
        return ChannelName(kind, _uuid(parts[1], "product") if len(parts) == 2 else None, parts[0])
    if kind is CART:
        return ChannelName(CART, _uuid(rest, "cart"), None)
    if kind is PARTS_REQUESTS:
        if not _SCHOOL.fullmatch(rest):
            raise ChannelError("invalid_channel", "a parts requests channel is parts-requests:{school_id}")
        return ChannelName(PARTS_REQUESTS, rest, None)
    if not _SUB.fullmatch(rest):
        raise ChannelError("invalid_channel", "a user channel is user:{sub}, the token's subject")
    return ChannelName(USER, rest, None)


def parse_channel(name: str) -> Channel:
    """A public (inventory, reviews) channel from its name; ChannelError for anything else."""
    parsed = parse_channel_name(name)
    if parsed.kind not in REGIONAL:
        raise ChannelError("invalid_channel", f"{parsed.kind.name} channels are resolved by the hub")
    assert parsed.region is not None
    if parsed.kind is REVIEWS:
        return reviews_channel(parsed.region, parsed.key)
    return inventory_channel(parsed.region, parsed.key)


def _uuid(text: str, what: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError as exc:
        raise ChannelError("invalid_channel", f"the {what} of a channel is a UUID") from exc


def event_route(stream: str, data: dict[str, Any]) -> tuple[ChannelKind, str, str]:
    """(kind, type, key) of a publication's data: inventory events have no ``type`` (their wire format
    predates the others'); every other event names its type, and the type its kind."""
    kind_type = data.get("type")
    if kind_type is None:
        return INVENTORY, "stock", str(data.get("product_id", ""))
    kind = KIND_OF_TYPE.get(kind_type) if isinstance(kind_type, str) else None
    if kind is None:
        raise ChannelError("unknown_event_type", f"no channel kind carries events of type {kind_type!r}")
    return kind, kind_type, str(data.get(kind.key_field, ""))
