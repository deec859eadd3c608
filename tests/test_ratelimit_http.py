"""Rate limits on a real hub over real sockets: 429 problem+json, Retry-After (accurate to 50 ms), the
IETF RateLimit and RateLimit-Policy fields, who counts against what, and what a failing Redis does."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from hub.app import create_app
from hub.ratelimit.classes import ROUTE_CLASSES, UNLIMITED
from hub.ratelimit.limiter import RatePolicy
from hub.settings import Settings
from tests.cluster_helpers import RedisServer, free_port
from tests.conftest import Hub, delete_redis_keys, fresh_redis_prefix, hub_settings, running_hub, token

PRODUCTS = "/api/v1/products"
READS = RatePolicy(2, 1.0, 3)  # 3 at once, then one every 500 ms
WRITES = RatePolicy(1, 60.0, 2)  # 2 at once, then one a minute
TIMING = 0.05  # seconds: Retry-After's precision, as the problem's retry_after_ms gives it


@asynccontextmanager
async def limited_hub(tmp_path: Path, **overrides: Any) -> AsyncIterator[Hub]:
    settings = hub_settings(
        str(tmp_path / "hub.sqlite3"), rate_limit_read=READS, rate_limit_write=WRITES, **overrides
    )
    async with running_hub(settings) as hub:
        yield hub


async def exhaust_reads(hub: Hub, who: str | None = None) -> tuple[int, Any, Any]:
    """Spend the caller's burst of reads; return the first refusal."""
    for _ in range(READS.burst):
        status, body, _ = await hub.call("GET", PRODUCTS, token=who)
        assert status == 200, body
    return await hub.call("GET", PRODUCTS, token=who)


def test_every_named_route_is_in_a_class_or_unlimited() -> None:
    app = create_app(Settings(jwt_secret="x" * 32))
    names = {route.name for route in app.router.routes() if route.name}
    assert names - set(ROUTE_CLASSES) - UNLIMITED == set()
    assert not set(ROUTE_CLASSES) & UNLIMITED


def test_the_openapi_document_lists_a_429_on_every_limited_operation() -> None:
    from hub.openapi import openapi_document

    app = create_app(Settings(jwt_secret="x" * 32))
    doc = openapi_document()
    checked = 0
    for route in app.router.routes():
        resource = route.resource
        if route.method == "HEAD" or resource is None or not route.name:
            continue
        operation = doc["paths"][resource.canonical][route.method.lower()]
        assert ("429" in operation["responses"]) == (route.name not in UNLIMITED), route.name
        checked += 1
    assert checked > 40
    fields = doc["components"]["responses"]["RateLimited"]["headers"]
    assert set(fields) == {"Retry-After", "RateLimit", "RateLimit-Policy"}


async def test_a_burst_passes_then_a_429_says_when_to_retry(tmp_path: Path) -> None:
    async with limited_hub(tmp_path) as hub:
        seen = []
        for _ in range(READS.burst):
            status, _, headers = await hub.call("GET", PRODUCTS)
            assert status == 200
            assert headers["RateLimit-Policy"] == '"read";q=3;w=2'  # 3 at once, refilled in 1.5 s
            seen.append(headers["RateLimit"])
        assert seen == ['"read";r=2;t=1', '"read";r=1;t=1', '"read";r=0;t=1']
        status, body, headers = await hub.call("GET", PRODUCTS)
    assert status == 429
    assert headers["Content-Type"].startswith("application/problem+json")
    assert body["code"] == "rate_limited" and body["status"] == 429 and body["policy"] == "read"
    assert body["type"].endswith("/rate_limited") and "3 at once, then 2 per second" in body["detail"]
    assert 400 < body["retry_after_ms"] <= 500
    assert headers["Retry-After"] == "1"
    assert headers["RateLimit"] == '"read";r=0;t=1' and headers["RateLimit-Policy"] == '"read";q=3;w=2'


