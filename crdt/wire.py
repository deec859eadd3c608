"""Shared pieces of the CRDT wire format: dots, causal contexts, timestamps and application values,
to JSON-safe structures (lists, dicts with string keys, str, int, bool, None) and back.

Every ``decode_*`` checks the shape of what it is given and raises :class:`~crdt.codec.CodecError`
with a message naming what was wrong; it never repairs or guesses. The ``expect_*`` helpers are the
building blocks for a type's own decoder. Formats (all version 1 of the types that use them):

* dot: ``[replica, counter]`` — a non-empty string and an integer ≥ 1;
* dot list: ``[[replica, counter], ...]`` sorted, without duplicates;
* causal context: ``{"vv": {replica: counter ≥ 1, ...}, "cloud": [dot, ...]}``, written compacted
  (a cloud dot that the vector covers is accepted on reading and folded in);
* timestamp: ``[wall_ms, logical, replica]``;
* application value (registers): ``None``, ``bool``, ``int`` (64-bit), ``str``, ``list`` and ``dict``
  with string keys, nested at most :data:`MAX_DEPTH` deep — no floats (NaN breaks equality, and
  money is not a float), no tuples, no bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, NoReturn

from crdt.codec import CodecError
from crdt.context import CausalContext
from crdt.dots import Dot
from crdt.hlc import Timestamp

UINT64_MAX = 2**64 - 1
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_DEPTH = 32

# ---------------------------------------------------------------------------------- shape checks


def fail(message: str) -> NoReturn:
    raise CodecError(message)


def expect_dict(raw: Any, what: str, keys: Iterable[str] | None = None) -> dict[str, Any]:
    """``raw`` is a dict with string keys (exactly ``keys``, when given)."""
    if not isinstance(raw, dict):
        fail(f"{what}: expected a map, got {type(raw).__name__}")
    if not all(isinstance(k, str) for k in raw):
        fail(f"{what}: map keys must be strings")
    if keys is not None:
        wanted = set(keys)
        if set(raw) != wanted:
            fail(f"{what}: expected the keys {sorted(wanted)}, got {sorted(raw)}")
    return raw


def expect_list(raw: Any, what: str, length: int | None = None) -> list[Any]:
    if not isinstance(raw, list):
        fail(f"{what}: expected a list, got {type(raw).__name__}")
    if length is not None and len(raw) != length:
        fail(f"{what}: expected {length} items, got {len(raw)}")
    return raw


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: JSON can carry it, MessagePack cannot
        return False
    return True


def expect_str(raw: Any, what: str, *, nonempty: bool = True) -> str:
    if not isinstance(raw, str):
        fail(f"{what}: expected a string, got {type(raw).__name__}")
    if nonempty and not raw:
        fail(f"{what}: must not be empty")
    if not _is_utf8(raw):
        fail(f"{what}: not valid Unicode text")
    return raw


def expect_int(raw: Any, what: str, lo: int = INT64_MIN, hi: int = INT64_MAX) -> int:
    # bool is an int in Python; on the wire it is not.
    if not isinstance(raw, int) or isinstance(raw, bool):
        fail(f"{what}: expected an integer, got {type(raw).__name__}")
    if not lo <= raw <= hi:
        fail(f"{what}: {raw} is outside [{lo}, {hi}]")
    return raw


def same_type(state: object, other: object) -> None:
    """For merge/apply: both sides are the same CRDT type (TypeError otherwise)."""
    if type(other) is not type(state):
        raise TypeError(f"cannot merge {type(other).__name__} into {type(state).__name__}")


def check_replica(replica: Any) -> str:
    """For mutators: a replica id is a non-empty string (ValueError otherwise)."""
    if not isinstance(replica, str) or not replica or not _is_utf8(replica):
        raise ValueError(f"a replica id is a non-empty string, not {replica!r}")
    return replica


def check_own_timestamp(ts: Any, replica: str) -> Timestamp:
    """For mutators: ``ts`` comes from ``replica``'s own clock (ValueError otherwise)."""
    if (
        not isinstance(ts, Timestamp)
        or type(ts.wall_ms) is not int
        or type(ts.logical) is not int
        or ts.wall_ms < 0
        or ts.logical < 0
        or ts.replica != replica
    ):
        raise ValueError(f"not a timestamp of replica {replica!r}'s own clock: {ts!r}")
    return ts


# ------------------------------------------------------------------------------ dots, contexts


