"""One contract for every RateLimiter (hub/ratelimit/limiter.py): the in-process one and the Redis one
(a real Redis, its own key prefix), the same tests."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from hub.ratelimit.limiter import RateLimiter, RatePolicy, gcra, parse_optional_policy
from hub.ratelimit.limiter_memory import MemoryRateLimiter
from hub.ratelimit.limiter_redis import RedisRateLimiter
from tests.conftest import redis_url

SLOW = RatePolicy(1, 60.0, 20)  # 20 at once, then one a minute: nothing refills during a test
TIMING = 0.05  # seconds: how close retry_after must be to when a request really passes again


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def limiter(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[RateLimiter]:
    made: RateLimiter
    if request.param == "memory":
        made = MemoryRateLimiter()
    elif request.param == "redis":
        made = RedisRateLimiter(redis_url(), prefix=redis_prefix)
    else:  # the local cluster of 3 masters (bench/redis_cluster.py), thrown away at the session's end
        # The first check discovers the cluster's slots and connects to its masters: on a loaded CI
        # machine that can take longer than the production 0.25 s per check (the contract is about what
        # a check decides, not how fast; the timeout's own behaviour is tested on one Redis).
        cluster_url = request.getfixturevalue("redis_cluster").url
        made = RedisRateLimiter(cluster_url, prefix=redis_prefix, timeout=2.0)
    yield made
    await made.close()


async def test_a_fresh_key_admits_exactly_its_burst(limiter: RateLimiter) -> None:
    decisions = [await limiter.check("k", SLOW) for _ in range(25)]
    assert [d.allowed for d in decisions] == [True] * 20 + [False] * 5
    assert [d.remaining for d in decisions[:20]] == list(range(19, -1, -1))
    assert all(d.remaining == 0 and d.retry_after > 59 for d in decisions[20:])


async def test_concurrent_checks_of_one_key_admit_exactly_its_burst(limiter: RateLimiter) -> None:
    decisions = await asyncio.gather(*(limiter.check("k", SLOW) for _ in range(60)))
    assert sum(d.allowed for d in decisions) == 20


async def test_keys_are_independent(limiter: RateLimiter) -> None:
    small = RatePolicy(1, 60.0, 3)
    assert [(await limiter.check("a", small)).allowed for _ in range(4)] == [True, True, True, False]
    assert [(await limiter.check("b", small)).remaining for _ in range(2)] == [2, 1]
    assert (await limiter.check("c", SLOW)).remaining == 19


async def test_after_the_burst_one_request_passes_per_interval(limiter: RateLimiter) -> None:
    policy = RatePolicy(20, 1.0, 5)  # 5 at once, then one every 50 ms
    # Outside the timed second: a cluster limiter's first check finds the slots and connects (a CI run
    # spent most of the second there, and counted 8 passes where 25 were due).
    await limiter.check("warm-up", policy)
    allowed = 0
    started = time.monotonic()
    while time.monotonic() - started < 1.0:
        allowed += (await limiter.check("k", policy)).allowed
        await asyncio.sleep(0.002)
    elapsed = time.monotonic() - started
    expected = 5 + elapsed / 0.05
    assert expected - 2 <= allowed <= expected + 1, (allowed, elapsed)


async def test_retry_after_says_when_the_next_request_passes(limiter: RateLimiter) -> None:
    policy = RatePolicy(2, 1.0, 2)  # 2 at once, then one every 500 ms
    await limiter.check("k", policy)
    await limiter.check("k", policy)
    refused = await limiter.check("k", policy)
    assert not refused.allowed and 0.45 < refused.retry_after <= 0.5
    assert refused.next_after == refused.retry_after
    asked = time.monotonic()
    await asyncio.sleep(max(0.0, refused.retry_after - TIMING))
    assert not (await limiter.check("k", policy)).allowed  # 50 ms early: still refused
    await asyncio.sleep(max(0.0, refused.retry_after - (time.monotonic() - asked)) + 0.005)
    passed = await limiter.check("k", policy)
    assert passed.allowed and passed.remaining == 0


async def test_reset_after_is_when_the_whole_burst_is_back(limiter: RateLimiter) -> None:
    policy = RatePolicy(10, 1.0, 3)  # one cell every 100 ms
    first = await limiter.check("k", policy)
    assert first.allowed and first.remaining == 2 and first.reset_after == pytest.approx(0.1, abs=0.005)
    assert first.next_after == pytest.approx(0.1, abs=0.005)
    for _ in range(2):
        last = await limiter.check("k", policy)
    assert last.remaining == 0 and last.reset_after == pytest.approx(0.3, abs=0.01)
    assert 0.08 < last.next_after <= 0.1
    await asyncio.sleep(last.reset_after + 0.01)
    assert (await limiter.check("k", policy)).remaining == 2


# -- what only one of them does


async def test_the_memory_limiter_forgets_keys_whose_bucket_is_full_again() -> None:
    limiter = MemoryRateLimiter()
    quick = RatePolicy(100, 1.0, 1)  # full again 10 ms after a request
    for i in range(1000):
        await limiter.check(f"k{i}", quick)
    assert len(limiter) > 500
    await asyncio.sleep(0.02)
    for _ in range(600):
        await limiter.check("busy", quick)
    assert len(limiter) <= 2


async def test_the_memory_limiter_holds_at_most_max_keys() -> None:
    limiter = MemoryRateLimiter(max_keys=100)
    for i in range(1000):
        await limiter.check(f"k{i}", SLOW)
    assert len(limiter) == 100


async def test_redis_keys_are_prefixed_hash_tagged_and_expire(redis_prefix: str) -> None:
    limiter = RedisRateLimiter(redis_url(), prefix=redis_prefix)
    client = Redis.from_url(redis_url())
    try:
        await limiter.check("write:user:alice", RatePolicy(10, 1.0, 5))
        await limiter.check("write:user:we{ird}" + "x" * 300, RatePolicy(10, 1.0, 5))
        keys = sorted([k.decode() async for k in client.scan_iter(match=f"{redis_prefix}*")])
        assert keys[0] == f"{redis_prefix}{{rl:write:user:alice}}"
        assert keys[1].startswith(f"{redis_prefix}{{rl:write:user:h") and keys[1].count("{") == 1
        assert 0 < await client.pttl(keys[0]) <= 100  # full again after one interval
    finally:
        await client.aclose()
        await limiter.close()


async def test_checks_of_one_turn_share_a_pipeline_and_survive_a_flushed_script() -> None:
    from tests.cluster_helpers import RedisServer, free_port

    server = RedisServer(free_port())  # its own: SCRIPT FLUSH would reach every script of a shared one
    await server.start()
    redis_prefix = "t:"
    limiter = RedisRateLimiter(server.url, prefix=redis_prefix)
    client = Redis.from_url(server.url)
    try:
        policy = RatePolicy(1, 60.0, 3)
        for _ in range(2):  # once with the script loaded, once after Redis lost it
            await client.script_flush()
            single = await limiter.check("alone", policy)
            assert single.allowed
            await client.script_flush()
            decisions = await asyncio.gather(*(limiter.check(f"k{i % 2}", policy) for i in range(8)))
            assert [d.allowed for d in decisions].count(True) == 6  # 3 for each of the two keys
            await client.delete(*[f"{redis_prefix}{{rl:{k}}}" for k in ("alone", "k0", "k1")])
    finally:
        await client.aclose()
        await limiter.close()
        await server.kill()


async def test_an_unreachable_redis_raises_unavailable_at_once_then_without_asking() -> None:
    from hub.ratelimit.limiter import RateLimiterUnavailable
    from tests.cluster_helpers import free_port

    limiter = RedisRateLimiter(f"redis://127.0.0.1:{free_port()}/0", retry_interval=0.2)
    try:
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(RateLimiterUnavailable):
                await limiter.check("k", SLOW)
            assert time.monotonic() - started < 0.25
    finally:
        await limiter.close()


# -- policies


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ("50/s:100", RatePolicy(50, 1.0, 100)),
        ("1/min:5", RatePolicy(1, 60.0, 5)),
        ("300/5min", RatePolicy(300, 300.0, 300)),
        ("1000/h", RatePolicy(1000, 3600.0, 1000)),
    ],
)
def test_policies_read_and_print_as_rate_period_burst(text: str, policy: RatePolicy) -> None:
    assert RatePolicy.parse(text) == policy
    assert RatePolicy.parse(str(policy)) == policy
    assert parse_optional_policy(text) == policy


@pytest.mark.parametrize("bad", ["", "50", "50/s:0", "0/s", "5/fortnight", "-1/s", "a/s"])
def test_a_malformed_policy_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        RatePolicy.parse(bad)


def test_off_is_no_policy() -> None:
    assert parse_optional_policy("off") is None


def test_the_arithmetic_is_exact_in_microseconds() -> None:
    # 20 requests at one instant under a 10/s policy with burst 20: all pass, the 21st waits 100 ms.
    tat: int | None = None
    for _ in range(20):
        decision, tat = gcra(tat, 10**15, 100_000, 20)
        assert decision.allowed
    refused, unchanged = gcra(tat, 10**15, 100_000, 20)
    assert not refused.allowed and refused.retry_after == 0.1 and unchanged is None


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 400_000)),  # (key, µs the clock moves first)
        min_size=1,
        max_size=60,
    ),
    rate=st.integers(1, 50),
    burst=st.integers(1, 8),
)
def test_the_memory_limiters_fast_admit_decides_as_its_check_does(
    steps: list[tuple[int, int]], rate: int, burst: int
) -> None:
    # hub/access.py asks admit() on every limited request and check_now() only for a refusal: the two
    # must agree on every outcome, the remaining count and when it grows (the RateLimit field's t).
    from unittest import mock

    import hub.ratelimit.limiter_memory as module

    policy = RatePolicy(rate, 1.0, burst)
    clock = [10**12]
    checked, admitted = MemoryRateLimiter(), MemoryRateLimiter()
    with mock.patch.object(module, "monotonic_ns", lambda: clock[0]):
        for key, advance_us in steps:
            clock[0] += advance_us * 1000
            decision = checked.check_now(f"k{key}", policy)
            fast = admitted.admit(f"k{key}", policy)
            if not decision.allowed:
                assert fast is None
                continue
            assert fast is not None
            remaining, next_us = fast
            assert remaining == decision.remaining
            assert next_us / 1_000_000 == decision.next_after
            assert -(-next_us // 1_000_000) == math.ceil(decision.next_after)
