"""The causal context: which writes (dots) a replica has seen.

State model: a version vector ``vv`` (for each replica, the highest counter n such that dots 1..n are
all seen) plus a *dot cloud*: seen dots that are not yet contiguous with the vector (delta-state CRDTs
receive deltas out of order). ``compact`` folds cloud dots into the vector once they become contiguous,
and only then — a gap is never papered over.

Merge (least upper bound): the union of the seen dots.

Comparison (:func:`compare`) is by the sets of seen dots: BEFORE (a proper subset), AFTER, EQUAL or
CONCURRENT (neither contains the other) — the vector-clock order, generalised to clouds.

Example::

    a = CausalContext.empty().add(Dot("x", 1)).add(Dot("x", 3))   # vv {x: 1}, cloud {x:3}
    b = CausalContext.empty().add(Dot("x", 2))                      # cloud {x:2}: not contiguous
    a.merge(b) == CausalContext({"x": 3}, frozenset())              # compacted: x 1..3

Values are immutable: every operation returns a new context.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from crdt.dots import Dot


class Order(enum.Enum):
    BEFORE = "before"
    AFTER = "after"
    EQUAL = "equal"
    CONCURRENT = "concurrent"


@dataclass(frozen=True, slots=True)
class CausalContext:
    vv: Mapping[str, int] = field(default_factory=dict)
    cloud: frozenset[Dot] = frozenset()

    @staticmethod
    def empty() -> CausalContext:
        return CausalContext({}, frozenset())

    @staticmethod
    def of(dots: Iterable[Dot]) -> CausalContext:
        return CausalContext({}, frozenset(dots)).compact()

    def _canonical(self) -> tuple[frozenset[tuple[str, int]], frozenset[Dot]]:
        # Equal dot sets, equal form: compacted, and a replica at counter 0 is no entry at all.
        c = self.compact()
        return frozenset((r, n) for r, n in c.vv.items() if n > 0), c.cloud

    def __hash__(self) -> int:
        # Hash what __eq__ compares: {x: 1} and the cloud {x:1} are equal, so they hash alike.
        return hash(self._canonical())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CausalContext):
            return NotImplemented
        return self._canonical() == other._canonical()

    def contains(self, dot: Dot) -> bool:
        return dot.counter <= self.vv.get(dot.replica, 0) or dot in self.cloud

    def max_counter(self, replica: str) -> int:
        top = self.vv.get(replica, 0)
        for dot in self.cloud:
            if dot.replica == replica and dot.counter > top:
                top = dot.counter
        return top

    def next_dot(self, replica: str) -> Dot:
        """The dot of ``replica``'s next write (it must have seen all its own writes)."""
        return Dot(replica, self.max_counter(replica) + 1)

    def add(self, dot: Dot) -> CausalContext:
        if self.contains(dot):
            return self
        return CausalContext(self.vv, self.cloud | {dot}).compact()

    def merge(self, other: CausalContext) -> CausalContext:
        vv = dict(self.vv)
        for replica, counter in other.vv.items():
            if counter > vv.get(replica, 0):
                vv[replica] = counter
        return CausalContext(vv, self.cloud | other.cloud).compact()

    def compact(self) -> CausalContext:
        if not self.cloud:
            return self
        vv = dict(self.vv)
        remaining = set()
        # Sorted by (replica, counter): folding dot n in makes n + 1 contiguous before it is visited.
        for dot in sorted(self.cloud):
            top = vv.get(dot.replica, 0)
            if dot.counter == top + 1:
                vv[dot.replica] = dot.counter
            elif dot.counter > top:
                remaining.add(dot)
        return CausalContext(vv, frozenset(remaining))

    def dots(self) -> Iterator[Dot]:
        """Every seen dot, once (a cloud dot the vector already covers is not repeated)."""
        c = self.compact()
        for replica, top in c.vv.items():
            for counter in range(1, top + 1):
                yield Dot(replica, counter)
        yield from c.cloud

    def includes(self, other: CausalContext) -> bool:
        """Has this context seen every dot ``other`` has?"""
        for replica, top in other.vv.items():
            mine = self.vv.get(replica, 0)
            if top > mine and not all(self.contains(Dot(replica, c)) for c in range(mine + 1, top + 1)):
                return False
        return all(self.contains(dot) for dot in other.cloud)


def compare(a: CausalContext, b: CausalContext) -> Order:
    a_in_b, b_in_a = b.includes(a), a.includes(b)
    if a_in_b and b_in_a:
        return Order.EQUAL
    if a_in_b:
        return Order.BEFORE
    if b_in_a:
        return Order.AFTER
    return Order.CONCURRENT
