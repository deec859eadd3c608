"""Grow-only counter (G-Counter).

State model: a map replica → the number of increments that replica has made (every entry is ≥ 1; a
replica that never incremented has no entry).

Merge (least upper bound): the pointwise maximum. Value: the sum of the entries.

Who wins: nothing conflicts. Each replica only raises its own entry, so the maximum of an entry is
that replica's latest count, and every increment is counted exactly once however often and in
whatever order states and deltas are merged.

Delta: ``inc`` returns a counter holding the one entry it raised, ``{r: old + n}`` — its size does
not depend on the number of replicas.

Worked example::

    >>> a, b = GCounter.new(), GCounter.new()
    >>> d1 = a.inc("a", 2); a.apply(d1)        # a: {a: 2}
    >>> d2 = b.inc("b"); b.apply(d2)           # b: {b: 1}
    >>> b.apply(d1); b.apply(d1)               # a delta received twice counts once
    >>> a.apply(d2)
    >>> a.value(), b.value(), a == b
    (3, 3, True)
    >>> GCounter({"a": 3}) == GCounter({"a": 1, "b": 2})  # the same value, different states
    False

Known anomalies: it only grows (use :class:`~crdt.pncounter.PNCounter` to go down); the state keeps
one entry per replica that ever incremented, retired replicas included; and a reused replica id makes
two replicas' increments overwrite each other (the maximum keeps one of them) — see :mod:`crdt.dots`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from crdt import codec
from crdt.wire import UINT64_MAX, check_replica, expect_dict, expect_int, expect_str, same_type


def _join(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    out = dict(a)
    for replica, count in b.items():
        if count > out.get(replica, 0):
            out[replica] = count
    return out


def _positive(n: Any) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"the amount is a positive integer, not {n!r}")
    return n


def raise_entry(counts: Mapping[str, int], replica: str, n: int) -> dict[str, int]:
    """The one-entry delta ``{replica: counts[replica] + n}`` (shared with PNCounter)."""
    check_replica(replica)
    total = counts.get(replica, 0) + _positive(n)
    if total > UINT64_MAX:
        raise ValueError("the counter would overflow 64 bits")
    return {replica: total}


def encode_counts(counts: Mapping[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items()))


def decode_counts(raw: Any, what: str) -> dict[str, int]:
    body = expect_dict(raw, what)
    return {
        expect_str(replica, f"{what} replica"): expect_int(count, f"{what} count", 1, UINT64_MAX)
        for replica, count in body.items()
    }


class GCounter:
    TYPE_TAG: str  # set by codec.register
    __slots__ = ("_counts",)

    def __init__(self, counts: Mapping[str, int] | None = None) -> None:
        self._counts: dict[str, int] = {r: n for r, n in (counts or {}).items() if n > 0}

    @classmethod
    def new(cls) -> Self:
        return cls()

    @property
    def counts(self) -> Mapping[str, int]:
        return dict(self._counts)

    def value(self) -> int:
        return sum(self._counts.values())

    def inc(self, replica: str, n: int = 1) -> Self:
        """Add ``n`` ≥ 1 on ``replica``."""
        return type(self)(raise_entry(self._counts, replica, n))

    def merge(self, other: Self) -> Self:
        same_type(self, other)
        return type(self)(_join(self._counts, other._counts))

    def apply(self, delta: Self) -> None:
        same_type(self, delta)
        self._counts = _join(self._counts, delta._counts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GCounter) or type(other) is not type(self):
            return NotImplemented
        return self._counts == other._counts

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._counts!r})"

    def encode(self) -> dict[str, int]:
        return encode_counts(self._counts)

    @classmethod
    def decode(cls, raw: Any) -> Self:
        return cls(decode_counts(raw, cls.__name__))


codec.register(GCounter, "gc", 1, GCounter.encode, GCounter.decode)
