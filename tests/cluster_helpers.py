"""Real hub processes, private Redis servers and reconnecting clients for the multi-node tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgpack

from tests.conftest import JWT_SECRET


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    name: str
    port: int
    proc: asyncio.subprocess.Process

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/ws"

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                await self.kill()


async def start_node(
    name: str,
    database_url: str,
    redis_url: str | None = None,
    prefix: str = "synchub:",
    region: str = "eu",
    extra: tuple[str, ...] = (),
    log_file: str | None = None,
) -> Node:
    """A real ``synchub serve`` process on a free port, once it answers /readyz; its log (stderr) goes
    to ``log_file`` if given (else nowhere)."""
    port = free_port()
    workdir = tempfile.mkdtemp(prefix=f"synchub-{name}-")
    args = ["--port", str(port), "--database-url", database_url, "--region", region, "--node-id", name]
    # A local file, opened once per node and handed to the child (closed here once it has its own copy).
    log = None if log_file is None else open(log_file, "ab")  # noqa: ASYNC230, SIM115
    if redis_url:
        args += ["--redis-url", redis_url, "--redis-prefix", prefix]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hub.cli",
        "serve",
        *args,
        "--log-level",
        "WARNING",
        *extra,
        # Rate limits off unless ``extra`` turns them on (--rate-limits on): these tests push bursts from
        # one address that the production defaults would throttle (tests/conftest.py, GENEROUS_LIMITS).
        env={
            "SYNCHUB_RATE_LIMITS": "off",
            **os.environ,
            "SYNCHUB_JWT_SECRET": JWT_SECRET,
            "PYTHONPATH": os.getcwd(),
        },
        cwd=workdir,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL if log is None else log,
    )
    if log is not None:
        log.close()  # the child has its own copy
    node = Node(name, port, proc)
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            if proc.returncode is not None:
                raise AssertionError(f"node {name} exited with {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(node.base + "/readyz") as response:
                    if response.status == 200:
                        return node
            await asyncio.sleep(0.05)
    await node.kill()
    raise AssertionError(f"node {name} did not become ready")


@dataclass
class RedisServer:
    port: int
    proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = await asyncio.create_subprocess_exec(
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(200):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            await asyncio.sleep(0.02)
        raise AssertionError("private redis-server did not start")

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()


@dataclass
class Client:
    """A client that follows ``inventory:eu`` on one of several nodes, resuming on the next one when
    its connection drops, and applying a resync by reading the snapshot."""

    transport: str  # "ws-json", "ws-msgpack", "sse" or "poll"
    nodes: list[Node]
    start_index: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)  # every event received, in order
    versions: dict[tuple[str, str], int] = field(default_factory=dict)  # applied state
    position: str | None = None
    resyncs: int = 0
    reconnects: int = 0
    stopping: bool = False
    task: asyncio.Task[None] | None = None

    def apply(self, data: dict[str, Any]) -> None:
        key = (data["product_id"], data["warehouse_id"])
        self.versions[key] = max(self.versions.get(key, 0), data["version"])

    def on_event(self, message: dict[str, Any]) -> None:
        self.events.append(message["data"])
        self.position = message["position"]
        self.apply(message["data"])

    async def resync(self, session: aiohttp.ClientSession, node: Node) -> None:
        self.resyncs += 1
        async with session.get(node.base + "/api/v1/inventory?region=eu") as response:
            if response.status != 200:  # e.g. 503 while Redis restarts: reconnect and try again
                raise aiohttp.ClientError(f"snapshot answered {response.status}")
            snapshot = await response.json()
        for row in snapshot["items"]:
            self.apply(row)
        self.position = snapshot["position"]

    async def run(self, ready: asyncio.Event) -> None:
        index = self.start_index
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=2)
        ) as session:
            while not self.stopping:
                node = self.nodes[index % len(self.nodes)]
                if node.proc.returncode is not None:
                    index += 1
                    continue
                try:
                    await getattr(self, "_" + self.transport.split("-")[0])(session, node, ready)
                except (aiohttp.ClientError, ConnectionError, TimeoutError, asyncio.IncompleteReadError):
                    pass
                if not self.stopping:
                    self.reconnects += 1
                    index += 1
                    await asyncio.sleep(0.05)

    async def _ws(self, session: aiohttp.ClientSession, node: Node, ready: asyncio.Event) -> None:
        binary = self.transport == "ws-msgpack"
        protocol = "synchub.msgpack" if binary else "synchub.json"
        async with session.ws_connect(node.ws, protocols=(protocol,), heartbeat=5) as ws:
            subscribe: dict[str, Any] = {"type": "subscribe", "channel": "inventory:eu"}
            if self.position:
                subscribe["since"] = self.position
            if binary:
                await ws.send_bytes(msgpack.packb(subscribe))
            else:
                await ws.send_json(subscribe)
            async for frame in ws:
                if self.stopping:
                    return
                if frame.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    return
                message = msgpack.unpackb(frame.data) if binary else frame.json()
                if message["type"] == "event":
                    self.on_event(message)
                elif message["type"] == "subscribed":
                    self.position = message["position"]
                    ready.set()
                elif message["type"] == "resync":
                    await self.resync(session, node)
                    if message.get("reason") == "position_expired":
                        return  # resubscribe from the snapshot's position
                    self.position = message["position"]

    async def _sse(self, session: aiohttp.ClientSession, node: Node, ready: asyncio.Event) -> None:
        headers = {"Last-Event-ID": self.position} if self.position else {}
        async with session.get(node.base + "/api/v1/sse?channels=inventory:eu", headers=headers) as response:
            if response.status != 200:
                return
            event, ident, data = "message", None, None
            async for raw in response.content:
                if self.stopping:
                    return
                line = raw.decode().rstrip("\n")
                if line.startswith("id: "):
                    ident = line[4:]
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif line == "" and data is not None:
                    import json

                    body = json.loads(data)
                    if event == "inventory":
                        self.on_event(body)
                    elif event == "ready":
                        self.position = ident
                        ready.set()
                    elif event == "resync":
                        await self.resync(session, node)
                        if body.get("reason") == "position_expired":
                            return
                        self.position = body["position"]
                    event, ident, data = "message", None, None

    async def _poll(self, session: aiohttp.ClientSession, node: Node, ready: asyncio.Event) -> None:
        while not self.stopping:
            query = "channels=inventory:eu&timeout=1" + (f"&cursor={self.position}" if self.position else "")
            async with session.get(node.base + "/api/v1/poll?" + query) as response:
                body = await response.json()
                if response.status == 410:
                    await self.resync(session, node)
                    continue
                if response.status != 200:
                    raise aiohttp.ClientError(f"poll answered {response.status}")
            for message in body["events"]:
                self.on_event(message)
            self.position = body["cursor"]
            ready.set()


def versions_by_key(events: list[dict[str, Any]]) -> dict[tuple[str, str], list[int]]:
    seen: dict[tuple[str, str], list[int]] = defaultdict(list)
    for data in events:
        seen[(data["product_id"], data["warehouse_id"])].append(data["version"])
    return dict(seen)
