"""Clients for the real-time tests: WebSocket (JSON and MessagePack), SSE, long-poll, metrics, and a raw
WebSocket and a raw SSE stream on plain sockets that read only when told to (a stalled consumer; the
raw stream also checks the HTTP chunked framing byte by byte).

Every wait is bounded, so that a hub that never answers fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgpack
import orjson

from tests.conftest import Hub, hub_settings, running_hub

REGION = "eu"
CHANNEL = f"inventory:{REGION}"
WAIT = 5.0  # the longest any single expected message may take
JSON = "synchub.json"
MSGPACK = "synchub.msgpack"


def product_channel(product_id: str) -> str:
    return f"{CHANNEL}:{product_id}"


def offset(position: str) -> int:
    return int(position.rsplit(":", 1)[1])


def epoch(position: str) -> str:
    return position.rsplit(":", 1)[0]


@asynccontextmanager
async def eu_hub(database_url: str, *, warehouses: tuple[str, ...] = ("par-1",), **overrides: Any):
    """A hub of region ``eu`` (with the given warehouses there) on a real socket."""
    async with running_hub(hub_settings(database_url, region=REGION, **overrides)) as hub:
        for wid in warehouses:
            await hub.warehouse(wid, REGION)
        yield hub


async def snapshot(hub: Hub, query: str = f"region={REGION}") -> dict[str, Any]:
    status, body, _ = await hub.call("GET", f"/api/v1/inventory?{query}")
    assert status == 200, body
    return dict(body)


async def current_position(hub: Hub) -> str:
    return str((await snapshot(hub))["position"])


async def wait_for_position(hub: Hub, target: int, within: float = WAIT) -> str:
    """Wait until the region's stream reaches ``target`` (changes travel through the outbox relay)."""
    deadline = time.monotonic() + within
    while True:
        position = await current_position(hub)
        if offset(position) >= target:
            return position
        assert time.monotonic() < deadline, f"the stream stayed at {position}, expected offset {target}"
        await asyncio.sleep(0.01)


async def set_stock_many(hub: Hub, product_id: str, values: list[int], wid: str = "par-1") -> None:
    for value in values:
        await hub.stock(product_id, wid, value)


# -- WebSocket ---------------------------------------------------------------------------------------


class WsClient:
    """One WebSocket connection speaking JSON or MessagePack, with bounded receives."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, binary: bool) -> None:
        self.ws = ws
        self.binary = binary

    async def send(self, message: dict[str, Any]) -> None:
        if self.binary:
            await self.ws.send_bytes(msgpack.packb(message))
        else:
            await self.ws.send_str(orjson.dumps(message).decode())

    async def recv(self, within: float = WAIT) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.ws.receive(), within)
        if self.binary:
            assert frame.type == aiohttp.WSMsgType.BINARY, f"expected a binary frame, got {frame}"
            decoded = msgpack.unpackb(frame.data, raw=False)
        else:
            assert frame.type == aiohttp.WSMsgType.TEXT, f"expected a text frame, got {frame}"
            decoded = orjson.loads(frame.data)
        assert isinstance(decoded, dict), decoded
        return decoded

    async def request(self, message: dict[str, Any], within: float = WAIT) -> dict[str, Any]:
        """Send, and return the next message (the reply, when nothing else is in flight)."""
        await self.send(message)
        return await self.recv(within)

    async def subscribe(self, channel: str = CHANNEL, **fields: Any) -> dict[str, Any]:
        reply = await self.request({"type": "subscribe", "channel": channel, **fields})
        assert reply["type"] == "subscribed", reply
        return reply

    async def events(self, count: int, within: float = WAIT) -> list[dict[str, Any]]:
        """The next ``count`` messages, which must all be events."""
        received = []
        for _ in range(count):
            message = await self.recv(within)
            assert message["type"] == "event", f"expected an event, got {message} after {received}"
            received.append(message)
        return received

    async def assert_nothing_pending(self) -> None:
        """A ping's pong is the next message: nothing was queued before it."""
        ident = f"barrier-{time.monotonic_ns()}"
        message = await self.request({"type": "ping", "id": ident})
        assert message == {"type": "pong", "id": ident}, f"expected only the pong, got {message}"

    async def close_code(self, within: float = WAIT) -> int | None:
        """Read until the server closes; return its close code (events before it are skipped)."""
        deadline = time.monotonic() + within
        while True:
            frame = await asyncio.wait_for(self.ws.receive(), max(0.01, deadline - time.monotonic()))
            if frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                return self.ws.close_code
            if frame.type == aiohttp.WSMsgType.ERROR:
                return self.ws.close_code


