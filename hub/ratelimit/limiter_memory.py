"""The in-process rate limiter: each node counts for itself (the default, with no --redis-url).

Keys live in one dict, their TATs as values. Every 8th check also looks at the 16 entries at the
front of the dict: one whose bucket is full again (its TAT has passed) is dropped — forgetting it
changes no decision — and one still counting goes to the back. So the dict is swept continuously, two
entries a check on average, and holds about the keys counted within the longest policy's window. ``max_keys``
bounds it outright: past it the front entry goes even if still counting (that key may then burst
once more; a flood of distinct keys cannot grow memory). The clock is ``time.monotonic_ns``, so a
wall-clock step changes nothing.
"""

from __future__ import annotations

from time import monotonic_ns

from hub.ratelimit.limiter import Decision, RatePolicy, gcra

DEFAULT_MAX_KEYS = 1_000_000  # ~150 bytes each
_SWEEP_EVERY = 8  # checks (a power of two: the test is a mask)
_SWEEP_SIZE = 16  # entries looked at by each sweep: two a check on average


class MemoryRateLimiter:
    def __init__(self, *, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._max_keys = max_keys
        self._tats: dict[str, int] = {}
        self._checks = 0

    def __len__(self) -> int:
        """Keys held."""
        return len(self._tats)

    async def check(self, key: str, policy: RatePolicy) -> Decision:
        return self.check_now(key, policy)

    def admit(self, key: str, policy: RatePolicy) -> tuple[int, int] | None:
        """An allowed check's outcome without a :class:`Decision`: ``(remaining, next_us)`` — requests
        left, and µs until that grows by one — or None when refused, with nothing changed (then
        :meth:`check_now` says why and when). The same arithmetic as :func:`gcra`, inlined: this is
        every limited request's path, and two calls and a tuple fewer are a third of its cost."""
        tats = self._tats
        now = monotonic_ns() // 1000
        interval = policy.interval_us
        tat = tats.get(key)
        if tat is None or tat < now:
            tat = now
        new_tat = tat + interval
        allow_at = new_tat - policy.burst * interval
        if now < allow_at:
            return None
        tats[key] = new_tat
        if len(tats) > self._max_keys:
            del tats[next(iter(tats))]
        self._checks = checks = self._checks + 1
        if not checks & (_SWEEP_EVERY - 1):
            self._sweep(tats, now)
        return (now - allow_at) // interval, (new_tat - now) % interval or interval

    def check_now(self, key: str, policy: RatePolicy) -> Decision:
        """:meth:`check`, synchronously (it never waits)."""
        tats = self._tats
        now = monotonic_ns() // 1000
        decision, new_tat = gcra(tats.get(key), now, policy.interval_us, policy.burst)
        if new_tat is not None:
            tats[key] = new_tat
            if len(tats) > self._max_keys:  # one key added at most: one to forget
                del tats[next(iter(tats))]
        self._checks = checks = self._checks + 1
        if not checks & (_SWEEP_EVERY - 1):
            self._sweep(tats, now)
        return decision

    def _sweep(self, tats: dict[str, int], now: int) -> None:
        for _ in range(_SWEEP_SIZE):
            front = next(iter(tats), None)
            if front is None:
                return
            tat = tats.pop(front)
            if tat > now:
                tats[front] = tat  # still counting: to the back

    async def close(self) -> None:
        self._tats.clear()