def encode_dot(dot: Dot) -> list[Any]:
    return [dot.replica, dot.counter]


def decode_dot(raw: Any, what: str = "dot") -> Dot:
    pair = expect_list(raw, what, 2)
    return Dot(expect_str(pair[0], f"{what} replica"), expect_int(pair[1], f"{what} counter", 1, UINT64_MAX))


def encode_dots(dots: Iterable[Dot]) -> list[list[Any]]:
    return [encode_dot(d) for d in sorted(dots)]


def decode_dots(raw: Any, what: str = "dots") -> frozenset[Dot]:
    """A list of dots; a dot listed twice is an error."""
    items = expect_list(raw, what)
    dots = frozenset(decode_dot(item, f"{what} item") for item in items)
    if len(dots) != len(items):
        fail(f"{what}: a dot is listed twice")
    return dots


def encode_context(context: CausalContext) -> dict[str, Any]:
    c = context.compact()
    return {
        "vv": {replica: top for replica, top in sorted(c.vv.items()) if top > 0},
        "cloud": encode_dots(c.cloud),
    }


def decode_context(raw: Any, what: str = "context") -> CausalContext:
    body = expect_dict(raw, what, ("vv", "cloud"))
    vv_raw = expect_dict(body["vv"], f"{what} vv")
    vv = {
        expect_str(replica, f"{what} vv replica"): expect_int(top, f"{what} vv counter", 1, UINT64_MAX)
        for replica, top in vv_raw.items()
    }
    return CausalContext(vv, decode_dots(body["cloud"], f"{what} cloud")).compact()


# -------------------------------------------------------------------------------- timestamps


def encode_timestamp(ts: Timestamp) -> list[Any]:
    return [ts.wall_ms, ts.logical, ts.replica]


def decode_timestamp(raw: Any, what: str = "timestamp") -> Timestamp:
    wall, logical, replica = expect_list(raw, what, 3)
    return Timestamp(
        expect_int(wall, f"{what} wall_ms", 0, UINT64_MAX),
        expect_int(logical, f"{what} logical", 0, UINT64_MAX),
        expect_str(replica, f"{what} replica"),
    )


def check_timestamp(ts: Any, replica: str) -> Timestamp:
    """For mutators: ``ts`` is a Timestamp issued by ``replica`` (its writer) — ValueError otherwise."""
    if not isinstance(ts, Timestamp):
        raise ValueError(f"expected a Timestamp, got {type(ts).__name__}")
    if ts.replica != replica:
        raise ValueError(f"the timestamp is {ts.replica!r}'s, the writer is {replica!r}")
    for part in (ts.wall_ms, ts.logical):
        if not isinstance(part, int) or isinstance(part, bool) or not 0 <= part <= UINT64_MAX:
            raise ValueError(f"timestamp parts are integers in [0, 2**64), not {part!r}")
    return ts


# ---------------------------------------------------------------------------- application values


def _copy_value(raw: Any, depth: int, where: str) -> Any:
    if raw is None or isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        if not _is_utf8(raw):
            raise ValueError(f"{where}: not valid Unicode text")
        return raw
    if isinstance(raw, int):
        if not INT64_MIN <= raw <= INT64_MAX:
            raise ValueError(f"{where}: the integer {raw} does not fit 64 bits")
        return raw
    if depth >= MAX_DEPTH:
        raise ValueError(f"{where}: nested more than {MAX_DEPTH} deep")
    if isinstance(raw, list):
        return [_copy_value(item, depth + 1, where) for item in raw]
    if isinstance(raw, dict):
        if not all(isinstance(k, str) and _is_utf8(k) for k in raw):
            raise ValueError(f"{where}: map keys must be strings")
        return {k: _copy_value(v, depth + 1, where) for k, v in raw.items()}
    raise ValueError(
        f"{where}: {type(raw).__name__} is not a JSON-safe value (null, bool, int, str, list, map)"
    )


def check_value(value: Any) -> Any:
    """For mutators: a private copy of a JSON-safe application value (ValueError if it is not one)."""
    return _copy_value(value, 0, "value")


def decode_value(raw: Any, what: str = "value") -> Any:
    try:
        return _copy_value(raw, 0, what)
    except ValueError as exc:
        raise CodecError(str(exc)) from exc


def canonical(value: Any) -> str:
    """A string that is equal exactly when two JSON-safe values are (``True`` is not ``1``).

    Used to compare register values structurally and to break ties between them deterministically."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
