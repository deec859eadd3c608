"""One delivery attempt over HTTP, and when to try again.

An attempt is one signed ``POST`` of the message's body (hub/webhooks/signing.py) with a **total**
timeout (connection, request and the response's head: ``webhook_timeout_seconds``, 10 s), **no
redirects** (a 3xx is a failure: a redirect could lead anywhere, past the checks of targets.py), and the
target checked against SSRF at every connection (targets.py). Only a 2xx delivers.

**Retries**: exponential backoff with full jitter — after the n-th failed attempt, the next one comes
after a random delay between 0 and min(``retry_max``, ``retry_base`` × 2^(n-1)) (5 s, 10 s, 20 s … up to
6 h) — until the message's retry window (24 h from when it was queued or replayed) is over or
``max_attempts`` were made; the last attempt is scheduled at the window's end at the latest. Then the
message is a dead letter. Full jitter spreads the retries of many messages failing at once (an outage
of the receiver) instead of sending them back in waves.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from yarl import URL

from hub.webhooks.signing import signed_headers
from hub.webhooks.targets import AllowList, CheckingResolver, TargetRefused, check_url, literal

USER_AGENT = "synchub-webhooks/1"
_ERROR_SNIPPET = 200  # bytes of a failed response's body kept in the log


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_seconds: float = 5.0
    max_seconds: float = 6 * 3600.0
    window_seconds: float = 24 * 3600.0
    max_attempts: int = 20

    def next_attempt(self, attempt: int, queued_at_us: int, now_us: int, rng: random.Random) -> int | None:
        """When to try again after the failed attempt number ``attempt`` (1: the first), or None: never
        (a dead letter)."""
        deadline = queued_at_us + int(self.window_seconds * 1e6)
        if attempt >= self.max_attempts or now_us >= deadline:
            return None
        cap = min(self.max_seconds, self.base_seconds * 2 ** min(attempt - 1, 60))
        return min(now_us + int(rng.uniform(0, cap) * 1e6), deadline)


@dataclass(frozen=True, slots=True)
class Response:
    status: int | None  # None: no HTTP answer
    latency_us: int
    error: str | None  # None: delivered

    @property
    def delivered(self) -> bool:
        return self.error is None


def _refusal(exc: BaseException) -> TargetRefused | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TargetRefused):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class Sender:
    """The node's HTTP client for webhooks: one connection pool, every connection to a checked address."""

    def __init__(self, allow: AllowList, timeout_seconds: float, *, connections: int = 256) -> None:
        self.allow = allow
        self.timeout_seconds = timeout_seconds
        self._session: aiohttp.ClientSession | None = None
        self._connections = connections

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=CheckingResolver(self.allow),
                use_dns_cache=False,  # every new connection resolves (and checks) again
                limit=self._connections,
                limit_per_host=32,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.timeout_seconds),
                headers={"User-Agent": USER_AGENT},
                trust_env=False,  # no proxy from the environment: it would connect on our behalf, unchecked
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def send(self, url: str, keys: Sequence[bytes], message_id: str, body: bytes) -> Response:
        started = time.perf_counter()

        def took() -> int:
            return int((time.perf_counter() - started) * 1e6)

        try:
            host = URL(url).host or ""
            if literal(host) is not None:  # aiohttp connects to a literal without asking the resolver
                await check_url(url, self.allow)
            headers = signed_headers(keys, message_id, int(time.time()), body)
            async with self._client().post(url, data=body, headers=headers, allow_redirects=False) as reply:
                status = reply.status
                if 200 <= status < 300:
                    return Response(status, took(), None)
                snippet = (await reply.content.read(_ERROR_SNIPPET)).decode("utf-8", "replace")
                if 300 <= status < 400:
                    where = reply.headers.get("Location", "")[:200]
                    return Response(
                        status, took(), f"HTTP {status} redirect to {where!r}: redirects are not followed"
                    )
                return Response(status, took(), f"HTTP {status}: {snippet}".rstrip(": "))
        except TimeoutError:
            return Response(None, took(), f"timeout: no answer within {self.timeout_seconds:g} s")
        except (aiohttp.ClientError, OSError) as exc:
            refused = _refusal(exc)
            if refused is not None:
                return Response(None, took(), f"{refused.code}: {refused.message}")
            return Response(None, took(), f"connection failed: {type(exc).__name__}: {exc}"[:300])

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
