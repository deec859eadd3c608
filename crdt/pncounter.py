"""Positive-negative counter (PN-Counter): a counter that goes up and down.

State model: two grow-only maps, ``p`` (replica → total of its increments) and ``n`` (replica → total
of its decrements); entries are ≥ 1, a replica with nothing in a map has no entry there.

Merge (least upper bound): the pointwise maximum of ``p`` and of ``n``, separately.
Value: ``sum(p) - sum(n)``.

Who wins: nothing conflicts — every increment and every decrement is counted exactly once.

Delta: ``inc``/``dec`` return a counter with the one entry they raised (in ``p`` or ``n``).

Worked example::

    >>> stock = PNCounter.new()
    >>> stock.apply(stock.inc("hub", 1))
    >>> a, b = stock.merge(PNCounter.new()), stock.merge(PNCounter.new())
    >>> da, db = a.dec("a"), b.dec("b")        # two devices each take the last item, offline
    >>> a.apply(da); b.apply(db)
    >>> a.merge(b).value()
    -1

Known anomalies: there is no invariant — as above, concurrent decrements take the value below any
floor the application has in mind (stock needs a reservation, not a counter). An increment cannot
be undone as such: ``dec`` adds to ``n``, the state only grows. One entry per replica is kept
forever, and a reused replica id loses counts (see :mod:`crdt.dots`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from crdt import codec
from crdt.gcounter import decode_counts, encode_counts, raise_entry
from crdt.wire import expect_dict, same_type


def _join(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    out = dict(a)
    for replica, count in b.items():
        if count > out.get(replica, 0):
            out[replica] = count
    return out


class PNCounter:
    TYPE_TAG: str  # set by codec.register
    __slots__ = ("_n", "_p")

    def __init__(self, p: Mapping[str, int] | None = None, n: Mapping[str, int] | None = None) -> None:
        self._p: dict[str, int] = {r: c for r, c in (p or {}).items() if c > 0}
        self._n: dict[str, int] = {r: c for r, c in (n or {}).items() if c > 0}

    @classmethod
    def new(cls) -> Self:
        return cls()

    def value(self) -> int:
        return sum(self._p.values()) - sum(self._n.values())

    def inc(self, replica: str, n: int = 1) -> Self:
        """Add ``n`` ≥ 1 on ``replica``."""
        return type(self)(raise_entry(self._p, replica, n), None)

    def dec(self, replica: str, n: int = 1) -> Self:
        """Subtract ``n`` ≥ 1 on ``replica``."""
        return type(self)(None, raise_entry(self._n, replica, n))

    def merge(self, other: Self) -> Self:
        same_type(self, other)
        return type(self)(_join(self._p, other._p), _join(self._n, other._n))

    def apply(self, delta: Self) -> None:
        same_type(self, delta)
        self._p, self._n = _join(self._p, delta._p), _join(self._n, delta._n)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PNCounter) or type(other) is not type(self):
            return NotImplemented
        return self._p == other._p and self._n == other._n

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self._p!r}, n={self._n!r})"

    def encode(self) -> dict[str, Any]:
        return {"p": encode_counts(self._p), "n": encode_counts(self._n)}

    @classmethod
    def decode(cls, raw: Any) -> Self:
        body = expect_dict(raw, cls.__name__, ("p", "n"))
        return cls(
            decode_counts(body["p"], f"{cls.__name__} p"), decode_counts(body["n"], f"{cls.__name__} n")
        )


codec.register(PNCounter, "pnc", 1, PNCounter.encode, PNCounter.decode)
