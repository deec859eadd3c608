"""What probing the hub from outside found (issue 15), each with a test that fails without its fix: encoded
bodies, free JSON numbers and strings that break later reads, versions past 64 bits, HEAD on the SSE
route, the Server header, idle keep-alive sockets."""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
import zlib
from typing import Any

import pytest

from hub.keys import METRICS
from tests.conftest import Hub, hub_settings, running_hub

PRODUCTS = "/api/v1/products"


def product_body(**extra: Any) -> dict[str, Any]:
    return {"sku": "HARD-1", "name": "hard", "price": "1", **extra}


async def listed(hub: Hub) -> list[dict[str, Any]]:
    status, body, _ = await hub.call("GET", PRODUCTS)
    assert status == 200, body
    return list(body["items"])


@pytest.mark.parametrize(
    ("encoding", "pack"), [("gzip", gzip.compress), ("deflate", zlib.compress), ("br", lambda b: b"\x0b")]
)
async def test_an_encoded_body_is_refused_unread_not_inflated(hub, encoding, pack):
    # 64 MiB of JSON whitespace inflate from ~64 KiB: inflated, it would be read (and the loop held)
    # before the body limit said 413.
    bomb = pack(b"{" + b" " * (64 * 1024 * 1024) + b'"sku": "X"}')
    started = time.monotonic()
    status, body, _ = await hub.call(
        "POST",
        PRODUCTS,
        token=hub.admin,
        data=bomb,
        headers={"Content-Type": "application/json", "Content-Encoding": encoding},
    )
    assert (status, body["code"]) == (415, "unsupported_content_encoding")
    assert time.monotonic() - started < 1.0
    assert await listed(hub) == []


@pytest.mark.parametrize(
    "raw",
    [
        b'{"big": 18446744073709551616}',  # 2**64: no JSON writer of the stack takes it back
        b'{"big": -9223372036854775809}',
        b'{"huge": 1e300000}',  # as an integer, 300,000 digits of work
        b'{"tiny": 1e-400}',
        b'{"nested": [{"x": 1E+999}]}',
    ],
)
async def test_free_json_numbers_out_of_range_are_refused_before_anything_is_stored(hub, raw):
    body = b'{"sku": "HARD-1", "name": "hard", "price": "1", "attributes": ' + raw + b"}"
    started = time.monotonic()
    status, reply, _ = await hub.call(
        "POST", PRODUCTS, token=hub.admin, data=body, headers={"Content-Type": "application/json"}
    )
    assert (status, reply["code"]) == (400, "validation_failed"), reply
    assert reply["errors"][0]["code"] == "number_out_of_range"
    assert time.monotonic() - started < 1.0
    assert await listed(hub) == []


async def test_free_json_numbers_within_range_round_trip(hub):
    attributes = {"i": 2**63 - 1, "n": -(2**63), "f": 1.5e300, "z": 0.0001, "e": 12e2}
    status, created, _ = await hub.call(
        "POST", PRODUCTS, token=hub.admin, json=product_body(attributes=attributes)
    )
    assert status == 201, created
    assert created["attributes"] == {"i": 2**63 - 1, "n": -(2**63), "f": 1.5e300, "z": 0.0001, "e": 1200}
    assert (await listed(hub))[0]["attributes"] == created["attributes"]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"sku": "HARD-1", "name": "bad \\ud800 name", "price": "1"}',
        b'{"sku": "HARD-1", "name": "ok", "price": "1", "attributes": {"k": "\\udfff"}}',
        b'{"sku": "HARD-1", "name": "ok", "price": "1", "attributes": {"\\ud83d": 1}}',
    ],
)
async def test_lone_surrogates_are_refused_not_stored(hub, raw):
    status, reply, _ = await hub.call(
        "POST", PRODUCTS, token=hub.admin, data=raw, headers={"Content-Type": "application/json"}
    )
    assert (status, reply["code"]) == (400, "validation_failed"), reply
    assert reply["errors"][0]["code"] == "invalid_text"
    assert await listed(hub) == []


async def test_an_if_match_version_past_64_bits_is_a_failed_precondition(hub):
    product = await hub.product("HARD-2")
    status, reply, _ = await hub.call(
        "PATCH",
        f"{PRODUCTS}/{product['id']}",
        token=hub.admin,
        json={"name": "x"},
        headers={"If-Match": '"99999999999999999999999"'},
    )
    assert (status, reply["code"]) == (412, "precondition_failed")


