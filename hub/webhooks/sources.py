"""Which webhook event types exist, which broker streams carry them, and how one of their events is
matched, ordered and sent: one :class:`EventSource` per kind of stream, in :data:`SOURCES`.

    source          streams (per region)   event types                                 in order per
    inventory       inventory.{region}     stock.changed                               product × warehouse
    reservations    user.{region}.0 … .7   reservation.created, .committed,            reservation
                                           .released, .expired
    reviews         reviews.{region}       review.published, review.changed,           review; the
                                           review.removed, rating.changed              product's rating
    parts_requests  parts.{region}.0 … .3  parts_request.created, .reserved,           parts request
                                           .backordered, .line_filled, .picked,
                                           .shipped, .delivered, .cancelled

An endpoint subscribes to types (``stock.changed``) or families (``reservation.*``: every type of that
prefix), each with optional filters on the event's fields (``{"sku": ["A-1"], "warehouse_id":
["par-1"]}``: every filter given must match one of its values). Who may hear what is the source's
``visible``: public sources' events reach anyone; a reservation's reach the endpoint of the key (or user)
that owns it, a parts request's the endpoints of the keys bound to its school, and both reach every
admin's endpoint; an API key subscribes to them only with one of ``key_scopes``.

**A new kind of stream plugs in with one registration** — ``register(EventSource(...))``: its types,
a function from a region to its streams, how an event names its type and its order key, its filters,
who may hear it (with, where that needs the store, a ``grants`` loader the worker calls for each
endpoint) and the scopes a key needs — as the parts requests' (``parts.{region}.{n}``) does below. The
REST API's validation and OpenAPI schema, the worker's stream reads and deliveries follow from it.
"""

from __future__ import annotations

import hashlib
import time
from base64 import b32encode
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from hub.responses import iso
from hub.validation import Validator, string, uuid_string
from storage.streams import inventory_stream, parts_streams, reviews_stream, user_streams
from storage.webhooks import QueuedMessage, Subscription
from sync.broker import Publication
from sync.channels import PARTS_REQUESTS, REVIEWS, USER

if TYPE_CHECKING:
    from storage.base import Store

Data = dict[str, Any]
PING = "webhook.ping"


