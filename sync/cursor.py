"""Positions on the wire: ``"{epoch}:{offset}"``, e.g. ``"9f3a1c2b:1042"``.

The same text is the WebSocket ``position``, the SSE ``id:`` and the long-poll ``cursor``.
"""

from __future__ import annotations

import re

from sync.broker import Position

_CURSOR = re.compile(r"([A-Za-z0-9_\-]{1,64}):(0|[1-9][0-9]{0,17})")


class CursorError(ValueError):
    pass


def format_position(position: Position) -> str:
    return f"{position.epoch}:{position.offset}"


def parse_position(text: str) -> Position:
    match = _CURSOR.fullmatch(text)
    if match is None:
        raise CursorError("a position is '<epoch>:<offset>', as the hub sent it")
    return Position(match.group(1), int(match.group(2)))
