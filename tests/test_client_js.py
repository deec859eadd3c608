"""The TypeScript SDK (clients/js) against a real hub: its node --test suites run here, in CI, with the
hub's URL and tokens in SYNCHUB_* variables (Node and npm are required: a missing one fails, never
skips). Proved here: the golden CRDT vectors; inventory followed over WebSocket (JSON and MessagePack)
with no gap and no duplicate through a cut connection; the SSE fallback behind a proxy that refuses
WebSocket upgrades, and long-poll; and one Python device and one TypeScript device — the latter
killed with edits queued offline, then restarted — converging on one cart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from crdt import codec
from crdt.cart import Cart
from tests.cart_helpers import Device
from tests.conftest import Hub, hub_settings, running_hub, token
from tests.js_helpers import JS, js_build, node
from tests.realtime_helpers import JSON, MSGPACK, ws_client

REGION = "eu"


@pytest.fixture
async def js_hub(tmp_path):
    async with running_hub(hub_settings(str(tmp_path / "hub.sqlite3"), region=REGION)) as hub:
        await hub.warehouse("par-1", REGION)
        tea = await hub.product("TEA-1")
        lip = await hub.product("LIP-001")
        await hub.stock(tea["id"], "par-1", 5)
        await hub.stock(lip["id"], "par-1", 8)
        hub.tea_id = tea["id"]  # type: ignore[attr-defined]
        yield hub


def sdk_env(hub: Hub, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "SYNCHUB_URL": hub.base,
        "SYNCHUB_ADMIN_TOKEN": hub.admin,
        "SYNCHUB_TOKEN": hub.alice,
        "SYNCHUB_SHORT_TOKEN": token("alice", "customer", ttl=40),
        "SYNCHUB_REGION": REGION,
        "SYNCHUB_PRODUCT_ID": hub.tea_id,  # type: ignore[attr-defined]
        "SYNCHUB_WAREHOUSE_ID": "par-1",
        **extra,
    }


async def node_test(suite: str, env: dict[str, str] | None = None, timeout: float = 180) -> str:
    build = js_build()
    proc = await asyncio.create_subprocess_exec(
        node(),
        "--test",
        "--test-reporter=spec",
        "--test-timeout=120000",
        "--test-force-exit",  # a failed test may leave a client running: the suite still ends
        str(build / "test" / suite),
        cwd=JS,
        env=env or dict(os.environ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    text = out.decode("utf-8", "replace")
    assert proc.returncode == 0, text
    assert "# skipped 0" in text or "skipped 0" in text, text
    return text


async def test_the_typescript_port_replays_every_golden_vector():
    out = await node_test("golden.test.js")
    assert "fail 0" in out


async def test_the_clients_connection_rules_hold_against_a_fake_hub():
    """Resume positions, close codes (1001, 4102, 40xx), backoff, resync, write-ahead and refusals."""
    out = await node_test("client.test.js")
    assert "fail 0" in out and "pass 14" in out, out


async def test_the_sdk_follows_inventory_through_cuts_and_falls_back_to_sse_and_long_poll(js_hub):
    out = await node_test("hub.test.js", sdk_env(js_hub))
    assert "fail 0" in out and "pass 6" in out, out


async def scenario(mode: str, storage: Path, cart_id: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        node(),
        str(js_build() / "test" / "scenario.js"),
        mode,
        str(storage),
        cart_id,
        cwd=JS,
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )


async def read_line(proc: asyncio.subprocess.Process) -> dict:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert line, f"the device exited ({proc.returncode}) without a report"
    return dict(json.loads(line))


@pytest.mark.parametrize(
    ("protocol", "transport"), [(JSON, "websocket"), (MSGPACK, "websocket"), (JSON, "sse")]
)
async def test_a_python_and_a_typescript_device_edit_one_cart_offline_and_converge(
    js_hub, tmp_path, protocol, transport
):
    """Over SSE the TypeScript device follows its cart's channel with its token and writes through
    POST …/sync; over a WebSocket it pushes."""
    hub = js_hub
    cart_id = str(uuid.uuid4())
    storage = tmp_path / "device.json"
    env = sdk_env(
        hub, SYNCHUB_FORMAT="msgpack" if protocol == MSGPACK else "json", SYNCHUB_TRANSPORTS=transport
    )

    # The TypeScript device edits offline, persists its queue, and is killed before it ever connects.
    offline = await scenario("offline", storage, cart_id, env)
    report = await read_line(offline)
    assert report["queued"] == 3 and report["value"] == {"TEA-1": 2, "LIP-001": 4}
    offline.send_signal(signal.SIGKILL)
    await offline.wait()

    # Meanwhile the Python device (crdt/ over the hub's WebSocket) edits the same cart concurrently.
    python = Device(cart_id)
    python.add("TEA-1", 1)
    python.set("LIP-001", 7)
    async with ws_client(hub, protocol, headers={"Authorization": f"Bearer {hub.alice}"}) as ws:
        await python.sync_ws(ws)
        replies = await python.push_ws(ws)
    assert [r["type"] for r in replies] == ["ack", "ack"], replies

    # The TypeScript device restarts from its storage, connects, and delivers its queue exactly once.
    online = await scenario("online", storage, cart_id, env)
    result = await read_line(online)
    assert await asyncio.wait_for(online.wait(), 60) == 0
    assert result["pendingAtStart"] == 3 and result["pending"] == 0 and result["refused"] == []
    assert result["replica"] == report["replica"]

    # The Python device catches up; both replicas are the same state, and the hub's cart reads the same.
    async with ws_client(hub, protocol, headers={"Authorization": f"Bearer {hub.alice}"}) as ws:
        await python.sync_ws(ws)
    typescript = codec.from_msgpack(bytes.fromhex(result["state"]))
    assert isinstance(typescript, Cart)
    assert typescript == python.cart
    # Adds are never lost (2 + 1 tea); the two concurrent sets of LIP-001 are decided by clock and the
    # TypeScript device's later add counts on top of the winner.
    assert python.cart.value() == result["value"]
    assert result["value"]["TEA-1"] == 3
    status, body, _ = await hub.call("GET", f"/api/v1/carts/{cart_id}", token=hub.alice)
    assert status == 200, body
    assert body["value"] == result["value"]
    # Every push was applied once: three from TypeScript, two from Python, one version each.
    assert body["version"] == 5, body


async def test_a_typescript_device_resends_after_a_lost_ack_and_the_hub_applies_it_once(js_hub, tmp_path):
    """A device killed after shipping but before persisting the ack resends the same mutation ids:
    the hub answers duplicate and the cart's version does not move."""
    hub = js_hub
    cart_id = str(uuid.uuid4())
    storage = tmp_path / "device.json"
    env = sdk_env(hub)
    offline = await scenario("offline", storage, cart_id, env)
    await read_line(offline)
    offline.send_signal(signal.SIGKILL)
    await offline.wait()
    saved = storage.read_text()
    first = await scenario("online", storage, cart_id, env)
    assert (await read_line(first))["pending"] == 0
    await first.wait()
    storage.write_text(saved)  # as if the acks had never been persisted
    second = await scenario("online", storage, cart_id, env)
    result = await read_line(second)
    await second.wait()
    assert result["pendingAtStart"] == 3 and result["pending"] == 0
    status, body, _ = await hub.call("GET", f"/api/v1/carts/{cart_id}", token=hub.alice)
    assert status == 200, body
    assert body["version"] == 3 and body["value"] == result["value"] == {"TEA-1": 2, "LIP-001": 4}


