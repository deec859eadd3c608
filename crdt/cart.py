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

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from crdt import codec
from crdt._compact import RawDot, ReplicaTable, decode_pairs, decode_table, encode_pairs
from crdt.context import CausalContext
from crdt.dots import Dot
from crdt.hlc import Timestamp

MAX_QUANTITY = 1_000_000
MAX_SKU_LENGTH = 200

# A set entry: (quantity, wall_ms, logical). The timestamp's replica is the dot's (a replica stamps its
# own writes), so the entry's Timestamp is (wall_ms, logical, dot's replica).
_SetEntry = tuple[int, int, int]


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
        self.adds: dict[RawDot, int] = {}
        self.sets: dict[RawDot, _SetEntry] = {}

    def copy(self) -> _Line:
        line = _Line()
        line.adds = self.adds.copy()
        line.sets = self.sets.copy()
        return line

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Line):
            return NotImplemented
        return self.adds == other.adds and self.sets == other.sets

    __hash__ = None  # type: ignore[assignment]

    def dots(self) -> list[RawDot]:
        return [*self.adds, *self.sets]

    def view(self) -> Line:
        added = sum(self.adds.values())
        if not self.sets:
            return Line(added, ())
        # The winner: the latest timestamp (wall, logical, replica), then the greatest dot.
        ranked = sorted(self.sets.items(), key=lambda item: (item[1][1], item[1][2], item[0]), reverse=True)
        base = ranked[0][1][0]
        conflicts: list[int] = []
        for _, (quantity, *_ts) in ranked[1:]:
            if quantity != base and quantity not in conflicts:
                conflicts.append(quantity)
        return Line(base + added, tuple(conflicts))


