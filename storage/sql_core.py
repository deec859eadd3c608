"""The core of the SQL store: writing transactions (which hand their committed outbox entries to the
listeners), savepoints, the store's lifecycle and its migrations. The aggregates' statements are mixins
on top of it: :mod:`storage.sql_outbox`, :mod:`storage.sql_stock`, :mod:`storage.sql_catalog`,
:mod:`storage.sql_reservations`, :mod:`storage.sql_carts`; :class:`storage.sql.SqlStore` joins them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from storage.base import OutboxListener
from storage.db import Database, Row, Tx
from storage.errors import IdempotencyMismatch
from storage.migrations import MIGRATIONS, statements_for
from storage.models import OutboxEntry

T = TypeVar("T")

# The outbox entries appended by the writing transaction running in this task (see SqlStore._write):
# a context variable, so that _emit, however deep in a transaction's helpers, need not be handed a list.
_APPENDED: ContextVar[list[OutboxEntry] | None] = ContextVar("synchub_outbox_appended", default=None)


def now_us() -> int:
    return time.time_ns() // 1000


async def bind_replica(tx: Tx, replica: str, owner: str, ts: int) -> str | None:
    """Bind a CRDT replica id to ``owner`` on its first use (of two users binding one id at once, one
    does); the owner it is bound to now (the caller refuses a push whose replica is someone else's)."""
    await tx.execute(
        "INSERT INTO replicas (replica_id, owner, created_at) VALUES ($1, $2, $3)"
        " ON CONFLICT (replica_id) DO NOTHING",
        replica,
        owner,
        ts,
    )
    bound = await tx.fetchrow("SELECT owner FROM replicas WHERE replica_id = $1", replica)
    return None if bound is None else str(bound["owner"])


async def claim_idempotency_key(
    tx: Tx, owner: str, key: str, request_hash: str, ts: int
) -> tuple[int, str] | None:
    """Claim (``owner``, ``key``) for this request in ``tx``: None if claimed now (store its outcome
    with :func:`store_idempotent_outcome` before the transaction ends), else the outcome stored by the
    request that claimed it first, as (status, body) — PostgreSQL made this one wait for that one's
    commit. IdempotencyMismatch if that request's hash was another."""
    claimed = await tx.execute(
        "INSERT INTO idempotency_keys (owner, key, request_hash, status, body, created_at)"
        " VALUES ($1, $2, $3, 0, '', $4) ON CONFLICT (owner, key) DO NOTHING",
        owner,
        key,
        request_hash,
        ts,
    )
    if claimed == 1:
        return None
    row = await tx.fetchrow(
        "SELECT request_hash, status, body FROM idempotency_keys WHERE owner = $1 AND key = $2", owner, key
    )
    assert row is not None
    if row["request_hash"] != request_hash:
        raise IdempotencyMismatch("this Idempotency-Key was used with a different request body")
    return int(row["status"]), str(row["body"])


async def store_idempotent_outcome(tx: Tx, owner: str, key: str, status: int, body: str) -> None:
    await tx.execute(
        "UPDATE idempotency_keys SET status = $3, body = $4 WHERE owner = $1 AND key = $2",
        owner,
        key,
        status,
        body,
    )


class _NoStatements:
    """The Tx of a grouped write (SqlCore._write): its statement goes through its group commit."""

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        raise AssertionError("a grouped write sends its statement through its group commit")

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        raise AssertionError("a grouped write sends its statement through its group commit")

    async def execute(self, sql: str, *args: Any) -> int:
        raise AssertionError("a grouped write sends its statement through its group commit")

    def savepoint(self) -> AbstractAsyncContextManager[None]:
        raise AssertionError("a grouped write sends its statement through its group commit")


_NO_STATEMENTS = _NoStatements()


C = TypeVar("C", list[OutboxEntry], set[tuple[str, str]])


def collecting(
    into: ContextVar[C | None], collected: C, work: Callable[[Tx], Awaitable[T]]
) -> Callable[[Tx], Awaitable[T]]:
    """``work``, with ``into`` holding ``collected`` while it runs, for what it notes down as it writes
    (the outbox entries it appends, the rating moves it makes) to be acted on once it has committed.
    Set when the work runs, in whichever task runs it (SQLite's group commit runs it in its own), and
    emptied at every attempt: a transaction the database aborted is run again from the start."""

    async def attempt(tx: Tx) -> T:
        collected.clear()
        token = into.set(collected)
        try:
            return await work(tx)
        finally:
            into.reset(token)

    return attempt


class SqlCore:
    def __init__(self, db: Database, *, hand_over_outbox: bool = False, region: str = "default") -> None:
        """``hand_over_outbox``: this process is the only one writing the database (the embedded
        SQLite store), so its commits are the outbox's order and its entries can be handed to the
        listeners as they commit. Where several processes write (PostgreSQL), entries committed
        concurrently must be read back in outbox order, and the listeners are told to read instead."""
        self.db = db
        self.backend = db.dialect
        self.region = region  # where this hub's users' private events go (storage.streams.user_stream)
        self._hand_over_outbox = hand_over_outbox
        self._outbox_listeners: list[OutboxListener] = []

    # -- writing transactions ------------------------------------------------------------------
    async def _write(
        self, work: Callable[[Tx], Awaitable[T]], *, single_statement: bool = False, grouped: bool = False
    ) -> T:
        """Run a writing transaction; once it has committed, announce the outbox entries it appended
        to the listeners (storage.base: "Committed entries are announced"). ``grouped``: ``work``
        hands its one statement to a group commit (storage.pg_statement_batches), which commits it
        with other writes' in a transaction of its own: no connection is taken here, ``work`` is
        handed a Tx that refuses statements, and its entries are announced once it has returned."""
        appended: list[OutboxEntry] = []
        attempt = collecting(_APPENDED, appended, work)

        async def announce() -> None:
            if not appended:
                return
            if not self._hand_over_outbox:
                self._outbox_changed()
                return
            for listener in self._outbox_listeners:
                await listener.outbox_committed(appended)

        if grouped:
            result = await attempt(_NO_STATEMENTS)
            await announce()
            return result
        return await self.db.run(attempt, single_statement=single_statement, after_commit=announce)

    @asynccontextmanager
    async def _savepoint(self, tx: Tx) -> AsyncIterator[None]:
        """``tx.savepoint()``; rolled back, it takes back the outbox entries appended inside it."""
        appended = _APPENDED.get()
        mark = 0 if appended is None else len(appended)
        try:
            async with tx.savepoint():
                yield
        except BaseException:
            if appended is not None:
                del appended[mark:]
            raise

    def watch_outbox(self, listener: OutboxListener) -> Callable[[], None]:
        self._outbox_listeners.append(listener)

        def unwatch() -> None:
            if listener in self._outbox_listeners:
                self._outbox_listeners.remove(listener)

        return unwatch

    def _outbox_changed(self) -> None:
        for listener in self._outbox_listeners:
            listener.outbox_changed()

    # -- lifecycle -----------------------------------------------------------------------------
    async def open(self) -> None:
        await self.db.open()

    async def close(self) -> None:
        await self.db.close()

    async def ping(self) -> None:
        async def work(tx: Tx) -> None:
            await tx.fetchrow("SELECT 1 AS ok")

        await self.db.run(work, readonly=True, single_statement=True)

    async def migrate(self) -> list[int]:
        async def work(tx: Tx) -> list[int]:
            await tx.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at BIGINT NOT NULL)"
            )
            done = {r["version"] for r in await tx.fetch("SELECT version FROM schema_migrations")}
            applied = []
            for version, description, statements in MIGRATIONS:
                if version in done:
                    continue
                for statement in statements_for(self.db.dialect, statements):
                    await tx.execute(statement)
                await tx.execute(
                    "INSERT INTO schema_migrations (version, description, applied_at) VALUES ($1, $2, $3)",
                    version,
                    description,
                    now_us(),
                )
                applied.append(version)
            return applied

        return await self.db.run(work, exclusive=True)
