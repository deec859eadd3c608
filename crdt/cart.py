"""An offline shopping cart: a map from SKU to line, with one causal context per cart, that closes at
checkout.

**State model** (a delta-state, dot-based map). The cart holds a causal context (every write it has
seen) and, per SKU, a line with two kinds of entries, each under the dot of the write that made it:

* *add* entries ``dot → amount`` (a positive number of units: "add to cart");
* *set* entries ``dot → (quantity, Timestamp)`` ("set quantity", an absolute value).

A mutator mints a fresh dot and returns a delta whose context holds only the dots it concerns:

* ``add(sku, n)``: one add entry; context = its dot. Adds never cancel anything.
* ``set(sku, q, ts)``: one set entry; context = its dot **and every entry dot of that line the replica
  has** — those adds and sets are cancelled, wherever they are.
* ``remove(sku)``: no entry; context = the line's entry dots (an *observed* remove) plus a fresh dot
  that marks the remove itself.
* ``close()`` (checkout): records the closer's whole cart as of that moment — a *snapshot* (its
  lines and its context, plus the close dot) — beside the live cart.

**Merge** (the least upper bound), per entry dot: keep an entry that both sides hold, or that one side
holds and the other side's context does not contain (that side has not seen it); drop it when the
other side has seen its dot and no longer holds it (a set or a remove cancelled it). Contexts merge by
union. Snapshots merge the same way among themselves (the closed part starts at bottom, "open"). Each
line's value: the winning surviving set's quantity (0 when there is none) plus the sum of the
surviving adds. The merge is a join of two lattices side by side — live cart and snapshots — so it is
idempotent, commutative and associative, whatever order deltas arrive in.

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
    d1 = cart.add("P", "tea"); cart.apply(d1)          # tea: add P1 → 1
    laptop = cart.merge(Cart.new())                     # L sees P1
    d2 = cart.add("P", "tea"); cart.apply(d2)           # phone: add P2 → 2
    d3 = laptop.set("L", "tea", 5, ts)                  # laptop: set L1=5, cancels P1 (it saw P1)
    cart.apply(d3)                                      # P1 dropped; P2 survives: 5 + 1 = 6
    d4 = cart.remove("P", "tea"); cart.apply(d4)        # context {P2, L1, P3}: line gone
    laptop.apply(d2); laptop.apply(d4)                  # same state on both: tea absent

**Known anomalies**

* "Set wins by clock": phones' clocks are trusted up to the clock's drift bound (60 s by default),
  so the "later" of two concurrent sets can be the earlier in real time by up to that bound.
* A decrement is ``set(sku, quantity - 1)``: two devices each taking one unit off 3 concurrently
  give 2, not 1 (both set 2). Adds are never negative, so a quantity can never go below zero.
* Each add is one entry until a set or a remove of the line cancels it: a line tapped "+" fifty
  times carries fifty small entries (apps can write ``set`` instead to keep it to one).
* Two concurrent checkouts freeze the union of what their devices had seen.
* Deltas carry only the dots they concern, so a device must persist a write before shipping any
  delta that follows it (write-ahead). A device that ships a later set or remove, crashes and loses
  the earlier write that cancelled something, leaves that cancellation undone. A full state is
  always safe to ship.
* Replica ids are never reused (see :mod:`crdt.dots`): a device that lost writes in a crash takes a
  new id.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from crdt import codec
from crdt._compact import (
    ReplicaTable,
    decode_context,
    decode_table,
    encode_context,
    need_index,
    need_int,
    need_list,
    need_str,
)
from crdt.context import CausalContext
from crdt.dots import Dot
from crdt.hlc import Timestamp

MAX_QUANTITY = 1_000_000
MAX_SKU_LENGTH = 200

_EMPTY = CausalContext({}, frozenset())


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


class _Line:
    __slots__ = ("adds", "sets")

    def __init__(self) -> None:
        self.adds: dict[Dot, int] = {}
        self.sets: dict[Dot, tuple[int, Timestamp]] = {}

    def copy(self) -> _Line:
        line = _Line()
        line.adds = dict(self.adds)
        line.sets = dict(self.sets)
        return line

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Line):
            return NotImplemented
        return self.adds == other.adds and self.sets == other.sets

    __hash__ = None  # type: ignore[assignment]

    def dots(self) -> Iterator[Dot]:
        yield from self.adds
        yield from self.sets

    def view(self) -> Line:
        added = sum(self.adds.values())
        if not self.sets:
            return Line(added, ())
        ranked = sorted(self.sets.items(), key=lambda item: (item[1][1], item[0]), reverse=True)
        base = ranked[0][1][0]
        conflicts: list[int] = []
        for _, (quantity, _ts) in ranked[1:]:
            if quantity != base and quantity not in conflicts:
                conflicts.append(quantity)
        return Line(base + added, tuple(conflicts))


class _Store:
    """A context and the lines it explains: the live cart, or a checkout snapshot."""

    __slots__ = ("ctx", "lines", "where")

    def __init__(self, ctx: CausalContext = _EMPTY) -> None:
        self.ctx = ctx
        self.lines: dict[str, _Line] = {}
        self.where: dict[Dot, str] = {}  # entry dot → SKU, to find what a small context cancels

    def copy(self) -> _Store:
        store = _Store(self.ctx)
        store.lines = {sku: line.copy() for sku, line in self.lines.items()}
        store.where = dict(self.where)
        return store

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Store):
            return NotImplemented
        return self.ctx == other.ctx and self.lines == other.lines

    __hash__ = None  # type: ignore[assignment]

    def line_dots(self, sku: str) -> list[Dot]:
        line = self.lines.get(sku)
        return list(line.dots()) if line is not None else []

    def _line(self, sku: str) -> _Line:
        line = self.lines.get(sku)
        if line is None:
            line = self.lines[sku] = _Line()
        return line

    def _drop(self, dot: Dot, sku: str) -> None:
        line = self.lines[sku]
        if line.adds.pop(dot, None) is None:
            del line.sets[dot]
        if not line.adds and not line.sets:
            del self.lines[sku]
        del self.where[dot]

    def absorb(self, other: _Store) -> None:
        """Join ``other`` into this store (in place); ``other`` is not changed or aliased."""
        mine, theirs = self.ctx, other.ctx
        where, their_where = self.where, other.where
        # 1. Entries the other side has seen and no longer holds were cancelled there.
        if where:
            if sum(theirs.vv.values()) + len(theirs.cloud) < len(where):
                for dot in theirs.dots():
                    sku = where.get(dot)
                    if sku is not None and dot not in their_where:
                        self._drop(dot, sku)
            else:
                for dot, sku in list(where.items()):
                    if dot not in their_where and theirs.contains(dot):
                        self._drop(dot, sku)
        # 2. Entries we have not seen yet arrive (ones we have seen and dropped stay dropped).
        for sku, their_line in other.lines.items():
            line = None
            for dot, amount in their_line.adds.items():
                if dot not in where and not mine.contains(dot):
                    if line is None:
                        line = self._line(sku)
                    line.adds[dot] = amount
                    where[dot] = sku
            for dot, entry in their_line.sets.items():
                if dot not in where and not mine.contains(dot):
                    if line is None:
                        line = self._line(sku)
                    line.sets[dot] = entry
                    where[dot] = sku
        self.ctx = mine.merge(theirs)

    def views(self) -> dict[str, Line]:
        return {sku: line.view() for sku, line in self.lines.items()}


class Cart:
    """A shopping cart (see the module docstring for the rules)."""

    __slots__ = ("_closed", "_live")

    TYPE_TAG = "cart"

    def __init__(self, live: _Store | None = None, closed: _Store | None = None) -> None:
        self._live = live if live is not None else _Store()
        self._closed = closed

    @classmethod
    def new(cls) -> Cart:
        return cls()

    # -- reading -----------------------------------------------------------------------------------

    def _shown(self) -> _Store:
        return self._closed if self._closed is not None else self._live

    def value(self) -> dict[str, int]:
        """SKU → quantity, for the lines with a quantity above zero (the snapshot, once closed)."""
        out: dict[str, int] = {}
        for sku, line in self._shown().lines.items():
            quantity = line.view().quantity
            if quantity > 0:
                out[sku] = quantity
        return out

    def lines(self) -> dict[str, Line]:
        """Every line that holds an entry, with its conflicts (a line set to 0 is listed)."""
        return self._shown().views()

    def line(self, sku: str) -> Line:
        line = self._shown().lines.get(sku)
        return line.view() if line is not None else Line(0, ())

    def quantity(self, sku: str) -> int:
        return self.line(sku).quantity

    def conflicts(self) -> dict[str, tuple[int, ...]]:
        """SKU → the quantities that lost to a concurrent "set quantity" ("changed on another device")."""
        return {sku: line.conflicts for sku, line in self.lines().items() if line.conflicts}

    @property
    def context(self) -> CausalContext:
        return self._live.ctx

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
            for dot, amount in line.adds.items():
                if not frozen.ctx.contains(dot):
                    out.append(RejectedEdit(sku, "add", dot, amount))
            for dot, (quantity, _ts) in line.sets.items():
                if not frozen.ctx.contains(dot):
                    out.append(RejectedEdit(sku, "set", dot, quantity))
        for sku, line in frozen.lines.items():
            for dot, amount in line.adds.items():
                if dot not in live.where and live.ctx.contains(dot):
                    out.append(RejectedEdit(sku, "cancel", dot, amount))
            for dot, (quantity, _ts) in line.sets.items():
                if dot not in live.where and live.ctx.contains(dot):
                    out.append(RejectedEdit(sku, "cancel", dot, quantity))
        out.sort(key=lambda edit: (edit.sku, edit.dot))
        return out

    def max_timestamp(self) -> Timestamp | None:
        """The latest timestamp in the cart, for a clock to ``observe`` after a merge."""
        stamps = [
            ts
            for store in (self._live, self._closed)
            if store is not None
            for line in store.lines.values()
            for _q, ts in line.sets.values()
        ]
        return max(stamps, default=None)

    # -- mutators: each returns a delta and leaves this cart unchanged ------------------------------

    def _check_open(self) -> None:
        if self._closed is not None:
            raise ClosedCartError("the cart is checked out")

    def add(self, replica: str, sku: str, amount: int = 1) -> Cart:
        """Add ``amount`` units (≥ 1) of ``sku``."""
        self._check_open()
        _check_sku(sku)
        _check_quantity(amount, low=1)
        dot = self._live.ctx.next_dot(_check_replica(replica))
        store = _Store(CausalContext({}, frozenset((dot,))))
        store.lines[sku] = line = _Line()
        line.adds[dot] = amount
        store.where[dot] = sku
        return Cart(store)

    def set(self, replica: str, sku: str, quantity: int, ts: Timestamp) -> Cart:
        """Set the line to ``quantity`` (≥ 0), cancelling the adds and sets of it this replica has seen."""
        self._check_open()
        _check_sku(sku)
        _check_quantity(quantity, low=0)
        _check_timestamp(ts)
        dot = self._live.ctx.next_dot(_check_replica(replica))
        seen = self._live.line_dots(sku)
        seen.append(dot)
        store = _Store(CausalContext.of(seen))
        store.lines[sku] = line = _Line()
        line.sets[dot] = (quantity, ts)
        store.where[dot] = sku
        return Cart(store)

    def remove(self, replica: str, sku: str) -> Cart:
        """Remove the line as this replica sees it; adds it has not seen survive (add wins)."""
        self._check_open()
        _check_sku(sku)
        seen = self._live.line_dots(sku)
        seen.append(self._live.ctx.next_dot(_check_replica(replica)))
        return Cart(_Store(CausalContext.of(seen)))

    def close(self, replica: str) -> Cart:
        """Check out: freeze the cart as this replica sees it now."""
        self._check_open()
        dot = self._live.ctx.next_dot(_check_replica(replica))
        snapshot = self._live.copy()
        snapshot.ctx = snapshot.ctx.add(dot)
        return Cart(_Store(CausalContext({}, frozenset((dot,)))), snapshot)

    # -- join --------------------------------------------------------------------------------------

    def apply(self, delta: Cart) -> None:
        self._live.absorb(delta._live)
        if delta._closed is not None:
            if self._closed is None:
                self._closed = delta._closed.copy()
            else:
                self._closed.absorb(delta._closed)

    def merge(self, other: Cart) -> Cart:
        out = Cart(self._live.copy(), self._closed.copy() if self._closed is not None else None)
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
        return f"Cart({state}, {self.value()!r}, context={self._live.ctx!r})"


def _check_replica(replica: str) -> str:
    if not isinstance(replica, str) or not replica:
        raise ValueError("a replica id is a non-empty string")
    return replica


def _check_sku(sku: str) -> None:
    if not isinstance(sku, str) or not sku or len(sku) > MAX_SKU_LENGTH:
        raise ValueError(f"a SKU is a string of 1 to {MAX_SKU_LENGTH} characters")


def _check_quantity(value: int, *, low: int) -> None:
    if type(value) is not int or not low <= value <= MAX_QUANTITY:
        raise ValueError(f"a quantity is an integer in [{low}, {MAX_QUANTITY}], not {value!r}")


def _check_timestamp(ts: Timestamp) -> None:
    if not isinstance(ts, Timestamp) or ts.wall_ms < 0 or ts.logical < 0 or not ts.replica:
        raise ValueError(f"not a usable timestamp: {ts!r}")


# -- codec, version 1 -------------------------------------------------------------------------------
#
# s = [R, L, C] for an open cart, [R, L, C, SL, SC] once closed (SL, SC: the snapshot's lines and
# context). R: the replica table (crdt._compact). L: flat [sku, adds, sets, sku, adds, sets, ...];
# adds: flat [replica index, counter, amount, ...]; sets: flat [replica index, counter, quantity,
# wall_ms, logical, timestamp's replica index, ...]. C: the context, without the entries' own dots.


def _encode_store(store: _Store, table: ReplicaTable) -> tuple[list[Any], list[int]]:
    flat: list[Any] = []
    index = table.index
    for sku, line in store.lines.items():
        adds: list[int] = []
        for dot, amount in line.adds.items():
            adds += (index(dot.replica), dot.counter, amount)
        sets: list[int] = []
        for dot, (quantity, ts) in line.sets.items():
            sets += (index(dot.replica), dot.counter, quantity, ts.wall_ms, ts.logical, index(ts.replica))
        flat += (sku, adds, sets)
    return flat, encode_context(store.ctx, table, store.where)


def _encode_v1(cart: Cart) -> list[Any]:
    table = ReplicaTable()
    lines, ctx = _encode_store(cart._live, table)
    out: list[Any] = [None, lines, ctx]
    if cart._closed is not None:
        out += _encode_store(cart._closed, table)
    out[0] = table.encoded()
    return out


def _decode_store(raw_lines: object, raw_ctx: object, replicas: list[str]) -> _Store:
    flat = need_list(raw_lines)
    if len(flat) % 3:
        raise codec.CodecError("cart lines are flat (sku, adds, sets) triples")
    store = _Store()
    lines, where = store.lines, store.where
    size = len(replicas)
    for i in range(0, len(flat), 3):
        sku = need_str(flat[i], MAX_SKU_LENGTH)
        if sku in lines:
            raise codec.CodecError(f"line {sku!r} appears twice")
        line = _Line()
        adds = need_list(flat[i + 1])
        sets = need_list(flat[i + 2])
        if len(adds) % 3 or len(sets) % 6 or not (adds or sets):
            raise codec.CodecError(f"malformed entries in line {sku!r}")
        for j in range(0, len(adds), 3):
            dot = Dot(replicas[need_index(adds[j], size)], need_int(adds[j + 1], 1))
            if dot in where:
                raise codec.CodecError(f"dot {dot} appears twice")
            line.adds[dot] = need_int(adds[j + 2], 1, MAX_QUANTITY)
            where[dot] = sku
        for j in range(0, len(sets), 6):
            dot = Dot(replicas[need_index(sets[j], size)], need_int(sets[j + 1], 1))
            if dot in where:
                raise codec.CodecError(f"dot {dot} appears twice")
            ts = Timestamp(
                need_int(sets[j + 3], 0), need_int(sets[j + 4], 0), replicas[need_index(sets[j + 5], size)]
            )
            line.sets[dot] = (need_int(sets[j + 2], 0, MAX_QUANTITY), ts)
            where[dot] = sku
        lines[sku] = line
    store.ctx = decode_context(raw_ctx, replicas, where)
    return store


def _decode_v1(state: object) -> Cart:
    parts = need_list(state)
    if len(parts) not in (3, 5):
        raise codec.CodecError("a cart is [replicas, lines, context] (+ [lines, context] once closed)")
    replicas = decode_table(parts[0])
    live = _decode_store(parts[1], parts[2], replicas)
    closed = None
    if len(parts) == 5:
        closed = _decode_store(parts[3], parts[4], replicas)
        if not closed.ctx.vv and not closed.ctx.cloud:
            raise codec.CodecError("a checkout snapshot has at least its close dot")
    return Cart(live, closed)


codec.register(Cart, "cart", 1, _encode_v1, _decode_v1)
