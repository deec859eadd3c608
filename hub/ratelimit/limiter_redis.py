"""The shared rate limiter: one limit for every node of a region, kept in Redis.

A check is one call of one Lua script (``hub/lua/gcra.lua``, loaded once, reloaded by redis-py after
a Redis restart) on one key, ``{prefix}{rl:<key>}``: the arithmetic runs inside Redis on Redis's
clock (``TIME``), so nodes whose clocks disagree still share one limit exactly, and two checks of a
key never interleave. The braces are a hash tag: the key names its own slot, so the script works
unchanged on a Redis Cluster. A key expires when its bucket would be full again.

Failures: Redis unreachable, timing out (``timeout`` seconds per check, 0.25 by default — a check
takes well under a millisecond) or answering an error → :class:`RateLimiterUnavailable`. After a
failure the limiter does not ask Redis again for ``retry_interval`` seconds (it raises at once), so a
Redis that hangs costs one timeout a second, not one per request.
"""

from __future__ import annotations

import hashlib
import time
from functools import cache
from importlib import resources

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from hub.ratelimit.limiter import Decision, RateLimiterUnavailable, RatePolicy, decision_of

_SAFE_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:@-")
_MAX_KEY_CHARS = 160


@cache
def _lua(name: str) -> str:
    return resources.files("hub").joinpath("lua").joinpath(name).read_text(encoding="utf-8")


def _tag(key: str) -> str:
    """``key`` as it goes between the hash tag's braces: itself when short and plain, else a digest
    (a subject may hold braces, which would end the tag early, or be long)."""
    if len(key) <= _MAX_KEY_CHARS and _SAFE_KEY_CHARS.issuperset(key):
        return key
    head = key.split(":", 2)[:2]  # class and scope stay readable
    return ":".join([*head, "h" + hashlib.blake2b(key.encode(), digest_size=16).hexdigest()])


class RedisRateLimiter:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "synchub:",
        timeout: float = 0.25,
        retry_interval: float = 1.0,
        max_connections: int = 100,
    ) -> None:
        self._prefix = prefix
        self._retry_interval = retry_interval
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,  # waiting for a free connection
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._client = Redis.from_pool(pool)
        self._script = self._client.register_script(_lua("gcra.lua"))
        self._down_until = 0.0

    def redis_key(self, key: str) -> str:
        return f"{self._prefix}{{rl:{_tag(key)}}}"

    async def check(self, key: str, policy: RatePolicy) -> Decision:
        if self._down_until and time.monotonic() < self._down_until:
            raise RateLimiterUnavailable("redis failed a moment ago; not asked again yet")
        interval = policy.interval_us
        try:
            reply = await self._script(keys=[self.redis_key(key)], args=[interval, policy.burst])
        except (RedisError, OSError) as exc:
            self._down_until = time.monotonic() + self._retry_interval
            raise RateLimiterUnavailable(f"redis rate limiter: {exc}") from exc
        self._down_until = 0.0
        allowed, remaining, reset_us, retry_us = (int(v) for v in reply)
        return decision_of(allowed, remaining, reset_us, retry_us, interval)

    async def close(self) -> None:
        await self._client.aclose()
