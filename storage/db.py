"""The narrow SQL seam under :class:`storage.sql.SqlStore`: a transaction that runs statements.

The store's logic is written once against these two protocols; :mod:`storage.sqlite` and
:mod:`storage.postgres` adapt a driver to them. SQL uses PostgreSQL's ``$1`` placeholders; the SQLite
adapter rewrites them to its own numbered ``?1`` form.

Drivers' exceptions never leave an adapter: a unique-key violation becomes
:class:`~storage.errors.Conflict`, a lost connection :class:`~storage.errors.StoreUnavailable`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
Row = Mapping[str, Any]


class Tx(Protocol):
    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...
    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...
    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; return the number of rows it changed."""
        ...

    def savepoint(self) -> AbstractAsyncContextManager[None]:
        """A nested transaction: an exception inside rolls back to it and propagates."""
        ...


class Database(Protocol):
    dialect: str

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def run(
        self,
        work: Callable[[Tx], Awaitable[T]],
        *,
        exclusive: bool = False,
        readonly: bool = False,
        single_statement: bool = False,
        after_commit: Callable[[], Awaitable[None]] | None = None,
    ) -> T:
        """Run ``work`` in one transaction and commit it; roll back if it raises.

        ``after_commit`` is awaited once the transaction has committed, before ``run`` returns — never
        if it rolled back. Commits that follow each other call theirs in commit order (an adapter that
        commits several callers' transactions together calls them itself, in order, without waiting
        for each caller's task to be scheduled). It must not raise.

        ``readonly`` promises that ``work`` writes nothing, which lets an adapter skip write locks.

        A transaction aborted by the database for a transient reason (deadlock, serialization) is
        retried from the start, so ``work`` must have no side effects outside the transaction.
        ``exclusive`` serialises the transaction against every other exclusive one (migrations).
        ``single_statement`` promises that ``work`` runs exactly one statement, which a database such
        as PostgreSQL makes atomic by itself: the adapter may skip the BEGIN and COMMIT round trips.
        """
        ...