class _Store:
    """A causal context and the lines it explains: the live cart, or a checkout snapshot.

    The context is kept here as a mutable version vector ``vv`` and cloud (the same model as
    :class:`~crdt.context.CausalContext`, which :attr:`Cart.context` returns), and dots as plain
    ``(replica, counter)`` tuples: applying a delta then updates a few dicts in place.
    Invariant: a cloud dot is above its replica's vector entry and not next to it.
    """

    __slots__ = ("cloud", "lines", "vv", "where")

    def __init__(self) -> None:
        self.vv: dict[str, int] = {}
        self.cloud: set[RawDot] = set()
        self.lines: dict[str, _Line] = {}
        self.where: dict[RawDot, str] = {}  # entry dot → SKU, to find what a small context cancels

    def copy(self) -> _Store:
        store = _Store()
        store.vv = self.vv.copy()
        store.cloud = self.cloud.copy()
        store.lines = {sku: line.copy() for sku, line in self.lines.items()}
        store.where = self.where.copy()
        return store

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Store):
            return NotImplemented
        return self.vv == other.vv and self.cloud == other.cloud and self.lines == other.lines

    __hash__ = None  # type: ignore[assignment]

    # -- the context -------------------------------------------------------------------------------

    def seen(self, dot: RawDot) -> bool:
        return dot[1] <= self.vv.get(dot[0], 0) or dot in self.cloud

    def see(self, dot: RawDot) -> None:
        replica, counter = dot
        top = self.vv.get(replica, 0)
        if counter == top + 1:
            cloud = self.cloud
            if cloud:
                while (replica, counter + 1) in cloud:
                    counter += 1
                    cloud.remove((replica, counter))
            self.vv[replica] = counter
        elif counter > top:
            self.cloud.add(dot)

    def normalize(self) -> None:
        """Restore the invariant (after a decoder filled the cloud in any order)."""
        dots, self.cloud = sorted(self.cloud), set()
        for dot in dots:
            self.see(dot)

    def see_context(self, other: _Store) -> None:
        vv = self.vv
        raised = False
        for replica, top in other.vv.items():
            if top > vv.get(replica, 0):
                vv[replica] = top
                raised = True
        if raised and self.cloud:
            self.normalize()
        for dot in other.cloud:
            self.see(dot)

    def context_size(self) -> int:
        return sum(self.vv.values()) + len(self.cloud)

    def context_dots(self) -> Iterator[RawDot]:
        for replica, top in self.vv.items():
            for counter in range(1, top + 1):
                yield replica, counter
        yield from self.cloud

    def context(self) -> CausalContext:
        return CausalContext(dict(self.vv), frozenset(Dot(r, c) for r, c in self.cloud))

    def next_dot(self, replica: str) -> RawDot:
        top = self.vv.get(replica, 0)
        for r, c in self.cloud:
            if r == replica and c > top:
                top = c
        return replica, top + 1

    # -- the entries -------------------------------------------------------------------------------

    def line_dots(self, sku: str) -> list[RawDot]:
        line = self.lines.get(sku)
        return line.dots() if line is not None else []

    def _drop(self, dot: RawDot, sku: str) -> None:
        line = self.lines[sku]
        if line.adds.pop(dot, None) is None:
            del line.sets[dot]
        if not line.adds and not line.sets:
            del self.lines[sku]
        del self.where[dot]

    def absorb(self, other: _Store) -> None:
        """Join ``other`` into this store (in place); ``other`` is not changed or aliased."""
        where, their_where = self.where, other.where
        their_vv, their_cloud = other.vv, other.cloud
        # 1. Entries the other side has seen and no longer holds were cancelled there.
        if where:
            if not their_vv and len(their_cloud) < len(where):  # a delta: look its few dots up
                for dot in their_cloud:
                    if dot not in their_where:
                        sku = where.get(dot)
                        if sku is not None:
                            self._drop(dot, sku)
            elif other.context_size() < len(where):
                for dot in other.context_dots():
                    sku = where.get(dot)
                    if sku is not None and dot not in their_where:
                        self._drop(dot, sku)
            else:
                their_seen = other.seen
                for dot, sku in list(where.items()):
                    if dot not in their_where and their_seen(dot):
                        self._drop(dot, sku)
        # 2. Entries we have not seen yet arrive (ones we have seen and dropped stay dropped).
        vv, cloud, lines = self.vv, self.cloud, self.lines
        for sku, their_line in other.lines.items():
            line = lines.get(sku)
            for dot, amount in their_line.adds.items():
                if dot[1] > vv.get(dot[0], 0) and dot not in cloud and dot not in where:
                    if line is None:
                        line = lines[sku] = _Line()
                    line.adds[dot] = amount
                    where[dot] = sku
            for dot, entry in their_line.sets.items():
                if dot[1] > vv.get(dot[0], 0) and dot not in cloud and dot not in where:
                    if line is None:
                        line = lines[sku] = _Line()
                    line.sets[dot] = entry
                    where[dot] = sku
        # 3. And the contexts join.
        if their_vv:
            self.see_context(other)
        else:
            see = self.see
            for dot in their_cloud:
                see(dot)


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
        return {sku: line.view() for sku, line in self._shown().lines.items()}

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
            for dot, amount in line.adds.items():
                if not frozen.seen(dot):
                    out.append(RejectedEdit(sku, "add", Dot(*dot), amount))
            for dot, (quantity, *_ts) in line.sets.items():
                if not frozen.seen(dot):
                    out.append(RejectedEdit(sku, "set", Dot(*dot), quantity))
        for sku, line in frozen.lines.items():
            for dot, amount in line.adds.items():
                if dot not in live.where and live.seen(dot):
                    out.append(RejectedEdit(sku, "cancel", Dot(*dot), amount))
            for dot, (quantity, *_ts) in line.sets.items():
                if dot not in live.where and live.seen(dot):
                    out.append(RejectedEdit(sku, "cancel", Dot(*dot), quantity))
        out.sort(key=lambda edit: (edit.sku, edit.dot))
        return out

    def max_timestamp(self) -> Timestamp | None:
        """The latest timestamp in the cart, for a clock to ``observe`` after a merge."""
        stamps = [
            (wall, logical, replica)
            for store in (self._live, self._closed)
            if store is not None
            for line in store.lines.values()
            for (replica, _counter), (_quantity, wall, logical) in line.sets.items()
        ]
        if not stamps:
            return None
        wall, logical, replica = max(stamps)
        return Timestamp(wall, logical, replica)

    # -- mutators: each returns a delta and leaves this cart unchanged ------------------------------

    def _check_open(self) -> None:
        if self._closed is not None:
            raise ClosedCartError("the cart is checked out")

    def add(self, replica: str, sku: str, amount: int = 1) -> Cart:
        """Add ``amount`` units (≥ 1) of ``sku``."""
        self._check_open()
        _check_sku(sku)
        _check_quantity(amount, low=1)
        dot = self._live.next_dot(_check_replica(replica))
        delta = _Store()
        delta.see(dot)
        delta.lines[sku] = line = _Line()
        line.adds[dot] = amount
        delta.where[dot] = sku
        return Cart(delta)

    def set(self, replica: str, sku: str, quantity: int, ts: Timestamp) -> Cart:
        """Set the line to ``quantity`` (≥ 0), cancelling the adds and sets of it this replica has seen.
        ``ts`` comes from this replica's own clock (``ts.replica == replica``)."""
        self._check_open()
        _check_sku(sku)
        _check_quantity(quantity, low=0)
        _check_timestamp(ts, replica)
        dot = self._live.next_dot(_check_replica(replica))
        delta = _Store()
        for seen in sorted([*self._live.line_dots(sku), dot]):
            delta.see(seen)
        delta.lines[sku] = line = _Line()
        line.sets[dot] = (quantity, ts.wall_ms, ts.logical)
        delta.where[dot] = sku
        return Cart(delta)

    def remove(self, replica: str, sku: str) -> Cart:
        """Remove the line as this replica sees it; adds it has not seen survive (add wins)."""
        self._check_open()
        _check_sku(sku)
        delta = _Store()
        for seen in sorted([*self._live.line_dots(sku), self._live.next_dot(_check_replica(replica))]):
            delta.see(seen)
        return Cart(delta)

    def close(self, replica: str) -> Cart:
        """Check out: freeze the cart as this replica sees it now."""
        self._check_open()
        dot = self._live.next_dot(_check_replica(replica))
        snapshot = self._live.copy()
        snapshot.see(dot)
        delta = _Store()
        delta.see(dot)
        return Cart(delta, snapshot)

    # -- join --------------------------------------------------------------------------------------

    def apply(self, delta: Cart) -> None:
        self._live.absorb(delta._live)
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


