"""Observed-remove map of nested causal CRDTs (the delta-state ORMap of Almeida, Shoker & Baquero).

State model (a causal CRDT, see :mod:`crdt.causal`): a dot map field → the dot store of a nested
causal CRDT, and **one** causal context shared by the map and everything nested in it. A field is a
pair ``(name, type tag)``, as in riak_dt's map: the nested types are :class:`~crdt.mv_register.MVRegister`
(``"mvr"``), :class:`~crdt.orset.AWORSet` (``"aws"``), :class:`~crdt.flags.EWFlag` (``"ewf"``),
:class:`~crdt.flags.DWFlag` (``"dwf"``), :class:`~crdt.ccounter.CCounter` (``"cc"``) and ORMap itself
(``"orm"``). A field is present exactly while its nested store is not empty.

Mutators: ``update(replica, name, Kind, fn)`` hands ``fn`` a view of the field (a ``Kind`` whose
context is the map's, so that it mints dots unique in the whole map) and wraps the nested delta ``fn``
returns as a map delta; ``remove(replica, name[, Kind])`` drops every dot it has seen in the field(s).

Merge (least upper bound): fields join pointwise with the nested type's own join, all under the two
maps' contexts; a field whose joined store is empty is dropped; contexts join by union.

Who wins: inside a field, the nested type's rule. Between a ``remove`` of a field and a concurrent
update of it, the update: the remove drops what its replica had seen, the update's new dots survive.
Concurrent updates of different fields never interact.

Deltas: an update's delta is the nested delta under its field (new dots, and a context of those and
the dots they replace); a remove's delta has no fields and a context of the dots removed. Both are
independent of the size of the map.

Worked example::

    >>> from crdt.hlc import Timestamp
    >>> from crdt.mv_register import MVRegister
    >>> from crdt.orset import AWORSet
    >>> doc = ORMap.new()
    >>> doc.apply(doc.update("a", "tags", AWORSet, lambda s: s.add("a", "red")))
    >>> doc.apply(doc.update("a", "title", MVRegister, lambda r: r.write("a", "Hi", Timestamp(1, 0, "a"))))
    >>> other = doc.merge(ORMap.new())
    >>> d_rm = other.remove("b", "tags")                                      # b drops the field...
    >>> d_add = doc.update("a", "tags", AWORSet, lambda s: s.add("a", "blue"))  # ...a adds, concurrently
    >>> doc.apply(d_rm); doc.apply(d_add); other.apply(d_add); other.apply(d_rm)
    >>> doc == other, sorted(doc.get("tags", AWORSet).value()), doc.value()[("title", "mvr")]
    (True, ['blue'], ['Hi'])

Known anomalies:

* **Remove + concurrent update resurrects a partial field.** Above, ``tags`` survives its removal,
  holding only what the concurrent update wrote (``blue``, not ``red``). A nested map comes back with
  only the concurrently written sub-fields; a nested :class:`~crdt.ccounter.CCounter` comes back with
  the updating replica's *whole* contribution (its own anomaly). riak_dt's map documents the same
  remove/update race; there the field keeps its pre-remove state instead.
* **Empty is absent.** A field whose nested state becomes empty — a cleared set or register, a
  disabled EWFlag, a reset counter with no live dots — leaves the map; there is no "present but
  empty" field. ``get`` of an absent field returns an empty one.
* **Fields are typed.** ``"x"`` created as a register on one replica and as a set on another,
  concurrently, gives two fields ``("x", "mvr")`` and ``("x", "aws")``; ``remove`` without a type
  removes every field of that name the remover has seen.
* The shared context keeps one entry per replica that ever wrote anywhere in the map, and a reused
  replica id can make a remove cover writes it never saw (see :mod:`crdt.dots`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Self, TypeVar

from crdt import codec
from crdt.causal import NESTABLE, Causal, join_dotmaps, nestable
from crdt.ccounter import CCounter
from crdt.context import CausalContext
from crdt.dots import Dot
from crdt.flags import DWFlag, EWFlag
from crdt.mv_register import MVRegister
from crdt.orset import AWORSet
from crdt.wire import check_replica, expect_list, expect_str, fail

Field = tuple[str, str]  # (name, type tag)
Store = Mapping[Field, Any]
N = TypeVar("N", bound=Causal[Any])

# The nested kinds (imported so that they are registered); ORMap adds itself below.
KINDS: tuple[type[Causal[Any]], ...] = (MVRegister, AWORSet, EWFlag, DWFlag, CCounter)


def _kind(tag: str) -> type[Causal[Any]]:
    return NESTABLE[tag]


def _field(name: Any, kind: type[Causal[Any]]) -> Field:
    if not isinstance(name, str):
        raise ValueError(f"a field name is a string, not {type(name).__name__}")
    if NESTABLE.get(getattr(kind, "TYPE_TAG", "")) is not kind:
        raise TypeError(f"{getattr(kind, '__name__', kind)!r} cannot be nested in an ORMap")
    return (name, kind.TYPE_TAG)


class ORMap(Causal[Store]):
    __slots__ = ()

    @classmethod
    def bottom_store(cls) -> Store:
        return {}

    @classmethod
    def join_stores(cls, a: Store, ca: CausalContext, b: Store, cb: CausalContext) -> Store:
        def join(field: Field, x: Any, y: Any) -> Any:
            kind = _kind(field[1])
            bottom = kind.bottom_store()
            return kind.join_stores(bottom if x is None else x, ca, bottom if y is None else y, cb)

        return join_dotmaps(a, ca, b, cb, join, lambda field, inner: _kind(field[1]).store_is_bottom(inner))

    @classmethod
    def store_dots(cls, store: Store) -> Iterator[Dot]:
        for field, inner in store.items():
            yield from _kind(field[1]).store_dots(inner)

    @classmethod
    def stores_equal(cls, a: Store, b: Store) -> bool:
        if a.keys() != b.keys():
            return False
        return all(_kind(f[1]).stores_equal(a[f], b[f]) for f in a)

    @classmethod
    def encode_store(cls, store: Store) -> list[Any]:
        # [name, tag, nested store]; ORMap v1 nests the v1 store format of each kind.
        return [[name, tag, _kind(tag).encode_store(store[(name, tag)])] for name, tag in sorted(store)]

    @classmethod
    def decode_store(cls, raw: Any) -> Store:
        store: dict[Field, Any] = {}
        for item in expect_list(raw, "ORMap entries"):
            name_raw, tag_raw, inner_raw = expect_list(item, "ORMap entry", 3)
            name = expect_str(name_raw, "ORMap field name", nonempty=False)
            tag = expect_str(tag_raw, "ORMap field type")
            kind = NESTABLE.get(tag)
            if kind is None:
                fail(f"ORMap: the field {name!r} has the unknown type {tag!r}")
            if (name, tag) in store:
                fail(f"ORMap: the field ({name!r}, {tag!r}) is listed twice")
            inner = kind.decode_store(inner_raw)
            if kind.store_is_bottom(inner):
                fail(f"ORMap: the field ({name!r}, {tag!r}) is empty")
            store[(name, tag)] = inner
        return store

    # -- reading -------------------------------------------------------------------------------------

    def fields(self) -> list[Field]:
        return sorted(self._store)

    def get(self, name: str, kind: type[N]) -> N:
        """The field ``(name, kind)`` as a ``kind`` (empty if absent). It shares the map's context:
        use it to read, or to mint a nested delta for :meth:`update` — not as a separate replica."""
        field = _field(name, kind)
        return kind(self._store.get(field, kind.bottom_store()), self._context)

    def value(self) -> dict[Field, Any]:
        """``{(name, type tag): nested value}`` for the present fields."""
        return {f: _kind(f[1])(inner, self._context).value() for f, inner in sorted(self._store.items())}

    # -- mutators ------------------------------------------------------------------------------------

    def update(self, replica: str, name: str, kind: type[N], mutate: Callable[[N], N]) -> Self:
        """Apply a nested mutator to the field ``(name, kind)``: ``mutate`` gets the field's view and
        returns the nested delta (e.g. ``lambda s: s.add(replica, "x")``); this returns the map delta."""
        check_replica(replica)
        field = _field(name, kind)
        delta = mutate(self.get(name, kind))
        if type(delta) is not kind:
            raise TypeError(f"the nested mutator returned {type(delta).__name__}, not {kind.__name__}")
        store: Store = {} if kind.store_is_bottom(delta.store) else {field: delta.store}
        return type(self)(store, delta.context)

    def remove(self, replica: str, name: str, kind: type[Causal[Any]] | None = None) -> Self:
        """Remove the field ``(name, kind)`` — every field called ``name`` if ``kind`` is None — as
        far as this replica has seen it."""
        check_replica(replica)
        if kind is not None:
            _field(name, kind)
        fields = [f for f in self._store if f[0] == name and (kind is None or f[1] == kind.TYPE_TAG)]
        return self._delta({}, (d for f in fields for d in _kind(f[1]).store_dots(self._store[f])))


codec.register(ORMap, "orm", 1, ORMap.encode, ORMap.decode)
nestable(ORMap)
