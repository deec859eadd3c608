"""RFC 6455 as the hub speaks it over a real socket: the handshake it answers itself, the socket it
takes over from aiohttp, the frames it reads, and how each side closes. (The hub's own messages on
top — subscribe, events, resume — are tests/test_realtime_websocket.py.)"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Sized
from urllib.parse import urlsplit

import msgpack
import orjson
import pytest

from hub.transports import websocket as websocket_module
from hub.transports import ws_messages
from hub.transports.handshake import accept_key
from hub.transports.wsframes import BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT
from tests.realtime_helpers import (
    CHANNEL,
    JSON,
    MSGPACK,
    WAIT,
    RawWebSocket,
    client_frame,
    eu_hub,
    eventually,
    metric,
    upgrade_headers,
    ws_client,
)


@pytest.fixture
async def hub(database_url: str):
    async with eu_hub(database_url) as hub:
        yield hub


def ping_message(ident: int) -> bytes:
    return client_frame(TEXT, b'{"type":"ping","id":%d}' % ident)


async def next_message(ws: RawWebSocket) -> dict:
    frame = await ws.next_frame()
    assert frame is not None, "the connection ended"
    opcode, payload = frame
    assert opcode in (TEXT, BINARY), frame
    return orjson.loads(payload) if opcode == TEXT else msgpack.unpackb(payload)


async def close_code(ws: RawWebSocket) -> int | None:
    """Read up to the server's close frame; its code (None: the connection ended without one)."""
    return (await ws.read_until_close())[1]


async def how_tcp_ends(ws: RawWebSocket, within: float = WAIT) -> str:
    """Read to the end of the connection: "fin" (the hub ended it in order, after what it sent) or
    "reset"; a connection still open after ``within`` seconds fails the test."""
    loop = asyncio.get_running_loop()
    try:
        while await asyncio.wait_for(loop.sock_recv(ws.sock, 65536), within):
            pass
    except ConnectionResetError:
        return "reset"
    return "fin"


async def counted(connections: Sized, count: int) -> bool:
    return len(connections) == count


async def gauge_is(hub, value: float) -> bool:
    return await metric(hub, "synchub_connections", transport="websocket") == value


# -- the handshake -----------------------------------------------------------------------------------


async def test_the_101_carries_the_accept_key_and_the_chosen_subprotocol(hub):
    headers = {**upgrade_headers(), "Sec-WebSocket-Protocol": "chat, synchub.msgpack, synchub.json"}
    url = urlsplit(hub.base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        head = "GET /api/v1/ws HTTP/1.1\r\nHost: x\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(head.encode() + b"\r\n")
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    finally:
        writer.close()
    lines = response.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 101 Switching Protocols"
    fields = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:] if line)}
    assert fields["upgrade"] == "websocket" and fields["connection"] == "Upgrade"
    assert fields["sec-websocket-accept"] == accept_key(headers["Sec-WebSocket-Key"])
    assert fields["sec-websocket-protocol"] == MSGPACK  # the client's first that the hub speaks


def test_the_accept_key_is_the_one_rfc_6455_works_out():
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 §1.3


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"Upgrade": None}, 400, "websocket_upgrade_required"),
        ({"Upgrade": "h2c"}, 400, "websocket_upgrade_required"),
        ({"Connection": "keep-alive"}, 400, "websocket_upgrade_required"),
        ({"Sec-WebSocket-Key": None}, 400, "websocket_upgrade_required"),
        ({"Sec-WebSocket-Key": "c2hvcnQ="}, 400, "websocket_upgrade_required"),
        ({"Sec-WebSocket-Key": "not base64!"}, 400, "websocket_upgrade_required"),
        ({"Sec-WebSocket-Version": "8"}, 426, "websocket_version_unsupported"),
        ({"Sec-WebSocket-Version": None}, 426, "websocket_version_unsupported"),
    ],
)
async def test_a_request_that_is_no_valid_upgrade_gets_a_problem_and_no_switch(hub, change, status, code):
    headers = {k: v for k, v in {**upgrade_headers(), **change}.items() if v is not None}
    async with hub.session.get(hub.base + "/api/v1/ws", headers=headers) as response:
        assert response.status == status
        assert response.content_type == "application/problem+json"
        body = await response.json()
        if status == 426:
            assert response.headers["Sec-WebSocket-Version"] == "13"
    assert body["code"] == code
    assert body["detail"]


