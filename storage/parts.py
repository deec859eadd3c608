"""Schools, their assets and their parts requests: the records that cross the store's seam, the
statuses and their transitions, and the guarantees (:mod:`storage.sql_parts` keeps them in SQL).

A **school** (an id chosen by its admin, a region) owns **assets** — vehicles and equipment, each with an
asset tag unique within the school — and makes **parts requests** for one asset: lines of a SKU, or of a
fitment query (:class:`PartsQuery`: a category and attribute filters, :mod:`storage.attributes`) that
the store resolves to the matching product with the most stock available in the school's region, each
with a quantity; a ``needed_by`` date; a policy.

Statuses (:data:`TRANSITIONS`)::

    requested ──▶ reserved ──▶ picked ──▶ shipped ──▶ delivered
        │            ▲   │         │
        └─▶ backordered ─┘         │         (every status before shipped) ──▶ cancelled
              (filled)

``requested`` lives only inside the transaction that makes the request: it leaves as ``reserved`` (every
line's units held) or ``backordered`` (some units wait in the queue). Each line is served from the
warehouses of the school's region: ``all_or_none`` takes a line's whole quantity from one warehouse or
none of it; ``partial`` takes what there is, from the warehouses with the most first, and queues the rest.
What a request holds is one reservation (``reservations``, owner ``school:{id}``, never expiring): its
lines are the units taken, one per take. ``shipped`` commits it (the units leave ``on_hand``);
``cancelled`` releases it and takes the request's lines out of the queue.

Guarantees of the store:

* **No oversell.** Every unit is taken by the guarded statement of :mod:`storage.sql_reservations`
  (``reserved + q ≤ on_hand``, evaluated by the database); parts requests and shop reservations share it.
* **One request per key.** ``create_parts_request`` with a key the school used before returns the first
  answer (``replayed``) and changes nothing; with another body, :class:`~storage.errors.IdempotencyMismatch`.
  Concurrent requests with one key make one request.
* **First come, first served.** The backorder queue of a product in a region is in request order. A
  request whose product has a queue joins its end rather than take stock that arrived for those before
  it, and stock that becomes available at a warehouse (set or adjusted upwards, a reservation released or
  expired, a parts request cancelled) goes to the head of the queue in the same transaction that made it
  available: the head takes what it can (its whole line, for ``all_or_none``) and the queue stops at the
  first line it cannot fill — nobody skips ahead. On PostgreSQL a product's queue is serialised by an
  advisory lock (:func:`queue_lock_key`) taken after the stock rows, in one order everywhere
  (:mod:`storage.sql_parts` says which).
* **Every change is an event.** Each status change, and each fill that leaves a request backordered,
  appends ``parts_request.{status}`` (or ``parts_request.line_filled``) to the outbox in its transaction:
  stream ``parts.{region}.{n}`` of the school (:func:`storage.streams.parts_stream`), key
  ``parts_request:{id}``, version the request's (+1 per change). Its payload is
  :func:`parts_event`: self-describing (type, school, request, status, lines, version, ts).
"""

from __future__ import annotations

import enum
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from storage.attributes import AttributeFilter

PARTS_RESERVATION_OWNER = "school:"  # + the school's id: who a parts request's reservation belongs to
NEVER_EXPIRES_US = 2**62  # a parts request's reservation is held until shipped or cancelled
QUEUE_LOCK_CLASS = 0x5041_5254  # "PART": PostgreSQL advisory locks of products' backorder queues


class PartsStatus(enum.StrEnum):
    REQUESTED = "requested"
    RESERVED = "reserved"
    BACKORDERED = "backordered"
    PICKED = "picked"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"


class Policy(enum.StrEnum):
    ALL_OR_NONE = "all_or_none"
    PARTIAL = "partial"


class AssetKind(enum.StrEnum):
    VEHICLE = "vehicle"
    EQUIPMENT = "equipment"


