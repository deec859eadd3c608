"""Real-time tickets in SQL: each is used once, whichever node sees it (hub/tickets.py says why)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from storage.db import Tx

T = TypeVar("T")


class _Core(Protocol):
    async def _write(self, work: Callable[[Tx], Awaitable[T]], *, single_statement: bool = False) -> T: ...


class TicketSql:
    async def use_ticket(self: _Core, jti: str, expires_at_us: int) -> bool:
        """Record the ticket's use; False if it was used before (its row is there)."""

        async def work(tx: Tx) -> int:
            return await tx.execute(
                "INSERT INTO realtime_tickets (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
                jti,
                expires_at_us,
            )

        return await self._write(work, single_statement=True) == 1

    async def purge_tickets(self: _Core, now_us: int) -> int:
        """Forget the tickets that expired (an expired one is refused before it is looked up)."""

        async def work(tx: Tx) -> int:
            return await tx.execute("DELETE FROM realtime_tickets WHERE expires_at < $1", now_us)

        return await self._write(work, single_statement=True)
