"""The brokers bench runs and delivers everything (its figures are printed by ``python -m bench
brokers``, not checked here). The cluster row starts a cluster of its own: left to the bench."""

from __future__ import annotations

import pytest

from bench.brokers import build_parser, run_one
from tests.test_broker_contract import nats_url

pytestmark = pytest.mark.redis


@pytest.mark.parametrize("kind", ["redis", "nats"])
async def test_the_brokers_bench_delivers_every_publication_to_every_node(kind: str) -> None:
    args = build_parser().parse_args(["--regions", "1", "--publications", "300", "--nats-url", nats_url()])
    result = await run_one(kind, args)
    assert result.error is None
    assert result.delivered == 300 * args.nodes
    assert result.per_second > 0 and len(result.latencies_ms) == result.delivered