S = PartsStatus
TRANSITIONS: dict[PartsStatus, frozenset[PartsStatus]] = {
    S.REQUESTED: frozenset({S.RESERVED, S.BACKORDERED, S.CANCELLED}),
    S.BACKORDERED: frozenset({S.RESERVED, S.CANCELLED}),  # reserved: by the queue, when filled
    S.RESERVED: frozenset({S.PICKED, S.CANCELLED}),
    S.PICKED: frozenset({S.SHIPPED, S.CANCELLED}),
    S.SHIPPED: frozenset({S.DELIVERED}),
    S.DELIVERED: frozenset(),
    S.CANCELLED: frozenset(),
}
# What a caller may ask for; reserved and backordered are the store's to decide.
REQUESTABLE = (S.PICKED, S.SHIPPED, S.DELIVERED, S.CANCELLED)
# The events of a request: created, each status it reaches but requested, and fills that leave it
# backordered (sync/channels.py names them too, for its channel kind).
EVENT_TYPES = frozenset(
    f"parts_request.{name}"
    for name in ("created", "line_filled", *(status.value for status in S if status is not S.REQUESTED))
)


def queue_lock_key(product_id: str, region: str) -> int:
    """The second key of a product's queue's advisory lock in a region: a signed 32-bit CRC."""
    crc = zlib.crc32(f"{product_id}/{region}".encode())
    return crc - 2**32 if crc >= 2**31 else crc


def reservation_owner(school_id: str) -> str:
    return f"{PARTS_RESERVATION_OWNER}{school_id}"


@dataclass(frozen=True, slots=True)
class School:
    id: str
    name: str
    region: str
    api_keys: tuple[str, ...] = ()  # the API keys bound to it: their family ids (hub/schools.py)
    created_at: int = 0
    updated_at: int = 0
    version: int = 1


@dataclass(frozen=True, slots=True)
class Asset:
    id: str
    school_id: str
    asset_tag: str
    kind: AssetKind
    make: str
    model: str
    year: int | None
    created_at: int = 0
    updated_at: int = 0
    version: int = 1


@dataclass(frozen=True, slots=True)
class PartsQuery:
    """A fitment query: the products of ``category`` (any, if None) whose attributes match every filter."""

    category: str | None
    attributes: tuple[AttributeFilter, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"category": self.category, "attributes": {f.dotted: f.value for f in self.attributes}}


@dataclass(frozen=True, slots=True)
class NewPartsLine:
    quantity: int
    sku: str | None = None
    query: PartsQuery | None = None


@dataclass(frozen=True, slots=True)
class NewPartsRequest:
    asset_id: str
    needed_by: str  # an ISO date, YYYY-MM-DD
    policy: Policy
    lines: tuple[NewPartsLine, ...]


@dataclass(frozen=True, slots=True)
class PartsLine:
    line_no: int
    sku: str  # the product's, also for a query's line
    query: dict[str, Any] | None  # the fitment query, as asked
    product_id: str
    quantity: int
    reserved: int
    backordered: int


@dataclass(frozen=True, slots=True)
class PartsRequest:
    id: str
    school_id: str
    asset_id: str
    region: str
    needed_by: str
    status: PartsStatus
    policy: Policy
    lines: tuple[PartsLine, ...]
    reservation_id: str | None
    created_by: str
    created_at: int
    updated_at: int
    version: int


@dataclass(frozen=True, slots=True)
class PartsOutcome:
    """A create's answer: the request as first made (``answer``, what a retry replays) and whether this
    call replayed it."""

    request_id: str
    answer: dict[str, Any]
    replayed: bool


@dataclass(frozen=True, slots=True)
class PartsRequestQuery:
    school_id: str
    status: PartsStatus | None = None
    asset_id: str | None = None
    needed_from: str | None = None  # inclusive ISO dates
    needed_to: str | None = None
    limit: int = 50
    after: tuple[int, str] | None = None  # (created_at, id) of the last row seen: newest first


