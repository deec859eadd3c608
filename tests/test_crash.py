"""A hub killed with SIGKILL between commit and publish loses no stock event.

The hub runs as a real process (``python -m hub.cli serve``) with its relay off, so nothing it
commits can have been published before the kill. After the kill, a relay started on the same
database must deliver every committed change, in version order, with no gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys

import aiohttp
import orjson

from storage.factory import open_store
from sync.broker import Publication
from sync.broker_memory import MemoryBroker
from sync.channels import inventory_stream
from sync.relay import OutboxRelay
from tests.conftest import JWT_SECRET, token


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_until_up(base: str, session: aiohttp.ClientSession, proc: asyncio.subprocess.Process) -> None:
    for _ in range(200):
        if proc.returncode is not None:
            raise AssertionError(f"the hub exited with {proc.returncode}")
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(base + "/healthz") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise AssertionError("the hub did not start")


async def test_sigkill_after_commit_loses_no_event(database_url: str, tmp_path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "SYNCHUB_JWT_SECRET": JWT_SECRET}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hub.cli",
        "serve",
        "--port",
        str(port),
        "--database-url",
        database_url,
        "--no-relay",
        "--log-level",
        "WARNING",
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    admin = {"Authorization": f"Bearer {token('root', 'admin')}"}
    acknowledged: list[int] = []
    try:
        async with aiohttp.ClientSession(headers=admin) as session:
            await wait_until_up(base, session, proc)
            async with session.post(
                base + "/api/v1/warehouses", json={"id": "par-1", "region": "eu", "name": "Paris"}
            ) as r:
                assert r.status == 201
            async with session.post(
                base + "/api/v1/products", json={"sku": "CRASH-1", "name": "Crash", "price": "1.00"}
            ) as r:
                product_id = (await r.json())["id"]

            async def adjust() -> None:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.post(
                        f"{base}/api/v1/products/{product_id}/inventory/par-1/adjustments", json={"delta": 1}
                    ) as r:
                        if r.status == 200:
                            acknowledged.append((await r.json())["version"])
                            if len(acknowledged) >= 50:
                                enough.set()

            enough = asyncio.Event()
            burst = [asyncio.create_task(adjust()) for _ in range(300)]
            await asyncio.wait_for(enough.wait(), timeout=30)
            proc.send_signal(signal.SIGKILL)  # mid-burst: some requests committed, some never will
            await proc.wait()
            await asyncio.gather(*burst)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    assert 50 <= len(acknowledged) < 300
    store = open_store(database_url)
    await store.open()
    try:
        inventory = await store.get_inventory(product_id)
        committed_version = inventory[0].version
        broker = MemoryBroker()
        delivered: list[int] = []

        def record(publication: Publication) -> None:
            delivered.append(orjson.loads(publication.data)["version"])

        broker.subscribe(inventory_stream("eu"), record)
        relay = OutboxRelay(store, broker)
        while await relay.relay_once():
            pass
    finally:
        await store.close()
    assert delivered == list(range(1, committed_version + 1))  # every committed change, in order, once
    assert set(acknowledged) <= set(delivered)  # in particular every one the client was told about
    assert inventory[0].on_hand == committed_version  # the first +1 created the row at version 1
