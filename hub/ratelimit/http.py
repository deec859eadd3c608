"""Rate limits on HTTP requests: what a limited route's check counts, and how it answers. The check
runs in hub/access.py's middleware, innermost (after auth, so the caller is known), just before the
route's authorization (a refused call counts too).

**Who is counted.** A request with an API key counts against that key (``api_key`` scope: its family,
so a rotated key and its successor share one count), one with a bearer token against its user (the
token's ``sub``), any other against its client IP (the socket's peer: behind a proxy, every client
shares the proxy's address — see docs/api.md). Tokens of the exempt roles (``service``: trusted back
ends, such as a checkout service acting for many users) are not limited; API keys always are (they
hold no role).

**What is counted.** Each named route has a class (:mod:`hub.ratelimit.classes`), each class a
policy (Settings ``rate_limit_<class>``); a key is ``<class>:<scope>:<id>``, so a client's reads do
not spend its writes. The operations routes are not limited.

**Answers.** A refused request gets 429 problem+json ``rate_limited`` with ``Retry-After`` (whole
seconds, rounded up) and ``retry_after_ms`` in the body (to the millisecond), and every answer of a
limited route carries the IETF fields of draft-ietf-httpapi-ratelimit-headers-11:

    RateLimit-Policy: "write";q=20;w=2      the class's burst, and the seconds it takes to refill
    RateLimit: "write";r=0;t=1              requests left now, and the seconds (rounded up) within
                                            which no more than those would pass: until the quota
                                            grows by one — on a 429, the Retry-After

The limiter (:mod:`hub.ratelimit.limiter`) is the in-process one, or the Redis one when the node has
``redis_url`` (one limit shared by every node). When Redis fails, ``rate_limit_fail_open`` decides:
let the request through (logged at most every 10 s, counted in
``synchub_rate_limiter_failures_total{outcome="allowed"}``) or answer 503
``rate_limiter_unavailable``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict, istr

from hub.errors import problem_response
from hub.keys import METRICS, PRINCIPAL, RATE_LIMITS, SETTINGS
from hub.metrics import Metrics
from hub.ratelimit.classes import ROUTE_CLASSES, RouteClass
from hub.ratelimit.limiter import Decision, RateLimiter, RateLimiterUnavailable, RatePolicy
from hub.ratelimit.limiter_memory import MemoryRateLimiter
from hub.settings import Settings

log = logging.getLogger(__name__)

DRAFT = "draft-ietf-httpapi-ratelimit-headers-11"
_POLICY_FIELD = istr("RateLimit-Policy")
_REMAINING_FIELD = istr("RateLimit")
_LOG_EVERY = 10.0  # seconds between two warnings of a failing limiter


def make_limiter(settings: Settings) -> RateLimiter:
    if settings.redis_url:
        from hub.ratelimit.limiter_redis import RedisRateLimiter

        return RedisRateLimiter(settings.redis_url, prefix=settings.redis_prefix)
    return MemoryRateLimiter()


def _policies(settings: Settings) -> dict[RouteClass, RatePolicy]:
    given = {
        RouteClass.READ: settings.rate_limit_read,
        RouteClass.WRITE: settings.rate_limit_write,
        RouteClass.RESERVATION: settings.rate_limit_reservation,
        RouteClass.REVIEW_POST: settings.rate_limit_review_post,
        RouteClass.SYNC_PUSH: settings.rate_limit_sync_push,
    }
    return {route_class: policy for route_class, policy in given.items() if policy is not None}


def _period(seconds: float) -> str:
    for unit, length in (("hour", 3600), ("minute", 60)):
        if seconds == length:
            return unit
        if seconds % length == 0:
            return f"{int(seconds // length)} {unit}s"
    return "second" if seconds == 1 else f"{seconds:g} seconds"


@dataclass(frozen=True, slots=True)
class LimitedRoute:
    """A limited route's class and policy, and the strings of its answers' fields, made once."""

    route_class: RouteClass
    policy: RatePolicy
    key_prefix: str  # "read:" — a key is "<class>:<scope>:<id>"
    policy_field: str  # RateLimit-Policy: "read";q=100;w=1
    remaining_prefix: str  # RateLimit: "read";r=  (then the count and ;t=)

    @classmethod
    def of(cls, route_class: RouteClass, policy: RatePolicy) -> LimitedRoute:
        name = route_class.value
        return cls(
            route_class,
            policy,
            f"{name}:",
            f'"{name}";q={policy.burst};w={policy.window_seconds}',
            f'"{name}";r=',
        )

    def fields(self, decision: Decision) -> dict[str, str]:
        """The RateLimit and RateLimit-Policy fields of an answer."""
        return {
            "RateLimit-Policy": self.policy_field,
            "RateLimit": f"{self.remaining_prefix}{decision.remaining};t={math.ceil(decision.next_after)}",
        }

    def stamp(self, headers: CIMultiDict[str], remaining: int, next_us: int) -> None:
        """:meth:`fields` of an allowed request (``next_us``: µs until ``remaining`` grows by one), set
        on its answer (the hot path: no dict made, integers only)."""
        headers[_POLICY_FIELD] = self.policy_field
        headers[_REMAINING_FIELD] = f"{self.remaining_prefix}{remaining};t={-(-next_us // 1_000_000)}"


class RateLimits:
    """The node's limiter, the policy of each route class, and who is exempt."""

    def __init__(self, settings: Settings, limiter: RateLimiter, metrics: Metrics) -> None:
        self.limiter = limiter
        self.policies = _policies(settings)
        self.fail_open = settings.rate_limit_fail_open
        self.exempt_roles = frozenset(settings.rate_limit_exempt_roles)
        self._metrics = metrics
        # Route name -> all its check needs, made once: the request path then does no enum
        # formatting or hashing (a StrEnum's are Python code), one dict lookup in all.
        self.by_route: dict[str, LimitedRoute] = {
            name: LimitedRoute.of(route_class, self.policies[route_class])
            for name, route_class in ROUTE_CLASSES.items()
            if route_class in self.policies
        }
        # The in-process limiter never waits: checked without a coroutine on the request path (a
        # limited read cost 20 µs more CPU than an unlimited one; this is part of getting that down).
        self.memory = limiter if isinstance(limiter, MemoryRateLimiter) else None
        self._quiet_until = 0.0

    def client(self, request: web.Request) -> tuple[str, str] | None:
        """(scope, id) the request counts against; None: not limited."""
        who = request.get(PRINCIPAL)
        if who is not None:
            if who.api_key_id is not None:
                return "api_key", who.sub
            if who.roles & self.exempt_roles:
                return None
            return "user", who.sub
        return "ip", request.remote or "unknown"

    def refusal(self, route: LimitedRoute, scope: str, decision: Decision) -> web.Response:
        route_class, policy = route.route_class, route.policy
        self._metrics.rate_limited.labels(route_class, scope).inc()
        retry_ms = math.ceil(decision.retry_after * 1000)
        # Answered here rather than raised, so that it passes through the CORS middleware (its
        # headers let a page read the 429 and its Retry-After).
        return problem_response(
            429,
            "rate_limited",
            "Too many requests",
            f"too many {route_class} requests: {policy.burst} at once, then {policy.rate} per"
            f" {_period(policy.period)}; retry in {retry_ms / 1000:.3f} s",
            headers={**route.fields(decision), "Retry-After": str(math.ceil(decision.next_after))},
            extra={"policy": str(route_class), "retry_after_ms": retry_ms},
        )

    def unavailable(self, exc: RateLimiterUnavailable) -> web.Response | None:
        """A failed check: None to let the request through (fail-open), else the 503 to answer."""
        now = time.monotonic()
        if now >= self._quiet_until:
            self._quiet_until = now + _LOG_EVERY
            what = "let through" if self.fail_open else "refused"
            log.warning("rate limiter unavailable (%s): requests are %s", exc, what)
        self._metrics.rate_limiter_failures.labels("allowed" if self.fail_open else "refused").inc()
        if self.fail_open:
            return None
        return problem_response(
            503,
            "rate_limiter_unavailable",
            "Service unavailable",
            "the rate limiter cannot be reached; retry shortly",
            headers={"Retry-After": "1"},
        )


async def rate_limit_context(app: web.Application) -> AsyncIterator[None]:
    """The node's limiter, from start-up to shutdown (only while rate limits are on)."""
    limiter = make_limiter(app[SETTINGS])
    app[RATE_LIMITS] = RateLimits(app[SETTINGS], limiter, app[METRICS])
    try:
        yield
    finally:
        await limiter.close()
