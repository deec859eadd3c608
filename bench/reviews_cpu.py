"""Where the CPU goes while reviews are posted, for :mod:`bench.reviews_posts`: the hub's processes and
PostgreSQL's, read from /proc (both on this machine), and what PostgreSQL's backends wait for."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._hub import cpu_seconds


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a ``--workers`` hub is a supervisor and its workers)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        with contextlib.suppress(OSError):
            todo += [int(c) for c in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
    return out


def cpu_of(pids: Sequence[int]) -> dict[int, float]:
    found = {}
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            found[pid] = cpu_seconds(pid)
    return found


class PostgresCpu:
    """CPU seconds of the PostgreSQL server processes working for one database: its backends (the
    hub's pool), and the WAL writer, checkpointer and background writer (shared with anything else
    the server runs at the time). PostgreSQL must be on this machine for /proc to see it. And what the
    database's active backends wait for (``pg_stat_activity``, sampled every 20 ms during a step)."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self.name = database_url.rsplit("/", 1)[1]
        self.conn: Any = None
        self.watcher: Any = None
        self.waits: Counter[str] = Counter()

    async def __aenter__(self) -> PostgresCpu:
        import asyncpg

        self.conn = await asyncpg.connect(self.url)
        self.watcher = await asyncpg.connect(self.url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.conn.close()
        await self.watcher.close()

    async def sample(self) -> dict[int, float]:
        rows = await self.conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE (datname = $1 AND pid <> pg_backend_pid()"
            " AND pid <> $2) OR backend_type IN ('walwriter', 'checkpointer', 'background writer')",
            self.name,
            self.watcher.get_server_pid(),
        )
        return cpu_of([int(r["pid"]) for r in rows])

    async def watch(self) -> None:
        """Count the active backends' wait events (``CPU`` when not waiting) until cancelled."""
        while True:
            rows = await self.watcher.fetch(
                "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') AS w FROM pg_stat_activity"
                " WHERE datname = $1 AND state = 'active' AND pid <> pg_backend_pid()",
                self.name,
            )
            self.waits.update(r["w"] for r in rows)
            await asyncio.sleep(0.02)


def cpu_spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU between two samples (a process that started in between counts whole)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


@dataclass
class Sampler:
    """Server (the hub's processes: a ``--workers`` hub's supervisor and workers) and database CPU,
    sampled before and after a step."""

    hub_pid: int
    database: PostgresCpu | None

    async def sample(self) -> tuple[dict[int, float], dict[int, float]]:
        db = await self.database.sample() if self.database is not None else {}
        return cpu_of(process_tree(self.hub_pid)), db


def waits_share(waits: Counter[str]) -> dict[str, float]:
    """The three most sampled wait events (``CPU``: not waiting), each as a share of all samples."""
    total = sum(waits.values())
    return {k: round(v / total, 3) for k, v in waits.most_common(3)} if total else {}