def _check_timestamp(ts: Timestamp, replica: str) -> None:
    if (
        not isinstance(ts, Timestamp)
        or type(ts.wall_ms) is not int
        or type(ts.logical) is not int
        or ts.wall_ms < 0
        or ts.logical < 0
        or ts.replica != replica
    ):
        raise ValueError(f"not a timestamp of replica {replica!r}'s own clock: {ts!r}")


# -- codec, version 1 -------------------------------------------------------------------------------
#
# s = [R, L, C] for an open cart, [R, L, C, SL, SC] once closed (SL, SC: the snapshot's lines and
# context). R: the replica table (crdt._compact). L: flat [sku, adds, sets, sku, adds, sets, ...];
# adds: flat [replica index, counter, amount, ...]; sets: flat [replica index, counter, quantity,
# wall_ms, logical, ...] (the timestamp's replica is the dot's). C: the context as flat pairs, without
# the entries' own dots. The decoder is the apply path's hot spot: it checks types inline.


def _encode_store(store: _Store, table: ReplicaTable) -> tuple[list[Any], list[int]]:
    flat: list[Any] = []
    index = table.index
    for sku, line in store.lines.items():
        adds: list[int] = []
        for (replica, counter), amount in line.adds.items():
            adds += (index(replica), counter, amount)
        sets: list[int] = []
        for (replica, counter), (quantity, wall, logical) in line.sets.items():
            sets += (index(replica), counter, quantity, wall, logical)
        flat += (sku, adds, sets)
    return flat, encode_pairs(store.vv, store.cloud, table, store.where)


