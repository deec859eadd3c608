"""Origin checks on real-time connections, CORS on the REST API and the security headers, over real
sockets (hub/browsers.py)."""

from __future__ import annotations

import pytest

from tests.conftest import Hub, hub_settings, running_hub
from tests.realtime_helpers import upgrade_headers

EVIL = "https://evil.example"
SHOP = "https://shop.example"


@pytest.fixture
async def browser_hub(tmp_path):
    settings = hub_settings(str(tmp_path / "hub.sqlite3"), allowed_origins=(SHOP,), cors_origins=(SHOP,))
    async with running_hub(settings) as hub:
        yield hub


async def upgrade(hub: Hub, origin: str | None) -> tuple[int, str]:
    headers = upgrade_headers()
    if origin is not None:
        headers["Origin"] = origin
    async with hub.session.get(hub.base + "/api/v1/ws", headers=headers) as response:
        return response.status, (await response.json())["code"] if response.status >= 400 else ""


async def test_a_websocket_upgrade_from_another_sites_page_is_refused(browser_hub):
    assert await upgrade(browser_hub, EVIL) == (403, "origin_not_allowed")
    assert (await upgrade(browser_hub, None))[0] == 101  # not a browser
    assert (await upgrade(browser_hub, SHOP))[0] == 101  # allowed
    assert (await upgrade(browser_hub, browser_hub.base))[0] == 101  # the hub's own pages


async def test_an_sse_stream_from_another_sites_page_is_refused(browser_hub):
    url = browser_hub.base + "/api/v1/sse?channels=inventory:default"
    async with browser_hub.session.get(url, headers={"Origin": EVIL}) as response:
        assert response.status == 403 and (await response.json())["code"] == "origin_not_allowed"
    async with browser_hub.session.get(url, headers={"Origin": SHOP}) as response:
        assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream"


async def test_any_origin_may_open_connections_when_told_so(tmp_path):
    async with running_hub(hub_settings(str(tmp_path / "h.sqlite3"), allowed_origins=("*",))) as hub:
        assert (await upgrade(hub, EVIL))[0] == 101


async def test_cors_answers_listed_origins_and_no_other(browser_hub):
    preflight = {"Origin": SHOP, "Access-Control-Request-Method": "POST"}
    async with browser_hub.session.options(
        browser_hub.base + "/api/v1/products", headers=preflight
    ) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == SHOP
        assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
        assert "PATCH" in response.headers["Access-Control-Allow-Methods"]
    async with browser_hub.session.options(
        browser_hub.base + "/api/v1/products", headers={**preflight, "Origin": EVIL}
    ) as response:
        assert response.status == 403 and (await response.json())["code"] == "cors_refused"
    async with browser_hub.session.get(browser_hub.base + "/api/v1/products", headers={"Origin": SHOP}) as r:
        assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == SHOP
        assert "ETag" in r.headers["Access-Control-Expose-Headers"] and "Origin" in r.headers["Vary"]
    async with browser_hub.session.get(browser_hub.base + "/api/v1/products", headers={"Origin": EVIL}) as r:
        assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers


async def test_every_response_says_nosniff_and_private_ones_are_not_stored(hub):
    status, _, headers = await hub.call("GET", "/api/v1/products")
    assert status == 200 and headers["X-Content-Type-Options"] == "nosniff"
    assert "no-store" not in headers.get("Cache-Control", "")  # public: caches may keep it
    status, _, headers = await hub.call("GET", "/api/v1/products", token=hub.alice)
    assert headers["Cache-Control"] == "no-store"
    status, _, headers = await hub.call("GET", "/api/v1/no-such-route")
    assert status == 404 and headers["X-Content-Type-Options"] == "nosniff"


async def test_the_cli_reads_origins_as_comma_separated_lists():
    from hub.cli_settings import origins

    assert origins(" https://a.example/, https://b.example ,,") == ("https://a.example", "https://b.example")
    assert origins("") == ()
