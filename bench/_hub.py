"""Start a real hub process for a benchmark, and stop it (every process a bench starts, it stops)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import orjson

from bench.loadgen import ConnectError, WorkerError

# What ends one measured server, section or run without ending the suite: it is reported in the
# results and the suite goes on with the next.
RUN_FAILURES: tuple[type[BaseException], ...] = (
    ConnectError,
    WorkerError,
    RuntimeError,
    TimeoutError,
    OSError,
    aiohttp.ClientError,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@asynccontextmanager
async def hub_process(database_url: str, secret: str, *extra: str) -> AsyncIterator[tuple[str, int]]:
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="synchub-bench-")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hub.cli",
        "serve",
        "--port",
        str(port),
        "--database-url",
        database_url,
        f"--jwt-secret={secret}",  # one argument: a token_urlsafe secret may begin with "-"
        "--log-level",
        "WARNING",
        "--rate-limits=off",  # a bench is one address firing as fast as it can: measure, not throttle
        # and one user reserving thousands of units: no reservation caps (bench reservations --caps on)
        "--max-reserve-per-line=0",
        "--max-active-reserved-per-user=0",
        *extra,
        cwd=workdir,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    drain: asyncio.Task[None] | None = None
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(400):
                if proc.returncode is not None:
                    err = await proc.stderr.read() if proc.stderr else b""
                    raise RuntimeError(f"hub exited with {proc.returncode}: {err.decode()[-2000:]}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(base + "/readyz") as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("hub did not become ready")
        # Read on while it runs: a hub that logs more than a pipe holds must not block on its stderr.
        drain = asyncio.create_task(_drain(proc.stderr))
        yield base, proc.pid
    finally:
        if drain is not None:
            drain.cancel()
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@asynccontextmanager
async def throwaway_postgres_and_redis(admin_url: str, redis_url: str) -> AsyncIterator[tuple[str, str]]:
    """(database URL, Redis key prefix), both new and both removed afterwards, for hubs on a shared
    broker and store."""
    import asyncpg
    import redis.asyncio as redis

    name = f"synchub_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    prefix = f"{name}:"
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name, prefix
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        client = redis.Redis.from_url(redis_url)
        try:
            keys = [key async for key in client.scan_iter(match=prefix + "*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


def admin_headers(secret: str) -> dict[str, str]:
    """An admin bearer token for a hub started with ``secret``."""
    from hub.auth import issue_token

    return {"Authorization": f"Bearer {issue_token(secret, 'bench', ['admin'])}"}


async def stock_product(
    session: aiohttp.ClientSession, base: str, admin: dict[str, str], sku: str = "BENCH-1"
) -> str:
    """Warehouse ``w1`` in region eu and one product on the hub at ``base``; the URL of that product's
    stock adjustments at ``w1``. Each adjustment commits one stock change, which the hub publishes as one
    event on ``inventory:eu``; the answer and the event both carry the stock row's ``version`` (1, 2, …)."""
    async with session.post(
        base + "/api/v1/warehouses", headers=admin, json={"id": "w1", "region": "eu", "name": "w1"}
    ) as r:
        if r.status != 201:
            raise RuntimeError(f"creating the warehouse answered {r.status}: {(await r.text())[:300]}")
    async with session.post(
        base + "/api/v1/products", headers=admin, json={"sku": sku, "name": sku, "price": "1"}
    ) as r:
        if r.status != 201:
            raise RuntimeError(f"creating the product answered {r.status}: {(await r.text())[:300]}")
        product = (await r.json())["id"]
    return f"{base}/api/v1/products/{product}/inventory/w1/adjustments"


async def adjust_at(
    session: aiohttp.ClientSession,
    url: str,
    admin: dict[str, str],
    rate: float,
    count: int | None = None,
    stop: asyncio.Event | None = None,
    versions: list[int] | None = None,
    in_flight: int = 32,
) -> list[int]:
    """Adjust the stock at ``url`` by +1, ``rate`` times per second (at most ``in_flight`` at a time),
    ``count`` times or until ``stop`` is set; the versions the hub answered, appended to ``versions``
    (also returned) as they come. Raises if every adjustment failed."""
    versions = [] if versions is None else versions
    errors: list[BaseException] = []
    gate = asyncio.Semaphore(in_flight)

    async def one() -> None:
        try:
            async with session.post(url, headers=admin, json={"delta": 1}) as r:
                body = await r.read()
                if r.status >= 300:
                    raise RuntimeError(f"adjustment answered {r.status}: {body[:200]!r}")
                versions.append(int(orjson.loads(body)["version"]))
        except (aiohttp.ClientError, RuntimeError, OSError, TimeoutError, ValueError, KeyError) as exc:
            errors.append(exc)
        finally:
            gate.release()

    tasks: list[asyncio.Task[None]] = []
    started = time.perf_counter()
    i = 0
    try:
        while (count is None or i < count) and not (stop is not None and stop.is_set()):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                if stop is None:
                    await asyncio.sleep(delay)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    if stop.is_set():
                        break
            await gate.acquire()
            tasks.append(asyncio.create_task(one()))
            i += 1
    finally:
        await asyncio.gather(*tasks, return_exceptions=True)
    if errors and not versions:
        raise RuntimeError(f"every stock adjustment failed: {errors[0]!r}")
    return versions


async def _drain(stream: asyncio.StreamReader | None) -> None:
    """Read a child's output to its end, keeping nothing (its last words are read on failure above)."""
    if stream is None:
        return
    while await stream.read(65536):
        pass
