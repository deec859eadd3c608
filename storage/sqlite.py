"""SQLite, the embedded default: one file, no server.

One connection. Transactions are serialised by an asyncio lock and opened with ``BEGIN IMMEDIATE``:
SQLite allows one writer at a time anyway, and taking the write lock up front means a transaction
never fails half way for want of it. WAL journal with ``synchronous=FULL``: a committed change
survives a crash of the process or of the machine.

Writes are group-committed. Writes that wait at the same time share one transaction, each in its own
savepoint — a write that fails (a refused adjustment, a conflict) rolls back to it and undoes only
itself, exactly as its own transaction would have — and one ``COMMIT``, one fsync. Each write sees the
writes before it in its batch, as serial transactions would, and is answered only once its batch has
committed, so durability is unchanged; a ``COMMIT`` that fails fails every write of its batch, none
of them applied. Serialised transactions otherwise cost a thread hop each for the fsync, and a hop
waits for the loop: under fan-out load the hub committed one write per loop turn.

The two calls that can wait — ``BEGIN IMMEDIATE`` (for another process's lock) and ``COMMIT`` (for
fsync) — must not wait on the event loop. ``COMMIT`` runs on a dedicated thread. ``BEGIN IMMEDIATE`` is
first tried on the loop with a busy timeout of 0: this process's writers are serialised by the asyncio
lock already, so it fails only while another process holds the write lock, and is then run on the
thread, where it waits. The statements between them run on the event loop: they hold the write lock
already and touch pages in the cache, so they take microseconds, while a hop to the thread costs a loop
turn — behind a fan-out under load, milliseconds — and transactions are serialised: each hop saved is
more transactions per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import re
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Generic, TypeVar

from storage.db import Row
from storage.errors import Conflict, StoreError, StoreUnavailable
from storage.sql import SqlStore

T = TypeVar("T")
log = logging.getLogger(__name__)
_MAX_BATCH = 256  # writes per group commit
_COMMIT_SPACING = 0.010  # seconds: see SqliteDatabase.__init__
_BUSY_TIMEOUT_MS = 10_000  # how long a statement on the thread waits for another process's lock
_PLACEHOLDER = re.compile(r"\$(\d+)")


_TRANSLATED: dict[str, str] = {}


def _translate(sql: str) -> str:
    """``$n`` placeholders as SQLite's ``?n``: a statement is translated once (the store's statements
    are a fixed set, built from constants; past 4,096 distinct ones the cache starts over)."""
    translated = _TRANSLATED.get(sql)
    if translated is None:
        if len(_TRANSLATED) >= 4096:
            _TRANSLATED.clear()
        translated = _TRANSLATED[sql] = _PLACEHOLDER.sub(r"?\1", sql)
    return translated


class SqliteTx:
    # The statements run on the connection directly (the driver's errors translated as _inline does):
    # a push runs five or six of them, and every call layer between is paid each time.
    __slots__ = ("_conn", "_db", "_savepoints")

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db
        self._conn = db._conn
        self._savepoints = 0

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        conn = self._conn
        if conn is None:
            raise StoreUnavailable("the SQLite store is not open")
        try:
            return conn.execute(_translate(sql), args).fetchall()
        except (sqlite3.IntegrityError, sqlite3.OperationalError, OverflowError) as exc:
            raise _store_error(exc) from exc

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        conn = self._conn
        if conn is None:
            raise StoreUnavailable("the SQLite store is not open")
        try:
            rows: list[Row] = conn.execute(_translate(sql), args).fetchall()
        except (sqlite3.IntegrityError, sqlite3.OperationalError, OverflowError) as exc:
            raise _store_error(exc) from exc
        return rows[0] if rows else None

    async def execute(self, sql: str, *args: Any) -> int:
        conn = self._conn
        if conn is None:
            raise StoreUnavailable("the SQLite store is not open")
        try:
            return conn.execute(_translate(sql), args).rowcount
        except (sqlite3.IntegrityError, sqlite3.OperationalError, OverflowError) as exc:
            raise _store_error(exc) from exc

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        self._savepoints += 1
        name = f"sp{self._savepoints}"
        await self.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            await self.execute(f"ROLLBACK TO {name}")
            await self.execute(f"RELEASE {name}")
            raise
        else:
            await self.execute(f"RELEASE {name}")


@dataclass(slots=True)
class _Write(Generic[T]):
    work: Callable[[SqliteTx], Awaitable[T]]
    done: asyncio.Future[T]
    after_commit: Callable[[], Awaitable[None]] | None


class SqliteDatabase:
    dialect = "sqlite"

    def __init__(self, path: str, *, commit_spacing: float = _COMMIT_SPACING) -> None:
        """``commit_spacing`` (seconds): while writes keep arriving — some came in while the last batch
        ran — a batch begins at most this long after the one before, so that one COMMIT (one fsync)
        serves the writes of that time. A COMMIT with ``synchronous=FULL`` costs 150-330 µs of CPU here
        (the kernel's fsync), more than a cart push's statements: at 1,000-2,000 pushes/s, batches of
        one or two spent most of a push's CPU on it. A write that arrives while nothing is being
        committed (a lone writer, one write after another) is committed at once: held back only where
        others share its COMMIT, and by at most this long. 10 ms rather than 2: at 1,000 cart pushes/s
        a hub's batches were ~2 writes at 2 ms and ~10 at 10 ms, and its CPU per push 560-620 µs
        against 350-460 (the COMMIT thread's share 105-115 → 40-55 µs, the event loop's fewer turns
        too), for an ack ~7 ms later at the median (bench/README.md, cart sync)."""
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._thread: _SqliteThread | None = None
        self._lock = asyncio.Lock()
        self._waiting: list[_Write[Any]] = []  # writes for the next batch, in arrival order
        self._committer: asyncio.Task[None] | None = None
        self.commits = 0  # write batches committed (each one COMMIT, one fsync)
        self._commit_spacing = commit_spacing
        self._next_batch_at = 0.0  # (loop time) when the next batch may begin, if writes kept coming

    async def open(self) -> None:
        self._thread = _SqliteThread()
        self._conn = await self._call(self._connect)

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=FULL",
            "PRAGMA foreign_keys=ON",
            f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}",
        ):
            conn.execute(pragma)
        return conn

    async def close(self) -> None:
        if self._committer is not None:  # the writes already accepted are committed first
            await asyncio.gather(self._committer, return_exceptions=True)
        if self._conn is not None:
            await self._call(self._conn.close)
            self._conn = None
        if self._thread is not None:
            self._thread.stop()
            self._thread = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the SQLite thread."""
        if self._thread is None:
            raise StoreUnavailable("the SQLite store is not open")
        with _driver_errors():
            return await self._thread.call(fn, *args)

    def _inline(self, fn: Callable[[str, tuple[Any, ...]], T], sql: str, args: tuple[Any, ...]) -> T:
        # (_driver_errors written out: this runs for every statement.)
        try:
            return fn(sql, args)
        except (sqlite3.IntegrityError, sqlite3.OperationalError, OverflowError) as exc:
            raise _store_error(exc) from exc

    def _fetchall(self, sql: str, args: tuple[Any, ...]) -> list[Row]:
        assert self._conn is not None
        return self._conn.execute(sql, args).fetchall()

    def _execute(self, sql: str, args: tuple[Any, ...]) -> int:
        assert self._conn is not None
        return self._conn.execute(sql, args).rowcount

    async def run(
        self,
        work: Callable[[SqliteTx], Awaitable[T]],
        *,
        exclusive: bool = False,
        readonly: bool = False,
        single_statement: bool = False,  # nothing to save: SQLite's BEGIN and COMMIT cost no round trip
        after_commit: Callable[[], Awaitable[None]] | None = None,
    ) -> T:
        if self._conn is None:
            raise StoreUnavailable("the SQLite store is not open")
        if readonly or exclusive:
            async with self._lock:
                result = await self._alone(work, readonly=readonly)
            if after_commit is not None:
                await after_commit()
            return result
        # Group commit: a write joins the next batch, and gets its outcome once that batch committed.
        write: _Write[T] = _Write(work, asyncio.get_running_loop().create_future(), after_commit)
        self._waiting.append(write)
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_batches(), name="sqlite-group-commit")
        return await write.done

    async def _alone(self, work: Callable[[SqliteTx], Awaitable[T]], *, readonly: bool) -> T:
        """One transaction by itself (reads; migrations), under the lock."""
        try:
            if readonly:
                # A deferred read transaction in WAL mode waits for no lock and commits without fsync.
                self._inline(self._execute, "BEGIN", ())
                result = await work(SqliteTx(self))
                self._inline(self._execute, "COMMIT", ())
                return result
            await self._begin()
            result = await work(SqliteTx(self))
            await self._call(self._execute, "COMMIT", ())
            return result
        except BaseException:
            # Also after a cancellation: the thread may have begun (or committed) the transaction
            # after we stopped waiting for it. Queued behind it on the same thread, this rollback
            # sees the outcome, and the connection is never left inside a transaction.
            await asyncio.shield(self._call(self._rollback_if_open))
            raise

    async def _begin(self) -> None:
        with _driver_errors():
            began = self._begin_if_free()
        if not began:
            await self._call(self._execute, "BEGIN IMMEDIATE", ())

    async def _commit_batches(self) -> None:
        """Commit the waiting writes, a batch at a time, until none wait."""
        try:
            loop = asyncio.get_running_loop()
            spaced = False  # a lone writer's write, which began this committer, is not held back
            while self._waiting:
                wait = self._next_batch_at - loop.time()
                if spaced and wait > 0 and len(self._waiting) < _MAX_BATCH:
                    await asyncio.sleep(wait)  # (see __init__'s commit_spacing)
                batch, self._waiting = self._waiting[:_MAX_BATCH], self._waiting[_MAX_BATCH:]
                async with self._lock:
                    self._next_batch_at = loop.time() + self._commit_spacing
                    committed = await self._commit_batch(batch)
                await self._answer(committed)
                spaced = True
        except BaseException:  # cancelled (the loop is shutting down): no batch will run for these
            for write in self._waiting:
                write.done.cancel()
            self._waiting = []
            raise
        finally:
            self._committer = None

    async def _commit_batch(self, batch: list[_Write[Any]]) -> list[tuple[_Write[Any], bool, Any]]:
        """One transaction for every write of ``batch`` — a write that fails undoes only itself, as its
        own transaction would have (see :meth:`_run_writes`) — and one COMMIT (one fsync) for all. Returns
        (write, succeeded, result or exception) per write run, once committed; a failure of the batch
        itself is set on every write's future here, and returns nothing to answer."""
        try:
            if self._conn is None:
                raise StoreUnavailable("the SQLite store is not open")
            await self._begin()
            ran = await self._run_writes(batch, careful=False)
            if ran is None:
                # A write failed with nothing to undo it alone: the batch is run again from the start,
                # each write in its own savepoint this time.
                self._inline(self._execute, "ROLLBACK", ())
                await self._begin()
                ran = await self._run_writes(batch, careful=True)
            assert ran is not None
            outcomes = ran
            if outcomes:
                await self._call(self._execute, "COMMIT", ())
            else:
                self._inline(self._execute, "ROLLBACK", ())
        except BaseException as exc:
            await asyncio.shield(self._call(self._rollback_if_open))
            for write in batch:
                if not write.done.done():
                    if isinstance(exc, asyncio.CancelledError):
                        write.done.cancel()
                    else:
                        write.done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return []
        self.commits += 1
        return outcomes

    async def _run_writes(
        self, batch: list[_Write[Any]], *, careful: bool
    ) -> list[tuple[_Write[Any], bool, Any]] | None:
        """Run the writes of ``batch`` in the open transaction: (write, succeeded, result or exception)
        for each one run. ``careful``: each in a savepoint, so that a write that fails undoes only
        itself. Not careful (first, as writes rarely fail): no savepoint — two statements and a context
        manager less per write — and None as soon as one fails, for the caller to start over carefully
        (a write's work runs again from the start, as after a database's abort)."""
        outcomes: list[tuple[_Write[Any], bool, Any]] = []
        for write in batch:
            if write.done.done():  # its caller gave up before it ran: it is not run
                continue
            tx = SqliteTx(self)
            try:
                if careful:
                    async with tx.savepoint():
                        result = await write.work(tx)
                else:
                    result = await write.work(tx)
            except StoreUnavailable:
                raise  # the database itself failed: the whole batch does
            except Exception as exc:
                if not careful:
                    return None
                outcomes.append((write, False, exc))
            else:
                outcomes.append((write, True, result))
        return outcomes

    async def _answer(self, committed: list[tuple[_Write[Any], bool, Any]]) -> None:
        # The after-commit hooks first, here and in commit order: the store hands its outbox entries
        # over in them, and waiting for each caller's task to run first would cost a loop turn. The
        # writes are answered after, so their callers resume after the fan-out the hooks scheduled:
        # a write's response waits for one fan-out (as Node's broadcast-then-respond does). Answering
        # first measured worse for the events (p99 at 1,000 clients) and better for the writes (p50
        # of a write at 10,000 clients and 10 writes/s: 7 ms instead of 67): bench/README.md.
        try:
            for write, succeeded, _outcome in committed:
                if succeeded and write.after_commit is not None:
                    try:
                        await write.after_commit()
                    except Exception:
                        log.exception("an after-commit hook failed")
        finally:  # committed: answered even if the hooks were cut short
            for write, succeeded, outcome in committed:
                if write.done.done():  # cancelled while its batch committed: the change stands anyway
                    continue
                if succeeded:
                    write.done.set_result(outcome)
                else:
                    write.done.set_exception(outcome)

    def _begin_if_free(self) -> bool:
        """BEGIN IMMEDIATE without waiting; False if another process holds the write lock."""
        assert self._conn is not None
        self._conn.execute("PRAGMA busy_timeout=0")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return False
            raise
        finally:
            self._conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        return True

    def _rollback_if_open(self) -> None:
        if self._conn is not None and self._conn.in_transaction:
            self._conn.execute("ROLLBACK")