async def test_retry_after_is_when_a_request_passes_again_within_50_ms(tmp_path: Path) -> None:
    async with limited_hub(tmp_path) as hub:
        status, body, _ = await exhaust_reads(hub)
        refused_at = time.monotonic()
        assert status == 429
        wait = body["retry_after_ms"] / 1000
        await asyncio.sleep(wait - TIMING)
        early, _, _ = await hub.call("GET", PRODUCTS)
        await asyncio.sleep(max(0.0, refused_at + wait + 0.01 - time.monotonic()))
        on_time, _, headers = await hub.call("GET", PRODUCTS)
    assert early == 429, "50 ms before Retry-After, the request must still be refused"
    assert on_time == 200, "just after Retry-After, the request must pass"
    assert headers["RateLimit"] == '"read";r=0;t=1'


async def test_users_addresses_and_classes_count_apart(tmp_path: Path) -> None:
    alice, bob = token("alice"), token("bob")
    async with limited_hub(tmp_path) as hub:
        assert (await exhaust_reads(hub, alice))[0] == 429
        assert (await hub.call("GET", PRODUCTS, token=bob))[0] == 200
        assert (await hub.call("GET", PRODUCTS))[0] == 200  # anonymous: the address's own
        # alice's writes are another class: two admins' creations pass, the third is refused
        admin = token("root", "admin")
        for sku in ("A-1", "A-2"):
            status, _, headers = await hub.call(
                "POST", PRODUCTS, token=admin, json={"sku": sku, "name": sku, "price": "1"}
            )
            assert status == 201 and headers["RateLimit-Policy"] == '"write";q=2;w=120'
        status, body, headers = await hub.call(
            "POST", PRODUCTS, token=admin, json={"sku": "A-3", "name": "A-3", "price": "1"}
        )
        assert status == 429 and body["policy"] == "write" and 59_000 < body["retry_after_ms"] <= 60_000
        assert headers["Retry-After"] == "60"


async def test_calls_the_authorization_table_refuses_count_too_and_head_counts_as_a_read(
    tmp_path: Path,
) -> None:
    """The limit is checked before the route's authorization: a customer hammering an admin route
    spends its own writes (403s), then is answered 429 — the table is not a free way past the limit."""
    customer = token("mallory")
    async with limited_hub(tmp_path) as hub:
        for sku in ("M-1", "M-2"):
            status, body, _ = await hub.call(
                "POST", PRODUCTS, token=customer, json={"sku": sku, "name": sku, "price": "1"}
            )
            assert status == 403 and body["code"] == "forbidden"
        status, body, _ = await hub.call(
            "POST", PRODUCTS, token=customer, json={"sku": "M-3", "name": "M-3", "price": "1"}
        )
        assert status == 429 and body["policy"] == "write"
        # HEAD is answered by the GET route's handler, and counted as that route's read
        for expected in ('"read";r=2;t=1', '"read";r=1;t=1', '"read";r=0;t=1'):
            status, _, headers = await hub.call("HEAD", PRODUCTS)
            assert status == 200 and headers["RateLimit"] == expected
        assert (await hub.call("GET", PRODUCTS))[0] == 429


async def test_service_tokens_and_operations_routes_are_not_limited(tmp_path: Path) -> None:
    service = token("checkout", "service")
    async with limited_hub(tmp_path) as hub:
        for _ in range(READS.burst * 3):
            status, _, headers = await hub.call("GET", PRODUCTS, token=service)
            assert status == 200 and "RateLimit" not in headers
        for path in ("/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"):
            for _ in range(READS.burst * 2):
                status, _, headers = await hub.call("GET", path)
                assert status == 200 and "RateLimit" not in headers, path


async def test_refusals_are_counted_by_limit_and_scope(tmp_path: Path) -> None:
    async with limited_hub(tmp_path) as hub:
        await exhaust_reads(hub)
        await hub.call("GET", PRODUCTS)
        await exhaust_reads(hub, token("carol"))
        _, _, _ = await hub.call("GET", "/healthz")
        async with hub.session.get(hub.base + "/metrics") as response:
            text = await response.text()
    assert re.search(r'synchub_rate_limited_total\{limit="read",scope="ip"\} 2\.0', text)
    assert re.search(r'synchub_rate_limited_total\{limit="read",scope="user"\} 1\.0', text)


