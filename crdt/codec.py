"""Versioned encoding of CRDT states and deltas, to JSON-safe dicts and to MessagePack.

Every encoded value carries its type tag, its format version and its state: as a JSON-safe dict
``{"t": <type tag>, "v": <version>, "s": <state>}``, and in MessagePack as the array ``[tag, version,
state]`` (the keys would be 6 of the ~40 bytes of a one-line delta). A type registers one
``(encode, decode)`` pair per version it can read; it writes its newest version. An unknown tag, an
unknown version or a payload that does not have the expected shape raises :class:`CodecError` — the
codec never guesses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack


class CodecError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class _Entry:
    cls: type
    version: int
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


_BY_TAG: dict[tuple[str, int], _Entry] = {}
_CURRENT: dict[type, _Entry] = {}


def register(
    cls: type, tag: str, version: int, encode: Callable[[Any], Any], decode: Callable[[Any], Any]
) -> None:
    """Teach the codec a type's state format ``version``; the highest registered version is written."""
    entry = _Entry(cls, version, encode, decode)
    _BY_TAG[(tag, version)] = entry
    current = _CURRENT.get(cls)
    if current is None or version > current.version:
        _CURRENT[cls] = entry
    cls.TYPE_TAG = tag  # type: ignore[attr-defined]


def to_dict(value: Any) -> dict[str, Any]:
    entry = _CURRENT.get(type(value))
    if entry is None:
        raise CodecError(f"no codec for {type(value).__name__}")
    return {"t": value.TYPE_TAG, "v": entry.version, "s": entry.encode(value)}


def from_dict(payload: Any) -> Any:
    if (
        type(payload) is not dict
        or len(payload) != 3
        or not ("t" in payload and "v" in payload and "s" in payload)
    ):
        raise CodecError('an encoded CRDT is {"t": tag, "v": version, "s": state}')
    return _decode(payload["t"], payload["v"], payload["s"])


def _decode(tag: Any, version: Any, state: Any) -> Any:
    if type(tag) is not str or type(version) is not int:
        raise CodecError("the type tag is a string and the version an integer")
    entry = _BY_TAG.get((tag, version))
    if entry is None:
        raise CodecError(f"unknown type {tag!r} version {version}")
    try:
        return entry.decode(state)
    except CodecError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise CodecError(f"malformed {tag} v{version} state: {exc}") from exc


def to_msgpack(value: Any) -> bytes:
    entry = _CURRENT.get(type(value))
    if entry is None:
        raise CodecError(f"no codec for {type(value).__name__}")
    try:
        packed: bytes = msgpack.packb([value.TYPE_TAG, entry.version, entry.encode(value)], use_bin_type=True)
    except (OverflowError, TypeError, ValueError) as exc:  # e.g. an integer beyond 64 bits
        raise CodecError(f"cannot encode {type(value).__name__} as MessagePack: {exc}") from exc
    return packed


def from_msgpack(data: object) -> Any:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"MessagePack comes as bytes, not {type(data).__name__}")
    try:
        payload = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        # TypeError: a map keyed by a list or a map (unhashable in Python).
        raise CodecError(f"not MessagePack: {exc}") from exc
    if type(payload) is not list or len(payload) != 3:
        raise CodecError("an encoded CRDT is the MessagePack array [tag, version, state]")
    return _decode(payload[0], payload[1], payload[2])
