"""Limits of the real-time transports, over real sockets: a WebSocket connection's message rate (coded
errors, then close code 4104) and the connections a user, or an anonymous address, may hold on a node
(429 too_many_connections before the upgrade or the stream)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from hub.ratelimit.limiter import RatePolicy
from tests.conftest import Hub, hub_settings, running_hub, token
from tests.realtime_helpers import WAIT, WsClient, upgrade_headers, ws_client

ALICE, BOB = token("alice"), token("bob")
SSE = "/api/v1/sse?channels=inventory:default"


@asynccontextmanager
async def limited_hub(tmp_path: Path, **overrides: Any) -> AsyncIterator[Hub]:
    async with running_hub(hub_settings(str(tmp_path / "hub.sqlite3"), **overrides)) as hub:
        yield hub


def bearer(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {who}"}


async def opening_status(hub: Hub, path: str, headers: dict[str, str]) -> int:
    """The status a stream opens with (its body is not read: a stream does not end)."""
    async with hub.session.get(hub.base + path, headers=headers) as response:
        return response.status


async def until_closed(ws: WsClient) -> tuple[list[dict[str, Any]], int | None]:
    """Every message until the server closes, and its close code."""
    received = []
    deadline = time.monotonic() + WAIT
    while True:
        frame = await asyncio.wait_for(ws.ws.receive(), max(0.01, deadline - time.monotonic()))
        if frame.type != aiohttp.WSMsgType.TEXT:
            return received, ws.ws.close_code
        received.append(frame.json())


async def test_messages_over_the_rate_are_refused_and_a_flood_is_closed_with_4104(tmp_path: Path) -> None:
    async with limited_hub(tmp_path, ws_message_rate=RatePolicy(1, 60.0, 5)) as hub:
        async with ws_client(hub) as ws:
            for i in range(5):
                assert await ws.request({"type": "ping", "id": i}) == {"type": "pong", "id": i}
            refused = await ws.request({"type": "subscribe", "channel": "inventory:default", "id": "s"})
            assert refused["type"] == "error" and refused["code"] == "rate_limited" and refused["id"] == "s"
            assert 59_000 < refused["retry_after_ms"] <= 60_000
            for i in range(20):  # refusals in a row: the 15th (3 bursts) closes the connection
                await ws.send({"type": "ping", "id": i})
            received, code = await until_closed(ws)
        assert code == 4104
        assert len(received) == 13 and all(m["code"] == "rate_limited" for m in received)
        async with hub.session.get(hub.base + "/metrics") as response:
            text = await response.text()
        assert 'synchub_rate_limited_total{limit="ws_message",scope="connection"} 1.0' in text


async def test_a_refused_client_that_waits_is_answered_again(tmp_path: Path) -> None:
    async with limited_hub(tmp_path, ws_message_rate=RatePolicy(10, 1.0, 3)) as hub, ws_client(hub) as ws:
        for i in range(3):
            await ws.send({"type": "ping", "id": i})
        await ws.send({"type": "ping", "id": "over"})
        replies = [await ws.recv() for _ in range(4)]
        assert [r["type"] for r in replies] == ["pong", "pong", "pong", "error"]
        assert 0 < replies[3]["retry_after_ms"] <= 100
        await asyncio.sleep(replies[3]["retry_after_ms"] / 1000 + 0.01)
        assert await ws.request({"type": "ping", "id": "later"}) == {"type": "pong", "id": "later"}


async def test_a_user_holds_at_most_max_connections_per_user_on_a_node(tmp_path: Path) -> None:
    async with limited_hub(tmp_path, max_connections_per_user=2) as hub:
        async with contextlib.AsyncExitStack() as stack:
            first = await stack.enter_async_context(ws_client(hub, headers=bearer(ALICE)))
            async with hub.session.get(hub.base + SSE, headers=bearer(ALICE)) as stream:
                assert stream.status == 200
                for attempt in ({**upgrade_headers(), **bearer(ALICE)}, bearer(ALICE)):
                    path = "/api/v1/ws" if "Upgrade" in attempt else SSE
                    status, body, _ = await hub.call("GET", path, headers=attempt)
                    assert status == 429 and body["code"] == "too_many_connections" and body["limit"] == 2
                async with ws_client(hub, headers=bearer(BOB)) as other:  # another user's own
                    assert (await other.request({"type": "ping"}))["type"] == "pong"
            await first.ws.close()
            # Both are gone once the hub has seen them close: a new one is let in.
            deadline = time.monotonic() + WAIT
            while (status := await opening_status(hub, SSE, bearer(ALICE))) != 200:
                assert status == 429 and time.monotonic() < deadline
                await asyncio.sleep(0.02)
        async with hub.session.get(hub.base + "/metrics") as response:
            assert 'synchub_rate_limited_total{limit="connections",scope="user"} 2.0' in await response.text()


async def test_anonymous_connections_are_capped_per_address(tmp_path: Path) -> None:
    async with limited_hub(tmp_path, max_connections_per_ip=1) as hub:
        # A stream that ends at once (a resync answer: an unknown epoch) leaves its place free.
        status, _, _ = await hub.call("GET", SSE, headers={"Last-Event-ID": "0123456789abcdef:5"})
        assert status == 200
        async with ws_client(hub) as ws:
            assert (await ws.request({"type": "ping"}))["type"] == "pong"
            status, body, _ = await hub.call("GET", SSE)
            assert status == 429 and body["code"] == "too_many_connections"
            async with ws_client(hub, headers=bearer(ALICE)) as authenticated:  # counted as alice
                assert (await authenticated.request({"type": "ping"}))["type"] == "pong"


async def test_service_tokens_are_not_capped(tmp_path: Path) -> None:
    service = token("checkout", "service")
    async with limited_hub(tmp_path, max_connections_per_user=1) as hub, contextlib.AsyncExitStack() as stack:
        for _ in range(3):
            ws = await stack.enter_async_context(ws_client(hub, headers=bearer(service)))
            assert (await ws.request({"type": "ping"}))["type"] == "pong"
