"""Replica ids and dots: the identity of every write.

A **replica** is one copy of a document that accepts writes: an app install on a phone, a browser
profile, a server process. Its id is drawn at random once (:func:`new_replica_id`) and never reused —
not after a reinstall, not after restoring a backup, not for a second document store on the same
device. A reused id makes two replicas mint the same dots for different writes, and merges then
silently drop one of them (Riak's "doomstone" bug).

A **dot** ``(replica, counter)`` names one write: the replica's n-th event. Counters start at 1.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import NewType

ReplicaId = NewType("ReplicaId", str)


def new_replica_id() -> ReplicaId:
    """128 random bits, hex: collisions are not a practical concern; reuse is (see the module doc)."""
    return ReplicaId(secrets.token_hex(16))


@dataclass(frozen=True, slots=True, order=True)
class Dot:
    replica: str
    counter: int

    def __post_init__(self) -> None:
        if self.counter < 1:
            raise ValueError(f"dot counters start at 1, not {self.counter}")
