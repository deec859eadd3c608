"""A real webhook receiver for the tests: an aiohttp server on 127.0.0.1 that verifies every request with the
Standard Webhooks spec's own library (``standardwebhooks``) and answers as scripted — 2xx, 500, a
timeout, a 302 — so the tests see what a partner's server sees."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.conftest import Hub

WEBHOOKS = "/api/v1/webhooks"


@dataclass
class Received:
    webhook_id: str
    timestamp: str
    body: dict[str, Any]
    raw: bytes
    verified: bool
    answered: str  # what the receiver answered: ok, fail, timeout, redirect
    at: float  # monotonic
    wall: float = field(default_factory=time.time)
    signature: str = ""  # the webhook-signature header: space-delimited while a rotated secret signs too


@dataclass
class Receiver:
    """``script``: how to answer the next requests (then ``default``): "ok" (204), "fail" (500),
    "timeout" (answers after ``stall`` seconds, past the hub's timeout), "redirect" (302 to /elsewhere,
    where a followed redirect would land and be recorded in ``followed``)."""

    port: int = 0
    secret: str | None = None
    script: deque[str] = field(default_factory=deque)
    default: str = "ok"
    stall: float = 2.0
    delay: float = 0.0  # before every answer: a slow receiver
    received: list[Received] = field(default_factory=list)
    followed: list[bytes] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/synchub"

    async def _hook(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        answer = self.script.popleft() if self.script else self.default
        verified = False
        if self.secret is not None:
            try:
                Webhook(self.secret).verify(raw, dict(request.headers))
                verified = True
            except WebhookVerificationError:
                verified = False
        self.received.append(
            Received(
                request.headers.get("webhook-id", ""),
                request.headers.get("webhook-timestamp", ""),
                orjson.loads(raw),
                raw,
                verified,
                answer,
                time.monotonic(),
                signature=request.headers.get("webhook-signature", ""),
            )
        )
        self.arrived.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        if answer == "fail":
            return web.Response(status=500, text="receiver down")
        if answer == "timeout":
            await asyncio.sleep(self.stall)
            return web.Response(status=204)
        if answer == "redirect":
            return web.Response(status=302, headers={"Location": "/elsewhere"})
        return web.Response(status=204)

    async def _elsewhere(self, request: web.Request) -> web.StreamResponse:
        self.followed.append(await request.read())
        return web.Response(status=204)

    def events(self, event_type: str | None = None) -> list[Received]:
        return [r for r in self.received if event_type is None or r.body["type"] == event_type]

    def answered_ok(self, event_type: str | None = None) -> list[Received]:
        return [r for r in self.events(event_type) if r.answered == "ok"]

    async def wait_until(self, done: Callable[[], bool], within: float = 20.0, what: str = "") -> None:
        deadline = time.monotonic() + within
        while not done():
            left = deadline - time.monotonic()
            assert left > 0, f"timed out waiting for {what or done}; received {len(self.received)}"
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), min(left, 0.2))
            except TimeoutError:
                pass


@asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    target = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/synchub", target._hook)
    app.router.add_post("/elsewhere", target._elsewhere)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    target.port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    try:
        yield target
    finally:
        await runner.cleanup()


async def create_webhook(
    hub: Hub, bearer: str, url: str, events: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    status, body, headers = await hub.call(
        "POST", WEBHOOKS, token=bearer, json={"url": url, "events": events, **extra}
    )
    assert status == 201, body
    assert headers["Location"] == f"{WEBHOOKS}/{body['id']}" and headers["Cache-Control"] == "no-store"
    return dict(body)


async def deliveries(hub: Hub, bearer: str, webhook_id: str) -> list[dict[str, Any]]:
    """The whole delivery log, oldest first."""
    items: list[dict[str, Any]] = []
    cursor = ""
    while True:
        status, body, _ = await hub.call(
            "GET", f"{WEBHOOKS}/{webhook_id}/deliveries?limit=200{cursor}", token=bearer
        )
        assert status == 200, body
        items.extend(body["items"])
        if not body["next_cursor"]:
            return list(reversed(items))
        cursor = f"&cursor={body['next_cursor']}"
