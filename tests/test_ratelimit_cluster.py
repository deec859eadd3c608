"""One rate limit shared by two real `synchub serve` nodes on one Redis: the requests a client sends to
either node count against one budget (the Lua script on Redis's clock), so the two nodes together admit
the policy's burst — not twice it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.cluster_helpers import Node, start_node
from tests.conftest import redis_url, token

pytestmark = pytest.mark.slow
BURST = 10
LIMITS = ("--rate-limits", "on", "--rate-limit-read", f"1/min:{BURST}")  # nothing refills during a test


@contextlib.asynccontextmanager
async def two_nodes(tmp_path: Path, prefix: str, *limits: str) -> AsyncIterator[list[Node]]:
    nodes: list[Node] = []
    try:
        for name in ("rl-a", "rl-b"):
            database = str(tmp_path / f"{name}.sqlite3")  # reads only: each node its own store
            nodes.append(await start_node(name, database, redis_url(), prefix, extra=limits))
        yield nodes
    finally:
        for node in nodes:
            await node.stop()


async def get(
    session: aiohttp.ClientSession, node: Node, who: str | None = None
) -> tuple[int, dict[str, str]]:
    headers = {"Authorization": f"Bearer {who}"} if who else {}
    async with session.get(node.base + "/api/v1/products", headers=headers) as response:
        await response.read()
        return response.status, dict(response.headers)


async def test_two_nodes_admit_one_burst_between_them(tmp_path: Path, redis_prefix: str) -> None:
    async with two_nodes(tmp_path, redis_prefix, *LIMITS) as nodes, aiohttp.ClientSession() as session:
        # one client, alternating nodes
        answers = [await get(session, nodes[i % 2]) for i in range(3 * BURST)]
        statuses = [status for status, _ in answers]
        assert abs(statuses.count(200) - BURST) <= 1, statuses
        assert statuses[:BURST] == [200] * BURST and set(statuses[BURST:]) == {429}
        remaining = [h["RateLimit"] for _, h in answers[:BURST]]
        assert remaining == [f'"read";r={BURST - 1 - i};t=60' for i in range(BURST)]  # one count, both nodes
        # another client (a user), all at once through both nodes
        alice = token("alice")
        together = await asyncio.gather(*(get(session, nodes[i % 2], alice) for i in range(3 * BURST)))
        allowed = [status for status, _ in together].count(200)
        assert abs(allowed - BURST) <= 1, allowed


async def test_two_nodes_keep_one_sustained_rate(tmp_path: Path, redis_prefix: str) -> None:
    # 5 at once, then 20 a second, shared: over ~1.5 s of alternating requests, 5 + 20 × elapsed.
    limits = ("--rate-limits", "on", "--rate-limit-read", "20/s:5")
    async with two_nodes(tmp_path, redis_prefix, *limits) as nodes, aiohttp.ClientSession() as session:
        allowed = 0
        started = time.monotonic()
        i = 0
        while time.monotonic() - started < 1.5:
            allowed += (await get(session, nodes[i % 2]))[0] == 200
            i += 1
        elapsed = time.monotonic() - started
    expected = 5 + 20 * elapsed
    assert expected - 2 <= allowed <= expected + 1, (allowed, expected, i)
