"""The application factory. One cleanup context per resource, started in order, stopped in reverse;
a cleanup runs only if its own start succeeded."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from hub.auth import auth_middleware
from hub.errors import error_middleware
from hub.keys import BROKER, METRICS, RELAY, SETTINGS, STORE
from hub.metrics import Metrics, metrics_middleware
from hub.responses import compression_middleware
from hub.routes import catalog, inventory, ops, reservations
from hub.settings import Settings
from storage.factory import open_store
from sync.broker_memory import MemoryBroker
from sync.relay import OutboxRelay

log = logging.getLogger(__name__)


async def store_context(app: web.Application) -> AsyncIterator[None]:
    store = open_store(app[SETTINGS].database_url)
    await store.open()
    try:
        applied = await store.migrate()
        if applied:
            log.info("applied schema migrations %s", applied)
        app[STORE] = store
        yield
    finally:
        await store.close()


async def broker_context(app: web.Application) -> AsyncIterator[None]:
    broker = MemoryBroker()
    await broker.start()
    app[BROKER] = broker
    yield
    await broker.stop()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def relay_context(app: web.Application) -> AsyncIterator[None]:
    if not app[SETTINGS].relay_enabled:
        app[RELAY] = None
        yield
        return
    relay = OutboxRelay(app[STORE], app[BROKER], on_backlog=app[METRICS].observe_backlog)
    app[RELAY] = relay
    task = asyncio.create_task(relay.run(), name="outbox-relay")
    yield
    relay.stop()
    await _cancel(task)


async def _expire_forever(app: web.Application) -> None:
    settings, store, metrics = app[SETTINGS], app[STORE], app[METRICS]
    last_purge = 0.0
    while True:
        try:
            expired = await store.expire_reservations()
            if expired:
                metrics.reservations.labels("expired").inc(len(expired))
                relay = app[RELAY]
                if relay is not None:
                    relay.notify()
            if time.monotonic() - last_purge > 3600:
                cutoff = time.time_ns() // 1000 - settings.idempotency_retention_seconds * 1_000_000
                await store.purge_idempotency_keys(cutoff)
                last_purge = time.monotonic()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reservation expiry failed; retrying")
        await asyncio.sleep(settings.expiry_interval)


async def expiry_context(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_expire_forever(app), name="reservation-expiry")
    yield
    await _cancel(task)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[metrics_middleware, compression_middleware, error_middleware, auth_middleware],
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app.add_routes(ops.routes)
    app.add_routes(catalog.routes)
    app.add_routes(inventory.routes)
    app.add_routes(reservations.routes)
    app.cleanup_ctx.extend([store_context, broker_context, relay_context, expiry_context])
    return app
