"""The cart's state and its join, as plain data: the part of :mod:`crdt.cart` a hub or a device runs
for every edit it receives, kept apart so that it can be compiled (mypyc, see ``setup.py``).

:mod:`crdt.cart` holds the rules' documentation, the public :class:`~crdt.cart.Cart` and the checks on
what callers pass; this module trusts its callers and checks only what it decodes.

**The store** (:class:`CartState`) is laid out for the apply path. A hub applies a delta to a cart
it has just loaded, or holds among many: that cart is not in the CPU's caches, and applying a one-line
delta costs about one cache miss per object it touches — more than all its instructions. So:

* ``lines``: SKU → the line's entries, one dict ``dot → value`` where the value is an add's amount (an
  ``int``) or a set's :data:`SetEntry` (a tuple) — a line is its dict, no object around it. An add
  touches the line; a set also finds the entries it cancels there, since a set cancels entries of its
  own line (see :meth:`CartState.absorb_delta`).
* ``where``: entry dot → SKU, the index that finds what a context cancels when the line is not known
  (a remove names no line; a state's context names no line). It is built the first time a join needs
  it (``None`` until then: a cart decoded from its state and sent adds and sets never builds it) and
  kept up to date from then on — except that a set cancelling entries of its own line leaves their
  keys in the index, *stale*, rather than look each dot up a second time. ``stale`` counts them; a
  stale key is a cancelled dot (in the context, never held again), so :meth:`CartState.holds` tells
  it from an entry's, and the index is dropped, to be built again when needed, once the stale keys
  outnumber the others (and ``_STALE_SLACK``).
* ``vv`` and ``cloud``: the causal context (see :class:`CartState`). An empty cloud — the usual case,
  deltas arriving in order — is one shared ``frozenset``, so testing it touches nothing of the cart.

SKUs read from the wire are shared (interned, a bounded cache): a hub holding many carts of one
catalogue keeps one string per SKU, and a line looked up by a decoded SKU is found by identity, without
reading the stored key.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from typing import Any, Final, cast

from crdt._compact import (
    MAX_COUNTER,
    SHORT_RUN,
    DotObject,
    RawDot,
    ReplicaTable,
    decode_pairs,
    decode_table,
    encode_pairs,
)
from crdt.codec import CodecError
from crdt.context import CausalContext
from crdt.dots import Dot

MAX_QUANTITY: Final = 1_000_000
MAX_SKU_LENGTH: Final = 200
_SHORT_VECTOR: Final = 8  # a decoded context whose vector entries are all this short is treated as a delta's
_STALE_SLACK: Final = 32  # stale index keys always allowed (see the module docstring)
_SKU_CACHE_LIMIT: Final = 16_384

# A set entry: (quantity, wall_ms, logical). The timestamp's replica is the dot's (a replica stamps its
# own writes), so the entry's Timestamp is (wall_ms, logical, dot's replica).
SetEntry = tuple[int, int, int]
SetEntryObject = Any  # a SetEntry kept as its tuple object, for the reason DotObject gives
# An entry's value: an add's amount (int) or a set's SetEntry. Typed Any so that the compiled build
# stores, pops and tests entries without checking the value's type, which would read the value: one more
# cache miss per entry on a cold cart.
Value = Any
Line = dict[RawDot, Value]  # a line's entries: dot → value
Cloud = set[RawDot] | frozenset[RawDot]  # a store's own set, or _NO_CLOUD when it is empty
_NO_CLOUD: Final[frozenset[RawDot]] = frozenset()

_skus: dict[str, str] = {}


def intern_sku(sku: str) -> str:
    """The shared copy of ``sku`` (see the module docstring)."""
    known = _skus.get(sku)
    if known is not None:
        return known
    if len(_skus) >= _SKU_CACHE_LIMIT:
        _skus.clear()
    _skus[sku] = sku
    return sku


def line_view(line: Line) -> tuple[int, tuple[int, ...]]:
    """(quantity, conflicts): what :class:`crdt.cart.Line` shows."""
    added = 0
    ranked: list[tuple[int, int, RawDot, int]] = []  # sets as (wall, logical, dot, quantity)
    for dot, value in line.items():
        if isinstance(value, int):
            added += value
        else:
            quantity, wall, logical = cast(SetEntry, value)
            ranked.append((wall, logical, dot, quantity))
    if not ranked:
        return added, ()
    # The winner: the latest timestamp (wall, logical, replica), then the greatest dot.
    ranked.sort(reverse=True)
    base = ranked[0][3]
    conflicts: list[int] = []
    for item in ranked[1:]:
        quantity = item[3]
        if quantity != base and quantity not in conflicts:
            conflicts.append(quantity)
    return base + added, tuple(conflicts)


def entry_kind(value: Value) -> tuple[str, int]:
    """("add", amount) or ("set", quantity)."""
    if isinstance(value, int):
        return "add", value
    return "set", cast(SetEntry, value)[0]


class CartState:
    """A causal context and the lines it explains: the live cart, or a checkout snapshot.

    The context is kept here as a mutable version vector ``vv`` and cloud (the same model as
    :class:`~crdt.context.CausalContext`, which :attr:`Cart.context` returns), and dots as plain
    ``(replica, counter)`` tuples: applying a delta then updates a few dicts in place. The entries are
    laid out as the module docstring says.

    Invariants: a cloud dot is above its replica's vector entry and not next to it; no line is empty;
    every entry dot is in the context — so an entry whose dot is not in the context is new here, which
    is all the joins test before taking one in (and a dot not in the context is held by no entry).
    ``where`` is None (not built), or maps every entry dot to its line's SKU and holds ``stale`` other
    keys, each a dot in the context that no line holds; ``stale`` is 0 when ``where`` is None.
    """

    __slots__ = ("cloud", "lines", "stale", "vv", "where")

    def __init__(self) -> None:
        self.vv: dict[str, int] = {}
        self.cloud: Cloud = _NO_CLOUD
        self.lines: dict[str, Line] = {}
        self.where: dict[RawDot, str] | None = None  # entry dot → SKU, built when first needed
        self.stale = 0  # keys of ``where`` that are no entry's dot

    def copy(self) -> CartState:
        store = CartState()
        store.vv = self.vv.copy()
        store.cloud = self.cloud.copy() if self.cloud else _NO_CLOUD
        store.lines = {sku: line.copy() for sku, line in self.lines.items()}
        if self.where is not None:
            store.where = self.where.copy()
            store.stale = self.stale
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
                own = cast(set[RawDot], cloud)  # a cloud that is not empty is the store's own set
                while (replica, counter + 1) in own:
                    counter += 1
                    own.remove((replica, counter))
                if not own:
                    self.cloud = _NO_CLOUD
            self.vv[replica] = counter
        elif counter > top:
            cloud = self.cloud
            if cloud:
                cast(set[RawDot], cloud).add(dot)
            else:
                self.cloud = {dot}

    def normalize(self) -> None:
        """Restore the invariant (after a decoder filled the cloud in any order)."""
        dots: list[DotObject] = sorted(self.cloud)
        self.cloud = _NO_CLOUD
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
        if top >= MAX_COUNTER:
            # (a ValueError, as every mutator's refusal: the state could not be encoded past it)
            raise ValueError(f"replica {replica!r} has used every counter (up to 2**53 - 1): use a new id")
        return replica, top + 1

    # -- the entries -------------------------------------------------------------------------------

    def index(self) -> dict[RawDot, str]:
        """``where``, built if it is not."""
        where = self.where
        if where is None:
            where = {}
            dot: DotObject
            for sku, line in self.lines.items():
                for dot in line:
                    where[dot] = sku
            self.where = where
            self.stale = 0
        return where

    def holds(self, dot: DotObject) -> bool:
        """Whether an entry of this store has the dot ``dot``."""
        if self.where is None and len(self.lines) <= 1:  # a delta's one line: no index to build
            return any(dot in line for line in self.lines.values())
        sku = self.index().get(dot)
        if sku is None:
            return False
        if not self.stale:
            return True
        line = self.lines.get(sku)
        return line is not None and dot in line

    def line_dots(self, sku: str) -> list[RawDot]:
        line = self.lines.get(sku)
        return list(line) if line is not None else []

    def _cancel(self, dot: DotObject) -> None:
        """Drop the entry ``dot`` if this store holds it (a stale index key goes too)."""
        if not self.lines or not self.seen(dot):  # then no entry has it: no need for the index
            return
        where = self.index()
        sku = where.get(dot)
        if sku is None:
            return
        del where[dot]
        line = self.lines.get(sku)
        if line is not None and dot in line:  # (``in``, ``del``: mypyc calls dict.pop as a method)
            del line[dot]
            if not line:
                del self.lines[sku]
        else:
            self.stale -= 1

    def _cancel_in(self, line: Line, sku: str, dot: DotObject) -> bool:
        """Drop the entry ``dot`` if ``line``, the line of ``sku``, holds it (without looking its dot up
        in the index, where it goes stale): what a set's cancellations mostly are."""
        if dot not in line:
            return False
        del line[dot]
        if self.where is not None:
            self.stale += 1
        if not line:
            del self.lines[sku]
        return True

    def _trim_index(self) -> None:
        where = self.where
        if where is not None and self.stale > _STALE_SLACK and self.stale * 2 > len(where):
            self.where = None  # mostly stale: built again when next needed
            self.stale = 0

    def absorb(self, other: CartState) -> None:
        """Join ``other`` into this store (in place); ``other`` is not changed or aliased (its index
        may be built)."""
        lines = self.lines
        their_vv, their_cloud = other.vv, other.cloud
        dot: DotObject
        # 1. Entries the other side has seen and no longer holds were cancelled there.
        if lines:
            if other.context_size() < len(lines):  # a delta: look its few dots up
                # A one-line delta (a set) cancels entries of that line: look there first.
                sku, ours = "", None
                if len(other.lines) == 1:
                    sku = next(iter(other.lines))
                    ours = lines.get(sku)
                for dot in other.context_dots():
                    if not other.holds(dot) and not (ours is not None and self._cancel_in(ours, sku, dot)):
                        self._cancel(dot)
                self._trim_index()
            else:
                their_seen, where = other.seen, self.where
                for sku, ours in list(lines.items()):
                    for dot in list(ours):
                        if their_seen(dot) and not other.holds(dot):
                            del ours[dot]
                            if where is not None:
                                del where[dot]
                    if not ours:
                        del lines[sku]
        # 2. Entries we have not seen yet arrive (ones we have seen and dropped stay dropped).
        vv, cloud, where = self.vv, self.cloud, self.where
        for sku, their_line in other.lines.items():
            line: Line | None = None
            for dot, value in their_line.items():
                replica, counter = cast(RawDot, dot)
                if counter > vv.get(replica, 0) and not (cloud and dot in cloud):
                    if line is None:
                        line = lines.get(sku)
                        if line is None:
                            line = lines[sku] = {}
                    line[dot] = value
                    if where is not None:
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
        vv, cloud, lines, where = self.vv, self.cloud, self.lines, self.where
        flat = delta.entries
        dot: DotObject
        line: Line | None = None
        for i in range(0, len(flat), 3):
            sku: str = flat[i]
            dot = flat[i + 1]
            replica, counter = cast(RawDot, dot)
            if counter > vv.get(replica, 0) and not (cloud and dot in cloud):
                line = lines.get(sku)
                if line is None:
                    line = lines[sku] = {}
                line[dot] = flat[i + 2]
                if where is not None:
                    where[dot] = sku
            self.see(dot)  # entry dots are distinct: seeing one changes no other entry's test
        cancels = delta.cancels
        if not cancels:
            return
        # A one-line delta (a set) cancels that line's entries: look there first, and leave their
        # index keys stale rather than look each dot up a second time.
        one_sku = delta.sku
        if one_sku is None:
            line = None
        elif line is None:  # else ``line`` is already the line of ``one_sku``, where the entries went
            line = lines.get(one_sku)
        for dot in cancels:
            if line is not None and self._cancel_in(line, cast(str, one_sku), dot):
                if not line:
                    line = None
            else:
                self._cancel(dot)
            self.see(dot)
        self._trim_index()


