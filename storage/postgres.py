"""PostgreSQL through an asyncpg pool: the production store.

READ COMMITTED isolation is enough for every rule in :mod:`storage.base`: stock changes are single
conditional UPDATEs, which PostgreSQL re-checks against the newest row version after waiting for a
row lock. Deadlocks (two reservations locking the same stock rows in opposite orders) and
serialization failures are retried by :meth:`PostgresDatabase.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg

from storage.db import Row
from storage.errors import Conflict, StoreError, StoreUnavailable
from storage.models import IdempotentResult, ReservationLineRequest, ReservationOutcome
from storage.pg_reserve import ReservationBatcher
from storage.reservation_caps import ReservationCaps
from storage.sql import SqlStore, now_us
from storage.streams import user_stream

T = TypeVar("T")
_RETRIES = 8
_MIGRATION_LOCK_ID = 0x5359_4E43  # "SYNC": one advisory lock key for schema migrations


def _rowcount(status: str) -> int:
    # asyncpg returns the command tag, e.g. "UPDATE 3" or "INSERT 0 1".
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class _StoreConnection(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection released without asyncpg's reset query.

    The store changes no session state — no SET, LISTEN, cursors or session advisory locks (only
    ``pg_advisory_xact_lock``, released by its transaction) — so the ``RESET ALL; UNLISTEN *; …``
    round trip asyncpg sends on every release was pure cost: 4% of the hub's CPU under reservations.
    An open transaction is still rolled back on release by asyncpg itself.
    """

    def get_reset_query(self) -> str:
        return ""


class PostgresTx:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return list(await self._conn.fetch(sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        row: Row | None = await self._conn.fetchrow(sql, *args)
        return row

    async def execute(self, sql: str, *args: Any) -> int:
        return _rowcount(await self._conn.execute(sql, *args))

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        async with self._conn.transaction():
            yield


class PostgresDatabase:
    dialect = "postgres"

    def __init__(self, dsn: str, *, min_size: int = 2, max_size: int = 20) -> None:
        self.dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                command_timeout=30,
                connection_class=_StoreConnection,
            )
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def run(
        self,
        work: Callable[[PostgresTx], Awaitable[T]],
        *,
        exclusive: bool = False,
        readonly: bool = False,
        single_statement: bool = False,
        after_commit: Callable[[], Awaitable[None]] | None = None,
    ) -> T:
        """:meth:`storage.db.Database.run`, and ``single_statement``: ``work`` runs one statement,
        which PostgreSQL makes a transaction by itself — no BEGIN and COMMIT round trips."""
        result = await self._run(
            work, exclusive=exclusive, readonly=readonly, single_statement=single_statement
        )
        if after_commit is not None:
            await after_commit()
        return result

    async def _run(
        self,
        work: Callable[[PostgresTx], Awaitable[T]],
        *,
        exclusive: bool,
        readonly: bool,
        single_statement: bool,
    ) -> T:
        if self._pool is None:
            raise StoreUnavailable("the PostgreSQL store is not open")
        for attempt in range(_RETRIES):
            try:
                async with self._pool.acquire() as conn:
                    transaction = (
                        contextlib.nullcontext() if single_statement else conn.transaction(readonly=readonly)
                    )
                    async with transaction:
                        if exclusive:
                            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK_ID)
                        return await work(PostgresTx(conn))
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
                if attempt == _RETRIES - 1:
                    raise
                await asyncio.sleep(0.001 * 2**attempt)
            except asyncpg.UniqueViolationError as exc:
                raise Conflict(str(exc), constraint=exc.constraint_name) from exc
            except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
                raise StoreError(str(exc)) from exc
            except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
                raise StoreUnavailable(str(exc)) from exc
        raise AssertionError("unreachable")


class PostgresStore(SqlStore):
    """The SQL store on PostgreSQL, with reservations committed in batches (:mod:`storage.pg_reserve`)."""

    def __init__(self, dsn: str, *, region: str = "default") -> None:
        self._postgres = PostgresDatabase(dsn)
        super().__init__(self._postgres, region=region)
        self._batcher = ReservationBatcher(
            self._run_batch, now_us, lambda owner: user_stream(self.region, owner)
        )

    async def _run_batch(self, work: Callable[[PostgresTx], Awaitable[T]]) -> T:
        # The batch is one call of synchub_reserve_batch: atomic without an explicit transaction.
        return await self._postgres.run(work, single_statement=True)

    async def close(self) -> None:
        await self._batcher.close()
        await super().close()

    async def reserve(
        self,
        owner: str,
        idempotency_key: str,
        request_hash: str,
        lines: Sequence[ReservationLineRequest],
        ttl_seconds: int,
        caps: ReservationCaps | None = None,
    ) -> IdempotentResult:
        result = await self._batcher.reserve(
            owner, idempotency_key, request_hash, lines, ttl_seconds, str(uuid.uuid4()), caps
        )
        if result.status is ReservationOutcome.RESERVED and not result.replayed:
            # The batch's function wrote outbox entries inside the database (not through _write).
            self._outbox_changed()
        return result
