"""A lean HTTP/1.1 keep-alive client for request-rate benchmarks.

aiohttp's client spends more CPU per request than the hub does answering it, so on a 2-core machine
it, not the hub, set the reservations figure. This one sends pre-built request bytes over a plain
asyncio protocol and parses only the status line, ``Content-Length`` and the body: one request in
flight per connection, as an HTTP client without pipelining does.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast


class HttpError(Exception):
    """The connection closed or answered something that is not an HTTP/1.1 response."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes


def request_bytes(method: str, path: str, host: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[Response] | None = None
        self._lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = HttpError(f"connection closed: {exc}")
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(self._lost)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0 or self._waiter is None:
            return
        head = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        if not head[0].startswith("HTTP/1.1 "):
            self._waiter.set_exception(HttpError(f"not an HTTP/1.1 response: {head[0]!r}"))
            return
        length = 0
        for header in head[1:]:
            name, _, value = header.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if len(self._buffer) < end + 4 + length:
            return
        body = bytes(self._buffer[end + 4 : end + 4 + length])
        del self._buffer[: end + 4 + length]
        self._waiter.set_result(Response(int(head[0][9:12]), body))

    async def send(self, request: bytes) -> Response:
        if self._lost is not None:
            raise self._lost
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        try:
            return await self._waiter
        finally:
            self._waiter = None


class HttpConnection:
    """One keep-alive connection; ``await conn.send(request_bytes(...))`` gives the response."""

    def __init__(self, protocol: _Connection) -> None:
        self._protocol = protocol

    @classmethod
    async def open(cls, host: str, port: int) -> HttpConnection:
        _, protocol = await asyncio.get_running_loop().create_connection(_Connection, host, port)
        return cls(protocol)

    async def send(self, request: bytes) -> Response:
        return await self._protocol.send(request)

    def close(self) -> None:
        if self._protocol.transport is not None:
            self._protocol.transport.close()