class DeltaEntries:
    """A decoded payload whose context is a few dots (no vector entry above ``_SHORT_VECTOR``) — a delta
    as mutators make them — kept as its validated entries until something needs it as a store:
    :meth:`Cart.apply` joins it straight from these lists, the hot path of a hub or a device receiving
    edits. (The decoder also reads a whole state into one, then :meth:`store`.)"""

    __slots__ = ("cancels", "entries", "sku")

    def __init__(self, entries: list[Any], cancels: list[DotObject], sku: str | None) -> None:
        self.entries = entries  # flat [sku, dot, value, ...] (value: see ``Value``)
        self.cancels = cancels  # context dots that are not entry dots: what the delta cancels
        self.sku = sku  # the entries' one SKU, or None (several, or no entry)

    def store(self, vv: dict[str, int] | None = None) -> CartState:
        store = CartState()
        lines = store.lines
        flat = self.entries
        dot: DotObject
        for i in range(0, len(flat), 3):
            sku: str = flat[i]
            dot = flat[i + 1]
            line = lines.get(sku)
            if line is None:
                line = lines[sku] = {}
            line[dot] = flat[i + 2]
        cloud: set[RawDot] = set()
        if vv:
            store.vv = vv
            for i in range(1, len(flat), 3):
                dot = flat[i]
                replica, counter = cast(RawDot, dot)
                if counter > vv.get(replica, 0):
                    cloud.add(dot)
            for dot in self.cancels:
                replica, counter = cast(RawDot, dot)
                if counter > vv.get(replica, 0):
                    cloud.add(dot)
        else:
            for i in range(1, len(flat), 3):
                cloud.add(flat[i])
            cloud.update(self.cancels)
        if not cloud:
            return store
        store.cloud = cloud
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
    vv = store.vv
    # The entries' dots that the context's encoding asks about (encode_pairs): cloud dots (above the
    # vector) and the first few of a replica.
    implied: set[RawDot] = set()
    dot: DotObject
    for sku, line in store.lines.items():
        adds: list[int] = []
        sets: list[int] = []
        for dot, value in line.items():
            replica, counter = cast(RawDot, dot)
            if counter <= SHORT_RUN or counter > vv.get(replica, 0):
                implied.add(dot)
            if isinstance(value, int):
                adds += (index(replica), counter, value)
            else:
                quantity, wall, logical = cast(SetEntry, value)
                sets += (index(replica), counter, quantity, wall, logical)
        flat += (sku, adds, sets)
    return flat, encode_pairs(vv, store.cloud, table, implied)


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
    entries: list[Any] = []  # flat (sku, dot, value) triples, as DeltaEntries keeps them
    dot: DotObject
    size = len(replicas)
    sku: Any = None
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
        known = _skus.get(sku)
        sku = known if known is not None else intern_sku(sku)
        for j in range(0, len(adds), 3):
            index, counter, amount = adds[j], adds[j + 1], adds[j + 2]
            if not (
                type(index) is int
                and 0 <= index < size
                and type(counter) is int
                and 0 < counter <= MAX_COUNTER
                and type(amount) is int
                and 0 < amount <= MAX_QUANTITY
            ):
                raise _bad(f"bad add entry {adds[j : j + 3]!r} in line {sku!r}")
            # The decoded int objects go into the store as they are (cast: no unboxing and boxing again).
            dot = (replicas[index], cast(Any, counter))
            entries.append(sku)
            entries.append(dot)
            entries.append(cast(Any, amount))
        for j in range(0, len(sets), 5):
            index, counter, quantity = sets[j], sets[j + 1], sets[j + 2]
            wall, logical = sets[j + 3], sets[j + 4]
            if not (
                type(index) is int
                and 0 <= index < size
                and type(counter) is int
                and 0 < counter <= MAX_COUNTER
                and type(quantity) is int
                and 0 <= quantity <= MAX_QUANTITY
                and type(wall) is int
                and 0 <= wall <= MAX_COUNTER
                and type(logical) is int
                and 0 <= logical <= MAX_COUNTER
            ):
                raise _bad(f"bad set entry {sets[j : j + 5]!r} in line {sku!r}")
            dot = (replicas[index], cast(Any, counter))
            entry: SetEntryObject = (cast(Any, quantity), cast(Any, wall), cast(Any, logical))
            entries.append(sku)
            entries.append(dot)
            entries.append(entry)
    one_sku: str | None = sku if len(raw_lines) == 3 else None
    if len(raw_lines) > 3 and len({raw_lines[i] for i in range(0, len(raw_lines), 3)}) * 3 != len(raw_lines):
        raise _bad("a SKU appears twice")
    dots: Collection[DotObject] = ()
    if len(entries) == 3:
        dots = (entries[1],)
    elif entries:
        dots = {entries[k] for k in range(1, len(entries), 3)}
        if len(dots) * 3 != len(entries):
            raise _bad("a dot appears twice")
    # The context: the pairs written, plus the entries' own dots (left out by the writer).
    cancels: list[DotObject] = []
    if type(raw_ctx) is list and lazy and not len(raw_ctx) % 2:
        # A delta's context is usually cloud dots alone (index, -counter): read here; anything else,
        # malformed included, is left to decode_pairs below.
        for k in range(0, len(raw_ctx), 2):
            index, n = raw_ctx[k], raw_ctx[k + 1]
            if not (type(index) is int and 0 <= index < size and type(n) is int and -MAX_COUNTER <= n < 0):
                cancels = []
                break
            dot = (replicas[index], -n)
            if dot not in dots:
                cancels.append(dot)
        else:
            return DeltaEntries(entries, cancels, one_sku)
    if type(raw_ctx) is list and not raw_ctx:
        return DeltaEntries(entries, [], one_sku).store()
    vv, extra = decode_pairs(raw_ctx, replicas)
    short = lazy
    for top in vv.values():
        if top > _SHORT_VECTOR:
            short = False
    for dot in extra:
        if dot not in dots:
            cancels.append(dot)
    if not short:
        return DeltaEntries(entries, cancels, one_sku).store(vv)
    # A delta's context: a few dots (a new replica's first ones folded into a vector entry).
    for replica, top in vv.items():
        for counter in range(1, top + 1):
            dot = (replica, counter)
            if dot not in dots:
                cancels.append(dot)
    return DeltaEntries(entries, cancels, one_sku)


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


def cart_decoder(cls: type) -> Callable[[object], Any]:
    """The codec's decoder of a cart's v1 state, making instances of ``cls`` (:class:`crdt.cart.Cart`)
    with their slots set directly, no ``__init__`` call: every delta a hub or a device receives comes
    through here, compiled."""
    new = object.__new__

    def decode(state: object) -> Any:
        live, closed = decode_v1(state)
        cart: Any = new(cls)
        if isinstance(live, DeltaEntries):
            cart._store = None
            cart._delta = live
        else:
            cart._store = live
            cart._delta = None
        cart._closed = closed
        return cart

    return decode
