"""Start a real hub process for a benchmark, and stop it (every process a bench starts, it stops)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp


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
        "--jwt-secret",
        secret,
        "--log-level",
        "WARNING",
        *extra,
        cwd=workdir,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
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
        yield base, proc.pid
    finally:
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
