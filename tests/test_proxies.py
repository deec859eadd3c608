"""The client's address behind a trusted reverse proxy (hub/proxies.py): per-address limits see each
client, and a client that is not behind one cannot choose its address by sending the header."""

from __future__ import annotations

import pytest

from hub.proxies import client_address, parse_networks
from hub.ratelimit.limiter import RatePolicy
from tests.conftest import hub_settings, running_hub

PROXIES = parse_networks(["10.0.0.0/8", "127.0.0.1"])


@pytest.mark.parametrize(
    ("peer", "headers", "client"),
    [
        ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),  # not a proxy: the header is ignored
        ("10.1.2.3", ["198.51.100.1"], "198.51.100.1"),
        ("10.1.2.3", ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),  # leftmost is the client's own say
        ("10.1.2.3", ["198.51.100.1, 10.9.9.9"], "198.51.100.1"),  # two proxies deep
        ("10.1.2.3", ["6.6.6.6", "198.51.100.1, 10.9.9.9"], "198.51.100.1"),  # several headers
        ("10.1.2.3", ["10.4.4.4, 10.9.9.9"], "10.4.4.4"),  # all trusted: the farthest one
        ("10.1.2.3", ["198.51.100.1, garbage"], "10.1.2.3"),  # malformed: stop at the last good hop
        ("10.1.2.3", [], "10.1.2.3"),
        ("::1", ["198.51.100.1"], "::1"),
        (None, ["198.51.100.1"], None),
    ],
)
def test_the_client_is_the_rightmost_untrusted_hop(peer, headers, client):
    assert client_address(peer, headers, PROXIES) == client


def test_malformed_networks_are_named():
    with pytest.raises(ValueError, match="not-a-net"):
        parse_networks(["10.0.0.0/8", "not-a-net"])


async def _reads(hub, forwarded_for: str, count: int) -> list[int]:
    statuses = []
    for _ in range(count):
        status, _, _ = await hub.call("GET", "/api/v1/warehouses", headers={"X-Forwarded-For": forwarded_for})
        statuses.append(status)
    return statuses


@pytest.mark.parametrize("trusted", [True, False], ids=["behind-a-trusted-proxy", "no-trusted-proxy"])
async def test_per_address_limits_see_each_client_only_behind_a_trusted_proxy(tmp_path, trusted):
    settings = hub_settings(
        str(tmp_path / "hub.sqlite3"),
        rate_limit_read=RatePolicy(1, 60.0, 3),
        trusted_proxies=("127.0.0.1",) if trusted else (),
    )
    async with running_hub(settings) as hub:
        first = await _reads(hub, "198.51.100.1", 4)
        second = await _reads(hub, "198.51.100.2", 2)
    assert first == [200, 200, 200, 429]
    # behind the proxy the second client has its own budget; without it, both are 127.0.0.1
    assert second == ([200, 200] if trusted else [429, 429])