CHROMIUM = Path(os.environ.get("SYNCHUB_TEST_CHROMIUM", "/usr/bin/chromium"))
ROOT = Path(__file__).resolve().parent.parent
# What Chromium logs by itself while the page is cut off the hub: expected, not the page's errors.
NETWORK_NOISE = ("Failed to load resource", "net::ERR_", "WebSocket connection to")


def ensure_chromium() -> None:
    if not CHROMIUM.exists():
        run = subprocess.run(
            ["bash", "-c", "source scripts/_lib.sh && ensure_chromium"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert run.returncode == 0, f"could not install chromium:\n{run.stdout}\n{run.stderr}"
    assert CHROMIUM.exists(), f"no browser at {CHROMIUM}"


async def test_the_example_page_in_chromium_edits_its_cart_offline_and_converges(js_hub):
    """examples/web in headless Chromium: live stock, a cart edited offline (and the tab reloaded while
    offline: the replica and its queue come back from IndexedDB), then online again: the hub's cart is
    the page's."""
    ensure_chromium()
    hub = js_hub
    cart_id = str(uuid.uuid4())
    proc = await asyncio.create_subprocess_exec(
        node(),
        str(js_build() / "test" / "browser.js"),
        cart_id,
        cwd=JS,
        env=sdk_env(hub, SYNCHUB_TEST_CHROMIUM=str(CHROMIUM)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode == 0, err.decode("utf-8", "replace")
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert report["offline"]["transport"] is None and report["offline"]["pending"] == 3
    assert report["offline"]["value"] == {"TEA-1": 5, "LIP-001": 2}
    assert report["reloaded"]["pending"] == 3 and report["reloaded"]["value"] == {"TEA-1": 5, "LIP-001": 2}
    final = report["final"]
    assert final["transport"] == "websocket" and final["pending"] == 0
    assert final["value"] == {"TEA-1": 5, "LIP-001": 2} and report["cartRows"] == 2
    assert final["stock"][f"{hub.tea_id}/par-1"] == 42  # type: ignore[attr-defined]
    page_errors = [e for e in report["errors"] if not any(noise in e for noise in NETWORK_NOISE)]
    assert page_errors == []
    status, body, _ = await hub.call("GET", f"/api/v1/carts/{cart_id}", token=hub.alice)
    assert status == 200, body
    assert body["value"] == final["value"]
    assert body["version"] == 4  # one add online, three edits made offline: each applied once


@pytest.mark.parametrize("transport", ["websocket", "poll"])
async def test_a_review_written_offline_on_a_typescript_device_is_published_on_reconnect(
    js_hub, tmp_path, transport
):
    """A ReviewDocument made offline (create, rating, text, a second rating) reaches the hub when the
    device connects: over the WebSocket's push, or through POST …/sync when it long-polls."""
    hub = js_hub
    review_id = str(uuid.uuid4())
    proc = await scenario(
        "review", tmp_path / "device.json", review_id, sdk_env(hub, SYNCHUB_TRANSPORTS=transport)
    )
    result = await read_line(proc)
    assert await asyncio.wait_for(proc.wait(), 60) == 0
    assert result["transport"] == transport
    assert result["queued"] == 4 and result["pending"] == 0 and result["refused"] == []
    assert result["value"]["rating"] == 5 and result["value"]["text"] == "Great tea"
    status, body, _ = await hub.call("GET", f"/api/v1/reviews/{review_id}", token=hub.alice)
    assert status == 200, body
    assert (body["rating"], body["text"], body["author"]) == (5, "Great tea", "alice")
    assert body["status"] == "published", body