async def test_a_plain_get_of_the_endpoint_says_it_wants_an_upgrade(hub):
    async with hub.session.get(hub.base + "/api/v1/ws") as response:
        assert response.status == 400
        assert (await response.json())["code"] == "websocket_upgrade_required"


async def test_the_upgrade_is_counted_by_the_http_metrics_as_a_101(hub):
    async with ws_client(hub) as ws:
        await ws.subscribe()
    text = await (await hub.session.get(hub.base + "/metrics")).text()
    assert 'status="101"' in text and 'route="/api/v1/ws"' in text


# -- the socket taken over from aiohttp ----------------------------------------------------------------


async def test_frames_sent_before_the_101_are_read_and_answered(hub):
    ws = await RawWebSocket.connect(hub, early=ping_message(1) + ping_message(2))
    try:
        assert await next_message(ws) == {"type": "pong", "id": 1}
        assert await next_message(ws) == {"type": "pong", "id": 2}
    finally:
        ws.close()


async def test_an_open_websocket_is_the_hubs_not_aiohttps_and_shutdown_still_closes_it(database_url):
    async with eu_hub(database_url) as hub:
        assert hub.runner is not None and hub.runner.server is not None
        http_connections = len(hub.runner.server.connections)
        ws = await RawWebSocket.connect(hub)
        await ws.send(ping_message(1))
        assert await next_message(ws) == {"type": "pong", "id": 1}
        # aiohttp's server no longer counts it (it would wait for it at shutdown): the hub's registry does
        assert len(hub.runner.server.connections) == http_connections
        assert len(hub.app[websocket_module.CONNECTIONS]) == 1
    try:
        assert await close_code(ws) == 1001
    finally:
        ws.close()


async def test_a_message_cut_into_single_bytes_is_read_whole(hub):
    ws = await RawWebSocket.connect(hub)
    try:
        for byte in ping_message(7):
            await ws.send(bytes([byte]))
            await asyncio.sleep(0.001)
        assert await next_message(ws) == {"type": "pong", "id": 7}
    finally:
        ws.close()


async def test_a_fragmented_message_with_a_ping_in_between_is_answered_once_whole(hub):
    ws = await RawWebSocket.connect(hub)
    try:
        await ws.send(client_frame(TEXT, b'{"type":"pi', fin=False))
        await ws.send(client_frame(PING, b"between"))
        await ws.send(client_frame(CONTINUATION, b'ng","id":3}'))
        assert await ws.next_frame() == (PONG, b"between")
        assert await next_message(ws) == {"type": "pong", "id": 3}
    finally:
        ws.close()


async def test_a_burst_of_messages_past_the_inbox_limit_is_answered_every_one_in_order(hub):
    ws = await RawWebSocket.connect(hub, receive_buffer=1 << 20)
    try:
        await ws.send(b"".join(ping_message(i) for i in range(200)))
        assert [(await next_message(ws))["id"] for _ in range(200)] == list(range(200))
        await ws.send(ping_message(999))  # still read after the pause
        assert await next_message(ws) == {"type": "pong", "id": 999}
    finally:
        ws.close()


async def test_a_msgpack_connection_reads_binary_frames(hub):
    ws = await RawWebSocket.connect(hub, protocol=MSGPACK)
    try:
        await ws.send(client_frame(BINARY, msgpack.packb({"type": "ping", "id": 4})))
        assert await next_message(ws) == {"type": "pong", "id": 4}
    finally:
        ws.close()


# -- faults ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        pytest.param(client_frame(TEXT, b'{"type":"ping"}', masked=False), 1002, id="unmasked"),
        pytest.param(client_frame(TEXT, b'{"type":"ping"}', rsv=4), 1002, id="compressed unasked"),
        pytest.param(client_frame(0x5, b"?"), 1002, id="unknown opcode"),
        pytest.param(client_frame(TEXT, b'{"type":"\xff"}'), 1007, id="text not UTF-8"),
        pytest.param(client_frame(CLOSE, b"\x03"), 1002, id="one-byte close body"),
        pytest.param(client_frame(CLOSE, struct.pack("!H", 1005)), 1002, id="close code never sent"),
    ],
)
async def test_a_framing_fault_closes_with_its_code_and_the_hub_carries_on(hub, frame, code):
    ws = await RawWebSocket.connect(hub)
    try:
        await ws.send(frame)
        assert await close_code(ws) == code
        assert await how_tcp_ends(ws) == "fin"
    finally:
        ws.close()
    async with ws_client(hub) as healthy:
        await healthy.subscribe()  # the hub is fine


