"""The cart's state and its join, as plain data: the part of :mod:`crdt.cart` a hub or a device runs
for every edit it receives, kept apart so that it can be compiled (mypyc, see ``setup.py``).

:mod:`crdt.cart` holds the rules' documentation, the public :class:`~crdt.cart.Cart` and the checks on
what callers pass; this module trusts its callers and checks only what it decodes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any, Final, cast

from crdt._compact import DotObject, RawDot, ReplicaTable, decode_pairs, decode_table, encode_pairs
from crdt.codec import CodecError
from crdt.context import CausalContext
from crdt.dots import Dot

MAX_QUANTITY: Final = 1_000_000
MAX_SKU_LENGTH: Final = 200
_SHORT_VECTOR: Final = 8  # a decoded context whose vector entries are all this short is treated as a delta's

# A set entry: (quantity, wall_ms, logical). The timestamp's replica is the dot's (a replica stamps its
# own writes), so the entry's Timestamp is (wall_ms, logical, dot's replica).
SetEntry = tuple[int, int, int]
SetEntryObject = Any  # a SetEntry kept as its tuple object, for the reason DotObject gives


class LineState:
    __slots__ = ("adds", "sets")

    def __init__(self) -> None:
        self.adds: dict[RawDot, int] = {}
        self.sets: dict[RawDot, SetEntry] = {}

    def copy(self) -> LineState:
        line = LineState()
        line.adds = self.adds.copy()
        line.sets = self.sets.copy()
        return line

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LineState):
            return NotImplemented
        return self.adds == other.adds and self.sets == other.sets

    __hash__ = None  # type: ignore[assignment]

    def dots(self) -> list[RawDot]:
        return [*self.adds, *self.sets]

    def view(self) -> tuple[int, tuple[int, ...]]:
        """(quantity, conflicts): what :class:`crdt.cart.Line` shows."""
        added = sum(self.adds.values())
        if not self.sets:
            return added, ()
        # The winner: the latest timestamp (wall, logical, replica), then the greatest dot.
        ranked = sorted(self.sets.items(), key=lambda item: (item[1][1], item[1][2], item[0]), reverse=True)
        base = ranked[0][1][0]
        conflicts: list[int] = []
        for _, (quantity, *_ts) in ranked[1:]:
            if quantity != base and quantity not in conflicts:
                conflicts.append(quantity)
        return base + added, tuple(conflicts)


class CartState:
    """A causal context and the lines it explains: the live cart, or a checkout snapshot.

    The context is kept here as a mutable version vector ``vv`` and cloud (the same model as
    :class:`~crdt.context.CausalContext`, which :attr:`Cart.context` returns), and dots as plain
    ``(replica, counter)`` tuples: applying a delta then updates a few dicts in place.
    Invariants: a cloud dot is above its replica's vector entry and not next to it; every entry dot
    (a key of ``where``) is in the context — so an entry whose dot is not in the context is new here,
    which is all the joins test before taking one in.
    """

    __slots__ = ("cloud", "lines", "vv", "where")

    def __init__(self) -> None:
        self.vv: dict[str, int] = {}
        self.cloud: set[RawDot] = set()
        self.lines: dict[str, LineState] = {}
        self.where: dict[RawDot, str] = {}  # entry dot → SKU, to find what a small context cancels

    def copy(self) -> CartState:
        store = CartState()
        store.vv = self.vv.copy()
        store.cloud = self.cloud.copy()
        store.lines = {sku: line.copy() for sku, line in self.lines.items()}
        store.where = self.where.copy()
        return store

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CartState):
            return NotImplemented
        return self.vv == other.vv and self.cloud == other.cloud and self.lines == other.lines

    __hash__ = None  # type: ignore[assignment]

    # -- the context -------------------------------------------------------------------------------

    def seen(self, dot: RawDot) -> bool:
        return dot[1] <= self.vv.get(dot[0], 0) or dot in self.cloud

    def see(self, dot: DotObject) -> None:
        replica, counter = cast(RawDot, dot)
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
        dots: list[DotObject] = sorted(self.cloud)
        self.cloud = set()
        for dot in dots:
            self.see(dot)

    def see_context(self, other: CartState) -> None:
        vv = self.vv
        raised = False
        for replica, top in other.vv.items():
            if top > vv.get(replica, 0):
                vv[replica] = top
                raised = True
        if raised and self.cloud:
            self.normalize()
        dot: DotObject
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

    def _line(self, sku: str) -> LineState:
        """The line of ``sku``, made empty if there is none (the caller puts an entry in it)."""
        line = self.lines.get(sku)
        if line is None:
            line = self.lines[sku] = LineState()
        return line

    def _unlink(self, dot: DotObject, sku: str) -> None:
        """Take the entry ``dot`` out of its line (the caller takes it out of ``where``)."""
        line = self.lines[sku]
        if line.adds.pop(dot, None) is None:
            del line.sets[dot]
        if not line.adds and not line.sets:
            del self.lines[sku]

    def _drop(self, dot: DotObject, sku: str) -> None:
        self._unlink(dot, sku)
        del self.where[dot]

    def absorb(self, other: CartState) -> None:
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
        vv, cloud = self.vv, self.cloud
        for sku, their_line in other.lines.items():
            for dot, amount in their_line.adds.items():
                if dot[1] > vv.get(dot[0], 0) and not (cloud and dot in cloud):
                    self._line(sku).adds[dot] = amount
                    where[dot] = sku
            for dot, entry in their_line.sets.items():
                if dot[1] > vv.get(dot[0], 0) and not (cloud and dot in cloud):
                    self._line(sku).sets[dot] = entry
                    where[dot] = sku
        # 3. And the contexts join.
        if their_vv:
            self.see_context(other)
        else:
            see = self.see
            for dot in their_cloud:
                see(dot)

    def absorb_delta(self, delta: DeltaEntries) -> None:
        """:meth:`absorb` for a decoded payload whose context is a short list of dots (what a mutator
        ships, or a small cart's state): the same join, without building the payload's store first."""
        # Entries first: a set that cancels its line's only other entry then never empties the line
        # (dropping it and making it again). The two steps touch different dots, so order is free.
        vv, cloud, where = self.vv, self.cloud, self.where
        for sku, dot, amount in delta.adds:
            replica, counter = cast(RawDot, dot)
            if counter > vv.get(replica, 0) and not (cloud and dot in cloud):
                self._line(sku).adds[dot] = amount
                where[dot] = sku
            self.see(dot)  # entry dots are distinct: seeing one changes no other entry's test
        for sku, dot, entry in delta.sets:
            replica, counter = cast(RawDot, dot)
            if counter > vv.get(replica, 0) and not (cloud and dot in cloud):
                self._line(sku).sets[dot] = entry
                where[dot] = sku
            self.see(dot)
        for dot in delta.cancels:
            held = where.pop(dot, None)
            if held is not None:
                self._unlink(dot, held)
            self.see(dot)


class DeltaEntries:
    """A decoded payload whose context is a few dots (no vector entry above ``_SHORT_VECTOR``) — a delta
    as mutators make them — kept as its validated entries until something needs it as a store:
    :meth:`Cart.apply` joins it straight from these lists, the hot path of a hub or a device receiving
    edits. ``cancels`` are the context's dots that are not entry dots."""

    __slots__ = ("adds", "cancels", "sets")

    def __init__(
        self,
        adds: list[tuple[str, DotObject, int]],
        sets: list[tuple[str, DotObject, SetEntryObject]],
        cancels: list[DotObject],
    ) -> None:
        self.adds = adds
        self.sets = sets
        self.cancels = cancels  # context dots that are not entry dots: what the delta cancels

    def store(self, vv: dict[str, int] | None = None) -> CartState:
        store = CartState()
        where = store.where
        for sku, dot, amount in self.adds:
            store._line(sku).adds[dot] = amount
            where[dot] = sku
        for sku, dot, entry in self.sets:
            store._line(sku).sets[dot] = entry
            where[dot] = sku
        if vv:
            store.vv = vv
            cloud = store.cloud
            for dots in (where, self.cancels):
                for dot in dots:
                    replica, counter = cast(RawDot, dot)
                    if counter > vv.get(replica, 0):
                        cloud.add(dot)
        else:
            cloud = store.cloud = set(where)
            cloud.update(self.cancels)
        top = store.vv.get
        for replica, counter in cloud:
            if counter == top(replica, 0) + 1:  # next to the vector: fold (the invariant of CartState)
                store.normalize()
                break
        return store


# -- codec, version 1 -------------------------------------------------------------------------------
#
# s = [R, L, C] for an open cart, [R, L, C, SL, SC] once closed (SL, SC: the snapshot's lines and
# context). R: the replica table (crdt._compact). L: flat [sku, adds, sets, sku, adds, sets, ...];
# adds: flat [replica index, counter, amount, ...]; sets: flat [replica index, counter, quantity,
# wall_ms, logical, ...] (the timestamp's replica is the dot's). C: the context as flat pairs, without
# the entries' own dots. The decoder is the apply path's hot spot: it checks types inline.


def encode_state(store: CartState, table: ReplicaTable) -> tuple[list[Any], list[int]]:
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


def _bad(why: str) -> CodecError:
    return CodecError(f"malformed cart: {why}")


def decode_state(
    raw_lines: object, raw_ctx: object, replicas: list[str], *, lazy: bool = False
) -> CartState | DeltaEntries:
    """The lines and context of a store; with ``lazy``, a short context (a delta's) comes back as
    :class:`DeltaEntries`, for :meth:`Cart.apply` to join without building the store."""
    if type(raw_lines) is not list or len(raw_lines) % 3:
        raise _bad("lines are a flat list of (sku, adds, sets) triples")
    # Written for the one-line delta, the common payload: no set is built where a short list does.
    adds_out: list[tuple[str, DotObject, int]] = []
    sets_out: list[tuple[str, DotObject, SetEntryObject]] = []
    entry_dots: list[DotObject] = []
    dot: DotObject
    entry: SetEntryObject
    size = len(replicas)
    for i in range(0, len(raw_lines), 3):
        sku, adds, sets = raw_lines[i], raw_lines[i + 1], raw_lines[i + 2]
        if type(sku) is not str or not 0 < len(sku) <= MAX_SKU_LENGTH:
            raise _bad(f"bad SKU {sku!r}")
        if (
            type(adds) is not list
            or type(sets) is not list
            or len(adds) % 3
            or len(sets) % 5
            or not (adds or sets)
        ):
            raise _bad(f"malformed entries in line {sku!r}")
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
            entry_dots.append(dot)
            adds_out.append((sku, dot, amount))
        for j in range(0, len(sets), 5):
            index, counter, quantity = sets[j], sets[j + 1], sets[j + 2]
            wall, logical = sets[j + 3], sets[j + 4]
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
            entry_dots.append(dot)
            entry = (quantity, wall, logical)
            sets_out.append((sku, dot, entry))
    if len(raw_lines) > 3 and len({raw_lines[i] for i in range(0, len(raw_lines), 3)}) * 3 != len(raw_lines):
        raise _bad("a SKU appears twice")
    dots: Collection[DotObject] = entry_dots
    if len(entry_dots) > 1:
        dots = set(entry_dots)
        if len(dots) != len(entry_dots):
            raise _bad("a dot appears twice")
    # The context: the pairs written, plus the entries' own dots (left out by the writer).
    if type(raw_ctx) is list and not raw_ctx:
        return DeltaEntries(adds_out, sets_out, []) if lazy else DeltaEntries(adds_out, sets_out, []).store()
    vv, extra = decode_pairs(raw_ctx, replicas)
    short = lazy
    for top in vv.values():
        if top > _SHORT_VECTOR:
            short = False
    cancels: list[DotObject] = []
    for dot in extra:
        if dot not in dots:
            cancels.append(dot)
    if not short:
        return DeltaEntries(adds_out, sets_out, cancels).store(vv)
    # A delta's context: a few dots (a new replica's first ones folded into a vector entry).
    for replica, top in vv.items():
        for counter in range(1, top + 1):
            dot = (replica, counter)
            if dot not in dots:
                cancels.append(dot)
    return DeltaEntries(adds_out, sets_out, cancels)


def decode_v1(state: object) -> tuple[CartState | DeltaEntries, CartState | None]:
    """A cart's v1 state (see :mod:`crdt.cart`): the live part — as :class:`DeltaEntries` when its
    context is a delta's — and the checkout snapshot, if any."""
    if type(state) is not list or len(state) not in (3, 5):
        raise _bad("a cart is [replicas, lines, context] (+ [lines, context] once closed)")
    replicas = decode_table(state[0])
    if len(state) == 3:
        return decode_state(state[1], state[2], replicas, lazy=True), None
    live = decode_state(state[1], state[2], replicas)
    closed = decode_state(state[3], state[4], replicas)
    assert isinstance(closed, CartState)
    if not closed.vv and not closed.cloud:
        raise _bad("a checkout snapshot has at least its close dot")
    return live, closed
