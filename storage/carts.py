"""Cart documents across the Store seam: what a push, a sync and a checkout take and give back.

A cart is one :class:`crdt.cart.Cart` state per cart id, owned by the user who first wrote it. The
store merges every accepted delta into it in the transaction that records the delta's mutation id and
appends the delta (never the whole state) to the outbox, so:

* a push is acknowledged only once durable, and a retried ``mutation_id`` applies once: it is answered
  ``duplicate`` with the version its first application produced (a refused one is not recorded, and is
  judged again). Ids are forgotten after the hub's retention (``purge_cart_mutations``); a retry after
  that merges again, which changes nothing (a join is idempotent);
* two nodes merging into one cart at once serialise on the cart's row, and the merge is a join: the
  stored state is the join of every accepted delta, whatever the order;
* a refused delta (:class:`Refusal`) changes nothing — not the cart's state, its version, the outbox,
  its mutation ids, nor a replica's owner — and the others of its batch go on. (A push opens the cart
  as :meth:`~storage.base.Store.open_cart` does: one into a cart that did not exist leaves it created,
  empty, at version 0, whatever its deltas' outcomes.)

The rules a delta must keep (:class:`CartRules`) are checked against the merged state, in the same
transaction: its new dots are of replicas bound to the pushing user (a replica id is bound on first
use; of two users binding one id at once, exactly one does), its SKUs are in the catalog, its clock is
not ahead of the hub's by more than the drift bound, it holds at most ``max_entries`` entries of at
most ``max_quantity`` units, and the live cart keeps at most ``max_lines`` lines (a line set to 0 is
one) of at most ``max_quantity`` units — once checked out too, where edits are kept but rejected. A
delta may not take a cart past a bound; one already past it (under older rules) may be edited down.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from crdt.cart import Cart

# Replica ids starting with "~" are the hub's own (its checkouts); a device may not push their dots.
HUB_REPLICA = "~hub"


@dataclass(frozen=True, slots=True)
class CartRules:
    max_lines: int = 200
    max_quantity: int = 999
    max_drift_ms: int = 60_000
    max_entries: int = 1_000  # entries of one pushed delta


class CartOwner(NamedTuple):
    """Whose a cart is, and the region it lives in: its events (deltas, checkout, the checkout's
    ``cart.status``) go to that region's user stream, whichever node wrote them, so that they reach
    the cart's followers in one order; a node of another region does not serve its channel."""

    sub: str
    region: str


@dataclass(frozen=True, slots=True)
class CartDocument:
    id: str
    owner: str
    region: str
    cart: Cart
    version: int  # grows by one per accepted change
    created_at: int
    updated_at: int
    closed_at: int | None
    reservation_id: str | None


# A device's delta, or (for a client with no CRDT) a function the store calls with the cart as it is
# in the transaction, returning the delta whose dot the hub mints for that device.
DeltaSource = Cart | Callable[[Cart], Cart]


@dataclass(frozen=True, slots=True)
class CartPush:
    mutation_id: str
    delta: DeltaSource
    origin: str | None = None  # the pushing connection's token, written into the delta's event


class PushStatus(enum.StrEnum):
    APPLIED = "applied"  # merged now (or it changed nothing new: still acknowledged)
    DUPLICATE = "duplicate"  # this mutation id was applied before; nothing done again
    REFUSED = "refused"  # broke a rule; nothing changed


@dataclass(frozen=True, slots=True)
class PushOutcome:
    mutation_id: str
    status: PushStatus
    version: int  # the cart's version after it (for a duplicate: the version it produced)
    code: str | None = None  # a refusal's stable code
    message: str | None = None


class Refusal(Exception):
    """A pushed delta broke a cart rule (``code``: foreign_replica, unknown_sku, clock_skew,
    cart_too_large, quantity_out_of_range, delta_too_large, checkout_required; the hub's own
    cart_closed and invalid_edit for server-minted edits)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class PushResult:
    document: CartDocument
    outcomes: list[PushOutcome]


class CheckoutOutcome(enum.StrEnum):
    RESERVED = "reserved"
    INSUFFICIENT_STOCK = "insufficient_stock"
    PRODUCT_NOT_FOUND = "product_not_found"
    EMPTY_CART = "empty_cart"
    CAP_EXCEEDED = "reservation_cap_exceeded"  # storage.reservation_caps


@dataclass(frozen=True, slots=True)
class CheckoutResult:
    outcome: CheckoutOutcome
    body: dict[str, object]  # the reservation, or the refusal's details
    replayed: bool
    document: CartDocument | None
