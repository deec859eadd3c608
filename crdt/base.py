"""The interface every CRDT in this package has, and the laws it obeys.

Every type ``T`` offers:

* ``T.new()`` — the bottom element (an empty state);
* ``value()`` — what the application reads;
* mutators that take the replica id (and, where writes compete, a :class:`~crdt.hlc.Timestamp`) and
  return a **delta**: a small state of the same type holding just that write; the mutator does not
  change the state it was called on;
* ``merge(other)`` — the least upper bound, returning a new state; ``apply(delta)`` merges in place
  (the same join, without the copy) and is how a replica takes in deltas, its own and others'.

Laws (``tests/test_crdt_laws.py`` checks them with hypothesis on every type, through the codec):
merge is idempotent (a ⊔ a = a), commutative (a ⊔ b = b ⊔ a) and associative; states only grow
(a ⊑ a ⊔ b); and a ⊔ delta(a) equals the state the mutation describes. Equality is structural: two
states are equal when their full states are, not when their values happen to be.
"""

from __future__ import annotations

from typing import Any, Protocol, Self


class Crdt(Protocol):
    TYPE_TAG: str  # the codec's name for the type

    @classmethod
    def new(cls) -> Self: ...
    def value(self) -> Any: ...
    def merge(self, other: Self) -> Self: ...
    def apply(self, delta: Self) -> None: ...
    def __eq__(self, other: object) -> bool: ...
