"""The TypeScript SDK on a two-node cluster (PostgreSQL + Redis, real `synchub serve` processes): a
Node client follows inventory through its node's kill -9 with no gap and no duplicate, and a TypeScript
device and a Python device edit one cart offline and converge after reconnecting to different nodes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections import defaultdict

import aiohttp
import pytest

from crdt import codec
from crdt.cart import Cart
from tests.cart_helpers import Device
from tests.cluster_helpers import Node
from tests.conftest import redis_url, token
from tests.js_helpers import JS, js_build, node
from tests.realtime_helpers import JSON, WsClient
from tests.test_cluster import burst, cluster, final_versions, request, seed

pytestmark = pytest.mark.slow
ALICE = token("alice", "customer")


def node_env(nodes: list[Node], **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "SYNCHUB_URL": nodes[0].base,
        "SYNCHUB_URLS": ",".join(n.base for n in nodes),
        "SYNCHUB_TOKEN": ALICE,
        "SYNCHUB_REGION": "eu",
        **extra,
    }


async def test_a_node_client_follows_inventory_through_a_node_kill_without_gap_or_duplicate(
    pg: str, redis_prefix: str
) -> None:
    async with cluster(pg, redis_url(), redis_prefix) as nodes:
        product_ids = await seed(nodes)
        await burst(nodes, product_ids, 12)
        proc = await asyncio.create_subprocess_exec(
            node(),
            str(js_build() / "test" / "follow.js"),
            cwd=JS,
            env=node_env(nodes),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stdin is not None
        events: dict[tuple[str, str], list[int]] = defaultdict(list)
        snapshot: dict[tuple[str, str], int] = {}

        async def read() -> dict:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)  # type: ignore[union-attr]
            assert line, "the Node client exited"
            return dict(json.loads(line))

        while "ready" not in (message := await read()):
            snapshot[(message["product"], message["warehouse"])] = message["version"]
        killed = asyncio.create_task(burst(nodes, product_ids, 90))
        await asyncio.sleep(0.3)
        await nodes[0].kill()  # kill -9 under the client, mid-burst
        await killed
        # and changes after the kill, which only node B can give it (on a quiet machine the first burst
        # may be over, and all of it delivered by A, before the kill: the client had not yet moved)
        await burst(nodes, product_ids, 30)
        expected = await final_versions(nodes, product_ids)

        async def caught_up() -> None:
            while any((events[k][-1] if events[k] else snapshot.get(k, 0)) < v for k, v in expected.items()):
                message = await read()
                key = (message["product"], message["warehouse"])
                if message["source"] == "event":
                    events[key].append(message["version"])
                else:
                    snapshot[key] = max(snapshot.get(key, 0), message["version"])

        await asyncio.wait_for(caught_up(), 60)
        proc.stdin.close()
        opened = (await read())["opened"]
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    for key, last in expected.items():
        start = snapshot.get(key, 0)
        assert events[key] == list(range(start + 1, last + 1)), (key, start, events[key][:20])
    assert opened[0] == nodes[0].base and nodes[1].base in opened[1:], opened  # it moved to node B


async def test_a_typescript_and_a_python_device_converge_through_different_nodes(
    pg: str, redis_prefix: str, tmp_path
) -> None:
    async with cluster(pg, redis_url(), redis_prefix) as nodes:
        await request(nodes, "POST", "/api/v1/warehouses", {"id": "par-1", "region": "eu", "name": "Paris"})
        for sku in ("TEA-1", "LIP-001"):
            await request(nodes, "POST", "/api/v1/products", {"sku": sku, "name": sku, "price": "1"})
        cart_id = str(uuid.uuid4())
        storage = tmp_path / "device.json"
        a = node_env(nodes[:1])  # the TypeScript device talks to node A, the Python device to node B

        offline = await asyncio.create_subprocess_exec(
            node(), str(js_build() / "test" / "scenario.js"), "offline", str(storage), cart_id,
            cwd=JS, env=a, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert offline.stdout is not None
        assert json.loads(await asyncio.wait_for(offline.stdout.readline(), 60))["queued"] == 3
        offline.send_signal(signal.SIGKILL)
        await offline.wait()

        python = Device(cart_id)
        python.add("TEA-1", 1)
        python.set("LIP-001", 7)
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(
                nodes[1].ws, protocols=(JSON,), headers={"Authorization": f"Bearer {ALICE}"}
            ) as raw:
                ws = WsClient(raw, binary=False)
                await python.sync_ws(ws)
                assert [r["type"] for r in await python.push_ws(ws)] == ["ack", "ack"]

            online = await asyncio.create_subprocess_exec(
                node(), str(js_build() / "test" / "scenario.js"), "online", str(storage), cart_id,
                cwd=JS, env=a, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert online.stdout is not None
            result = json.loads(await asyncio.wait_for(online.stdout.readline(), 60))
            assert await asyncio.wait_for(online.wait(), 60) == 0
            assert result["pending"] == 0 and result["refused"] == []

            async with session.ws_connect(
                nodes[1].ws, protocols=(JSON,), headers={"Authorization": f"Bearer {ALICE}"}
            ) as raw:
                await python.sync_ws(WsClient(raw, binary=False))
        typescript = codec.from_msgpack(bytes.fromhex(result["state"]))
        assert isinstance(typescript, Cart) and typescript == python.cart
        assert python.cart.value() == result["value"] and result["value"]["TEA-1"] == 3
