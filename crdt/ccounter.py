"""Causal counter (CCounter): a counter that goes up and down and can be reset, and can be nested
in an :class:`~crdt.ormap.ORMap` (the PN-Counter cannot: it has no dots, so a map could not remove it).

State model (a causal CRDT, see :mod:`crdt.causal`): a dot function dot → integer, at most one dot
per replica in practice, holding that replica's running contribution; and a causal context. The
value is the sum of the live contributions.

Mutators: ``inc``/``dec`` on replica ``r`` mint a new dot holding ``r``'s contribution plus or minus
``n`` and drop ``r``'s old dot; ``reset`` drops every dot it has seen (the value it saw goes to 0).

Merge (least upper bound): a dot survives unless the other side has seen it and dropped it (it was
replaced by a newer contribution of its replica, or reset); contexts join by union.

Who wins: increments and decrements never conflict — each replica's latest contribution counts once.
A reset and a concurrent update: the update survives, and because it carries its replica's whole
contribution (not just the step), that replica's pre-reset amount survives with it (see below).

Deltas: ``inc``/``dec`` — the new dot, read against a context of it and the replaced dot; ``reset``
— no dots, a context of the dots it drops. Neither grows with the number of replicas.

Worked example::

    >>> likes = CCounter.new()
    >>> likes.apply(likes.inc("a", 5))
    >>> other = likes.merge(CCounter.new())
    >>> d_reset = other.reset("b")
    >>> d_inc = likes.inc("a")          # concurrent with the reset
    >>> likes.apply(d_reset); likes.apply(d_inc)
    >>> likes.value()                   # 6, not 1: "a"'s 5 came back with its increment
    6

Known anomaly (the one above): reset is observed-remove over *contributions*, and a contribution is
a running total, so a reset concurrent with an update on replica ``r`` undoes nothing of ``r``'s.
Keeping one dot per increment would make reset exact at the price of a state that grows with every
increment; this type keeps the state small instead (as Baquero's delta-enabled CCounter does). A
sequential reset — one that has seen the updates — is exact. There is no floor: concurrent
decrements go below any bound the application has in mind.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Self

from crdt import codec
from crdt.causal import Causal, join_dotfuns, nestable
from crdt.context import CausalContext
from crdt.dots import Dot
from crdt.wire import (
    INT64_MAX,
    INT64_MIN,
    check_replica,
    decode_dot,
    encode_dot,
    expect_int,
    expect_list,
    fail,
)

Store = Mapping[Dot, int]


def _positive(n: Any) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"the amount is a positive integer, not {n!r}")
    return n


class CCounter(Causal[Store]):
    __slots__ = ()

    @classmethod
    def bottom_store(cls) -> Store:
        return {}

    @classmethod
    def join_stores(cls, a: Store, ca: CausalContext, b: Store, cb: CausalContext) -> Store:
        return join_dotfuns(a, ca, b, cb, max)

    @classmethod
    def store_dots(cls, store: Store) -> Iterator[Dot]:
        return iter(store)

    @classmethod
    def encode_store(cls, store: Store) -> list[Any]:
        return [[encode_dot(d), store[d]] for d in sorted(store)]

    @classmethod
    def decode_store(cls, raw: Any) -> Store:
        store: dict[Dot, int] = {}
        for item in expect_list(raw, "CCounter entries"):
            dot_raw, amount = expect_list(item, "CCounter entry", 2)
            dot = decode_dot(dot_raw, "CCounter dot")
            if dot in store:
                fail(f"CCounter: the dot {dot.replica}:{dot.counter} occurs twice")
            store[dot] = expect_int(amount, "CCounter contribution")
        return store

    def value(self) -> int:
        return sum(self._store.values())

    def _step(self, replica: str, n: int) -> Self:
        check_replica(replica)
        old = [d for d in self._store if d.replica == replica]
        total = sum(self._store[d] for d in old) + n
        if not INT64_MIN <= total <= INT64_MAX:
            raise ValueError("the contribution would overflow 64 bits")
        dot = self._next_dot(replica)
        return self._delta({dot: total}, [dot, *old])

    def inc(self, replica: str, n: int = 1) -> Self:
        """Add ``n`` ≥ 1 on ``replica``."""
        return self._step(replica, _positive(n))

    def dec(self, replica: str, n: int = 1) -> Self:
        """Subtract ``n`` ≥ 1 on ``replica``."""
        return self._step(replica, -_positive(n))

    def reset(self, replica: str) -> Self:
        """Back to 0, as far as this replica has seen (see the anomaly in the module doc)."""
        check_replica(replica)
        return self._delta({}, self._store)


codec.register(CCounter, "cc", 1, CCounter.encode, CCounter.decode)
nestable(CCounter)
