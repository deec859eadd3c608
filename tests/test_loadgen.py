"""The fan-out load generator (bench/loadgen.py): real sockets, real worker processes.

A small aiohttp server in the test speaks each wire the generator does (a synchub-like WebSocket with a
subscribe handshake, Server-Sent Events over chunked HTTP/1.1, Engine.IO/Socket.IO over WebSocket); the
parsers are also driven byte by byte without processes, for the splits a real network seldom shows.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import resource
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from bench._hub import free_port
from bench.loadgen import (
    _OPEN,
    BUCKET_US,
    BUCKETS,
    ConnectError,
    Histogram,
    LoadGen,
    Target,
    _Shared,
    _SseClient,
    _WsClient,
)
from bench.peers.servers import make_body, start_peer

WAIT = 10.0


async def eventually(check: Callable[[], Any], within: float = WAIT) -> None:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def event_json(n: int, ts: int | None = None) -> bytes:
    """A synchub-like event: ``ts`` inside ``data``, a position at the top level."""
    ts = time.time_ns() // 1000 if ts is None else ts
    return b'{"type":"event","channel":"inventory:eu","position":"e:%d","data":{"n":%d,"ts":%d}}' % (n, n, ts)


# -- a test server ------------------------------------------------------------------------------------


@dataclass
class Server:
    port: int = 0
    ws: set[web.WebSocketResponse] = field(default_factory=set)
    sio: set[web.WebSocketResponse] = field(default_factory=set)
    sse: set[asyncio.Queue[bytes | None]] = field(default_factory=set)
    remotes: set[str] = field(default_factory=set)
    pongs: int = 0
    sio_pongs: int = 0
    subscribes: list[str] = field(default_factory=list)

    async def broadcast(self, payload: bytes) -> None:
        text = payload.decode()
        await asyncio.gather(*(ws.send_str(text) for ws in tuple(self.ws)))

    async def ping_all(self) -> None:
        await asyncio.gather(*(ws.ping(b"hi") for ws in tuple(self.ws)))

    def sse_publish(self, chunk: bytes | None) -> None:
        for queue in tuple(self.sse):
            queue.put_nowait(chunk)


@asynccontextmanager
async def serving() -> AsyncIterator[Server]:
    state = Server()

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("synchub.json",), autoping=False)
        await ws.prepare(request)
        state.remotes.add(str(request.remote))
        if ws.ws_protocol != "synchub.json":
            state.ws.add(ws)  # a plain client: ready once open
        try:
            async for message in ws:
                if message.type is WSMsgType.PONG:
                    state.pongs += 1
                elif message.type is WSMsgType.TEXT:  # the subscribe: answered, then events flow
                    state.subscribes.append(message.data)
                    await ws.send_str('{"type":"subscribed","channel":"inventory:eu","position":"e:0"}')
                    state.ws.add(ws)
        finally:
            state.ws.discard(ws)
        return ws

    async def socketio(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        await ws.send_str('0{"sid":"s1","upgrades":[],"pingInterval":25000,"pingTimeout":20000}')
        try:
            async for message in ws:
                if message.type is not WSMsgType.TEXT:
                    continue
                if message.data == "40":
                    state.sio.add(ws)
                    await ws.send_str('40{"sid":"n1"}')
                elif message.data == "3":
                    state.sio_pongs += 1
        finally:
            state.sio.discard(ws)
        return ws

    async def sse(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        state.sse.add(queue)
        try:
            await response.write(b'retry: 1000\n\nid: e:0\nevent: ready\ndata: {"position":"e:0"}\n\n')
            while (chunk := await queue.get()) is not None:
                await response.write(chunk)
        finally:
            state.sse.discard(queue)
        return response  # a None ends the stream (aiohttp writes the last, empty chunk)

    app = web.Application()
    app.router.add_get("/ws", websocket)
    app.router.add_get("/socket.io/", socketio)
    app.router.add_get("/sse", sse)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = int(runner.addresses[0][1])
    try:
        yield state
    finally:
        for queue in tuple(state.sse):
            queue.put_nowait(None)
        await runner.cleanup()


def synchub_like(port: int) -> Target:
    return Target(
        "ws",
        "127.0.0.1",
        port,
        "/ws",
        subprotocol="synchub.json",
        send=b'{"type":"subscribe","channel":"inventory:eu"}',
        ready=b'"type":"subscribed"',
        event=b'"type":"event"',
        resume_send=b'{"type":"subscribe","channel":"inventory:eu","since":"{position}"}',
    )


def sse_target(port: int) -> Target:
    return Target("sse", "127.0.0.1", port, "/sse", ready=b"event: ready", event=b"event: inventory")


def assert_gone(pids: list[int]) -> None:
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# -- through worker processes ---------------------------------------------------------------------------


async def test_every_client_gets_every_event_over_two_workers_and_two_source_addresses() -> None:
    async with serving() as server, LoadGen(workers=2, sources=2) as gen:
        assert len(set(gen.worker_pids)) == 2
        assert [w["loop"] for w in gen.worker_info] == ["uvloop", "uvloop"]
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        hard = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        assert all(w["nofile"] == hard for w in gen.worker_info)  # the soft limit raised to the hard one
        assert await gen.connect(synchub_like(server.port), 50, timeout=WAIT) == 50
        assert len(server.ws) == 50  # each was subscribed before it counted as ready
        assert set(server.subscribes) == {'{"type":"subscribe","channel":"inventory:eu"}'}
        assert server.remotes == {"127.0.0.2", "127.0.0.3"}
        await gen.reset()
        await server.ping_all()  # answered with pongs, not counted
        for n in range(1, 21):
            await server.broadcast(event_json(n))
            if n == 10:
                await server.broadcast(b'{"type":"pong"}')  # not an event: not counted
        assert await gen.wait_received(1000, WAIT) == 1000
        await asyncio.sleep(0.1)  # nothing more arrives
        stats = await gen.collect()
        assert stats.received == 1000
        assert stats.min_per_connection == stats.max_per_connection == 20
        assert stats.per_connection == {20: 50}
        assert (stats.connections, stats.open, stats.ended, stats.failed, stats.no_ts) == (50, 50, 0, 0, 0)
        assert 0 < stats.p50_ms <= stats.p99_ms <= stats.max_ms < 5000
        assert stats.histogram.total == 1000
        assert stats.cpu_s > 0 and sorted(stats.worker_pids) == sorted(gen.worker_pids)
        await eventually(lambda: server.pongs == 50)
        assert set(await gen.positions()) == {"e:20"}

        await gen.reset()
        stats = await gen.collect()
        assert (stats.received, stats.histogram.total, stats.max_per_connection) == (0, 0, 0)

        assert await gen.disconnect() == 50
        await eventually(lambda: not server.ws)
        stats = await gen.collect()
        assert (stats.open, stats.ended) == (0, 0)  # closed by us: not "ended"
        pids = gen.worker_pids
    assert_gone(pids)


async def test_a_reconnect_storm_resumes_each_slot_from_its_last_position() -> None:
    async with serving() as server, LoadGen(workers=2, sources=2) as gen:
        target = synchub_like(server.port)
        await gen.connect(target, 10, timeout=WAIT)
        for n in range(1, 4):
            await server.broadcast(event_json(n))
        assert await gen.wait_received(30, WAIT) == 30
        assert await gen.disconnect(abort=True) == 10  # reset at once, no close handshake
        await eventually(lambda: not server.ws)
        server.subscribes.clear()
        assert await gen.connect(target, 10, timeout=WAIT, resume=True) == 10
        assert server.subscribes == ['{"type":"subscribe","channel":"inventory:eu","since":"e:3"}'] * 10
        for n in range(4, 6):
            await server.broadcast(event_json(n))
        assert await gen.wait_received(50, WAIT) == 50
        stats = await gen.collect()
        assert stats.per_connection == {5: 10}  # each slot carried on counting: 3 + 2
        assert (stats.connections, stats.open, stats.ended) == (10, 10, 0)
        assert set(await gen.positions()) == {"e:5"}

        await gen.disconnect()  # without resume, a new generation starts afresh
        await eventually(lambda: not server.ws)
        server.subscribes.clear()
        await gen.connect(target, 10, timeout=WAIT)
        assert server.subscribes == ['{"type":"subscribe","channel":"inventory:eu"}'] * 10
        assert (await gen.collect()).per_connection == {0: 10}
        assert set(await gen.positions()) == {None}


async def test_more_workers_are_started_when_one_would_hold_too_many_connections() -> None:
    async with serving() as server, LoadGen(workers=1, per_worker=20, sources=3) as gen:
        assert len(gen.worker_pids) == 1
        await gen.connect(Target("ws", "127.0.0.1", server.port, "/ws"), 50, timeout=WAIT)
        assert len(set(gen.worker_pids)) == 3  # max(1, ceil(50 / 20))
        await eventually(lambda: len(server.ws) == 50)
        assert server.remotes == {"127.0.0.2", "127.0.0.3", "127.0.0.4"}
        await server.broadcast(event_json(1))
        assert await gen.wait_received(50, WAIT) == 50
        stats = await gen.collect()
        assert stats.per_connection == {1: 50} and len(stats.worker_pids) == 3
        pids = gen.worker_pids
    assert_gone(pids)


async def test_connections_the_server_closes_are_counted_as_ended() -> None:
    async with serving() as server, LoadGen(workers=2, sources=2) as gen:
        await gen.connect(Target("ws", "127.0.0.1", server.port, "/ws"), 20, timeout=WAIT)
        await eventually(lambda: len(server.ws) == 20)
        await server.broadcast(event_json(1))
        await gen.wait_received(20, WAIT)
        closing = list(server.ws)[:15]
        await asyncio.gather(*(ws.close(code=1001, message=b"going away") for ws in closing))

        async def fifteen_ended() -> bool:
            return (await gen.collect()).ended == 15

        await eventually(fifteen_ended)
        stats = await gen.collect()
        assert (stats.connections, stats.open, stats.ended, stats.received) == (20, 5, 15, 20)


async def test_sse_over_chunked_http_counts_events_only() -> None:
    async with serving() as server, LoadGen(workers=2, sources=2) as gen:
        await gen.connect(sse_target(server.port), 50, timeout=WAIT)
        assert len(server.sse) == 50
        for n in range(1, 21):
            block = b"id: e:%d\nevent: inventory\ndata: %s\n\n" % (n, event_json(n))
            if n % 5 == 0:
                block += b": heartbeat\n\n"  # a comment: not an event
            server.sse_publish(block)
        assert await gen.wait_received(1000, WAIT) == 1000
        stats = await gen.collect()
        assert stats.min_per_connection == stats.max_per_connection == 20
        assert (stats.ended, stats.no_ts) == (0, 0) and stats.p50_ms > 0
        assert set(await gen.positions()) == {"e:20"}

        server.sse_publish(None)  # the server ends every stream

        async def all_ended() -> bool:
            return (await gen.collect()).ended == 50

        await eventually(all_ended)


async def test_socketio_clients_connect_the_namespace_count_events_and_answer_pings() -> None:
    async with serving() as server, LoadGen(workers=2, sources=2) as gen:
        target = Target("socketio", "127.0.0.1", server.port, "/socket.io/?EIO=4&transport=websocket")
        await gen.connect(target, 20, timeout=WAIT)
        assert len(server.sio) == 20
        for n in range(1, 6):
            body = make_body(n).replace('"', '\\"')
            await asyncio.gather(*(ws.send_str(f'42["m","{body}"]') for ws in server.sio))
        await asyncio.gather(*(ws.send_str("2") for ws in server.sio))  # Engine.IO ping
        assert await gen.wait_received(100, WAIT) == 100
        await eventually(lambda: server.sio_pongs == 20)
        stats = await gen.collect()
        assert stats.per_connection == {5: 20}
        assert stats.no_ts == 0 and stats.p50_ms > 0


async def test_a_real_peer_process() -> None:
    async with (
        start_peer("aiohttp", free_port()) as peer,
        LoadGen(workers=2, sources=2) as gen,
        aiohttp.ClientSession() as session,
    ):
        await gen.connect(Target.for_peer(peer), 50, timeout=WAIT)
        await peer.wait_clients(session, 50, WAIT)
        for n in range(20):
            await peer.publish(session, make_body(n))
        assert await gen.wait_received(1000, WAIT) == 1000
        stats = await gen.collect()
        assert stats.min_per_connection == stats.max_per_connection == 20
        assert stats.ended == 0 and stats.p50_ms > 0


async def test_connect_says_how_many_are_ready_when_some_cannot_connect() -> None:
    port = free_port()  # nothing listens there
    async with LoadGen(workers=2, sources=2) as gen:
        with pytest.raises(ConnectError, match=r"0 of 6 connections .* ready .*6 not: 6 × ConnectionRefused"):
            await gen.connect(Target("ws", "127.0.0.1", port, "/ws"), 6, timeout=5)
        assert (await gen.collect()).failed == 6


# -- the parsers, without processes --------------------------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", first, n) + payload
    if n < 65536:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


def client_frames(written: list[bytes]) -> list[tuple[int, bytes]]:
    """Decode what the client wrote after its request: (opcode, unmasked payload) per frame."""
    frames = []
    for data in written:
        if data.startswith(b"GET "):
            continue
        assert data[1] & 0x80, "a client frame must be masked"
        size, pos = data[1] & 0x7F, 2
        if size == 126:
            size, pos = struct.unpack("!H", data[2:4])[0], 4
        elif size == 127:
            size, pos = struct.unpack("!Q", data[2:10])[0], 10
        key, payload = data[pos : pos + 4], data[pos + 4 : pos + 4 + size]
        frames.append((data[0] & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(payload))))
    return frames


def open_ws(target: Target | None = None) -> tuple[_WsClient, _Shared, FakeTransport]:
    shared = _Shared()
    target = target or Target("ws", "127.0.0.1", 1, "/ws", event=b'"type":"event"')
    client = _WsClient(shared, target, None)
    transport = FakeTransport()
    client.connection_made(transport)  # type: ignore[arg-type]
    request = transport.written[0]
    key = request.split(b"Sec-WebSocket-Key: ")[1].split(b"\r\n")[0]
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    protocol = f"Sec-WebSocket-Protocol: {target.subprotocol}\r\n".encode() if target.subprotocol else b""
    client.data_received(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n" + protocol + b"\r\n"
    )
    assert client.phase == _OPEN and client.live == (target.ready is None)
    return client, shared, transport


async def test_frames_split_across_reads_at_every_byte_are_each_counted_once() -> None:
    stream = b"".join(server_frame(0x1, event_json(n)) for n in range(1, 4))
    for cut in range(1, len(stream)):
        client, shared, _ = open_ws()
        client.data_received(stream[:cut])
        client.data_received(stream[cut:])
        assert (shared.received, client.count, client.position) == (3, 3, b"e:3"), cut
    client, shared, _ = open_ws()
    for i in range(len(stream)):  # one byte per read
        client.data_received(stream[i : i + 1])
    assert shared.received == 3 and sum(shared.hist) == 3


async def test_16_and_64_bit_lengths_fragments_and_control_frames() -> None:
    client, shared, transport = open_ws()
    ts = time.time_ns() // 1000 - 2_500  # sent 2.5 ms ago
    medium = event_json(1, ts)[:-2] + b',"pad":"' + b"m" * 1000 + b'"}}'
    large = event_json(2, ts)[:-2] + b',"pad":"' + b"L" * 100_000 + b'"}}'
    assert 125 < len(medium) < 65536 < len(large)
    stream = server_frame(0x1, medium) + server_frame(0x1, large)
    random.seed(7)
    pos = 0
    while pos < len(stream):  # reads of random sizes, as TCP delivers them
        step = random.randint(1, 9000)
        client.data_received(stream[pos : pos + step])
        pos += step
    assert shared.received == 2 and client.position == b"e:2"
    assert shared.max_us >= 2_500 and sum(shared.hist[: 2_500 // BUCKET_US]) == 0

    # a message in three fragments, with a ping between them: the pong goes out at once
    whole = event_json(3)
    parts = [whole[:10], whole[10:40], whole[40:]]
    client.data_received(server_frame(0x1, parts[0], fin=False) + server_frame(0x9, b"are you there"))
    client.data_received(server_frame(0x0, parts[1], fin=False))
    assert shared.received == 2
    client.data_received(server_frame(0x0, parts[2]))
    assert shared.received == 3 and client.position == b"e:3"
    client.data_received(server_frame(0x1, b'{"type":"pong"}') + server_frame(0xA, b""))  # not events
    assert shared.received == 3 and shared.no_ts == 0

    # the server closes: answered with the same code, counted as ended
    client.data_received(server_frame(0x8, struct.pack("!H", 1001) + b"bye"))
    assert client_frames(transport.written) == [(0xA, b"are you there"), (0x8, struct.pack("!H", 1001))]
    assert transport.closing and shared.ended == 1


async def test_a_masked_or_compressed_server_frame_is_a_protocol_error() -> None:
    client, shared, transport = open_ws()
    client.data_received(b"\x81\x85abcd" + b"x" * 5)
    assert transport.aborted and shared.ended == 1
    client, shared, transport = open_ws()
    client.data_received(b"\xc1\x02hi")
    assert transport.aborted and client.error is not None and "RSV" in client.error


async def test_the_ready_message_and_what_precedes_it_are_not_counted() -> None:
    client, shared, transport = open_ws(synchub_like(1))
    assert not client.live  # waiting for "subscribed"
    assert client_frames(transport.written) == [(0x1, b'{"type":"subscribe","channel":"inventory:eu"}')]
    client.data_received(
        server_frame(0x1, b'{"type":"subscribed","channel":"inventory:eu","position":"e:0"}')
        + server_frame(0x1, event_json(1))
    )
    assert client.live and shared.received == 1


def chunked(*blocks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(block), block) for block in blocks)


async def test_sse_chunked_stream_split_anywhere() -> None:
    events = [b"id: e:%d\nevent: inventory\ndata: %s\n\n" % (n, event_json(n)) for n in range(1, 4)]
    body = chunked(
        b'retry: 1000\n\nid: e:0\nevent: ready\ndata: {"position":"e:0"}\n\n',
        events[0],
        events[1] + b": heartbeat\n\n" + events[2][:20],  # a message across two chunks
        events[2][20:],
    )
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    stream = head + body
    for cut in range(len(head) - 2, len(stream)):
        shared = _Shared()
        client = _SseClient(shared, sse_target(1), None)
        client.connection_made(FakeTransport())  # type: ignore[arg-type]
        client.data_received(stream[:cut])
        client.data_received(stream[cut:])
        assert client.live and (shared.received, client.position) == (3, b"e:3"), cut
        client.data_received(b"0\r\n\r\n")  # the last chunk: the server ended the stream
        assert shared.ended == 1


async def test_sse_without_chunked_encoding() -> None:
    shared = _Shared()
    client = _SseClient(shared, Target("sse", "127.0.0.1", 1, "/sse"), None)  # ready on 200, any data:
    transport = FakeTransport()
    client.connection_made(transport)  # type: ignore[arg-type]
    assert b"Accept: text/event-stream" in transport.written[0]
    client.data_received(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n: hi\n\n")
    assert client.live
    client.data_received(b"data: %s\n\ndata: %s" % (event_json(1), event_json(2)))
    assert shared.received == 1
    client.data_received(b"\n\n")
    assert shared.received == 2


def test_histogram_quantiles_are_bucket_upper_edges_capped_by_the_max() -> None:
    h = Histogram({0: 50, 9: 49, BUCKETS: 1}, max_us=12_345_678)
    assert h.total == 100
    assert h.quantile_ms(0.5) == 0.1  # bucket 0: [0, 0.1) ms
    assert h.quantile_ms(0.99) == 1.0  # bucket 9: [0.9, 1.0) ms
    assert h.quantile_ms(1.0) == h.max_ms == 12_345.678  # the overflow bucket: the exact max
    h.merge(Histogram({0: 100, 5: 3}, max_us=50))
    assert (h.total, h.counts[0], h.counts[5], h.max_us) == (203, 150, 3, 12_345_678)
    assert Histogram({3: 1}, max_us=250).quantile_ms(0.5) == 0.25  # capped by the exact max
    assert Histogram().quantile_ms(0.5) == 0.0