async def test_a_message_over_a_mebibyte_is_refused_from_its_header_with_1009(hub):
    ws = await RawWebSocket.connect(hub)
    try:
        await ws.send(struct.pack("!BBQ", 0x81, 0xFF, 2 << 20) + os.urandom(4) + b"x" * 1000)
        assert await close_code(ws) == 1009
    finally:
        ws.close()


async def test_a_failed_connection_is_released_even_if_the_peer_never_closes(hub):
    connections = hub.app[websocket_module.CONNECTIONS]
    before = len(connections)
    ws = await RawWebSocket.connect(hub)
    try:
        await eventually(lambda: counted(connections, before + 1))
        await ws.send(client_frame(0x5, b"?"))  # and then says nothing, and does not close
        await eventually(lambda: counted(connections, before), within=5)
    finally:
        ws.close()


async def test_an_unexpected_error_answering_a_message_closes_with_1011(hub, monkeypatch):
    async def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(ws_messages, "snapshot_items", broken)
    ws = await RawWebSocket.connect(hub)
    try:
        await ws.send_text(
            orjson.dumps({"type": "subscribe", "channel": CHANNEL, "recover": "latest"}).decode()
        )
        messages, code = await ws.read_until_close()
    finally:
        ws.close()
    assert [m["type"] for m in messages] == ["subscribed"]
    assert code == 1011


# -- closing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sent", "echoed"), [(struct.pack("!H", 4000) + b"done", 4000), (b"", 1000)])
async def test_a_client_close_is_answered_with_its_code_and_the_hub_ends_the_tcp_connection(
    hub, sent, echoed
):
    ws = await RawWebSocket.connect(hub)
    try:
        await ws.send(ping_message(1))
        assert await next_message(ws) == {"type": "pong", "id": 1}
        await ws.send(client_frame(CLOSE, sent))
        assert await close_code(ws) == echoed
        assert await how_tcp_ends(ws) == "fin"
    finally:
        ws.close()
    await eventually(lambda: gauge_is(hub, 0))


async def test_aiohttp_as_a_client_closes_cleanly(hub):
    async with hub.session.ws_connect(hub.base + "/api/v1/ws", protocols=(JSON,)) as ws:
        await ws.send_json({"type": "ping", "id": 1})
        assert (await ws.receive_json(timeout=WAIT)) == {"type": "pong", "id": 1}
        assert await ws.close()
        assert ws.close_code == 1000


async def test_a_client_that_vanishes_is_released(hub):
    connections = hub.app[websocket_module.CONNECTIONS]
    before = len(connections)
    ws = await RawWebSocket.connect(hub)
    await eventually(lambda: counted(connections, before + 1))
    ws.close()  # no close frame
    await eventually(lambda: counted(connections, before))


async def test_a_ping_gets_its_payload_back_in_a_pong(hub):
    ws = await RawWebSocket.connect(hub)
    try:
        await ws.send(client_frame(PING, b"\x00\x01payload"))
        assert await ws.next_frame() == (PONG, b"\x00\x01payload")
    finally:
        ws.close()


async def test_a_burst_of_oversized_messages_is_refused_each_in_order(hub):
    ws = await RawWebSocket.connect(hub, receive_buffer=1 << 20)
    try:
        big = b'{"type":"ping","id":%d,"pad":"' + b"x" * 100_000 + b'"}'
        await ws.send(b"".join(client_frame(TEXT, big % i) for i in range(40)) + ping_message(40))
        replies = [await next_message(ws) for _ in range(41)]
    finally:
        ws.close()
    assert [r["code"] for r in replies[:40]] == ["frame_too_large"] * 40
    assert replies[40] == {"type": "pong", "id": 40}
