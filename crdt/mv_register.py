"""Multi-value register: a write replaces the values its writer has seen; concurrent writes are all kept.

State model (a causal CRDT, see :mod:`crdt.causal`): a dot function — for each live write, its dot
→ (value, timestamp) — and the causal context of every write seen. Values are JSON-safe (see
:mod:`crdt.wire`); the timestamp (the writer's, from its :class:`~crdt.hlc.HybridClock`) only serves
:meth:`MVRegister.winner`.

Merge (least upper bound): a write survives unless the other side has seen its dot and no longer
holds it (it was overwritten there); contexts join by union.

Who wins: nobody, by design. A write overwrites exactly the values its writer had seen; two writes
that did not see each other are both kept, and ``value()`` lists them all (oldest timestamp first)
until a later write that has seen both replaces them. A write concurrent with ``clear`` survives it.
``winner()`` picks one value for display — the latest timestamp, ties by replica — without changing
the state; to resolve the conflict, write the chosen value.

Delta: ``write`` returns the new dot with its value, read against a context of just the new dot and
the dots it overwrites; ``clear`` returns no dots and a context of the dots it removes.

Worked example::

    >>> from crdt.hlc import Timestamp
    >>> a = MVRegister.new()
    >>> a.apply(a.write("a", "draft", Timestamp(1, 0, "a")))
    >>> b = a.merge(MVRegister.new())
    >>> da = a.write("a", "by a", Timestamp(5, 0, "a"))
    >>> db = b.write("b", "by b", Timestamp(3, 0, "b"))
    >>> a.apply(da); a.apply(db); b.apply(db); b.apply(da)
    >>> a.value(), a.winner(), a == b
    (['by b', 'by a'], 'by a', True)
    >>> a.apply(a.write("a", "merged", Timestamp(6, 0, "a")))  # has seen both: replaces both
    >>> a.value()
    ['merged']

Known anomalies: the values are not merged, the application has to resolve a conflict by writing;
``winner()`` is for display only — replicas agree on it, but nothing is overwritten by it; the
context keeps one entry per replica that ever wrote. A reused replica id can make two different
values share a dot; the merge then keeps the greater (timestamp, canonical value) and loses the
other (see :mod:`crdt.dots`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Self

from crdt import codec
from crdt.causal import Causal, join_dotfuns, nestable
from crdt.context import CausalContext
from crdt.dots import Dot
from crdt.hlc import Timestamp
from crdt.wire import (
    UINT64_MAX,
    canonical,
    check_replica,
    check_timestamp,
    check_value,
    decode_dot,
    decode_value,
    encode_dot,
    expect_int,
    expect_list,
    fail,
)

Entry = tuple[Any, Timestamp]  # (value, timestamp of the write)
Store = Mapping[Dot, Entry]


def _pick(x: Entry, y: Entry) -> Entry:
    return max(x, y, key=lambda e: (e[1], canonical(e[0])))


class MVRegister(Causal[Store]):
    __slots__ = ()

    @classmethod
    def bottom_store(cls) -> Store:
        return {}

    @classmethod
    def join_stores(cls, a: Store, ca: CausalContext, b: Store, cb: CausalContext) -> Store:
        return join_dotfuns(a, ca, b, cb, _pick)

    @classmethod
    def store_dots(cls, store: Store) -> Iterator[Dot]:
        return iter(store)

    @classmethod
    def stores_equal(cls, a: Store, b: Store) -> bool:
        if a.keys() != b.keys():
            return False
        return all(a[d][1] == b[d][1] and canonical(a[d][0]) == canonical(b[d][0]) for d in a)

    @classmethod
    def encode_store(cls, store: Store) -> list[Any]:
        # [dot, [wall_ms, logical], value]; the timestamp's replica is the dot's (the writer).
        return [
            [encode_dot(d), [store[d][1].wall_ms, store[d][1].logical], store[d][0]] for d in sorted(store)
        ]

    @classmethod
    def decode_store(cls, raw: Any) -> Store:
        store: dict[Dot, Entry] = {}
        for item in expect_list(raw, "MVRegister entries"):
            dot_raw, ts_raw, value_raw = expect_list(item, "MVRegister entry", 3)
            dot = decode_dot(dot_raw, "MVRegister dot")
            wall, logical = expect_list(ts_raw, "MVRegister timestamp", 2)
            ts = Timestamp(
                expect_int(wall, "MVRegister wall_ms", 0, UINT64_MAX),
                expect_int(logical, "MVRegister logical", 0, UINT64_MAX),
                dot.replica,
            )
            if dot in store:
                fail(f"MVRegister: the dot {dot.replica}:{dot.counter} occurs twice")
            store[dot] = (decode_value(value_raw, "MVRegister value"), ts)
        return store

    def _ordered(self) -> list[Entry]:
        return sorted(self._store.values(), key=lambda e: (e[1], canonical(e[0])))

    def value(self) -> list[Any]:
        """The concurrent values, oldest timestamp first (``[]`` if never written or cleared)."""
        return [entry[0] for entry in self._ordered()]

    def winner(self) -> Any:
        """One value for display: the latest timestamp, ties by replica (``None`` if empty)."""
        entries = self._ordered()
        return entries[-1][0] if entries else None

    def write(self, replica: str, value: Any, ts: Timestamp) -> Self:
        """Replace every value this replica has seen with ``value``, written at ``ts``."""
        dot = self._next_dot(replica)
        entry = (check_value(value), check_timestamp(ts, replica))
        return self._delta({dot: entry}, [dot, *self._store])

    def clear(self, replica: str) -> Self:
        """Remove every value this replica has seen."""
        check_replica(replica)
        return self._delta({}, self._store)


codec.register(MVRegister, "mvr", 1, MVRegister.encode, MVRegister.decode)
nestable(MVRegister)