async def test_a_browser_page_may_read_the_429_and_its_fields(tmp_path: Path) -> None:
    shop = "https://shop.example"
    async with limited_hub(tmp_path, cors_origins=(shop,)) as hub:
        for _ in range(READS.burst):
            await hub.call("GET", PRODUCTS, headers={"Origin": shop})
        status, _, headers = await hub.call("GET", PRODUCTS, headers={"Origin": shop})
    assert status == 429 and headers["Access-Control-Allow-Origin"] == shop
    exposed = {name.strip() for name in headers["Access-Control-Expose-Headers"].split(",")}
    assert {"Retry-After", "RateLimit", "RateLimit-Policy"} <= exposed


async def test_no_limits_when_they_are_off(tmp_path: Path) -> None:
    async with limited_hub(tmp_path, rate_limits_enabled=False) as hub:
        for _ in range(READS.burst * 3):
            status, _, headers = await hub.call("GET", PRODUCTS)
            assert status == 200 and "RateLimit" not in headers


# -- a shared limiter whose Redis goes away


@asynccontextmanager
async def hub_on_private_redis(tmp_path: Path, fail_open: bool) -> AsyncIterator[tuple[Hub, RedisServer]]:
    redis = RedisServer(free_port())
    await redis.start()
    prefix = fresh_redis_prefix()
    try:
        async with limited_hub(
            tmp_path, redis_url=redis.url, redis_prefix=prefix, rate_limit_fail_open=fail_open
        ) as hub:
            yield hub, redis
    finally:
        await redis.kill()


async def _failures(hub: Hub) -> str:
    async with hub.session.get(hub.base + "/metrics") as response:
        return "\n".join(
            line
            for line in (await response.text()).splitlines()
            if line.startswith("synchub_rate_limiter_fail")
        )


async def test_fail_open_lets_requests_through_while_redis_is_down(tmp_path: Path) -> None:
    async with hub_on_private_redis(tmp_path, fail_open=True) as (hub, redis):
        status, body, _ = await exhaust_reads(hub)
        assert status == 429, body  # the limit is Redis's
        await redis.kill()
        for _ in range(READS.burst * 2):
            status, body, headers = await hub.call("GET", PRODUCTS)
            assert status == 200 and "RateLimit" not in headers, body
        assert 'synchub_rate_limiter_failures_total{outcome="allowed"} 6.0' in await _failures(hub)


async def test_fail_closed_answers_503_while_redis_is_down_and_limits_again_after(tmp_path: Path) -> None:
    async with hub_on_private_redis(tmp_path, fail_open=False) as (hub, redis):
        assert (await hub.call("GET", PRODUCTS))[0] == 200
        await redis.kill()
        started = time.monotonic()
        status, body, headers = await hub.call("GET", PRODUCTS)
        assert time.monotonic() - started < 1.0
        assert status == 503 and body["code"] == "rate_limiter_unavailable" and headers["Retry-After"] == "1"
        assert (await hub.call("GET", "/healthz"))[0] == 200  # not limited, not refused
        assert 'synchub_rate_limiter_failures_total{outcome="refused"} 1.0' in await _failures(hub)
        await redis.start()  # the same port, empty: the limit starts over
        await asyncio.sleep(1.1)  # the limiter asks Redis again a second after a failure
        statuses = [(await hub.call("GET", PRODUCTS))[0] for _ in range(READS.burst + 1)]
        assert statuses == [200] * READS.burst + [429]


async def test_the_shared_limiter_keeps_its_keys_under_the_prefix(tmp_path: Path) -> None:
    from redis.asyncio import Redis

    from tests.conftest import redis_url

    prefix = fresh_redis_prefix()
    try:
        async with limited_hub(tmp_path, redis_url=redis_url(), redis_prefix=prefix) as hub:
            await hub.call("GET", PRODUCTS, token=token("dave"))
            client = Redis.from_url(redis_url())
            try:
                assert await client.exists(f"{prefix}{{rl:read:user:dave}}") == 1
            finally:
                await client.aclose()
    finally:
        await delete_redis_keys(redis_url(), prefix)


@pytest.mark.parametrize("flag", ["--rate-limit-read=fast", "--ws-message-rate=5/fortnight"])
def test_a_malformed_policy_flag_is_refused(flag: str) -> None:
    from hub.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", flag])
