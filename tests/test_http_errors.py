"""Requests aiohttp's HTTP parser refuses, before any route or middleware of ours, are still answered in
problem+json with a stable code (hub/http_errors.py), over raw sockets against a real hub."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from tests.conftest import Hub

MALFORMED = {
    "a control byte in a header value": b"GET /api/v1/products HTTP/1.1\r\nHost: x\r\nAuthorization: \x01ab\r\n\r\n",
    "a header line with no colon": b"GET /api/v1/products HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    "a space in the target": b"GET /api/v1/pro ducts HTTP/1.1\r\nHost: x\r\n\r\n",
    "a bad chunk size": b"POST /api/v1/products HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "a header line past the limit": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
    + b"a" * 20_000
    + b"\r\n\r\n",
}


async def _exchange(hub: Hub, raw: bytes) -> tuple[bytes, bytes]:
    host, port = hub.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(raw)
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), 10)  # the server closes after its answer
    finally:
        writer.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    return head, body


@pytest.mark.parametrize("raw", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_a_request_the_http_parser_refuses_gets_a_problem_with_a_code(
    hub: Hub, raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        head, body = await _exchange(hub, raw)
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].split(" ", 2)[1] == "400", head  # aiohttp answers a request it cannot read in HTTP/1.0
    fields = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines[1:])}
    assert fields["content-type"].startswith("application/problem+json")
    assert fields["server"] == "synchub"  # and the connection was closed: _exchange read to its end
    problem = json.loads(body)
    assert problem["status"] == 400 and problem["code"] == "malformed_request"
    assert problem["detail"].startswith("not a valid HTTP/1.1 request")
    # the client's mistake is not logged as the server's
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_a_well_formed_request_on_the_same_hub_is_answered_as_usual(hub: Hub) -> None:
    head, _ = await _exchange(hub, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
