"""For the Python client SDK's tests: a two-node cluster kept alive across tests, admin calls, and a
small HTTP proxy that refuses WebSocket upgrades (and, on demand, buffers Server-Sent Events)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.cluster_helpers import Node, free_port, start_node
from tests.conftest import redis_url, token

ADMIN = token("root", "admin")
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "content-encoding",
    "host",
    "te",
    "trailer",
    "proxy-connection",
}


@dataclass
class Cluster:
    """Two `synchub serve` nodes on one PostgreSQL and one Redis; a killed node is replaced."""

    database_url: str
    prefix: str
    nodes: list[Node] = field(default_factory=list)
    generation: int = 0

    async def ensure(self) -> list[Node]:
        for i in range(2):
            if len(self.nodes) <= i:
                self.nodes.append(await self._start(i))
            elif self.nodes[i].proc.returncode is not None:
                self.nodes[i] = await self._start(i)
        return self.nodes

    async def _start(self, i: int) -> Node:
        self.generation += 1
        return await start_node(f"py-{'ab'[i]}{self.generation}", self.database_url, redis_url(), self.prefix)

    async def stop(self) -> None:
        for node in self.nodes:
            await node.stop()


async def admin_call(node: Node, method: str, path: str, body: Any = None) -> Any:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN}"}) as session,
        session.request(method, node.base + path, json=body) as response,
    ):
        answer = await response.json(content_type=None)
        assert response.status in (200, 201), (response.status, answer)
        return answer


async def catalog(node: Node, count: int) -> tuple[str, list[dict[str, Any]]]:
    """A fresh warehouse in region eu and ``count`` fresh products."""
    tag = uuid.uuid4().hex[:8]
    warehouse = f"wh-{tag}"
    await admin_call(node, "POST", "/api/v1/warehouses", {"id": warehouse, "region": "eu", "name": warehouse})
    products = [
        await admin_call(
            node, "POST", "/api/v1/products", {"sku": f"PY-{tag}-{i}", "name": "p", "price": "1"}
        )
        for i in range(count)
    ]
    return warehouse, products


async def set_stock(
    session: aiohttp.ClientSession, node: Node, product_id: str, warehouse: str, on_hand: int
) -> int:
    async with session.put(
        f"{node.base}/api/v1/products/{product_id}/inventory/{warehouse}",
        json={"on_hand": on_hand},
        headers={"Authorization": f"Bearer {ADMIN}"},
    ) as response:
        body = await response.json()
        assert response.status == 200, body
        return int(body["version"])


@dataclass
class Proxy:
    """An HTTP proxy in front of ``upstream`` that answers every WebSocket upgrade 403, as proxies that
    do not pass upgrades do; with ``buffer_sse`` it also holds Server-Sent Events back until the
    stream ends (a buffering proxy), which for a live stream is never."""

    upstream: str
    buffer_sse: bool = False
    upgrades_refused: int = 0
    sse_requests: int = 0
    poll_requests: int = 0
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            self.upgrades_refused += 1
            return web.Response(status=403, text="WebSockets are not allowed through this proxy")
        if request.path == "/api/v1/sse":
            self.sse_requests += 1
        if request.path == "/api/v1/poll":
            self.poll_requests += 1
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP | {"accept-encoding"}
        }
        body = await request.read()
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session,
            session.request(
                request.method, self.upstream + request.path_qs, headers=headers, data=body
            ) as up,
        ):
            response = web.StreamResponse(
                status=up.status, headers={k: v for k, v in up.headers.items() if k.lower() not in HOP_BY_HOP}
            )
            if self.buffer_sse and up.content_type == "text/event-stream":
                held = b"".join([chunk async for chunk in up.content.iter_any()])
                await response.prepare(request)
                await response.write(held)
            else:
                await response.prepare(request)
                async for chunk in up.content.iter_any():
                    await response.write(chunk)
            await response.write_eof()
            return response


@contextlib.asynccontextmanager
async def running_proxy(upstream: str, buffer_sse: bool = False) -> AsyncIterator[Proxy]:
    proxy = Proxy(upstream, buffer_sse)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", proxy.port)
    await site.start()
    try:
        yield proxy
    finally:
        await runner.cleanup()


async def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
