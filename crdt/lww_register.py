"""Last-writer-wins register: one value, the one with the latest timestamp.

State model: nothing (never written), or a value and the :class:`~crdt.hlc.Timestamp` of its write.
Values are JSON-safe (see :mod:`crdt.wire`).

Merge (least upper bound): keep the side with the greater timestamp. Timestamps are totally ordered
by ``(wall_ms, logical, replica)``, so two writes at the same hybrid time are ordered by replica id,
and every replica picks the same winner. Should two different values ever carry the very same
timestamp (only a reused replica id or a clock handed out twice can do that), the greater canonical
JSON form wins, so that the merge stays commutative rather than depending on arrival order.

Who wins: of two concurrent writes, the later timestamp; on a tie of time, the greater replica id.
A write whose timestamp is not later than the current one loses on the spot — a writer should take
its timestamp from a :class:`~crdt.hlc.HybridClock` that has observed the register's timestamp.

Delta: ``write`` returns the register holding just the new value and timestamp.

Worked example::

    >>> from crdt.hlc import Timestamp
    >>> a, b = LWWRegister.new(), LWWRegister.new()
    >>> da = a.write("a", "blue", Timestamp(1000, 0, "a"))
    >>> db = b.write("b", "red", Timestamp(1000, 0, "b"))   # same time: "b" > "a" breaks the tie
    >>> a.apply(da); a.apply(db); b.apply(db); b.apply(da)
    >>> a.value(), a == b
    ('red', True)

Known anomalies: concurrent writes are lost silently, all but one (use
:class:`~crdt.mv_register.MVRegister` to see the conflict); a replica whose clock runs ahead wins
every conflict until the others catch up (:class:`~crdt.hlc.HybridClock` bounds how far ahead a clock
can pull the others, but the register compares stored timestamps as they are — clamping them on
receipt, differently on each replica, would break convergence); and the value carries no causality:
a write made after seeing the current value can still lose to it if its clock is behind.
"""

from __future__ import annotations

from typing import Any, Self

from crdt import codec
from crdt.hlc import Timestamp
from crdt.wire import (
    canonical,
    check_replica,
    check_timestamp,
    check_value,
    decode_timestamp,
    decode_value,
    encode_timestamp,
    expect_dict,
    same_type,
)


class LWWRegister:
    TYPE_TAG: str  # set by codec.register
    __slots__ = ("_ts", "_value")

    def __init__(self, value: Any = None, ts: Timestamp | None = None) -> None:
        self._value = value if ts is not None else None
        self._ts = ts

    @classmethod
    def new(cls) -> Self:
        return cls()

    def value(self) -> Any:
        """The current value (``None`` if never written)."""
        return self._value

    @property
    def timestamp(self) -> Timestamp | None:
        return self._ts

    def _key(self) -> tuple[Timestamp, str] | None:
        return None if self._ts is None else (self._ts, canonical(self._value))

    def write(self, replica: str, value: Any, ts: Timestamp) -> Self:
        """Set ``value``, written by ``replica`` at ``ts`` (a timestamp of ``replica``'s clock)."""
        check_replica(replica)
        return type(self)(check_value(value), check_timestamp(ts, replica))

    def _join(self, other: LWWRegister) -> tuple[Any, Timestamp | None]:
        mine, theirs = self._key(), other._key()
        if theirs is not None and (mine is None or theirs > mine):
            return other._value, other._ts
        return self._value, self._ts

    def merge(self, other: Self) -> Self:
        same_type(self, other)
        return type(self)(*self._join(other))

    def apply(self, delta: Self) -> None:
        same_type(self, delta)
        self._value, self._ts = self._join(delta)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LWWRegister) or type(other) is not type(self):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._value!r}, {self._ts!r})"

    def encode(self) -> dict[str, Any] | None:
        if self._ts is None:
            return None
        return {"val": self._value, "ts": encode_timestamp(self._ts)}

    @classmethod
    def decode(cls, raw: Any) -> Self:
        if raw is None:
            return cls()
        body = expect_dict(raw, cls.__name__, ("val", "ts"))
        return cls(decode_value(body["val"], f"{cls.__name__} value"), decode_timestamp(body["ts"]))


codec.register(LWWRegister, "lww", 1, LWWRegister.encode, LWWRegister.decode)
