"""A hybrid logical clock: timestamps that follow physical time but never run backwards, used to pick
the winner between concurrent writes.

A timestamp is ``(wall_ms, logical, replica)`` and timestamps are totally ordered in that order, so
every replica picks the same winner; a tie on time is broken by replica id.

Clocks of phones are not trusted: :meth:`HybridClock.observe` clamps a remote timestamp whose wall
time is more than ``max_drift_ms`` ahead of the local physical clock to that bound, so one device with
its clock set to 2099 cannot win every conflict forever. (The clamped timestamp orders the write; the
write itself is kept.)

The physical time source is injected: this package does no I/O and reads no clock of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_MAX_DRIFT_MS = 60_000


@dataclass(frozen=True, slots=True, order=True)
class Timestamp:
    wall_ms: int
    logical: int
    replica: str


class HybridClock:
    def __init__(
        self, replica: str, physical_ms: Callable[[], int], *, max_drift_ms: int = DEFAULT_MAX_DRIFT_MS
    ) -> None:
        self.replica = replica
        self._physical_ms = physical_ms
        self.max_drift_ms = max_drift_ms
        self.last = Timestamp(0, 0, replica)

    def now(self) -> Timestamp:
        """A timestamp for a local write, later than every timestamp this clock issued or observed."""
        wall = max(self._physical_ms(), self.last.wall_ms)
        logical = self.last.logical + 1 if wall == self.last.wall_ms else 0
        self.last = Timestamp(wall, logical, self.replica)
        return self.last

    def clamp(self, remote: Timestamp) -> Timestamp:
        bound = self._physical_ms() + self.max_drift_ms
        if remote.wall_ms <= bound:
            return remote
        return Timestamp(bound, remote.logical, remote.replica)

    def observe(self, remote: Timestamp) -> Timestamp:
        """Take a received timestamp into account (after clamping it); return the clamped one."""
        remote = self.clamp(remote)
        if (remote.wall_ms, remote.logical) > (self.last.wall_ms, self.last.logical):
            self.last = Timestamp(remote.wall_ms, remote.logical, self.replica)
        return remote
