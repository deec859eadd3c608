"""The application factory. One cleanup context per resource, started in order, stopped in reverse;
a cleanup runs only if its own start succeeded."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from hub.access import access_middleware
from hub.access_log import RedactingAccessLogger
from hub.api_keys import api_keys_context
from hub.audit import audit_middleware, stamp_request_id
from hub.auth import auth_middleware
from hub.browsers import cors_middleware, security_headers
from hub.errors import error_middleware
from hub.http_errors import install as answer_parser_errors_in_problem_json
from hub.keys import (
    BROKER,
    CONNECTION_CAPS,
    CONNECTIONS,
    ENGINE,
    METRICS,
    PII_KEYS,
    RELAY,
    SETTINGS,
    STORE,
    WRITES,
)
from hub.media import media_context
from hub.metrics import Metrics, metrics_middleware
from hub.oidc import verifier_context
from hub.personalization import personalization_context
from hub.pii import keyring_for
from hub.proxies import forwarded_middleware, parse_networks
from hub.ratelimit.connections import ConnectionCaps
from hub.ratelimit.http import rate_limit_context
from hub.realtime import Connections
from hub.responses import compression_middleware
from hub.routes import (
    api_keys,
    audit,
    carts,
    catalog,
    home,
    inventory,
    me,
    media,
    ops,
    parts_requests,
    personalization,
    reservations,
    reviews,
    schools,
    tickets,
    webhooks,
)
from hub.settings import Settings
from hub.transports import poll, sse, websocket
from hub.transports.writes import WriteBatcher
from hub.webhooks.worker import webhooks_context
from storage.factory import open_store
from sync.broker import Broker
from sync.broker_memory import MemoryBroker
from sync.engine import SyncEngine
from sync.events import Event
from sync.relay import OutboxRelay

log = logging.getLogger(__name__)


async def store_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = open_store(
        settings.database_url,
        region=settings.region,
        sqlite_commit_spacing=settings.sqlite_commit_spacing_ms / 1000,
    )
    await store.open()
    try:
        applied = await store.migrate()
        if applied:
            log.info("applied schema migrations %s", applied)
        app[STORE] = store
        yield
    finally:
        await store.close()


def make_broker(settings: Settings) -> Broker:
    if settings.nats_url:
        from sync.broker_nats import NatsBroker, nats_prefix

        return NatsBroker(
            settings.nats_url,
            prefix=nats_prefix(settings.redis_prefix),
            max_len=settings.stream_max_len,
            max_age_seconds=settings.stream_max_age_seconds,
        )
    if settings.redis_url:
        from sync.broker_redis import RedisBroker

        return RedisBroker(
            settings.redis_url,
            prefix=settings.redis_prefix,
            max_len=settings.stream_max_len,
            max_age_seconds=settings.stream_max_age_seconds,
        )
    return MemoryBroker(max_len=settings.stream_max_len)


async def broker_context(app: web.Application) -> AsyncIterator[None]:
    broker = make_broker(app[SETTINGS])
    await broker.start()
    app[BROKER] = broker
    yield
    await broker.stop()


async def engine_context(app: web.Application) -> AsyncIterator[None]:
    metrics = app[METRICS]

    def observe(event: Event) -> None:
        if event.ts is not None:
            metrics.broker_read_lag.observe(max(0.0, event.received_at - event.ts))

    engine = SyncEngine(app[BROKER], app[SETTINGS].region, on_event=observe)
    await engine.start()
    app[ENGINE] = engine
    yield
    await engine.stop()


async def go_away(app: web.Application) -> None:
    """On shutdown, before the server stops: WebSockets close with 1001, SSE streams end, long-polls
    answer now — every client resumes from its position, on another node if this one is gone."""
    await app[CONNECTIONS].close_all()


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
    unwatch = app[STORE].watch_outbox(relay)
    task = asyncio.create_task(relay.run(), name="outbox-relay")
    yield
    unwatch()
    relay.stop()
    # Given a moment to publish what was handed over and to acknowledge what it published; what it
    # does not finish stays in the outbox for the next relay.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(task), 5.0)
    await _cancel(task)


async def _expire_forever(app: web.Application) -> None:
    settings, store, metrics = app[SETTINGS], app[STORE], app[METRICS]
    # None: the first purge runs at start-up. (It once began at 0.0, and monotonic time counts from the
    # machine's boot: a node started in a host's first hour purged nothing, and folded none of the
    # rating moves a stopped node left, until that hour was over.)
    last_purge: float | None = None
    while True:
        try:
            expired = await store.expire_reservations()
            if expired:
                metrics.reservations.labels("expired").inc(len(expired))
            if last_purge is None or time.monotonic() - last_purge > 3600:
                now = time.time_ns() // 1000
                await store.purge_idempotency_keys(now - settings.idempotency_retention_seconds * 10**6)
                await store.purge_cart_mutations(now - settings.cart_mutation_retention_seconds * 10**6)
                # (review pushes' ids are kept as long as carts': one retention for devices' retries)
                await store.purge_review_mutations(now - settings.cart_mutation_retention_seconds * 10**6)
                await store.purge_tickets(now)
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
    answer_parser_errors_in_problem_json()
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[
            # first: every later step (limits, caps, the log) sees the client behind a trusted proxy
            *(
                [forwarded_middleware(parse_networks(settings.trusted_proxies))]
                if settings.trusted_proxies
                else []
            ),
            metrics_middleware,
            compression_middleware,
            # outside errors: it sees every answer's final status; inside it, auth has named the caller
            audit_middleware,
            error_middleware,
            cors_middleware,
            auth_middleware,
            # after auth (the caller is known): the rate limit, then the authorization table
            access_middleware,
        ],
        handler_args={
            # Bodies are read as sent: an encoded one is refused (hub/validation.refuse_encoded_body)
            # rather than inflated, unbounded, before any limit or token is checked.
            "auto_decompress": False,
            # An idle keep-alive socket is closed after this long (aiohttp's default: an hour).
            "keepalive_timeout": settings.keepalive_timeout_seconds,
            # Tokens and signatures in URLs are not written to the log.
            "access_log_class": RedactingAccessLogger,
        },
    )
    app.on_response_prepare.append(security_headers)
    app.on_response_prepare.append(stamp_request_id)
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[CONNECTIONS] = Connections()
    app[PII_KEYS] = keyring_for(settings.pii_keys)
    metrics = app[METRICS]
    limits_on = settings.rate_limits_enabled
    app[CONNECTION_CAPS] = ConnectionCaps(
        settings.max_connections_per_user if limits_on else 0,
        settings.max_connections_per_ip if limits_on else 0,
        frozenset(settings.rate_limit_exempt_roles),
        metrics,
    )
    app[WRITES] = WriteBatcher(
        metrics.messages_sent.labels("websocket"),
        metrics.bytes_sent.labels("websocket"),
        metrics.delivery_latency.labels("websocket"),
    )
    app.add_routes(ops.routes)
    app.add_routes(home.routes)
    app.add_routes(catalog.routes)
    app.add_routes(inventory.routes)
    app.add_routes(reservations.routes)
    app.add_routes(carts.routes)
    app.add_routes(media.routes)
    app.add_routes(reviews.routes)
    app.add_routes(tickets.routes)
    app.add_routes(api_keys.routes)
    app.add_routes(me.routes)
    app.add_routes(audit.routes)
    app.add_routes(personalization.routes)
    app.add_routes(webhooks.routes)
    app.add_routes(schools.routes)
    app.add_routes(parts_requests.routes)
    app.add_routes(websocket.routes)
    app.add_routes(sse.routes)
    app.add_routes(poll.routes)
    app.cleanup_ctx.extend(
        [verifier_context, store_context, broker_context, engine_context, relay_context, expiry_context]
    )
    app.cleanup_ctx.append(media_context)
    app.cleanup_ctx.append(api_keys_context)  # after the store's: it reads keys from it
    app.cleanup_ctx.append(personalization_context)  # after the store's and the engine's
    app.cleanup_ctx.append(webhooks_context)  # after the store's, the broker's and the relay's
    if limits_on:
        app.cleanup_ctx.append(rate_limit_context)
    app.on_shutdown.append(go_away)
    return app
