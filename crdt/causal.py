"""Causal CRDTs: a dot store and the causal context it is read against.

This is the construction of Almeida, Shoker & Baquero ("Delta state replicated data types", 2018,
§6) shared by the add-wins set, the multi-value register, the flags, the causal counter and the map.
A state is a pair (store, context): the store holds the dots of the writes that are still live, the
context every dot the replica has seen, live or since overwritten or removed. A dot that is in the
context but not in the store was removed; so a merge tells "removed" (seen, gone) from "not received
yet" (unseen) without tombstones.

Three kinds of store, and their join, with ``c``, ``c'`` the two contexts:

* DotSet ``s``: ``(s ∩ s') ∪ (s ∖ c') ∪ (s' ∖ c)`` — a dot survives unless the other side has seen it
  and dropped it;
* DotFun ``f: dot → v``: the same on the domain; a dot on both sides keeps its value (one dot is one
  write, so both sides hold the same value; should a reused replica id ever make them differ, the
  larger one is kept so that the merge stays deterministic);
* DotMap ``m: key → store``: the inner stores join pointwise under the same two contexts, and a key
  whose store becomes empty is dropped;

and the contexts join by union. A mutator on replica ``r`` mints ``r``'s next dot and returns a
delta: a store with just the new dots, and a context with just the new dots and the dots the write
replaces — never the whole context, so a delta's size does not depend on the size of the document.

Invariant (the decoders check it): every dot in the store is in the context, and no dot occurs twice
in a store.

Every causal type can also be nested in :class:`~crdt.ormap.ORMap`, where it shares the map's context;
a type makes itself nestable with :func:`nestable`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, Self, TypeVar

from crdt.codec import CodecError
from crdt.context import CausalContext
from crdt.dots import Dot
from crdt.wire import check_replica, decode_context, encode_context, expect_dict, same_type

S = TypeVar("S")
K = TypeVar("K")
V = TypeVar("V")


def join_dotsets(
    a: frozenset[Dot], ca: CausalContext, b: frozenset[Dot], cb: CausalContext
) -> frozenset[Dot]:
    if not b:  # the common case in a delta: nothing new here, maybe some of ``a`` removed
        return a if not any(map(cb.contains, a)) else frozenset(d for d in a if not cb.contains(d))
    if not a:
        return b if not any(map(ca.contains, b)) else frozenset(d for d in b if not ca.contains(d))
    if a == b:
        return a
    kept = [d for d in a if d in b or not cb.contains(d)]
    kept.extend(d for d in b if d not in a and not ca.contains(d))
    return frozenset(kept)


def join_dotfuns(
    a: Mapping[Dot, V],
    ca: CausalContext,
    b: Mapping[Dot, V],
    cb: CausalContext,
    pick: Callable[[V, V], V],
) -> dict[Dot, V]:
    """Join two dot functions; ``pick`` chooses between two values of one dot (commutative)."""
    if not b and not any(map(cb.contains, a)):
        return dict(a)
    out: dict[Dot, V] = {}
    for dot, value in a.items():
        if dot in b:
            out[dot] = pick(value, b[dot])
        elif not cb.contains(dot):
            out[dot] = value
    for dot, value in b.items():
        if dot not in a and not ca.contains(dot):
            out[dot] = value
    return out


def join_dotmaps(
    a: Mapping[K, S],
    ca: CausalContext,
    b: Mapping[K, S],
    cb: CausalContext,
    join: Callable[[K, S | None, S | None], S],
    is_bottom: Callable[[K, S], bool],
) -> dict[K, S]:
    """Join two dot maps; ``join(key, x, y)`` joins the inner stores (``None``: the key is absent),
    ``is_bottom(key, store)`` says whether a joined inner store is empty (and its key is dropped)."""
    out: dict[K, S] = {}
    for key, inner in a.items():
        joined = join(key, inner, b.get(key))
        if not is_bottom(key, joined):
            out[key] = joined
    for key, inner in b.items():
        if key not in a:
            joined = join(key, None, inner)
            if not is_bottom(key, joined):
                out[key] = joined
    return out


def check_store_dots(dots: Iterable[Dot], context: CausalContext, what: str) -> None:
    """The causal invariant, for decoders: store dots are unique and all in the context."""
    counts = Counter(dots)
    for dot, n in counts.items():
        if n > 1:
            raise CodecError(f"{what}: the dot {dot.replica}:{dot.counter} occurs {n} times")
        if not context.contains(dot):
            raise CodecError(f"{what}: the dot {dot.replica}:{dot.counter} is not in the context")


class Causal(Generic[S]):
    """Base of the causal types: a dot store of type ``S`` and a :class:`CausalContext`.

    A subclass defines the dot-store algebra (the class methods below), ``value`` and its mutators;
    it inherits ``new``, ``merge``, ``apply``, structural ``__eq__`` and the codec functions
    ``encode``/``decode`` (format ``{"e": <store>, "c": <context>}``)."""

    TYPE_TAG: str  # set by codec.register
    __slots__ = ("_context", "_store")

    def __init__(self, store: S, context: CausalContext) -> None:
        self._store = store
        self._context = context

    # -- the dot-store algebra, one per kind of store ----------------------------------------------

    @classmethod
    def bottom_store(cls) -> S:
        raise NotImplementedError

    @classmethod
    def store_is_bottom(cls, store: S) -> bool:
        """An empty store is bottom; a type whose empty store is not falsy (a tuple of two) overrides."""
        return not store

    @classmethod
    def join_stores(cls, a: S, ca: CausalContext, b: S, cb: CausalContext) -> S:
        raise NotImplementedError

    @classmethod
    def store_dots(cls, store: S) -> Iterator[Dot]:
        raise NotImplementedError

    @classmethod
    def stores_equal(cls, a: S, b: S) -> bool:
        return a == b

    @classmethod
    def encode_store(cls, store: S) -> Any:
        raise NotImplementedError

    @classmethod
    def decode_store(cls, raw: Any) -> S:
        raise NotImplementedError

    # -- the interface -------------------------------------------------------------------------------

    @classmethod
    def new(cls) -> Self:
        return cls(cls.bottom_store(), CausalContext.empty())

    @property
    def store(self) -> S:
        return self._store

    @property
    def context(self) -> CausalContext:
        return self._context

    def value(self) -> Any:
        raise NotImplementedError

    def merge(self, other: Self) -> Self:
        same_type(self, other)
        store = self.join_stores(self._store, self._context, other._store, other._context)
        return type(self)(store, self._context.merge(other._context))

    def apply(self, delta: Self) -> None:
        same_type(self, delta)
        self._store = self.join_stores(self._store, self._context, delta._store, delta._context)
        self._context = self._context.merge(delta._context)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Causal) or type(other) is not type(self):
            return NotImplemented
        return self._context == other._context and self.stores_equal(self._store, other._store)

    __hash__ = None  # type: ignore[assignment]  # states change in place (apply)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._store!r}, {self._context!r})"

    # -- helpers for mutators ------------------------------------------------------------------------

    def _next_dot(self, replica: str) -> Dot:
        return self._context.next_dot(check_replica(replica))

    def _delta(self, store: S, dots: Iterable[Dot]) -> Self:
        """A delta: ``store`` (the new dots) read against a context of just ``dots``."""
        return type(self)(store, CausalContext.of(dots))

    # -- codec ---------------------------------------------------------------------------------------

    def encode(self) -> dict[str, Any]:
        return {"e": self.encode_store(self._store), "c": encode_context(self._context)}

    @classmethod
    def decode(cls, raw: Any) -> Self:
        body = expect_dict(raw, cls.__name__, ("e", "c"))
        context = decode_context(body["c"], f"{cls.__name__} context")
        store = cls.decode_store(body["e"])
        check_store_dots(cls.store_dots(store), context, cls.__name__)
        return cls(store, context)


NESTABLE: dict[str, type[Causal[Any]]] = {}


def nestable(cls: type[Causal[Any]]) -> None:
    """Let ``cls`` (registered with the codec already, so that it has its tag) be nested in an ORMap."""
    NESTABLE[cls.TYPE_TAG] = cls
