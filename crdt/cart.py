"""An offline shopping cart: a map from SKU to line, with one causal context per cart, that closes at
checkout.

**State model** (a delta-state, dot-based map). The cart holds a causal context (every write it has
seen) and, per SKU, a line with two kinds of entries, each under the dot of the write that made it:

* *add* entries ``dot → amount`` (a positive number of units: "add to cart");
* *set* entries ``dot → (quantity, Timestamp)`` ("set quantity", an absolute value; the timestamp
  comes from the writing replica's own hybrid logical clock).

A mutator mints a fresh dot and returns a delta whose context holds only the dots it concerns:

* ``add(sku, n)``: one add entry; context = its dot. Adds never cancel anything.
* ``set(sku, q, ts)``: one set entry; context = its dot **and every entry dot of that line the replica
  has** — those adds and sets are cancelled, wherever they are.
* ``remove(sku)``: no entry; context = the line's entry dots (an *observed* remove) plus a fresh dot
  that marks the remove itself.
* ``close()`` (checkout): records the closer's whole cart as of that moment — a *snapshot* (its
  lines and its context, plus the close dot) — beside the live cart; the delta's live part holds
  only the close dot.

**Merge** (the least upper bound), per entry dot: keep an entry that both sides hold, or that one side
holds and the other side's context does not contain (that side has not seen it); drop it when the
other side has seen its dot and no longer holds it (a set or a remove cancelled it). Contexts merge by
union. Snapshots merge with each other by the same rule (bottom: no snapshot, the cart is open). The
merge is the product of two joins — live cart, snapshots — so it is idempotent, commutative and
associative, whatever order deltas arrive in.

**Value.** A line reads the winning surviving set's quantity (0 when there is none) plus the sum of
the surviving adds. An open cart shows its live lines; a closed cart shows the merged snapshots: an
edit counts only if some checkout had seen it, and a cancellation only if some checkout had seen it
too. Edits the checkouts had not seen keep arriving in the live state — the merge stays a join, and
nothing is silently applied — and :meth:`Cart.rejected_edits` lists them.

**Who wins, concurrently**

====================================  =========================================================
add +1 and add +1 on two devices      both kept: +2 (an add is never lost)
set 3 and set 3                       3 (both set entries survive; one value, not a sum)
set 5 and set 2                       the later by hybrid logical clock (tie: replica id, then
                                      dot); the loser stays visible in :meth:`Cart.conflicts`
set 3 and add +1                      4: the set cancels only the adds it has seen
remove and a new add                  the add: the line comes back with only that add
remove and a stale device's old line  the remove: the old entries' dots are in the remove's
                                      context, so a device reconnecting with them never
                                      brings the line back
checkout and any edit it has not      the checkout: the cart's value is the snapshot; the edit
seen (concurrent or later)            stays in the live state and is listed by
                                      :meth:`Cart.rejected_edits`
====================================  =========================================================

Mutators on a cart that is closed (as far as this replica knows) raise :class:`ClosedCartError`;
edits from devices that had not yet heard of the checkout are *refused* by the value, never applied.

**Worked example** (phone ``P``, laptop ``L``)::

    cart = Cart.new()
    d1 = cart.add("P", "tea"); cart.apply(d1)             # tea: add P1 → 1
    laptop = cart.merge(Cart.new())                        # L sees P1
    d2 = cart.add("P", "tea"); cart.apply(d2)              # phone: add P2 → 2
    d3 = laptop.set("L", "tea", 5, Timestamp(1, 0, "L"))   # set L1=5; context {P1, L1}: cancels P1
    laptop.apply(d3); cart.apply(d3)                       # phone: P1 dropped, P2 kept: 5 + 1 = 6
    d4 = cart.remove("P", "tea"); cart.apply(d4)           # context {P2, L1, P3}: the line is gone
    laptop.apply(d2); laptop.apply(d4)                     # both equal, tea absent

(``tests/test_cart.py`` runs this example.)

**Known anomalies**

* "Set wins by clock": phones' clocks are trusted up to the clock's drift bound (60 s by default),
  so the "later" of two concurrent sets can be the earlier in real time by up to that bound.
* A decrement is ``set(sku, quantity - 1)``: two devices each taking one unit off 3 concurrently
  give 2, not 1 (both set 2). Adds are never negative, so a quantity can never go below zero.
* Each add is one entry until a set or a remove of the line cancels it: a line tapped "+" fifty
  times carries fifty small entries (apps can write ``set`` instead to keep it to one).
* Two concurrent checkouts freeze the union of what their devices had seen.
* Deltas carry only the dots they concern. If a device ships a delta, then crashes and loses an
  earlier write of its own that it had not persisted (say, a remove), the later write survives and
  the lost one's cancellations never happen. Persisting before shipping (write-ahead) rules this
  out; a whole state is always safe to ship.
* Replica ids are never reused (see :mod:`crdt.dots`): a device that lost writes in a crash takes a
  new id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crdt import codec
from crdt._cart_state import (
    MAX_QUANTITY,
    MAX_SKU_LENGTH,
    CartState,
    DeltaEntries,
    cart_decoder,
    encode_state,
    entry_kind,
    intern_sku,
    line_view,
)
from crdt._compact import RawDot, ReplicaTable
from crdt.context import CausalContext
from crdt.dots import Dot
from crdt.hlc import Timestamp
from crdt.wire import check_own_timestamp, check_replica

__all__ = ["MAX_QUANTITY", "MAX_SKU_LENGTH", "Cart", "ClosedCartError", "Line", "RejectedEdit"]


class ClosedCartError(ValueError):
    """The cart is checked out: it takes no more edits."""


@dataclass(frozen=True, slots=True)
class Line:
    quantity: int
    conflicts: tuple[int, ...]  # losing concurrent "set quantity" values, latest first


@dataclass(frozen=True, slots=True)
class RejectedEdit:
    """An edit the checkout refused: ``add``/``set`` made after (or concurrently with) the checkout, or
    ``cancel`` — an entry of the checked-out cart that such an edit cancelled (a set or a remove)."""

    sku: str
    kind: str
    dot: Dot
    quantity: int


class Cart:
    """A shopping cart (see the module docstring for the rules)."""

    __slots__ = ("_closed", "_delta", "_store")

    TYPE_TAG = "cart"

    def __init__(
        self,
        live: CartState | None = None,
        closed: CartState | None = None,
        delta: DeltaEntries | None = None,
    ) -> None:
        # A decoded delta comes as ``delta`` alone, its store built only if something asks for it.
        self._store: CartState | None = live if live is not None or delta is not None else CartState()
        self._delta = delta
        self._closed = closed

    @property
    def _live(self) -> CartState:
        store = self._store
        if store is None:
            assert self._delta is not None
            store = self._store = self._delta.store()
            self._delta = None
        return store

    @classmethod
    def new(cls) -> Cart:
        return cls()

    # -- reading -----------------------------------------------------------------------------------

    def _shown(self) -> CartState:
        return self._closed if self._closed is not None else self._live

    def value(self) -> dict[str, int]:
        """SKU → quantity, for the lines with a quantity above zero (the snapshot, once closed)."""
        out: dict[str, int] = {}
        for sku, line in self._shown().lines.items():
            quantity = line_view(line)[0]
            if quantity > 0:
                out[sku] = quantity
        return out

    def lines(self) -> dict[str, Line]:
        """Every line that holds an entry, with its conflicts (a line set to 0 is listed)."""
        return {sku: Line(*line_view(line)) for sku, line in self._shown().lines.items()}

    def live_lines(self) -> dict[str, Line]:
        """The live cart's lines, as :meth:`lines` shows them: the same as :meth:`lines` while the cart
        is open; once it is closed, what the edits made — the ones the checkout refused included —
        rather than the snapshot (what a hub bounds: the live state keeps growing after a checkout)."""
        return {sku: Line(*line_view(line)) for sku, line in self._live.lines.items()}

    def live_skus(self) -> set[str]:
        """The SKUs of :meth:`live_lines`, without building their lines."""
        return set(self._live.lines)

    def live_line(self, sku: str) -> Line:
        """One of :meth:`live_lines` (``Line(0, ())`` for a SKU with no entry)."""
        line = self._live.lines.get(sku)
        return Line(*line_view(line)) if line is not None else Line(0, ())

    def lines_touched_by(self, delta: Cart, limit: int = 512) -> set[str] | None:
        """The SKUs of this cart's live lines that merging ``delta`` may change: the lines ``delta``
        holds entries of, and those whose entries its context covers (a set or a remove cancels them).
        None when ``delta``'s live context has more than ``limit`` dots (a whole state, say): then any
        line may change."""
        context = delta._live
        if sum(context.vv.values()) + len(context.cloud) > limit:
            return None
        touched = set(context.lines)
        index = self._live.index()
        for dot in context.context_dots():
            sku = index.get(dot)
            if sku is not None:
                touched.add(sku)
        if delta._closed is not None:
            touched.update(delta._closed.lines)
        return touched

    def line(self, sku: str) -> Line:
        line = self._shown().lines.get(sku)
        return Line(*line_view(line)) if line is not None else Line(0, ())

    def quantity(self, sku: str) -> int:
        return self.line(sku).quantity

    def conflicts(self) -> dict[str, tuple[int, ...]]:
        """SKU → the quantities that lost to a concurrent "set quantity" ("changed on another device")."""
        return {sku: line.conflicts for sku, line in self.lines().items() if line.conflicts}

    @property
    def context(self) -> CausalContext:
        """Every write this replica has seen (of the live cart)."""
        return self._live.context()

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def rejected_edits(self) -> list[RejectedEdit]:
        """Edits the checkout refused; empty while the cart is open."""
        if self._closed is None:
            return []
        frozen, live = self._closed, self._live
        out: list[RejectedEdit] = []
        for sku, line in live.lines.items():
            for dot, value in line.items():
                if not frozen.seen(dot):
                    kind, quantity = entry_kind(value)
                    out.append(RejectedEdit(sku, kind, Dot(*dot), quantity))
        for sku, line in frozen.lines.items():
            for dot, value in line.items():
                if not live.holds(dot) and live.seen(dot):
                    out.append(RejectedEdit(sku, "cancel", Dot(*dot), entry_kind(value)[1]))
        out.sort(key=lambda edit: (edit.sku, edit.dot))
        return out

    def max_timestamp(self) -> Timestamp | None:
        """The latest timestamp in the cart, for a clock to ``observe`` after a merge."""
        stamps = [
            (value[1], value[2], replica)  # a set's (quantity, wall, logical); an add is an int
            for store in (self._live, self._closed)
            if store is not None
            for line in store.lines.values()
            for (replica, _counter), value in line.items()
            if not isinstance(value, int)
        ]
        if not stamps:
            return None
        wall, logical, replica = max(stamps)
        return Timestamp(wall, logical, replica)

    # -- what a hub checks of a delta it receives ----------------------------------------------------

    def _stores(self) -> tuple[CartState, ...]:
        return (self._live,) if self._closed is None else (self._live, self._closed)

    def entry_count(self) -> int:
        """How many entries (adds and sets) this state holds, live and snapshot."""
        return sum(len(line) for store in self._stores() for line in store.lines.values())

    def entry_skus(self) -> set[str]:
        """Every SKU an entry of this state names, live and snapshot."""
        return {sku for store in self._stores() for sku in store.lines}

    def max_entry_amount(self) -> int:
        """The largest number of units one entry carries (an add's amount, a set's quantity); 0 if none."""
        top = 0
        for store in self._stores():
            for line in store.lines.values():
                for value in line.values():
                    amount = entry_kind(value)[1]
                    if amount > top:
                        top = amount
        return top

    def writers(self) -> set[str]:
        """The replicas with a dot in this state's contexts, live and snapshot: every writer it has
        heard from."""
        out: set[str] = set()
        for store in self._stores():
            out.update(store.vv)
            out.update(replica for replica, _ in store.cloud)
        return out

    def new_replicas(self, known: CausalContext) -> set[str]:
        """The replicas of the dots in this state's contexts that ``known`` has not seen: the writers
        a receiver learns of from it (a hub binds each to its user)."""
        out: set[str] = set()
        for store in self._stores():
            for replica, top in store.vv.items():
                mine = known.vv.get(replica, 0)
                if (
                    top > mine
                    and replica not in out
                    and any(not known.contains(Dot(replica, c)) for c in range(mine + 1, top + 1))
                ):
                    out.add(replica)
            for replica, counter in store.cloud:
                if replica not in out and not known.contains(Dot(replica, counter)):
                    out.add(replica)
        return out

    def snapshot_within(self, other: Cart) -> bool:
        """Whether this state's checkout snapshot adds nothing to ``other``'s (true when it has none):
        a device may echo a checkout it received, never make one."""
        if self._closed is None:
            return True
        if other._closed is None:
            return False
        joined = other._closed.copy()
        joined.absorb(self._closed)
        return joined == other._closed

    def sync_reply(self, known: CausalContext) -> Cart | None:
        """What a replica whose context is ``known`` lacks of this one: ``None`` when it has seen every
        write this one has, else a delta.

        Law (for states made by mutators and joins): ``d.merge(h.sync_reply(d.context)) == d.merge(h)``
        (with ``None`` meaning ``d``; tests/test_cart.py checks it on reachable carts).

        The reply holds the entries whose dots ``known`` lacks, and this cart's context less the dots of
        the entries ``known`` has seen and this cart still holds — the replica holds those too (or
        cancelled them itself), and a dot in the reply's context that the reply does not hold would
        cancel them. Such holes cost context: where a writer's holes would take more cloud dots than
        its entries, the reply carries that writer's held entries instead and no hole. The checkout
        snapshot goes along unless ``known`` has seen its every write.
        """
        live = self._live
        if known.includes(live.context()):
            return None
        reply = CartState()
        holes: dict[str, list[int]] = {}
        held: dict[str, list[tuple[str, RawDot, Any]]] = {}
        for sku, line in live.lines.items():
            for dot, value in line.items():
                replica, counter = dot
                if known.contains(Dot(replica, counter)):
                    holes.setdefault(replica, []).append(counter)
                    held.setdefault(replica, []).append((sku, dot, value))
                else:
                    reply.lines.setdefault(sku, {})[dot] = value
        cloud: list[RawDot] = [dot for dot in live.cloud if dot[0] not in holes]
        for replica, top in live.vv.items():
            punched = sorted(holes.get(replica, ()))
            if not punched:
                reply.vv[replica] = top
                continue
            # Dots of this writer above the first hole that are not holes: the cloud the holes cost.
            gone = set(punched)
            own_cloud = [dot for dot in live.cloud if dot[0] == replica and dot[1] not in gone]
            above = [(replica, c) for c in range(punched[0] + 1, top + 1) if c not in gone]
            if len(above) + len(own_cloud) > 2 * len(punched):
                reply.vv[replica] = top  # no hole: the held entries go along instead
                cloud.extend(dot for dot in live.cloud if dot[0] == replica)
                for sku, dot, value in held[replica]:
                    reply.lines.setdefault(sku, {})[dot] = value
                continue
            if punched[0] > 1:
                reply.vv[replica] = punched[0] - 1
            cloud.extend(above)
            cloud.extend(own_cloud)
        for replica in holes.keys() - live.vv.keys():  # a writer seen only through cloud dots
            gone = set(holes[replica])
            cloud.extend(dot for dot in live.cloud if dot[0] == replica and dot[1] not in gone)
        for dot in sorted(cloud):
            reply.see(dot)
        snapshot = self._closed
        if snapshot is not None and known.includes(snapshot.context()):
            snapshot = None
        return Cart(reply, snapshot.copy() if snapshot is not None else None)

    # -- mutators: each returns a delta and leaves this cart unchanged ------------------------------

    def _check_open(self) -> None:
        if self._closed is not None:
            raise ClosedCartError("the cart is checked out")

    def add(self, replica: str, sku: str, amount: int = 1) -> Cart:
        """Add ``amount`` units (≥ 1) of ``sku``."""
        self._check_open()
        _check_sku(sku)
        _check_quantity(amount, low=1)
        dot = self._live.next_dot(check_replica(replica))
        sku = intern_sku(str(sku))  # (a str subclass is stored as a plain str)
        delta = CartState()
        delta.see(dot)
        delta.lines[sku] = {dot: amount}
        return Cart(delta)

    def set(self, replica: str, sku: str, quantity: int, ts: Timestamp) -> Cart:
        """Set the line to ``quantity`` (≥ 0), cancelling the adds and sets of it this replica has seen.
        ``ts`` comes from this replica's own clock (``ts.replica == replica``)."""
        self._check_open()
        _check_sku(sku)
        _check_quantity(quantity, low=0)
        check_own_timestamp(ts, replica)
        dot = self._live.next_dot(check_replica(replica))
        sku = intern_sku(str(sku))  # (a str subclass is stored as a plain str)
        delta = CartState()
        for seen in sorted([*self._live.line_dots(sku), dot]):
            delta.see(seen)
        delta.lines[sku] = {dot: (quantity, ts.wall_ms, ts.logical)}
        return Cart(delta)

    def remove(self, replica: str, sku: str) -> Cart:
        """Remove the line as this replica sees it; adds it has not seen survive (add wins)."""
        self._check_open()
        _check_sku(sku)
        delta = CartState()
        for seen in sorted([*self._live.line_dots(sku), self._live.next_dot(check_replica(replica))]):
            delta.see(seen)
        return Cart(delta)

    def close(self, replica: str) -> Cart:
        """Check out: freeze the cart as this replica sees it now."""
        self._check_open()
        dot = self._live.next_dot(check_replica(replica))
        snapshot = self._live.copy()
        snapshot.see(dot)
        delta = CartState()
        delta.see(dot)
        return Cart(delta, snapshot)

    # -- join --------------------------------------------------------------------------------------

    def apply(self, delta: Cart) -> None:
        store = self._store
        if store is None:
            store = self._live
        entries = delta._delta
        if entries is not None:
            store.absorb_delta(entries)
        else:
            store.absorb(delta._live)
        if delta._closed is not None:
            if self._closed is None:
                self._closed = delta._closed.copy()
            else:
                self._closed.absorb(delta._closed)

    def merge(self, other: Cart) -> Cart:
        out = self.copy()
        out.apply(other)
        return out

    def copy(self) -> Cart:
        return Cart(self._live.copy(), self._closed.copy() if self._closed is not None else None)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Cart):
            return NotImplemented
        return self._live == other._live and self._closed == other._closed

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        state = "closed" if self._closed is not None else "open"
        return f"Cart({state}, {self.value()!r}, context={self.context!r})"


def _check_sku(sku: str) -> None:
    if not isinstance(sku, str) or not sku or len(sku) > MAX_SKU_LENGTH:
        raise ValueError(f"a SKU is a string of 1 to {MAX_SKU_LENGTH} characters")


def _check_quantity(value: int, *, low: int) -> None:
    if type(value) is not int or not low <= value <= MAX_QUANTITY:
        raise ValueError(f"a quantity is an integer in [{low}, {MAX_QUANTITY}], not {value!r}")


# -- codec, version 1 -------------------------------------------------------------------------------
#
# The format is described, and decoded, in crdt._cart_state.


def _encode_v1(cart: Cart) -> list[Any]:
    table = ReplicaTable()
    lines, ctx = encode_state(cart._live, table)
    out: list[Any] = [None, lines, ctx]
    if cart._closed is not None:
        out += encode_state(cart._closed, table)
    out[0] = table.encoded()
    return out


# Decoding (the apply path's hot spot, in crdt._cart_state) makes Cart objects with their slots set
# directly: _store, _delta (a delta kept as its entries) and _closed, as Cart.__init__ documents them.
codec.register(Cart, "cart", 1, _encode_v1, cart_decoder(Cart))
