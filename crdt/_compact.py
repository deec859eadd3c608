"""Compact, JSON-safe wire pieces shared by the document types (:mod:`crdt.cart`, :mod:`crdt.review`).

A document's encoded state starts with a **replica table**: every replica id the payload mentions,
once, in order of first use; dots then name a replica by its index in that table. An id in the
canonical form :func:`crdt.dots.new_replica_id` draws (16 lower-case hex digits, 8 bytes) is written
as its 10 characters of base85, and a table of canonical ids is one string, their concatenation. A
table holding any other id is a list with one string per id: canonical ones as above, others as
``"."`` followed by the id ("." is not a base85 character, so the forms cannot be confused).

A **causal context** is a flat list of integer pairs ``[replica index, n, ...]``: ``n > 0`` is the
version-vector entry "all of 1..n", ``n < 0`` the single cloud dot ``-n``. The dots of the entries a
payload carries are always part of its context, so writers leave them out and readers add them back
(``implied``): a one-line delta's context is then usually empty.

Readers are strict: anything out of shape raises :class:`~crdt.codec.CodecError`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Collection, Container, Iterable, Mapping, Sequence
from typing import Any, Final

from crdt.codec import CodecError
from crdt.context import CausalContext
from crdt.dots import Dot

# The largest dot counter, clock wall time or logical count a state may hold: every client language
# holds it exactly (JavaScript's Number.MAX_SAFE_INTEGER), and MessagePack encodes it either sign. A
# decoded state beyond it is refused, so a hub never stores a state it could not encode again.
MAX_COUNTER: Final = 2**53 - 1

_CANONICAL = re.compile(r"[0-9a-f]{16}")
_PACKED_LENGTH: Final = 10  # base85 of 8 bytes
_CACHE_LIMIT: Final = 4096
_packed: dict[str, str] = {}
_unpacked: dict[str, str] = {}


def pack_replica(replica: str) -> str:
    text = _packed.get(replica)
    if text is None:
        if _CANONICAL.fullmatch(replica):
            text = base64.b85encode(bytes.fromhex(replica)).decode("ascii")
        else:
            text = "." + replica
        if len(_packed) >= _CACHE_LIMIT:
            _packed.clear()
        _packed[replica] = text
    return text


def unpack_replica(text: object) -> str:
    if not isinstance(text, str):
        raise CodecError("a replica id is a string")
    replica = _unpacked.get(text)
    if replica is not None:
        return replica
    if text.startswith("."):
        replica = text[1:]
        if not replica:
            raise CodecError("empty replica id")
    elif len(text) == _PACKED_LENGTH:
        try:
            replica = base64.b85decode(text).hex()
        except (ValueError, binascii.Error) as exc:
            raise CodecError(f"bad base85 replica id {text!r}") from exc
    else:
        raise CodecError(f"bad replica id {text!r}")
    if len(_unpacked) >= _CACHE_LIMIT:
        _unpacked.clear()
    _unpacked[text] = replica
    return replica


class ReplicaTable:
    """Replica ids in order of first use, for one payload."""

    __slots__ = ("_index", "ids")

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._index: dict[str, int] = {}

    def index(self, replica: str) -> int:
        i = self._index.get(replica)
        if i is None:
            i = self._index[replica] = len(self.ids)
            self.ids.append(replica)
        return i

    def encoded(self) -> str | list[str]:
        """The table as written: one string when every id is canonical (or there is only one), else a list."""
        packed = [pack_replica(r) for r in self.ids]
        if len(packed) == 1 or not any(text.startswith(".") for text in packed):
            return "".join(packed)
        return packed


_tables: dict[str, list[str]] = {}


def decode_table(raw: object) -> list[str]:
    """The replica ids of a table. The list may be shared with other payloads' (a table read as one
    string is cached whole): callers only read it."""
    # _unpacked.get is spelled out at each call: the compiled build then looks the dict up directly.
    # An unhashable item raises TypeError, which the codec reports.
    if type(raw) is str:
        if raw.startswith(".") or len(raw) == _PACKED_LENGTH:
            ids = [_unpacked.get(raw) or unpack_replica(raw)]
        elif len(raw) % _PACKED_LENGTH == 0:  # "" included: no replica at all
            known = _tables.get(raw)
            if known is not None:
                return known
            step = _PACKED_LENGTH
            ids = [
                _unpacked.get(raw[i : i + step]) or unpack_replica(raw[i : i + step])
                for i in range(0, len(raw), step)
            ]
        else:
            raise CodecError(f"bad replica table {raw!r}")
    elif type(raw) is list:
        ids = [_unpacked.get(text) or unpack_replica(text) for text in raw]
    else:
        raise CodecError("the replica table is a string or a list")
    if len(ids) > 1:
        if len(set(ids)) != len(ids):
            raise CodecError("a replica appears twice in the replica table")
        if type(raw) is str:
            if len(_tables) >= _CACHE_LIMIT:
                _tables.clear()
            _tables[raw] = ids
    return ids


RawDot = tuple[str, int]  # (replica, counter): a dot in the hot paths, hashed by C
# The same dot, typed so that the compiled build keeps it as the tuple object it is: mypyc holds a value
# typed ``RawDot`` unboxed and builds a fresh tuple each time it becomes a dict or set key again — an
# allocation per lookup, and garbage-collector work with it. Hot loops hold dots as ``DotObject`` and
# unpack them with ``cast(RawDot, dot)`` (a check, no allocation) where they need the parts.
DotObject = Any
SHORT_RUN: Final = 8  # a vector entry this short may be left out of a payload (see encode_pairs)


def encode_pairs(
    vv: Mapping[str, int], cloud: Iterable[RawDot], table: ReplicaTable, implied: Container[RawDot] = ()
) -> list[int]:
    """A context (version vector + cloud) as flat ``[index, n, ...]`` pairs, leaving out ``implied``."""
    out: list[int] = []
    index = table.index
    for replica, top in vv.items():
        # A new replica's first writes are often all entries of the payload: nothing to write.
        if top > 0 and not (top <= SHORT_RUN and all((replica, c) in implied for c in range(1, top + 1))):
            out += (index(replica), top)
    for dot in sorted(cloud):
        if dot not in implied:
            out += (index(dot[0]), -dot[1])
    return out


def decode_pairs(raw: object, replicas: Sequence[str]) -> tuple[dict[str, int], list[DotObject]]:
    """The version vector and the cloud dots of an encoded context (not compacted)."""
    flat = need_list(raw)
    if len(flat) % 2:
        raise CodecError("a context is a flat list of (replica, n) pairs")
    vv: dict[str, int] = {}
    cloud: list[DotObject] = []
    size = len(replicas)
    for i in range(0, len(flat), 2):
        index, n = flat[i], flat[i + 1]
        if type(index) is not int or not 0 <= index < size:
            raise CodecError(f"replica index {index!r} is not in the table")
        if type(n) is not int or n == 0 or not -MAX_COUNTER <= n <= MAX_COUNTER:
            raise CodecError(f"a context entry is a non-zero integer of at most 2**53 - 1, not {n!r}")
        replica = replicas[index]
        if n > 0:
            if replica in vv:
                raise CodecError(f"replica {replica!r} appears twice in a version vector")
            vv[replica] = n
        else:
            dot: DotObject = (replica, -n)
            cloud.append(dot)
    return vv, cloud


def encode_context(ctx: CausalContext, table: ReplicaTable, implied: Collection[Dot] = ()) -> list[int]:
    raw_implied = {(d.replica, d.counter) for d in implied}
    return encode_pairs(ctx.vv, ((d.replica, d.counter) for d in ctx.cloud), table, raw_implied)


def decode_context(raw: object, replicas: Sequence[str], implied: Iterable[Dot] = ()) -> CausalContext:
    vv, cloud = decode_pairs(raw, replicas)
    dots = set(implied)
    dots.update(Dot(r, c) for r, c in cloud)
    return CausalContext(vv, frozenset(dots)).compact()


def need_int(value: object, low: int | None = None, high: int | None = None) -> int:
    if type(value) is not int:
        raise CodecError(f"expected an integer, got {type(value).__name__}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise CodecError(f"integer {value} out of range [{low}, {high}]")
    return value


def need_index(value: object, size: int) -> int:
    if type(value) is not int or not 0 <= value < size:
        raise CodecError(f"replica index {value!r} is not in the table")
    return value


def need_str(value: object, max_length: int, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise CodecError(f"expected a string, got {type(value).__name__}")
    if len(value) > max_length or (not value and not allow_empty):
        raise CodecError(f"string of length {len(value)} out of bounds")
    return value


def need_list(value: object, length: int | None = None) -> list[Any]:
    if not isinstance(value, list):
        raise CodecError(f"expected a list, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise CodecError(f"expected {length} items, got {len(value)}")
    return value