def _encode_v1(cart: Cart) -> list[Any]:
    table = ReplicaTable()
    lines, ctx = _encode_store(cart._live, table)
    out: list[Any] = [None, lines, ctx]
    if cart._closed is not None:
        out += _encode_store(cart._closed, table)
    out[0] = table.encoded()
    return out


def _bad(why: str) -> codec.CodecError:
    return codec.CodecError(f"malformed cart: {why}")


def _decode_store(raw_lines: object, raw_ctx: object, replicas: list[str]) -> _Store:
    if type(raw_lines) is not list or len(raw_lines) % 3:
        raise _bad("lines are a flat list of (sku, adds, sets) triples")
    store = _Store()
    lines, where = store.lines, store.where
    size = len(replicas)
    for i in range(0, len(raw_lines), 3):
        sku, adds, sets = raw_lines[i], raw_lines[i + 1], raw_lines[i + 2]
        if type(sku) is not str or not 0 < len(sku) <= MAX_SKU_LENGTH or sku in lines:
            raise _bad(f"bad or repeated SKU {sku!r}")
        if (
            type(adds) is not list
            or type(sets) is not list
            or len(adds) % 3
            or len(sets) % 5
            or not (adds or sets)
        ):
            raise _bad(f"malformed entries in line {sku!r}")
        line = lines[sku] = _Line()
        line_adds, line_sets = line.adds, line.sets
        for j in range(0, len(adds), 3):
            index, counter, amount = adds[j], adds[j + 1], adds[j + 2]
            if not (
                type(index) is int
                and 0 <= index < size
                and type(counter) is int
                and counter > 0
                and type(amount) is int
                and 0 < amount <= MAX_QUANTITY
            ):
                raise _bad(f"bad add entry {adds[j : j + 3]!r} in line {sku!r}")
            dot = (replicas[index], counter)
            if dot in where:
                raise _bad(f"dot {dot} appears twice")
            line_adds[dot] = amount
            where[dot] = sku
        for j in range(0, len(sets), 5):
            index, counter, quantity, wall, logical = sets[j : j + 5]
            if not (
                type(index) is int
                and 0 <= index < size
                and type(counter) is int
                and counter > 0
                and type(quantity) is int
                and 0 <= quantity <= MAX_QUANTITY
                and type(wall) is int
                and wall >= 0
                and type(logical) is int
                and logical >= 0
            ):
                raise _bad(f"bad set entry {sets[j : j + 5]!r} in line {sku!r}")
            dot = (replicas[index], counter)
            if dot in where:
                raise _bad(f"dot {dot} appears twice")
            line_sets[dot] = (quantity, wall, logical)
            where[dot] = sku
    # The context: the pairs written, plus the entries' own dots (left out by the writer).
    vv, extra = ({}, ()) if type(raw_ctx) is list and not raw_ctx else decode_pairs(raw_ctx, replicas)
    store.vv = vv
    if vv:
        cloud = store.cloud
        for dots in (where, extra):
            for dot in dots:
                if dot[1] > vv.get(dot[0], 0):
                    cloud.add(dot)
    else:  # a delta's usual context: its entries' dots and the few it cancels
        cloud = store.cloud = set(where)
        cloud.update(extra)
    for replica, counter in cloud:
        if counter == vv.get(replica, 0) + 1:  # next to the vector: fold (the invariant of _Store)
            store.normalize()
            break
    return store


def _decode_v1(state: object) -> Cart:
    if type(state) is not list or len(state) not in (3, 5):
        raise _bad("a cart is [replicas, lines, context] (+ [lines, context] once closed)")
    replicas = decode_table(state[0])
    live = _decode_store(state[1], state[2], replicas)
    closed = None
    if len(state) == 5:
        closed = _decode_store(state[3], state[4], replicas)
        if not closed.vv and not closed.cloud:
            raise _bad("a checkout snapshot has at least its close dot")
    return Cart(live, closed)


codec.register(Cart, "cart", 1, _encode_v1, _decode_v1)
