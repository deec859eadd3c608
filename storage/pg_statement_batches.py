"""Group commit of one kind of single-statement write on PostgreSQL: the rows of concurrent writes go
together into one multi-row statement, one round trip and one commit (one WAL flush) for all of them.

A write that would be one statement of its own (``Database.run(..., single_statement=True)``) hands
its row of parameters to :class:`StatementBatcher` instead. Rows handed in while the batches before
them run are sent together as the next batch: the statement receives one parameter, ``$1``, a
``JSONB[]`` of the rows, each the JSON array of its parameters (bytes in base64) — a text per row for
asyncpg to send, where an array per column cost the hub ~20 µs more per row (and an array, not one
JSON document, so that PostgreSQL estimates a few rows, not a hundred: a plan costed past
``jit_above_cost`` spent ~90 ms compiling) — and answers the rows it wrote, each with ``n``, the row's
place in the batch (1-based); a row it did not write gets None, as the statement of one row would have
said.

Rows are independent only if nothing one writes is something another reads or locks: each row names
its ``keys``, and two rows that share a key never go in one batch, nor in two batches in flight at
once — the second waits for the first's commit, and then sees what it wrote, as the write alone
would have. Which rows wait for which is otherwise first come, first served.

If a batch fails (a constraint no row foresaw, say), nothing of it was committed, and each of its rows
is sent again alone: one row's failure is its own, not the others'. A deadlock or a serialization
failure is retried by the database's ``run`` before that.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from storage.db import Row, Tx

RunStatement = Callable[[Callable[[Tx], Awaitable[list[Row]]]], Awaitable[list[Row]]]


@dataclass(slots=True)
class _Item:
    row: Sequence[Any]
    keys: frozenset[Hashable]
    done: asyncio.Future[Row | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def _base64(value: Any) -> str:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not a statement parameter")


def _seen(done: asyncio.Future[Row | None]) -> None:
    if not done.cancelled():
        done.exception()


class StatementBatcher:
    """Runs ``statement`` for the rows handed to :meth:`submit`, many rows a round trip.

    At most ``max_in_flight`` batches run at once (each holds a pooled connection while it runs) and
    each carries at most ``max_batch`` rows. A row waits at most one loop turn before its batch
    starts, so that the rows of requests read in the same turn go together; under load the queue
    fills while the batches before it commit.
    """

    def __init__(
        self, run: RunStatement, statement: str, *, max_batch: int = 64, max_in_flight: int = 2
    ) -> None:
        """``run``: runs its work (one statement) and commits it, as ``Database.run`` with
        ``single_statement=True``."""
        self._run = run
        self._statement = statement
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._queue: list[_Item] = []
        self._busy: set[Hashable] = set()  # the keys of the rows in flight
        self._in_flight = 0
        self._start_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # statements sent (a batch sent again row by row counts once per row too)

    async def submit(self, row: Sequence[Any], keys: frozenset[Hashable]) -> Row | None:
        """Write ``row`` with the statement, committed: the row the statement answered for it, or
        None if it wrote nothing for it. The statement's error if the row alone fails."""
        item = _Item(row, keys)
        item.done.add_done_callback(_seen)  # an error is seen even if the caller stopped waiting
        self._queue.append(item)
        if not self._start_scheduled:
            self._start_scheduled = True
            asyncio.get_running_loop().call_soon(self._start)
        # The batch runs in its own task: a caller that gives up (a closed HTTP request) cancels only
        # its wait, never the statement the other rows of its batch are in.
        return await asyncio.shield(item.done)

    def _start(self) -> None:
        self._start_scheduled = False
        while self._queue and self._in_flight < self._max_in_flight:
            batch: list[_Item] = []
            left: list[_Item] = []
            taken = set(self._busy)
            for item in self._queue:
                if len(batch) < self._max_batch and taken.isdisjoint(item.keys):
                    batch.append(item)
                else:
                    left.append(item)
                # A row that waits keeps its keys from the rows behind it: first come, first served.
                taken |= item.keys
            if not batch:
                return  # every row waits for a batch in flight, which starts the next when it ends
            self._queue = left
            for item in batch:
                self._busy |= item.keys
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._commit(batch), name="statement-batch")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: Sequence[_Item]) -> list[Row | None]:
        rows = [orjson.dumps(item.row, default=_base64).decode() for item in batch]

        async def work(tx: Tx) -> list[Row]:
            return await tx.fetch(self._statement, rows)

        self.batches += 1
        answered: list[Row | None] = [None] * len(batch)
        for row in await self._run(work):
            answered[int(row["n"]) - 1] = row
        return answered

    async def _commit(self, batch: list[_Item]) -> None:
        try:
            try:
                answers = await self._send(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if len(batch) == 1:
                    batch[0].done.set_exception(exc)
                    return
                for item in batch:  # nothing was committed: each row on its own
                    try:
                        (answer,) = await self._send([item])
                    except asyncio.CancelledError:
                        raise
                    except Exception as alone:
                        item.done.set_exception(alone)
                    else:
                        item.done.set_result(answer)
                return
            for item, answer in zip(batch, answers, strict=True):
                item.done.set_result(answer)
        except asyncio.CancelledError:
            for item in batch:
                if not item.done.done():
                    item.done.cancel()
            raise
        finally:
            for item in batch:
                self._busy.difference_update(item.keys)
            self._in_flight -= 1
            self._start()

    async def close(self) -> None:
        """Wait for the batches in flight (their rows are already in the database's hands)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
