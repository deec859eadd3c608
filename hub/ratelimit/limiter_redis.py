"""The shared rate limiter: one limit for every node of a region, kept in Redis.

A check is one call of one Lua script (``hub/lua/gcra.lua``, loaded once, reloaded by redis-py after
a Redis restart) on one key, ``{prefix}{rl:<key>}``: the arithmetic runs inside Redis on Redis's
clock (``TIME``), so nodes whose clocks disagree still share one limit exactly, and two checks of a
key never interleave. The braces are a hash tag: the key names its own slot, so the script works
unchanged on a Redis Cluster. A key expires when its bucket would be full again.

Checks made in the same turn of the event loop (requests that arrived together) go to Redis together,
one pipeline and one round trip: a check through redis-py costs more CPU than a request's own work, and
a pipeline of 64 costs a third of it per check (bench/README.md, "Rate limits").

Failures: Redis unreachable, timing out (``timeout`` seconds per check, 0.25 by default — a check
takes well under a millisecond) or answering an error → :class:`RateLimiterUnavailable`. After a
failure the limiter does not ask Redis again for ``retry_interval`` seconds (it raises at once), so a
Redis that hangs costs one timeout a second, not one per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from functools import cache
from importlib import resources
from typing import cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from hub.ratelimit.limiter import Decision, RateLimiterUnavailable, RatePolicy, decision_of
from sync.redis_connect import is_cluster_url, node_url

# (the Redis key, the policy's interval and burst, the caller waiting for the script's reply)
_Check = tuple[str, int, int, "asyncio.Future[list[int]]"]
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
        self._client: Redis | RedisCluster
        if is_cluster_url(url):  # one retry: a failover's MOVED, or a refreshed slot map
            self._client = RedisCluster.from_url(
                node_url(url),
                max_connections=max_connections,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 1),
            )
        else:
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
        self._waiting: list[_Check] = []  # checks of this loop turn, not yet sent
        self._sending: set[asyncio.Task[None]] = set()

    def redis_key(self, key: str) -> str:
        return f"{self._prefix}{{rl:{_tag(key)}}}"

    async def check(self, key: str, policy: RatePolicy) -> Decision:
        if self._down_until and time.monotonic() < self._down_until:
            raise RateLimiterUnavailable("redis failed a moment ago; not asked again yet")
        interval = policy.interval_us
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[list[int]] = loop.create_future()
        self._waiting.append((self.redis_key(key), interval, policy.burst, waiter))
        if len(self._waiting) == 1:
            loop.call_soon(self._send_waiting)
        allowed, remaining, reset_us, retry_us = await waiter
        return decision_of(allowed, remaining, reset_us, retry_us, interval)

    def _send_waiting(self) -> None:
        """Send the checks of the turn that just ended: one script call, or one pipeline of them."""
        batch, self._waiting = self._waiting, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Check]) -> None:
        try:
            if len(batch) == 1:
                key, interval, burst, _ = batch[0]
                replies = [await self._script(keys=[key], args=[interval, burst])]
            else:
                replies = await self._pipeline(batch)
        except (RedisError, OSError) as exc:
            self._down_until = time.monotonic() + self._retry_interval
            failed = RateLimiterUnavailable(f"redis rate limiter: {exc}")
            for *_, waiter in batch:
                if not waiter.done():
                    waiter.set_exception(failed)
            return
        except BaseException as exc:  # cancelled (closing): the callers are told, not left waiting
            for *_, waiter in batch:
                if not waiter.done():
                    waiter.set_exception(RateLimiterUnavailable(f"redis rate limiter stopped: {exc!r}"))
            raise
        self._down_until = 0.0
        for (*_, waiter), reply in zip(batch, replies, strict=True):
            if not waiter.done():  # (a caller that went away)
                waiter.set_result([int(v) for v in reply])

    async def _pipeline(self, batch: list[_Check]) -> list[list[int]]:
        """One round trip for many checks. EVALSHA, not the Script object: a pipeline that holds
        scripts asks SCRIPT EXISTS first, on every execute. A Redis that lost the script (restarted)
        answers NOSCRIPT to each: it is loaded and the batch sent again (nothing of it ran)."""
        for attempt in (1, 2):
            async with self._client.pipeline(transaction=False) as pipe:
                for key, interval, burst, _ in batch:
                    pipe.evalsha(self._script.sha, 1, key, interval, burst)
                replies = await pipe.execute(raise_on_error=False)
            if attempt == 1 and any(isinstance(reply, NoScriptError) for reply in replies):
                await self._client.script_load(self._script.script)
                continue
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            return cast("list[list[int]]", replies)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        for task in list(self._sending):
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)
        await self._client.aclose()
