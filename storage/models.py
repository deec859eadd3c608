"""Plain records passed across the Store seam. No I/O, no behaviour beyond derivations."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from storage.attributes import AttributeFilter
from storage.reviews import RatingAggregate

PRICE_SCALE = 10_000  # prices are stored as integers of 1/10,000 of the currency unit: exact on every backend


class ProductStatus(enum.StrEnum):
    ACTIVE = "active"
    PREORDER = "preorder"
    DISCONTINUED = "discontinued"


class StockStatus(enum.StrEnum):
    IN_STOCK = "in_stock"
    LOW_STOCK = "low_stock"
    OUT_OF_STOCK = "out_of_stock"
    PREORDER = "preorder"
    DISCONTINUED = "discontinued"


class ReservationStatus(enum.StrEnum):
    PENDING = "pending"
    COMMITTED = "committed"
    RELEASED = "released"
    EXPIRED = "expired"


def price_to_units(price: Decimal) -> int:
    units = price * PRICE_SCALE
    if units != units.to_integral_value():
        raise ValueError(f"a price has at most 4 decimal places, not {price}")
    return int(units)


def units_to_price(units: int) -> Decimal:
    value = Decimal(units) / PRICE_SCALE
    # Always show at least cents: "12.50", never "12.5" or "1.25E+1".
    return value.quantize(Decimal("0.01")) if value == value.quantize(Decimal("0.01")) else value


def stock_status(product_status: str, available: int, low_stock_threshold: int) -> StockStatus:
    if product_status == ProductStatus.DISCONTINUED:
        return StockStatus.DISCONTINUED
    if product_status == ProductStatus.PREORDER:
        return StockStatus.PREORDER
    if available <= 0:
        return StockStatus.OUT_OF_STOCK
    if available <= low_stock_threshold:
        return StockStatus.LOW_STOCK
    return StockStatus.IN_STOCK


@dataclass(frozen=True, slots=True)
class Product:
    id: str
    sku: str
    name: str
    description: str
    category: str
    price: Decimal
    status: ProductStatus
    attributes: dict[str, Any]
    low_stock_threshold: int
    created_at: int  # epoch microseconds
    updated_at: int
    version: int
    # The aggregate of its published reviews (storage/reviews.py), numbered apart from ``version``:
    # it changes with reviews, not with the product's own edits.
    rating: RatingAggregate = field(default_factory=lambda: RatingAggregate(0, 0, (0, 0, 0, 0, 0)))
    rating_version: int = 0


@dataclass(frozen=True, slots=True)
class NewProduct:
    sku: str
    name: str
    price: Decimal
    description: str = ""
    category: str = ""
    status: ProductStatus = ProductStatus.ACTIVE
    attributes: dict[str, Any] = field(default_factory=dict)
    low_stock_threshold: int = 5


@dataclass(frozen=True, slots=True)
class Warehouse:
    id: str
    region: str
    name: str


@dataclass(frozen=True, slots=True)
class StockLevel:
    product_id: str
    warehouse_id: str
    region: str
    on_hand: int
    reserved: int
    version: int
    status: StockStatus
    updated_at: int

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


@dataclass(frozen=True, slots=True)
class ReservationLineRequest:
    product_id: str
    quantity: int
    warehouse_id: str | None = None
    region: str | None = None


@dataclass(frozen=True, slots=True)
class ReservationLine:
    product_id: str
    warehouse_id: str
    quantity: int


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    owner: str
    status: ReservationStatus
    lines: tuple[ReservationLine, ...]
    created_at: int
    expires_at: int
    updated_at: int


class ReservationOutcome(enum.IntEnum):
    """What a reservation request came to. The numbers are what idempotency keys store (in both
    backends, and in PostgreSQL's batch function); they were the HTTP statuses the hub answered
    with when keys were first stored, and stay so that every stored key replays unchanged. Which
    HTTP status an outcome gets is the hub's choice (hub/routes/reservations.py)."""

    RESERVED = 201
    PRODUCT_NOT_FOUND = 404
    INSUFFICIENT_STOCK = 409
    CAP_EXCEEDED = 422  # a reservation cap (storage.reservation_caps)


@dataclass(frozen=True, slots=True)
class IdempotentResult:
    """What a reservation request produced, replayed verbatim for a retry with the same key."""

    status: ReservationOutcome
    body: dict[str, Any]
    replayed: bool


@dataclass(frozen=True, slots=True)
class InventoryDelta:
    """One stock change, as written to the outbox in the transaction that made it."""

    product_id: str
    sku: str
    warehouse_id: str
    region: str
    on_hand: int
    reserved: int
    available: int
    status: str
    version: int
    ts: int  # epoch microseconds of the change

    def to_dict(self) -> dict[str, Any]:
        return {
            "product_id": self.product_id,
            "sku": self.sku,
            "warehouse_id": self.warehouse_id,
            "region": self.region,
            "on_hand": self.on_hand,
            "reserved": self.reserved,
            "available": self.available,
            "status": self.status,
            "version": self.version,
            "ts": self.ts,
        }


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One committed change in the outbox: published to ``stream`` as ``payload`` (its JSON, encoded
    once when written), and appended there once per (``key``, ``version``) — a product × warehouse's
    stock version, a cart's version, a user's event counter."""

    seq: int
    stream: str
    key: str
    version: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class ProductQuery:
    limit: int = 50
    category: str | None = None
    status: ProductStatus | None = None
    price_min: Decimal | None = None
    price_max: Decimal | None = None
    in_stock_region: str | None = None
    min_rating: Decimal | None = None  # products whose published reviews average at least this
    attributes: tuple[AttributeFilter, ...] = ()  # attr.{path}={value}, all matched (storage.attributes)
    sort: str = "newest"
    after: tuple[Any, str] | None = None  # keyset cursor: (sort value, id) of the last row seen


@dataclass(frozen=True, slots=True)
class ProductPage:
    items: list[Product]
    next_after: tuple[Any, str] | None


# Product list sorts: sort name -> (column, descending)
SORTS: dict[str, tuple[str, bool]] = {
    "newest": ("created_at", True),
    "oldest": ("created_at", False),
    "name": ("name", False),
    "-name": ("name", True),
    "price": ("price_units", False),
    "-price": ("price_units", True),
    "rating": ("rating_score", False),  # the average of published reviews, lowest first
    "-rating": ("rating_score", True),
}


def reservation_to_dict(reservation: Reservation) -> dict[str, Any]:
    return {
        "id": reservation.id,
        "owner": reservation.owner,
        "status": reservation.status.value,
        "lines": [
            {"product_id": ln.product_id, "warehouse_id": ln.warehouse_id, "quantity": ln.quantity}
            for ln in reservation.lines
        ],
        "created_at": reservation.created_at,
        "expires_at": reservation.expires_at,
        "updated_at": reservation.updated_at,
    }