async def test_head_on_the_sse_route_answers_the_head_and_no_stream(hub):
    async with hub.session.head(hub.base + "/api/v1/sse?channels=inventory:default") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        assert await response.read() == b""


async def test_the_server_header_names_no_versions(hub):
    status, _, headers = await hub.call("GET", "/healthz")
    assert status == 200 and headers["Server"] == "synchub"


async def test_an_idle_keep_alive_socket_is_closed(tmp_path):
    settings = hub_settings(str(tmp_path / "hub.sqlite3"), keepalive_timeout_seconds=0.5)
    async with running_hub(settings) as hub:
        host, port = hub.base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        rest = await asyncio.wait_for(reader.read(), 5)  # until the server closes the idle socket
        assert time.monotonic() - started < 3
        assert b"HTTP/1.1" not in rest
        writer.close()


async def test_a_peer_that_pings_and_never_reads_is_cut_off(tmp_path):
    """Pongs go around the send queue: without a bound on the socket's write buffer, a client that
    pings and never reads grows the server's memory without end."""
    import base64
    import os
    import socket

    from hub.transports.wsframes import PING
    from tests.realtime_helpers import client_frame

    settings = hub_settings(str(tmp_path / "hub.sqlite3"), send_buffer_bytes=64 * 1024)
    async with running_hub(settings) as hub:
        host, port = hub.base.removeprefix("http://").split(":")
        # (asyncio streams: the hub runs on this loop. The reader takes at most 64 KiB, then stops.)
        reader, writer = await asyncio.open_connection(host, int(port), limit=64 * 1024)
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                "GET /api/v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Protocol: synchub.json\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101")
        ping = client_frame(PING, b"p" * 125)
        cut = False
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not cut:
            try:
                writer.write(ping * 200)  # 25 KiB of pings; the pongs are never read
                await asyncio.wait_for(writer.drain(), 5)
            except (ConnectionResetError, BrokenPipeError):
                cut = True
            if writer.is_closing() or reader.at_eof():
                cut = True
        writer.close()
        assert cut, "the server kept answering a peer that never reads"
        assert hub.app[METRICS].slow_consumers.labels("websocket")._value.get() >= 1


async def test_a_client_that_goes_away_mid_body_is_not_a_server_error(hub, caplog):
    caplog.set_level(logging.DEBUG)
    host, port = hub.base.removeprefix("http://").split(":")
    _reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST /api/v1/products HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {hub.admin}\r\n"
        'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"sku": '.encode()
    )
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await asyncio.sleep(0.3)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    assert any("client went away" in r.getMessage() for r in caplog.records)
    assert await listed(hub) == []


async def test_a_body_that_trickles_in_past_the_timeout_is_408(tmp_path):
    settings = hub_settings(str(tmp_path / "hub.sqlite3"), body_timeout_seconds=0.5)
    async with running_hub(settings) as hub:
        host, port = hub.base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"POST /api/v1/products HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {hub.admin}\r\n"
            'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"sku": '.encode()
        )
        await writer.drain()
        started = time.monotonic()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 408")
        assert 0.4 < time.monotonic() - started < 3
        writer.close()


async def test_tokens_and_signatures_in_urls_are_not_written_to_the_access_log(hub, caplog):
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    secret = hub.alice
    # (refused by default — tokens in URLs are off — and logged redacted all the same)
    status, _, _ = await hub.call("GET", f"/api/v1/poll?channels=user:alice&timeout=0&access_token={secret}")
    assert status == 401
    status, ticket, _ = await hub.call("POST", "/api/v1/realtime/tickets", token=secret)
    assert status == 201
    status, _, _ = await hub.call(
        "GET", f"/api/v1/poll?channels=user:alice&timeout=0&ticket={ticket['ticket']}"
    )
    assert status == 200
    await hub.call("GET", "/api/v1/media/x?sig=SIGNATURE-VALUE&exp=1")
    lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert any("/api/v1/poll?channels=user%3Aalice&timeout=0&access_token=…" in line for line in lines), lines
    assert any("/api/v1/poll?channels=user%3Aalice&timeout=0&ticket=…" in line for line in lines), lines
    assert not any(secret in line or ticket["ticket"] in line or "SIGNATURE-VALUE" in line for line in lines)
