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
    """64 random bits, as 16 hex digits: reuse is the real danger (see the module doc), not chance.

    Two ids only collide harmfully when both replicas write to the same document; a document sees a
    handful of devices, so the chance is about k²/2⁶⁵ per document (k = its replicas): ~3·10⁻¹⁸ for
    k = 10. Yjs draws 32 to 53 bits for the same job. 64 bits keep every delta's replica table short
    (10 characters of base85 per id, see :mod:`crdt._compact`)."""
    return ReplicaId(secrets.token_hex(8))


@dataclass(frozen=True, slots=True, order=True)
class Dot:
    replica: str
    counter: int

    def __post_init__(self) -> None:
        if self.counter < 1:
            raise ValueError(f"dot counters start at 1, not {self.counter}")
