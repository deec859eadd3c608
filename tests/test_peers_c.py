"""The C benchmark peer (bench/peers/c_server.c, ``c-epoll``): built with gcc, run as a real process.

Clients are the bench's own (``servers.ws_client`` over aiohttp) plus, where the test needs a client that
does not read or that sends its own frames, a raw socket speaking RFC 6455 by hand.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import signal
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from bench._hub import free_port
from bench.peers import servers
from bench.peers.servers import Peer, ensure_peer, make_body, nofile_limits, start_peer

NAME = "c-epoll"
WAIT = 10.0
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@asynccontextmanager
async def running() -> AsyncIterator[tuple[Peer, aiohttp.ClientSession]]:
    async with (
        start_peer(NAME, free_port()) as peer,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
    ):
        yield peer, session
    assert not peer.running


@asynccontextmanager
async def ws_clients(
    peer: Peer, session: aiohttp.ClientSession, n: int, *, others: int = 0
) -> AsyncIterator[list[list[str]]]:
    """``n`` of the bench's WebSocket clients, each with its own list of the messages it got, in order.

    Yields once the server counts them and ``others`` connected already."""
    received: list[list[str]] = [[] for _ in range(n)]
    tasks = [asyncio.create_task(peer.client(session, got.append)) for got in received]
    try:
        await peer.wait_clients(session, n + others, WAIT)
        yield received
        ended = [t for t in tasks if t.done()]
        assert not ended, [t.exception() for t in ended]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def wait_for_messages(received: list[list[str]], each: int) -> None:
    async with asyncio.timeout(WAIT):
        while any(len(got) < each for got in received):
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # and nothing more arrives


async def eventually_count(peer: Peer, session: aiohttp.ClientSession, n: int) -> None:
    async with asyncio.timeout(WAIT):
        while (await peer.stats(session))["clients"] != n:
            await asyncio.sleep(0.02)


class RawClient:
    """A WebSocket client on a plain socket: sends masked frames, reads frames only when asked to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(
        cls, port: int, key: bytes = b"dGhlIHNhbXBsZSBub25jZQ==", rcvbuf: int | None = None
    ) -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if rcvbuf is not None:  # before connecting, so the window stays small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        # A small limit: the stream stops reading from the socket beyond 2 × 16 KiB unread (until a read).
        reader, writer = await asyncio.open_connection(sock=sock, limit=16 * 1024)
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"HTTP/1.1 101 "), head
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        assert b"\r\nSec-WebSocket-Accept: " + accept + b"\r\n" in head, head
        return cls(reader, writer)

    def send(self, opcode: int, payload: bytes = b"", fin: bool = True) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", opcode | (0x80 if fin else 0), 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", opcode | (0x80 if fin else 0), 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", opcode | (0x80 if fin else 0), 0x80 | 127, n)
        masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
        self.writer.write(head + mask + masked)

    async def frame(self) -> tuple[int, bytes]:
        """The next frame from the server (which never masks): its opcode and payload."""
        async with asyncio.timeout(WAIT):
            b0, b1 = await self.reader.readexactly(2)
            assert b0 & 0x80 and not b1 & 0x80, (b0, b1)  # one final frame, unmasked
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return b0 & 0x0F, await self.reader.readexactly(n)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


# -- building ------------------------------------------------------------------------------------------


