"""Flags: a boolean that replicas switch on and off — enable-wins (EWFlag) and disable-wins (DWFlag).

State model: both are causal CRDTs (see :mod:`crdt.causal`), and both read ``False`` when new.

**EWFlag**: a dot set (the enables still in force) and a causal context. ``enable``
adds a new dot and drops the enables it has seen; ``disable`` drops the enables it has seen. The
flag is on while any enable dot survives.

**DWFlag**: two dot sets, the enables and the disables in force, and one causal
context. ``enable`` adds an enable dot, ``disable`` a disable dot, and each drops every enable and
disable it has seen. The flag is on when some enable survives and no disable does.

Merge (least upper bound), both: a dot survives unless the other side has seen it and dropped it;
contexts join by union.

Who wins: an operation overrides exactly the operations its replica has seen. Between a concurrent
enable and disable, EWFlag ends enabled (the enable's new dot is unseen by the disable) and DWFlag
disabled (both dots survive, and a surviving disable wins). Concurrent operations of the same kind
agree. After either, a replica that has seen both decides with its next operation.

Deltas: the new dot (if any), read against a context of that dot and the dots the operation drops.

Worked example::

    >>> on = EWFlag.new(); on.apply(on.enable("a"))
    >>> a, b = on.merge(EWFlag.new()), on.merge(EWFlag.new())
    >>> de, dd = a.enable("a"), b.disable("b")      # concurrent
    >>> a.apply(dd); a.apply(de); a.value()           # enable wins
    True
    >>> off = DWFlag.new(); off.apply(off.enable("a"))
    >>> c, d = off.merge(DWFlag.new()), off.merge(DWFlag.new())
    >>> de, dd = c.enable("c"), d.disable("d")      # concurrent
    >>> c.apply(dd); c.apply(de); c.value()           # disable wins
    False

Known anomalies: a disabled EWFlag is the empty state, the same as a new one — nested in an
:class:`~crdt.ormap.ORMap`, disabling it removes the field (which reads ``False`` all the same),
whereas a disabled DWFlag keeps a disable dot and its field. The context keeps one entry per replica
that ever switched the flag. A reused replica id can make an operation override one it never saw.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Self

from crdt import codec
from crdt.causal import Causal, join_dotsets, nestable
from crdt.context import CausalContext
from crdt.dots import Dot
from crdt.wire import check_replica, decode_dots, encode_dots, expect_dict

_EMPTY: frozenset[Dot] = frozenset()


class EWFlag(Causal[frozenset[Dot]]):
    __slots__ = ()

    @classmethod
    def bottom_store(cls) -> frozenset[Dot]:
        return _EMPTY

    @classmethod
    def join_stores(
        cls, a: frozenset[Dot], ca: CausalContext, b: frozenset[Dot], cb: CausalContext
    ) -> frozenset[Dot]:
        return join_dotsets(a, ca, b, cb)

    @classmethod
    def store_dots(cls, store: frozenset[Dot]) -> Iterator[Dot]:
        return iter(store)

    @classmethod
    def encode_store(cls, store: frozenset[Dot]) -> list[Any]:
        return encode_dots(store)

    @classmethod
    def decode_store(cls, raw: Any) -> frozenset[Dot]:
        return decode_dots(raw, "EWFlag dots")

    def value(self) -> bool:
        return bool(self._store)

    def enable(self, replica: str) -> Self:
        dot = self._next_dot(replica)
        return self._delta(frozenset({dot}), [dot, *self._store])

    def disable(self, replica: str) -> Self:
        check_replica(replica)
        return self._delta(_EMPTY, self._store)


DWStore = tuple[frozenset[Dot], frozenset[Dot]]  # (enables, disables)


class DWFlag(Causal[DWStore]):
    __slots__ = ()

    @classmethod
    def bottom_store(cls) -> DWStore:
        return (_EMPTY, _EMPTY)

    @classmethod
    def store_is_bottom(cls, store: DWStore) -> bool:
        return not store[0] and not store[1]

    @classmethod
    def join_stores(cls, a: DWStore, ca: CausalContext, b: DWStore, cb: CausalContext) -> DWStore:
        return (join_dotsets(a[0], ca, b[0], cb), join_dotsets(a[1], ca, b[1], cb))

    @classmethod
    def store_dots(cls, store: DWStore) -> Iterator[Dot]:
        yield from store[0]
        yield from store[1]

    @classmethod
    def encode_store(cls, store: DWStore) -> dict[str, Any]:
        return {"on": encode_dots(store[0]), "off": encode_dots(store[1])}

    @classmethod
    def decode_store(cls, raw: Any) -> DWStore:
        body = expect_dict(raw, "DWFlag dots", ("on", "off"))
        return (decode_dots(body["on"], "DWFlag enables"), decode_dots(body["off"], "DWFlag disables"))

    def value(self) -> bool:
        enables, disables = self._store
        return bool(enables) and not disables

    def _switch(self, replica: str, on: bool) -> Self:
        dot = self._next_dot(replica)
        mine = frozenset({dot})
        return self._delta((mine, _EMPTY) if on else (_EMPTY, mine), [dot, *self.store_dots(self._store)])

    def enable(self, replica: str) -> Self:
        return self._switch(replica, True)

    def disable(self, replica: str) -> Self:
        return self._switch(replica, False)


codec.register(EWFlag, "ewf", 1, EWFlag.encode, EWFlag.decode)
codec.register(DWFlag, "dwf", 1, DWFlag.encode, DWFlag.decode)
nestable(EWFlag)
nestable(DWFlag)