@asynccontextmanager
async def ws_client(
    hub: Hub,
    protocol: str = JSON,
    *,
    session: aiohttp.ClientSession | None = None,
    query: str = "",
    headers: dict[str, str] | None = None,
) -> AsyncIterator[WsClient]:
    url = hub.base + "/api/v1/ws" + (f"?{query}" if query else "")
    async with (session or hub.session).ws_connect(
        url,
        protocols=(protocol,),
        headers=headers,
        heartbeat=None,
        timeout=aiohttp.ClientWSTimeout(ws_close=2),
    ) as ws:
        assert ws.protocol == protocol
        yield WsClient(ws, binary=protocol == MSGPACK)


def upgrade_headers() -> dict[str, str]:
    return {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Protocol": JSON,
    }


# -- Server-Sent Events ------------------------------------------------------------------------------


@dataclass
class SseMessage:
    event: str = "message"
    id: str | None = None
    data: str = ""
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return orjson.loads(self.data)


class SseStream:
    """Parses an ``text/event-stream`` response line by line (the framing of the SSE spec)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def _line(self, within: float) -> str | None:
        raw = await asyncio.wait_for(self.response.content.readline(), within)
        if not raw:
            return None  # end of stream
        assert raw.endswith(b"\n"), f"a truncated line at the end of the stream: {raw!r}"
        return raw.decode().rstrip("\n").removesuffix("\r")

    async def next(self, within: float = WAIT) -> SseMessage | None:
        """The next message block (blank-line terminated), or None at the end of the stream.
        Blocks with only comments are returned too (``comments`` set, nothing else)."""
        message = SseMessage()
        data: list[str] = []
        seen = False
        deadline = time.monotonic() + within
        while True:
            line = await self._line(max(0.01, deadline - time.monotonic()))
            if line is None:
                assert not seen, f"the stream ended inside a message: {message}"
                return None
            if line == "":
                if seen:
                    message.data = "\n".join(data)
                    return message
                continue
            seen = True
            read_sse_line(message, data, line)

    async def next_event(self, within: float = WAIT) -> SseMessage:
        """The next message that is not a bare comment or retry block."""
        deadline = time.monotonic() + within
        while True:
            message = await self.next(max(0.01, deadline - time.monotonic()))
            assert message is not None, "the stream ended"
            if message.data or message.event != "message":
                return message

    async def opening(self) -> tuple[int, SseMessage]:
        """The ``retry:`` block and the ``ready`` event every stream starts with."""
        first = await self.next()
        assert first is not None and first.retry is not None, f"expected a retry block first, got {first}"
        ready = await self.next_event()
        assert ready.event == "ready", ready
        return first.retry, ready

    async def inventory(self, count: int, within: float = WAIT) -> list[SseMessage]:
        received = []
        for _ in range(count):
            message = await self.next_event(within)
            assert message.event == "inventory", (
                f"expected an inventory event, got {message} after {received}"
            )
            received.append(message)
        return received

    async def read_to_end(self, within: float = WAIT) -> list[SseMessage]:
        messages = []
        deadline = time.monotonic() + within
        while True:
            message = await self.next(max(0.01, deadline - time.monotonic()))
            if message is None:
                return messages
            messages.append(message)


@asynccontextmanager
async def sse_stream(
    hub: Hub,
    channels: str = CHANNEL,
    *,
    session: aiohttp.ClientSession | None = None,
    last_event_id: str | None = None,
    query: str = "",
    headers: dict[str, str] | None = None,
) -> AsyncIterator[SseStream]:
    all_headers = {"Accept": "text/event-stream", **(headers or {})}
    if last_event_id is not None:
        all_headers["Last-Event-ID"] = last_event_id
    url = f"{hub.base}/api/v1/sse?channels={channels}" + (f"&{query}" if query else "")
    async with (session or hub.session).get(
        url, headers=all_headers, timeout=aiohttp.ClientTimeout(total=None, sock_connect=WAIT)
    ) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/event-stream")
        yield SseStream(response)


def read_sse_line(message: SseMessage, data: list[str], line: str) -> None:
    """One line of an event-stream message: a comment or a field (``data`` lines gathered in ``data``)."""
    if line.startswith(":"):
        message.comments.append(line[1:].strip())
        return
    name, _, value = line.partition(":")
    value = value.removeprefix(" ")
    if name == "event":
        message.event = value
    elif name == "id":
        message.id = value
    elif name == "data":
        data.append(value)
    elif name == "retry":
        message.retry = int(value)


def parse_sse(text: str) -> list[SseMessage]:
    """The messages of a ``text/event-stream`` body (comment-only blocks included, as in :class:`SseStream`)."""
    messages = []
    for block in text.split("\n\n"):
        if not block:
            continue
        message = SseMessage()
        data: list[str] = []
        for line in block.split("\n"):
            read_sse_line(message, data, line)
        message.data = "\n".join(data)
        messages.append(message)
    return messages


_CHUNK_SIZE = re.compile(rb"[0-9a-f]+\r\n")


class RawSse:
    """An SSE stream on a plain socket that reads only when told to (a small receive buffer makes a
    stalled consumer, as for :class:`RawWebSocket`), and checks the body's HTTP/1.1 chunked framing byte
    by byte: the hub frames its chunks itself."""

    def __init__(self, sock: socket.socket, head: bytes, leftover: bytes) -> None:
        self.sock = sock
        self.head = head
        self.buffer = leftover
        self.chunks: list[bytes] = []  # every chunk's payload so far (the empty last one included)
        self.closed = False  # the server closed the connection

    @classmethod
    async def connect(cls, hub: Hub, channels: str = CHANNEL, *, receive_buffer: int | None = None) -> RawSse:
        url = urlsplit(hub.base)
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, (url.hostname, url.port)), WAIT)
        request = (
            f"GET /api/v1/sse?channels={channels} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            "Accept: text/event-stream\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), WAIT)
            assert chunk, "the server closed before answering"
            data += chunk
        head, _, leftover = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"\r\ntransfer-encoding: chunked" in head.lower(), head
        return cls(sock, head, leftover)

    async def _more(self, deadline: float) -> bool:
        """Read what the server sent; False once it closed the connection."""
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"nothing more within the time given ({len(self.chunks)} chunks read)"
        try:
            data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.sock, 65536), remaining)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return False
        self.buffer += data
        return True

    async def chunk(self, within: float = WAIT) -> bytes | None:
        """The next chunk's payload (b"" for the empty chunk that ends the body), or None if the
        connection closed first. A malformed chunk fails the test."""
        deadline = time.monotonic() + within
        while True:
            match = _CHUNK_SIZE.match(self.buffer)
            if match is not None:
                size = int(match.group()[:-2], 16)
                end = match.end() + size
                if len(self.buffer) >= end + 2:
                    assert self.buffer[end : end + 2] == b"\r\n", (
                        f"a chunk not ended by CRLF: {self.buffer[:200]!r}"
                    )
                    payload = self.buffer[match.end() : end]
                    self.buffer = self.buffer[end + 2 :]
                    self.chunks.append(payload)
                    return payload
            else:
                assert len(self.buffer) < 10 and b"\n" not in self.buffer, (
                    f"not a chunk size line: {self.buffer[:200]!r}"
                )
            if not await self._more(deadline):
                assert not self.buffer, f"the connection closed inside a chunk: {self.buffer[:200]!r}"
                return None

    def messages(self) -> list[SseMessage]:
        """The messages of every chunk read so far (a message never spans chunks: each is whole)."""
        body = b"".join(self.chunks).decode()
        assert body.endswith("\n\n") or not body, f"the chunks end inside a message: {body[-200:]!r}"
        return parse_sse(body)

    async def read_messages(self, count: int, within: float = WAIT) -> list[SseMessage]:
        """Read until at least ``count`` messages (comments included) have come."""
        deadline = time.monotonic() + within
        while len(self.messages()) < count:
            payload = await self.chunk(max(0.01, deadline - time.monotonic()))
            assert payload, f"the stream ended after {len(self.messages())} messages"
        return self.messages()

    async def read_to_end(self, within: float = WAIT) -> tuple[list[SseMessage], bool]:
        """Every message up to the end of the connection, and whether the body was ended properly (its
        empty chunk, then nothing more)."""
        deadline = time.monotonic() + within
        while True:
            payload = await self.chunk(max(0.01, deadline - time.monotonic()))
            if payload is None:
                return self.messages(), False
            if payload == b"":
                ended = not await self._more(deadline) and not self.buffer
                return self.messages(), ended

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# -- long-poll ---------------------------------------------------------------------------------------


async def poll(
    hub: Hub,
    channels: str = CHANNEL,
    *,
    cursor: str | None = None,
    wait: int | str | None = None,
    session: aiohttp.ClientSession | None = None,
    headers: dict[str, str] | None = None,
    query: str = "",
) -> tuple[int, Any]:
    params = {"channels": channels}
    if cursor is not None:
        params["cursor"] = cursor
    if wait is not None:
        params["timeout"] = str(wait)
    url = hub.base + "/api/v1/poll" + (f"?{query}" if query else "")
    limit = (float(wait) if isinstance(wait, int) else 25.0) + WAIT
    async with (session or hub.session).get(
        url, params=params, headers=headers, timeout=aiohttp.ClientTimeout(total=limit)
    ) as response:
        body = await response.read()
        return response.status, orjson.loads(body) if body else None


# -- metrics -----------------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


async def metrics(hub: Hub) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with hub.session.get(hub.base + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or line.startswith("#"):
            continue
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        samples[(match.group(1), labels)] = float(match.group(3))
    return samples


async def metric(hub: Hub, name: str, **labels: str) -> float:
    """The sample ``name`` with (at least) these labels; 0 when absent."""
    wanted = set(labels.items())
    values = [v for (n, ls), v in (await metrics(hub)).items() if n == name and wanted <= ls]
    assert len(values) <= 1, f"{name}{labels} matches several samples"
    return values[0] if values else 0.0


async def eventually(check: Callable[[], Awaitable[bool]], within: float = WAIT, what: str = "") -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        await asyncio.sleep(0.02)


# -- a raw WebSocket that reads only when told to ----------------------------------------------------


def client_frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, masked: bool = True
) -> bytes:
    """A client frame as RFC 6455 §5.2 lays it out — or, with ``rsv`` or ``masked=False``, as it
    forbids: the shortest length encoding, a random mask."""
    size = len(payload)
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    flag = 0x80 if masked else 0
    if size < 126:
        head = struct.pack("!BB", first, flag | size)
    elif size < 65536:
        head = struct.pack("!BBH", first, flag | 126, size)
    else:
        head = struct.pack("!BBQ", first, flag | 127, size)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawWebSocket:
    """A WebSocket client on a plain socket with a tiny receive buffer. Between calls nothing reads
    the socket, so the kernel's buffers fill up and the server's writes stall: a stuck consumer."""

    def __init__(self, sock: socket.socket, leftover: bytes) -> None:
        self.sock = sock
        self.buffer = leftover
        self.pings = b""  # the ping frames read (whole), concatenated

    @classmethod
    async def connect(
        cls, hub: Hub, protocol: str = JSON, receive_buffer: int = 4096, early: bytes = b""
    ) -> RawWebSocket:
        """``early``: bytes sent in the same write as the upgrade request, before the 101."""
        url = urlsplit(hub.base)
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, (url.hostname, url.port)), WAIT)
        key = base64.b64encode(os.urandom(16)).decode()
        head = (
            f"GET /api/v1/ws HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: {protocol}\r\n\r\n"
        )
        await loop.sock_sendall(sock, head.encode() + early)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), WAIT)
            assert chunk, "the server closed during the handshake"
            data += chunk
        response, _, leftover = data.partition(b"\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 101"), response
        return cls(sock, leftover)

    async def send_text(self, text: str) -> None:
        await self.send(client_frame(0x1, text.encode()))

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def next_frame(self, within: float = WAIT) -> tuple[int, bytes] | None:
        """The next frame the server sent (opcode, payload), or None if the connection ended."""
        deadline = time.monotonic() + within
        while (frame := self._frame()) is None:
            if not await self._read_more(deadline, f"no frame within {within} s"):
                return None
        return frame

    async def _read_more(self, deadline: float, timed_out: str) -> bool:
        """Read what the server sent into the buffer; False once the connection ended."""
        remaining = deadline - time.monotonic()
        assert remaining > 0, timed_out
        try:
            chunk = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.sock, 65536), remaining)
        except ConnectionResetError:
            return False
        self.buffer += chunk
        return bool(chunk)

    def _frame(self) -> tuple[int, bytes] | None:
        data = self.buffer
        if len(data) < 2:
            return None
        opcode, length, start = data[0] & 0x0F, data[1] & 0x7F, 2
        if length == 126:
            if len(data) < 4:
                return None
            (length,) = struct.unpack("!H", data[2:4])
            start = 4
        elif length == 127:
            if len(data) < 10:
                return None
            (length,) = struct.unpack("!Q", data[2:10])
            start = 10
        if len(data) < start + length:
            return None
        self.buffer = data[start + length :]
        return opcode, data[start : start + length]

    async def read_until_close(self, within: float = WAIT) -> tuple[list[dict[str, Any]], int | None]:
        """Everything the server sent, up to its close frame: (the messages, the close code).
        The close code is None when the connection ended without a close frame."""
        deadline = time.monotonic() + within
        messages: list[dict[str, Any]] = []
        while True:
            while (frame := self._frame()) is not None:
                opcode, payload = frame
                if opcode == 0x8:
                    return messages, struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                if opcode == 0x1:
                    messages.append(orjson.loads(payload))
                elif opcode == 0x9:
                    self.pings += bytes([0x89, len(payload)]) + payload
            timed_out = f"no close frame within {within} s ({len(messages)} messages read)"
            if not await self._read_more(deadline, timed_out):
                return messages, None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
