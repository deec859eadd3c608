"""The auth bench runs (its figures are printed by ``python -m bench auth``, not checked here)."""

from __future__ import annotations

from bench.auth import Provider, bench_verify


async def test_the_verification_bench_measures_every_token_kind():
    rows = await bench_verify(Provider(), 20)
    assert [name.split()[0] for name, _, _ in rows] == ["HS256", "RS256", "ES256"]
    assert all(first > 0 and again > 0 for _, first, again in rows)
