"""Pure CRDT data types for offline carts and reviews: no I/O, usable by the hub and client SDKs.

Importing the package registers every type below with :mod:`crdt.codec`, so that ``codec.from_dict``
and ``codec.from_msgpack`` know them all.
"""

from crdt.base import Crdt
from crdt.cart import Cart
from crdt.ccounter import CCounter
from crdt.flags import DWFlag, EWFlag
from crdt.gcounter import GCounter
from crdt.lww_register import LWWRegister
from crdt.mv_register import MVRegister
from crdt.ormap import ORMap
from crdt.orset import AWORSet
from crdt.pncounter import PNCounter
from crdt.review import Review

__all__ = [
    "AWORSet",
    "CCounter",
    "Cart",
    "DWFlag",
    "EWFlag",
    "GCounter",
    "LWWRegister",
    "MVRegister",
    "ORMap",
    "PNCounter",
    "Review",
]

# Checked by mypy: every type has the interface of crdt.base.Crdt.
TYPES: tuple[type[Crdt], ...] = (
    AWORSet,
    CCounter,
    Cart,
    DWFlag,
    EWFlag,
    GCounter,
    LWWRegister,
    MVRegister,
    ORMap,
    PNCounter,
    Review,
)
