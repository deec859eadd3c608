"""Whether a matched request may run: its rate limit (hub/ratelimit/http.py), then its authorization
(hub/authz.py), in one middleware — innermost, so the caller is known (hub/auth.py ran), and one
coroutine rather than two on every request's path (a limited read stays within a few µs of an
unlimited one: ``python -m bench ratelimit --interleaved 10``).

The limit is checked first, so a call the table refuses still counts against its caller. A request
aiohttp answers itself (404, 405: no route of ours matched) passes through untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from hub.authz import authorize, route_name
from hub.keys import RATE_LIMITS
from hub.ratelimit.limiter import RateLimiterUnavailable


@web.middleware
async def access_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    name = route_name(request)
    if name is None:
        return await handler(request)
    limits = request.app.get(RATE_LIMITS)  # absent while rate limits are off
    limited = limits.by_route.get(name) if limits is not None else None
    client = limits.client(request) if limits is not None and limited is not None else None
    if limits is None or limited is None or client is None:
        authorize(request, name)
        return await handler(request)
    scope, ident = client
    key = f"{limited.key_prefix}{scope}:{ident}"
    memory = limits.memory
    if memory is not None:
        admitted = memory.admit(key, limited.policy)  # never waits: no coroutine on the hot path
        if admitted is not None:
            remaining, next_us = admitted
        else:
            # Why and when; or, if the key's bucket refilled in the µs between the two, the pass.
            decision = memory.check_now(key, limited.policy)
            if not decision.allowed:
                return limits.refusal(limited, scope, decision)
            remaining, next_us = decision.remaining, round(decision.next_after * 1_000_000)
    else:
        try:
            decision = await limits.limiter.check(key, limited.policy)
        except RateLimiterUnavailable as exc:
            refused = limits.unavailable(exc)
            if refused is not None:
                return refused
            authorize(request, name)
            return await handler(request)
        if not decision.allowed:
            return limits.refusal(limited, scope, decision)
        remaining, next_us = decision.remaining, round(decision.next_after * 1_000_000)
    authorize(request, name)
    response = await handler(request)
    if not response.prepared:
        limited.stamp(response.headers, remaining, next_us)
    return response