class _SqliteThread:
    """The one thread the calls that may wait (COMMIT's fsync, a BEGIN IMMEDIATE behind another
    process) run on, in the order they were made. A queue and a wake-up of the loop per call, where
    ``run_in_executor`` on a one-thread pool paid for a concurrent future chained to an asyncio one: at
    a commit per few pushes the round trip was a tenth of the event loop's time (py-spy, 1,000 pushes/s)."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[
            tuple[Callable[[], Any], asyncio.AbstractEventLoop, asyncio.Future[Any]] | None
        ] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="synchub-sqlite", daemon=True)
        self._thread.start()

    def call(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((partial(fn, *args), loop, future))
        return future

    def stop(self) -> None:
        """Let the thread end once the calls made before have run; wait for it."""
        self._calls.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._calls.get()) is not None:
            fn, loop, future = item
            if future.cancelled():  # its caller stopped waiting before it began: not run (as an executor's)
                continue
            try:
                result = fn()
            except BaseException as exc:  # handed to the caller, as run_in_executor would
                outcome: tuple[bool, Any] = (False, exc)
            else:
                outcome = (True, result)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, future, outcome)


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.done():  # its caller stopped waiting (cancelled); the call ran all the same
        return
    succeeded, value = outcome
    if succeeded:
        future.set_result(value)
    else:
        future.set_exception(value)


@contextmanager
def _driver_errors() -> Iterator[None]:
    try:
        yield
    except (sqlite3.IntegrityError, sqlite3.OperationalError, OverflowError) as exc:
        raise _store_error(exc) from exc


def _store_error(exc: Exception) -> StoreError:
    """The store's error for a driver's: a broken constraint, a database that cannot be used, or an
    integer beyond SQLite's 64 bits."""
    if isinstance(exc, sqlite3.IntegrityError):
        if "UNIQUE" in str(exc) or "PRIMARY KEY" in str(exc):
            return Conflict(str(exc))
        return StoreError(str(exc))
    if isinstance(exc, sqlite3.OperationalError):
        return StoreUnavailable(str(exc))
    return StoreError(str(exc))


def SqliteStore(path: str, *, region: str = "default", commit_spacing: float | None = None) -> SqlStore:
    # One hub process owns the embedded database: its commit order is the outbox's order.
    database = (
        SqliteDatabase(path)
        if commit_spacing is None
        else SqliteDatabase(path, commit_spacing=commit_spacing)
    )
    return SqlStore(database, hand_over_outbox=True, region=region)
