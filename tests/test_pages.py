"""The hub's pages (hub/routes/home.py) over HTTP, and in a real browser: headless Chromium (Debian's
/usr/bin/chromium, which scripts/test installs with ensure_chromium) driven by playwright-core
(tests/browser, installed with ``npm ci``). The home page shows the stock of the node's region, then a
change made through the API after it loaded, with no error, console error or CSP violation; the API
reader renders the OpenAPI document. A missing browser is installed, not skipped."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path

import pytest

from hub.routes.home import ASSETS, PAGE_CSP
from tests.conftest import Hub, hub_settings, running_hub

PROTOCOL_DOCUMENT = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"

ROOT = Path(__file__).resolve().parent.parent
BROWSER = ROOT / "tests" / "browser"
CHROMIUM = Path(os.environ.get("SYNCHUB_TEST_CHROMIUM", "/usr/bin/chromium"))
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def browser_driver() -> Path:
    """tests/browser with its node_modules, and a Chromium to drive: both installed when missing."""
    if not CHROMIUM.exists():
        subprocess.run(
            ["bash", "-c", "source scripts/_lib.sh && ensure_chromium"], cwd=ROOT, check=True, timeout=900
        )
    npm = shutil.which("npm")
    assert npm is not None, "npm is needed for the browser tests (Node 18+)"
    lock = BROWSER / "package-lock.json"
    installed = BROWSER / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=BROWSER, check=True, timeout=600)
    return BROWSER


@pytest.fixture
async def eu_hub(tmp_path: Path) -> AsyncIterator[Hub]:
    async with running_hub(hub_settings(str(tmp_path / "hub.sqlite3"), region="eu")) as hub:
        yield hub


async def test_the_pages_and_their_files_are_served_with_a_strict_policy(eu_hub: Hub) -> None:
    for asset in ASSETS:
        status, _, headers = await eu_hub.call("GET", asset.path)
        assert status == 200 and headers["Content-Type"].startswith(asset.content_type), asset
        assert headers["X-Content-Type-Options"] == "nosniff"
        if asset.content_type == "text/html":
            assert headers["Content-Security-Policy"] == PAGE_CSP and headers["X-Frame-Options"] == "DENY"
        again, _, _ = await eu_hub.call("GET", asset.path, headers={"If-None-Match": headers["ETag"]})
        assert again == 304, asset
    async with eu_hub.session.get(eu_hub.base + "/docs/protocol.md") as response:
        status, served, headers = response.status, await response.read(), response.headers
    assert status == 200 and headers["Content-Type"].startswith("text/markdown")
    # Served from the package (hub/static/protocol.md, a link a wheel's build turns into a copy), and
    # it is the repository's document.
    packaged = resources.files("hub").joinpath("static").joinpath("protocol.md").read_bytes()
    assert packaged == PROTOCOL_DOCUMENT.read_bytes() == served
    # No third-party anything: every script and style sheet a page names is one of the hub's own.
    async with eu_hub.session.get(eu_hub.base + "/") as response:
        page = await response.text()
    assert "http://" not in page and "https://" not in page and "<script>" not in page


async def test_the_home_page_shows_a_stock_change_made_after_it_loaded(
    eu_hub: Hub, browser_driver: Path, tmp_path: Path
) -> None:
    await eu_hub.warehouse("par-1", "eu")
    product = await eu_hub.product("LIP-001")
    await eu_hub.stock(product["id"], "par-1", 50)
    shots = tmp_path / "shots"
    shots.mkdir()
    driver = await asyncio.create_subprocess_exec(
        "node",
        "pages.mjs",
        cwd=browser_driver,
        env={
            **os.environ,
            "HUB": eu_hub.base,
            "ADMIN": eu_hub.admin,
            "PRODUCT_ID": product["id"],
            "SKU": "LIP-001",
            "WAREHOUSE": "par-1",
            "SHOTS": str(shots),
            "CHROMIUM": str(CHROMIUM),
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(driver.communicate(), 180)
    assert driver.returncode == 0, out.decode() + err.decode()
    report = json.loads(out.decode().strip().splitlines()[-1])
    seen = report["seen"]
    assert seen["region"] == "eu"
    # SKU, warehouse, on hand, reserved, available, status, version: before and after the API's change
    assert seen["before"] == ["LIP-001", "par-1", "50", "0", "50", "in_stock", "1"]
    assert seen["after"] == ["LIP-001", "par-1", "77", "0", "77", "in_stock", "2"]
    assert seen["home_links"] == ["/api-docs", "/docs/protocol.md", "/api/v1/openapi.json"]
    assert seen["operations"] > 40
    assert "/api/v1/reservations" in seen["filtered"] and "Responses" in seen["opened"]
    assert seen["protocol"].startswith("# ")
    for name in ("home.png", "api-docs.png"):
        shot = (shots / name).read_bytes()
        assert shot.startswith(PNG) and len(shot) > 5_000, name