async def test_it_builds_without_warnings_and_names_its_compiler() -> None:
    gcc = shutil.which("gcc")
    assert gcc is not None, "gcc is needed to build the c-epoll peer"
    proc = await asyncio.create_subprocess_exec(
        gcc,
        *servers.CFLAGS,
        "-fsyntax-only",
        str(servers.C_SOURCE),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert (proc.returncode, out.decode()) == (0, "")

    version = await ensure_peer(NAME)
    assert version.startswith("c epoll (gcc ") and version.endswith(")")
    assert servers.C_BINARY.is_file() and os.access(servers.C_BINARY, os.X_OK)
    assert not servers._c_stale()
    assert servers.C_BINARY.parent == servers.HERE / "build"


async def test_a_stale_binary_is_rebuilt_and_a_failed_build_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "c_server.c"
    build = tmp_path / "build"
    monkeypatch.setattr(servers, "C_SOURCE", source)
    monkeypatch.setattr(servers, "BUILD", build)
    monkeypatch.setattr(servers, "C_BINARY", build / "c_server")

    source.write_text(servers.HERE.joinpath("c_server.c").read_text())
    await ensure_peer(NAME)
    built = servers.C_BINARY.stat().st_mtime_ns
    await ensure_peer(NAME)  # up to date: not rebuilt
    assert servers.C_BINARY.stat().st_mtime_ns == built

    source.write_text("int main(void) { return undeclared; }\n")
    os.utime(source, ns=(built + 10**9, built + 10**9))  # newer than the binary
    with pytest.raises(servers.PeerUnavailable, match=r"(?s)gcc failed \(1\): .*error: .*undeclared"):
        await ensure_peer(NAME)
    with pytest.raises(servers.PeerUnavailable, match="older than"):
        await ensure_peer(NAME, install=False)
    assert servers.C_BINARY.stat().st_mtime_ns == built  # the old binary is left as it was
    assert [p.name for p in build.iterdir()] == ["c_server"]  # no partial build left behind


# -- running -------------------------------------------------------------------------------------------


async def test_fifty_clients_get_every_body_once_in_order_and_the_process_stops() -> None:
    async with running() as (peer, session):
        assert peer.version.startswith("c epoll (gcc ")
        soft, hard = nofile_limits(peer.pid)
        assert soft == hard
        assert await peer.stats(session) == {"clients": 0, "peer": NAME}

        async with ws_clients(peer, session, 50) as received:
            assert (await peer.stats(session))["clients"] == 50
            bodies = [make_body(n) for n in range(100)]
            for body in bodies:  # over the session's keep-alive connection
                await peer.publish(session, body)
            await wait_for_messages(received, len(bodies))
            assert all(got == bodies for got in received)
        await eventually_count(peer, session, 0)
        pid = peer.pid
    assert peer._proc.returncode == 0  # SIGTERM: a clean exit
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_a_client_that_closes_is_no_longer_counted() -> None:
    async with running() as (peer, session), ws_clients(peer, session, 10) as received:
        ws = await session.ws_connect(peer.ws_url)
        await eventually_count(peer, session, 11)
        await ws.close()
        assert ws.close_code == 1000  # the server answered the close with a close
        await eventually_count(peer, session, 10)

        raw = await RawClient.connect(peer.port)
        await eventually_count(peer, session, 11)
        await raw.close()  # no close frame: the connection just ends
        await eventually_count(peer, session, 10)

        await peer.publish(session, "after")
        await wait_for_messages(received, 1)
        assert received == [["after"]] * 10


async def test_pings_are_answered_client_frames_discarded_and_close_echoed() -> None:
    async with running() as (peer, session):
        raw = await RawClient.connect(peer.port)
        try:
            await eventually_count(peer, session, 1)
            raw.send(0x1, b"discarded " * 10_000)  # a text frame, with a 64-bit length
            raw.send(0x2, b"x" * 300, fin=False)  # a fragmented binary message
            raw.send(0x9, b"ping-1")  # a ping between the fragments
            raw.send(0x0, b"y" * 300)
            raw.send(0xA, b"unsolicited pong")
            raw.send(0x9, b"")
            assert await raw.frame() == (0x9 + 1, b"ping-1")
            assert await raw.frame() == (0xA, b"")
            await peer.publish(session, "hello")
            assert await raw.frame() == (0x1, b"hello")
            raw.send(0x8, struct.pack("!H", 1001) + b"going")
            assert await raw.frame() == (0x8, struct.pack("!H", 1001))
            assert await asyncio.wait_for(raw.reader.read(), WAIT) == b""  # and it hangs up
            await eventually_count(peer, session, 0)
        finally:
            await raw.close()


async def test_large_bodies_reach_a_slow_reader_intact_and_in_order() -> None:
    async with running() as (peer, session):
        slow = await RawClient.connect(peer.port, key=base64.b64encode(os.urandom(16)), rcvbuf=4096)
        try:
            async with ws_clients(peer, session, 5, others=1) as fast:
                # 100 KB each, 4 MB in all: more than the kernel holds for a client that does not read
                # (~2.9 MB with Linux's default tcp_wmem), so the server's writes to it turn partial and
                # the rest waits in its own buffer for EPOLLOUT; still under the 4 MiB that would drop it.
                bodies = [f"{n:04d}".encode() + bytes([65 + n % 26]) * 100_000 for n in range(40)]
                for body in bodies:
                    await peer.publish(session, body)
                await wait_for_messages(fast, len(bodies))
                assert all(got == [b.decode() for b in bodies] for got in fast)
                for body in bodies:  # only now does the slow client read
                    assert await slow.frame() == (0x1, body)
                await peer.publish(session, "small")
                assert await slow.frame() == (0x1, b"small")
        finally:
            await slow.close()


async def test_a_client_too_far_behind_is_dropped_and_the_others_go_on() -> None:
    async with running() as (peer, session):
        stuck = await RawClient.connect(peer.port, key=base64.b64encode(os.urandom(16)), rcvbuf=4096)
        try:
            async with ws_clients(peer, session, 3, others=1) as received:
                body = "z" * 1_000_000
                for _ in range(16):  # 16 MB: past the 4 MiB a client may have pending, plus the kernel's
                    await peer.publish(session, body)
                await eventually_count(peer, session, 3)
                await peer.publish(session, "last")
                await wait_for_messages(received, 17)
                assert received == [[body] * 16 + ["last"]] * 3
        finally:
            await stuck.close()


async def test_http_keep_alive_pipelining_and_errors() -> None:
    async with running() as (peer, session):
        reader, writer = await asyncio.open_connection("127.0.0.1", peer.port)
        try:
            writer.write(
                b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /stats?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            answer = await asyncio.wait_for(reader.read(), WAIT)  # read to the end: it closes after the last
        finally:
            writer.close()
        stats = b'{"clients": 0, "peer": "c-epoll"}'
        assert answer == (
            b"HTTP/1.1 204 No Content\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s"
        ) % (len(stats), stats, len(stats), stats)

        async with session.get(peer.base + "/ws") as response:  # not an upgrade
            assert response.status == 400
        assert peer.running


async def test_sigint_also_stops_it_cleanly() -> None:
    async with start_peer(NAME, free_port()) as peer:
        os.kill(peer.pid, signal.SIGINT)
        assert await asyncio.wait_for(peer._proc.wait(), WAIT) == 0