@dataclass(frozen=True, slots=True)
class Owner:
    """An endpoint's owner as its events are judged: who, whether an admin made it, and what the sources
    with a ``grants`` loader found it may hear (source name → e.g. the ids of the schools a key is bound
    to), read by the worker when it takes the endpoint and at every lease round."""

    sub: str
    is_admin: bool
    grants: Mapping[str, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Filter:
    read: Callable[[Data], Any]  # the event's value the filter looks at
    check: Validator  # what a filter value must be (hub.validation: its JSON Schema is the document's)


@dataclass(frozen=True, slots=True)
class EventSource:
    name: str
    types: frozenset[str]
    streams: Callable[[str], Sequence[str]]  # a region → the streams that carry the source's events
    type_of: Callable[[Data], str | None]  # an event's webhook type (None: not one webhooks send)
    order_key: Callable[[Data], str]  # events of one key are delivered in order
    filters: Mapping[str, Filter] = field(default_factory=dict)
    visible: Callable[[Owner, Data], bool] = lambda owner, data: True
    key_scopes: frozenset[str] = frozenset()  # an API key needs one to subscribe (empty: any key)
    # What ``visible`` needs to know of an owner that only the store knows (Owner.grants[name]).
    grants: Callable[[Store, Owner], Awaitable[frozenset[str]]] | None = None


SOURCES: list[EventSource] = []


def register(source: EventSource) -> EventSource:
    # A family (``reservation.*``) belongs to one source: a subscription to it is one source's filters.
    taken = {_family(t) for s in SOURCES for t in s.types}
    if {_family(t) for t in source.types} & taken or any(s.name == source.name for s in SOURCES):
        raise ValueError(f"event source {source.name!r} names a family or a name already registered")
    SOURCES.append(source)
    return source


def _family(event_type: str) -> str:
    return event_type.split(".", 1)[0] + ".*"


def typed(types: frozenset[str]) -> Callable[[Data], str | None]:
    """``type_of`` for events that name their type in ``type``."""

    def type_of(data: Data) -> str | None:
        kind = data.get("type")
        return kind if kind in types else None

    return type_of


def owned_by(key: str) -> Callable[[Owner, Data], bool]:
    """``visible`` for private events: those whose ``key`` field names the owner; admins' endpoints hear
    them all."""

    def visible(owner: Owner, data: Data) -> bool:
        return owner.is_admin or data.get(key) == owner.sub

    return visible


def read(*path: str) -> Callable[[Data], Any]:
    def get(data: Data) -> Any:
        value: Any = data
        for step in path:
            value = value.get(step) if isinstance(value, dict) else None
        return value

    return get


_SKU = string(1, 64, r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_WAREHOUSE = string(1, 64, r"[a-z0-9][a-z0-9\-]{0,63}")

INVENTORY = register(
    EventSource(
        name="inventory",
        types=frozenset({"stock.changed"}),
        streams=lambda region: [inventory_stream(region)],
        # (stock changes are the one kind of event that names no type: their wire format predates it)
        type_of=lambda data: "stock.changed" if "type" not in data else None,
        order_key=lambda data: f"{data.get('product_id')}/{data.get('warehouse_id')}",
        filters={
            "sku": Filter(read("sku"), _SKU),
            "warehouse_id": Filter(read("warehouse_id"), _WAREHOUSE),
            "product_id": Filter(read("product_id"), uuid_string),
        },
    )
)
_RESERVATION_TYPES = frozenset(
    {"reservation.created", "reservation.committed", "reservation.released", "reservation.expired"}
)
assert USER.event_types >= _RESERVATION_TYPES
RESERVATIONS = register(
    EventSource(
        name="reservations",
        types=_RESERVATION_TYPES,
        streams=user_streams,
        type_of=typed(_RESERVATION_TYPES),
        order_key=lambda data: f"reservation:{read('reservation', 'id')(data)}",
        visible=owned_by("sub"),
        key_scopes=frozenset({"reservations:read", "reservations:write"}),
    )
)
_REVIEW_TYPES = frozenset({"review.published", "review.changed", "review.removed", "rating.changed"})
assert REVIEWS.event_types >= _REVIEW_TYPES
REVIEW_EVENTS = register(
    EventSource(
        name="reviews",
        types=_REVIEW_TYPES,
        streams=lambda region: [reviews_stream(region)],
        type_of=typed(_REVIEW_TYPES),
        order_key=lambda data: (
            f"rating:{data.get('product_id')}"
            if data.get("type") == "rating.changed"
            else f"review:{read('review', 'id')(data)}"
        ),
        filters={"product_id": Filter(read("product_id"), uuid_string)},
    )
)


_PARTS_TYPES = PARTS_REQUESTS.event_types
_SCHOOL_ID = string(1, 64, r"[a-z0-9][a-z0-9\-]{0,63}")
_API_KEY = "apikey."


async def _bound_schools(store: Store, owner: Owner) -> frozenset[str]:
    """The schools an API key is bound to (hub/schools.py binds keys by family, the subject's id)."""
    if not owner.sub.startswith(_API_KEY):
        return frozenset()
    family, after = owner.sub[len(_API_KEY) :], None
    found: set[str] = set()
    while True:
        page = await store.list_schools(500, after, key_family=family)
        found.update(school.id for school in page)
        if len(page) < 500:
            return frozenset(found)
        after = page[-1].id


PARTS_REQUEST_EVENTS = register(
    EventSource(
        name="parts_requests",
        types=_PARTS_TYPES,
        streams=parts_streams,
        type_of=typed(_PARTS_TYPES),
        order_key=lambda data: f"parts_request:{data.get('request_id')}",
        filters={"school_id": Filter(read("school_id"), _SCHOOL_ID)},
        # a school's requests: the keys bound to the school, and admins (as on parts-requests: channels)
        visible=lambda owner, data: (
            owner.is_admin or data.get("school_id") in owner.grants.get("parts_requests", frozenset())
        ),
        key_scopes=frozenset({"parts-requests:write"}),
        grants=_bound_schools,
    )
)


async def grants_of(store: Store, owner: Owner, subscriptions: Sequence[Subscription]) -> Owner:
    """``owner`` with the grants of the sources its subscriptions name that load some."""
    loaders = {
        s.name: s.grants for sub in subscriptions for s in sources_of(sub.type) if s.grants is not None
    }
    grants = {name: await load(store, owner) for name, load in sorted(loaders.items())}
    return Owner(owner.sub, owner.is_admin, grants)


def all_types() -> list[str]:
    return sorted(t for s in SOURCES for t in s.types)


def patterns() -> list[str]:
    """What a subscription may name: every type, and ``family.*`` for every family."""
    families = {_family(t) for t in all_types()}
    return sorted(families) + all_types()


def matches(pattern: str, event_type: str) -> bool:
    return pattern == event_type or (pattern.endswith(".*") and event_type.startswith(pattern[:-1]))


def sources_of(pattern: str) -> list[EventSource]:
    return [s for s in SOURCES if any(matches(pattern, t) for t in s.types)]


def message_id(endpoint_id: str, stream: str, epoch: str, offset: int) -> str:
    """A message's id: the same every time this endpoint takes this event in (``msg_`` + 24 base32)."""
    digest = hashlib.sha256(f"{endpoint_id}\n{stream}\n{epoch}\n{offset}".encode()).digest()
    return "msg_" + b32encode(digest[:15]).decode().lower()


def envelope(event_type: str, at_us: int, position: str | None, data: bytes) -> bytes:
    """The body: ``{"type", "timestamp", "position", "data"}`` (Standard Webhooks' payload structure, and
    where the event stands in its stream, for replays); ``data`` is the event as published, spliced in
    as bytes."""
    head = {"type": event_type, "timestamp": iso(at_us), "position": position}
    return orjson.dumps(head)[:-1] + b',"data":' + data + b"}"


@dataclass(frozen=True, slots=True)
class _Rule:
    pattern: str
    filters: tuple[tuple[Callable[[Data], Any], frozenset[str]], ...]

    def accepts(self, event_type: str, data: Data) -> bool:
        if not matches(self.pattern, event_type):
            return False
        return all(str(get(data)) in values for get, values in self.filters)


class Matcher:
    """One endpoint's subscriptions, ready to turn its streams' publications into its messages."""

    def __init__(
        self, endpoint_id: str, owner: Owner, subscriptions: Sequence[Subscription], region: str
    ) -> None:
        self.endpoint_id = endpoint_id
        self.owner = owner
        self.region = region
        self._rules: dict[str, list[_Rule]] = {}  # source name → rules
        self.streams: dict[str, EventSource] = {}  # stream → its source
        for sub in subscriptions:
            for source in sources_of(sub.type):
                rule = _Rule(
                    sub.type,
                    tuple(
                        (source.filters[name].read, frozenset(values))
                        for name, values in sub.filters.items()
                        if name in source.filters
                    ),
                )
                self._rules.setdefault(source.name, []).append(rule)
                for stream in source.streams(region):
                    self.streams[stream] = source

    def message(self, publication: Publication) -> QueuedMessage | None:
        source = self.streams.get(publication.stream)
        if source is None:
            return None
        try:
            data = orjson.loads(publication.data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict):
            return None
        event_type = source.type_of(data)
        if event_type is None or not source.visible(self.owner, data):
            return None
        if not any(rule.accepts(event_type, data) for rule in self._rules.get(source.name, ())):
            return None
        ts = data.get("ts")
        at = ts if isinstance(ts, int) and not isinstance(ts, bool) else time.time_ns() // 1000
        position = publication.position
        return QueuedMessage(
            message_id=message_id(self.endpoint_id, publication.stream, position.epoch, position.offset),
            region=self.region,
            order_key=source.order_key(data),
            event_type=event_type,
            event_at=at,
            payload=envelope(
                event_type, at, f"{publication.stream}@{position.epoch}:{position.offset}", publication.data
            ),
            stream=publication.stream,
            epoch=position.epoch,
            offset=position.offset,
        )
