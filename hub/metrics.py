"""Prometheus metrics of one app, in a registry of its own (no process-wide singletons)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from hub.keys import METRICS

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_latency = Histogram(
            "synchub_http_request_duration_seconds",
            "HTTP request latency by route and status",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.reservations = Counter(
            "synchub_reservations_total",
            "Reservation requests and transitions by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.review_pushes = Counter(
            "synchub_review_pushes_total",
            "Review writes (devices' deltas and REST edits), by outcome (applied, duplicate, refused)",
            ["outcome"],
            registry=self.registry,
        )
        self.review_decisions = Counter(
            "synchub_review_decisions_total",
            "Moderators' decisions on reviews, by the status decided",
            ["status"],
            registry=self.registry,
        )
        self.cart_pushes = Counter(
            "synchub_cart_pushes_total",
            "Cart deltas pushed by devices, by outcome (applied, duplicate, refused)",
            ["outcome"],
            registry=self.registry,
        )
        self.outbox_backlog = Gauge(
            "synchub_outbox_backlog",
            "Outbox entries not yet relayed to the broker",
            registry=self.registry,
        )
        self.outbox_lag = Gauge(
            "synchub_outbox_lag_seconds",
            "Age of the oldest outbox entry not yet relayed",
            registry=self.registry,
        )

        self.connections = Gauge(
            "synchub_connections",
            "Open real-time connections",
            ["transport", "region"],
            registry=self.registry,
        )
        self.subscriptions = Gauge(
            "synchub_subscriptions",
            "Active channel subscriptions (feeds)",
            ["transport"],
            registry=self.registry,
        )
        self.messages_sent = Counter(
            "synchub_messages_sent_total",
            "Messages written to clients",
            ["transport"],
            registry=self.registry,
        )
        self.bytes_sent = Counter(
            "synchub_bytes_sent_total", "Bytes written to clients", ["transport"], registry=self.registry
        )
        self.delivery_latency = Histogram(
            "synchub_delivery_latency_seconds",
            "From the stock change's commit to its write to a client",
            ["transport"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.broker_read_lag = Histogram(
            "synchub_broker_read_lag_seconds",
            "From the stock change's commit to its arrival from the broker on this node",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.resyncs = Counter(
            "synchub_resyncs_total",
            "Clients told to resync from a snapshot",
            ["transport", "reason"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "synchub_rate_limited_total",
            "Requests, WebSocket messages and connections refused by a limit, by limit (read, write,"
            " reservation, review_post, sync_push, ws_message, connections) and scope (user, ip, connection)",
            ["limit", "scope"],
            registry=self.registry,
        )
        self.rate_limiter_failures = Counter(
            "synchub_rate_limiter_failures_total",
            "Checks the shared (Redis) rate limiter could not make, by what the request got (allowed:"
            " fail-open, refused: fail-closed)",
            ["outcome"],
            registry=self.registry,
        )
        self.slow_consumers = Counter(
            "synchub_slow_consumer_disconnects_total",
            "Clients cut off for falling too far behind",
            ["transport"],
            registry=self.registry,
        )
        # webhooks (hub/webhooks/)
        self.webhook_attempts = Counter(
            "synchub_webhook_attempts_total",
            "Webhook delivery attempts by outcome (delivered, retry, dead)",
            ["outcome"],
            registry=self.registry,
        )
        self.webhook_attempt_seconds = Histogram(
            "synchub_webhook_attempt_seconds",
            "Webhook delivery attempts' latency, from the request to the response's head (or the failure)",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.webhook_gaps = Counter(
            "synchub_webhook_gaps_total",
            "Stream positions of webhook endpoints the broker no longer held (events between not delivered)",
            registry=self.registry,
        )
        self.webhook_endpoints_leased = Gauge(
            "synchub_webhook_endpoints_leased",
            "Webhook endpoints this node delivers (holds the lease of)",
            registry=self.registry,
        )

    def observe_backlog(self, count: int, lag_seconds: float) -> None:
        self.outbox_backlog.set(count)
        self.outbox_lag.set(lag_seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    if resource is None:
        return "unmatched"
    return resource.canonical


@web.middleware
async def metrics_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        request.app[METRICS].http_latency.labels(request.method, route_label(request), str(status)).observe(
            time.perf_counter() - started
        )
