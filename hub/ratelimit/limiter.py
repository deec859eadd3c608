"""The rate limiter seam: a :class:`RatePolicy`, the :class:`Decision` a check returns, and the
:class:`RateLimiter` protocol with its guarantees.

The algorithm is GCRA (the generic cell rate algorithm: a token bucket kept as one number). A policy
admits ``burst`` requests at once and then one every ``interval`` (= period / rate). A key's state
is its *theoretical arrival time* (TAT): when its bucket will be full again. A request at ``now``
is allowed when ``max(TAT, now) + interval - burst * interval <= now``, and then moves the TAT on by
one interval. So:

* a key never seen (or idle for long enough) admits exactly ``burst`` requests at once;
* after that, exactly one per ``interval``: over any span ``d`` at most ``burst + d / interval``;
* a refused request changes nothing, and says when the next one would pass (``retry_after``).

Times are integer microseconds, so that ``burst`` back-to-back requests are exactly ``burst`` (float
sums of intervals would let rounding refuse the last one, or admit one more).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

_US = 1_000_000
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600}
_POLICY = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*(?::\s*(\d+)\s*)?$")


class RateLimiterUnavailable(Exception):
    """The limiter could not decide (its Redis is unreachable or failing): the caller lets the request
    through or refuses it, by its setting (``rate_limit_fail_open``)."""


@dataclass(frozen=True, slots=True)
class RatePolicy:
    """``rate`` requests per ``period`` seconds, ``burst`` of them at once."""

    rate: int
    period: float
    burst: int
    # Microseconds between two requests once the burst is spent (computed once: read per check).
    interval_us: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.rate < 1 or self.period <= 0 or self.burst < 1:
            raise ValueError("a rate policy needs rate >= 1, period > 0 and burst >= 1")
        object.__setattr__(self, "interval_us", max(1, round(self.period * _US / self.rate)))

    @property
    def window_seconds(self) -> int:
        """Seconds an idle key takes to get its whole burst back (RateLimit-Policy's ``w``)."""
        return max(1, math.ceil(self.burst * self.interval_us / _US))

    def __str__(self) -> str:
        """The policy as :meth:`parse` reads it: ``50/s:100``, ``1/min:5``."""
        for unit, seconds in (("h", 3600), ("min", 60), ("s", 1)):
            if self.period % seconds == 0:
                count = int(self.period // seconds)
                return f"{self.rate}/{'' if count == 1 else count}{unit}:{self.burst}"
        return f"{self.rate}/{self.period:g}s:{self.burst}"

    @classmethod
    def parse(cls, text: str) -> RatePolicy:
        """``"RATE/PERIOD[:BURST]"``: ``50/s:100``, ``1/min:5``, ``300/5min``, ``1000/h`` (units s, min,
        h; the burst defaults to the rate)."""
        match = _POLICY.match(text.lower())
        unit = _UNITS.get(match.group(3)) if match else None
        if match is None or unit is None:
            raise ValueError(f"expected RATE/PERIOD[:BURST] such as 50/s:100 or 1/min:5, not {text!r}")
        rate = int(match.group(1))
        period = int(match.group(2) or 1) * unit
        burst = int(match.group(4)) if match.group(4) else rate
        return cls(rate, float(period), burst)


def parse_optional_policy(text: str) -> RatePolicy | None:
    """A policy, or None for ``off`` (no limit)."""
    return None if text.strip().lower() in ("off", "none", "0") else RatePolicy.parse(text)


class Decision(NamedTuple):
    """What a check decided. Durations are in seconds. (A tuple: made on every request, and a frozen
    dataclass costs three times as much to make.)

    ``remaining``: requests that would pass right now after this one (0 when refused).
    ``reset_after``: until the key's whole burst is back.
    ``retry_after``: refused: until a request would pass; allowed: 0.
    ``next_after``: until ``remaining`` grows by one (refused: ``retry_after``) — RateLimit's ``t``,
    the time within which no more than ``remaining`` requests would pass.
    """

    allowed: bool
    remaining: int
    reset_after: float
    retry_after: float
    next_after: float


# Decision(...) runs a NamedTuple's __new__, Python code; the tuple's own constructor does the same
# without it (every limited request makes one).
_decision = tuple.__new__


def gcra(tat_us: int | None, now_us: int, interval_us: int, burst: int) -> tuple[Decision, int | None]:
    """One request of a key whose TAT is ``tat_us`` (None: a fresh key) at ``now_us``: the decision,
    and the key's new TAT (None: unchanged, i.e. refused). hub/lua/gcra.lua is the same arithmetic."""
    tat = now_us if tat_us is None or tat_us < now_us else tat_us
    new_tat = tat + interval_us
    allow_at = new_tat - burst * interval_us
    if now_us < allow_at:
        wait = (allow_at - now_us) / _US
        return Decision(False, 0, (tat - now_us) / _US, wait, wait), None
    return decision_of(1, (now_us - allow_at) // interval_us, new_tat - now_us, 0, interval_us), new_tat


def decision_of(allowed: int, remaining: int, reset_us: int, retry_us: int, interval_us: int) -> Decision:
    """A decision from the integers both implementations compute (the Lua script returns these)."""
    if not allowed:
        return Decision(False, 0, reset_us / _US, retry_us / _US, retry_us / _US)
    # The TAT is ``reset_us`` away; the oldest request in it frees its cell first.
    next_us = reset_us % interval_us or interval_us
    return _decision(Decision, (True, remaining, reset_us / _US, 0.0, next_us / _US))


class RateLimiter(Protocol):
    """Admits or refuses one request of a key under a policy (GCRA, see the module docstring).

    Guarantees, for one key and policy: a fresh key admits exactly ``policy.burst`` requests at once;
    then one per ``policy.interval_us``; a refused request costs nothing and its ``retry_after`` is
    when the next one would pass (to the microsecond on the limiter's clock); keys are independent.
    A key is meant for one policy (callers name the policy's class in the key): its state is the
    key's, whatever policy the next check names.
    Checks of one key from many tasks (or, for a shared limiter, many nodes) are atomic: each sees the
    state the previous one left. A key's state outlives its burst window by nothing: an idle key is
    forgotten once it would be full again, so memory (or Redis keys) track active keys only.
    """

    async def check(self, key: str, policy: RatePolicy) -> Decision:
        """Count one request of ``key``. Raises :class:`RateLimiterUnavailable` if it cannot decide."""
        ...

    async def close(self) -> None:
        """Release what the limiter holds (connections); no check follows."""
        ...
