"""Add-wins observed-remove set (AWORSet).

State model (a causal CRDT, see :mod:`crdt.causal`): a dot map element → the dots of the adds that
keep it in the set, and the causal context of every add and remove seen. Elements are strings or
64-bit integers (not bools: ``True == 1`` in Python).

Merge (least upper bound): per element, an add's dot survives unless the other side has seen that
dot and no longer holds it (the element was removed, or re-added, there); an element whose dots are
all gone leaves the set; contexts join by union.

Who wins: a remove removes the adds its replica has observed, and only those. So of an add and a
remove of the same element that are concurrent, the add wins (its dot is new to the remover); two
concurrent adds both keep the element; two concurrent removes agree. ``clear`` is a remove of every
element observed.

Delta: ``add`` returns the element with one new dot, read against a context of that dot and the
element's observed dots (which it replaces — so an element carries one dot per concurrent add, not
one per add ever made); ``remove`` returns no entries and a context of the element's observed dots.
Neither depends on the size of the set.

Worked example::

    >>> cart = AWORSet.new()
    >>> cart.apply(cart.add("phone", "sku-1"))
    >>> laptop = cart.merge(AWORSet.new())
    >>> d_rm = laptop.remove("laptop", "sku-1")    # removes the add it has seen...
    >>> d_add = cart.add("phone", "sku-1")          # ...while the phone adds it again, concurrently
    >>> cart.apply(d_rm); cart.apply(d_add); laptop.apply(d_add); laptop.apply(d_rm)
    >>> sorted(cart.value()), cart == laptop
    (['sku-1'], True)
    >>> cart.apply(cart.remove("phone", "sku-1"))   # seen everything: gone everywhere
    >>> sorted(cart.value())
    []

Known anomalies: add-wins means "I removed it and it came back" whenever a concurrent add — even an
add of an element that was already there — had not been seen by the remover; that is the price of
never losing an add. There are no tombstones, but the context keeps one entry per replica that ever
wrote (plus out-of-order dots until the gaps fill). A reused replica id can make a remove cover an
add it never saw (see :mod:`crdt.dots`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Self

from crdt import codec
from crdt.causal import Causal, join_dotmaps, join_dotsets, nestable
from crdt.context import CausalContext
from crdt.dots import Dot
from crdt.wire import INT64_MAX, INT64_MIN, check_replica, decode_dots, encode_dots, expect_list, fail

Element = str | int
Store = Mapping[Element, frozenset[Dot]]

_EMPTY: frozenset[Dot] = frozenset()


def check_element(element: Any) -> Element:
    if isinstance(element, bool) or not isinstance(element, (str, int)):
        raise ValueError(f"set elements are strings or integers, not {type(element).__name__}")
    if isinstance(element, int) and not INT64_MIN <= element <= INT64_MAX:
        raise ValueError(f"the integer {element} does not fit 64 bits")
    if isinstance(element, str):
        try:
            element.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError("set elements are valid Unicode text") from exc
    return element


def _order(element: Element) -> tuple[int, int, str]:
    return (0, element, "") if isinstance(element, int) else (1, 0, element)


class AWORSet(Causal[Store]):
    __slots__ = ()

    @classmethod
    def bottom_store(cls) -> Store:
        return {}

    @classmethod
    def join_stores(cls, a: Store, ca: CausalContext, b: Store, cb: CausalContext) -> Store:
        def join(_: Element, x: frozenset[Dot] | None, y: frozenset[Dot] | None) -> frozenset[Dot]:
            return join_dotsets(x or _EMPTY, ca, y or _EMPTY, cb)

        return join_dotmaps(a, ca, b, cb, join, lambda _, dots: not dots)

    @classmethod
    def store_dots(cls, store: Store) -> Iterator[Dot]:
        for dots in store.values():
            yield from dots

    @classmethod
    def encode_store(cls, store: Store) -> list[Any]:
        return [[e, encode_dots(store[e])] for e in sorted(store, key=_order)]

    @classmethod
    def decode_store(cls, raw: Any) -> Store:
        store: dict[Element, frozenset[Dot]] = {}
        for item in expect_list(raw, "AWORSet entries"):
            element_raw, dots_raw = expect_list(item, "AWORSet entry", 2)
            try:
                element = check_element(element_raw)
            except ValueError as exc:
                fail(f"AWORSet element: {exc}")
            if element in store:
                fail(f"AWORSet: the element {element!r} is listed twice")
            dots = decode_dots(dots_raw, "AWORSet dots")
            if not dots:
                fail(f"AWORSet: the element {element!r} has no dots")
            store[element] = dots
        return store

    def value(self) -> frozenset[Element]:
        return frozenset(self._store)

    def __contains__(self, element: object) -> bool:
        return element in self._store

    def __len__(self) -> int:
        return len(self._store)

    def add(self, replica: str, element: Element) -> Self:
        """Add ``element`` (replacing the adds of it this replica has seen)."""
        element = check_element(element)
        dot = self._next_dot(replica)
        return self._delta({element: frozenset({dot})}, [dot, *self._store.get(element, _EMPTY)])

    def remove(self, replica: str, element: Element) -> Self:
        """Remove ``element`` as far as this replica has seen it added (a no-op delta if absent)."""
        check_replica(replica)
        return self._delta({}, self._store.get(check_element(element), _EMPTY))

    def clear(self, replica: str) -> Self:
        """Remove every element this replica has seen."""
        check_replica(replica)
        return self._delta({}, self.store_dots(self._store))


codec.register(AWORSet, "aws", 1, AWORSet.encode, AWORSet.decode)
nestable(AWORSet)