@dataclass(frozen=True, slots=True)
class PartsRequestPage:
    items: list[PartsRequest]
    next_after: tuple[int, str] | None


def line_to_dict(line: PartsLine) -> dict[str, Any]:
    return {
        "line": line.line_no,
        "sku": line.sku,
        "query": line.query,
        "product_id": line.product_id,
        "quantity": line.quantity,
        "reserved": line.reserved,
        "backordered": line.backordered,
    }


def parts_request_to_dict(request: PartsRequest) -> dict[str, Any]:
    """The request with its times in epoch microseconds (the hub writes them as ISO times)."""
    return {
        "id": request.id,
        "school_id": request.school_id,
        "asset_id": request.asset_id,
        "region": request.region,
        "needed_by": request.needed_by,
        "status": request.status.value,
        "policy": request.policy.value,
        "lines": [line_to_dict(line) for line in request.lines],
        "reservation_id": request.reservation_id,
        "created_by": request.created_by,
        "created_at": request.created_at,
        "updated_at": request.updated_at,
        "version": request.version,
    }


def parts_event(event: str, request: PartsRequest, ts: int, **extra: Any) -> dict[str, Any]:
    """An outbox event's payload: ``parts_request.{event}`` with what a consumer needs without reading
    the request (docs/protocol.md, "Parts requests channels")."""
    return {
        "type": f"parts_request.{event}",
        "school_id": request.school_id,
        "request_id": request.id,
        "status": request.status.value,
        "version": request.version,
        "ts": ts,
        "asset_id": request.asset_id,
        "needed_by": request.needed_by,
        "policy": request.policy.value,
        "reservation_id": request.reservation_id,
        "lines": [line_to_dict(line) for line in request.lines],
        **extra,
    }


class PartsStore(Protocol):
    """The store's operations on schools, assets and parts requests (the guarantees: this module's)."""

    async def create_school(self, school: School) -> School:
        """Conflict(school_exists) if the id is taken."""
        ...

    async def get_school(self, school_id: str) -> School | None: ...
    async def list_schools(
        self, limit: int, after: str | None = None, key_family: str | None = None
    ) -> list[School]:
        """By id after ``after``; with ``key_family``, only the schools that API key is bound to."""
        ...

    async def update_school(
        self, school_id: str, changes: Mapping[str, Any], expected_version: int | None = None
    ) -> School:
        """``name``, ``api_keys`` (the whole set of key families); VersionMismatch, NotFound(school)."""
        ...

    async def create_asset(self, asset: Asset) -> Asset:
        """NotFound(school); Conflict(asset_tag_taken) for a tag the school uses already."""
        ...

    async def get_asset(self, school_id: str, asset_id: str) -> Asset | None: ...
    async def list_assets(
        self, school_id: str, limit: int, after: tuple[str, str] | None = None
    ) -> list[Asset]:
        """By (asset_tag, id), after ``after``."""
        ...

    async def update_asset(
        self, school_id: str, asset_id: str, changes: Mapping[str, Any], expected_version: int | None = None
    ) -> Asset: ...
    async def create_parts_request(
        self, school_id: str, idempotency_key: str, request_hash: str, new: NewPartsRequest, created_by: str
    ) -> PartsOutcome:
        """Once per (school, key); reserves what the policy lets it take, queues the rest."""
        ...

    async def get_parts_request(self, school_id: str, request_id: str) -> PartsRequest | None: ...
    async def list_parts_requests(self, query: PartsRequestQuery) -> PartsRequestPage: ...
    async def transition_parts_request(
        self, school_id: str, request_id: str, target: PartsStatus, expected_version: int | None = None
    ) -> tuple[PartsRequest, bool]:
        """(request, whether it changed); InvalidTransition, VersionMismatch, NotFound(parts_request)."""
        ...
