"""The Python client SDK (clients/python) against real hubs: two `synchub serve` nodes on PostgreSQL and
Redis, real sockets, a node killed with SIGKILL, an app process killed with SIGKILL, and a proxy that
refuses WebSocket upgrades (and one that buffers SSE)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from synchub_client import Backoff, Client, Documents, Event, Inventory, OfflineStore, Transport

from crdt.cart import Cart
from tests.client_helpers import Cluster, catalog, running_proxy, set_stock, wait_for
from tests.cluster_helpers import free_port
from tests.conftest import delete_redis_keys, fresh_redis_prefix, redis_url, reset_postgres, token

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
ALICE = token("alice-py", "customer")


@pytest.fixture(scope="module")
async def cluster(postgres_url: str) -> AsyncIterator[Cluster]:
    await reset_postgres(postgres_url)
    prefix = fresh_redis_prefix()
    running = Cluster(postgres_url, prefix)
    try:
        await running.ensure()
        yield running
    finally:
        await running.stop()
        await delete_redis_keys(redis_url(), prefix)


class Longest(random.Random):
    """Full jitter at its worst: every delay is the ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


def assert_no_gap_no_duplicate(events: list[Event]) -> dict[tuple[str, str], list[int]]:
    positions = [e.position for e in events]
    assert len(positions) == len(set(positions)), "an event was delivered twice"
    versions: dict[tuple[str, str], list[int]] = defaultdict(list)
    for event in events:
        versions[(event.data["product_id"], event.data["warehouse_id"])].append(event.data["version"])
    for key, seen in versions.items():
        assert seen == list(range(seen[0], seen[0] + len(seen))), (key, seen)
    return dict(versions)


@pytest.mark.parametrize(
    ("transport", "encoding"),
    [
        (Transport.WEBSOCKET, "msgpack"),
        (Transport.WEBSOCKET, "json"),
        (Transport.SSE, "json"),
        (Transport.POLL, "json"),
    ],
    ids=["ws-msgpack", "ws-json", "sse", "poll"],
)
async def test_the_client_follows_inventory_through_a_node_kill_with_no_gap_and_no_duplicate(
    cluster: Cluster, transport: Transport, encoding: str
) -> None:
    a, b = await cluster.ensure()
    warehouse, products = await catalog(b, 3)
    async with (
        Client([a.base, b.base], encoding=encoding, transports=(transport,), poll_timeout=5) as client,
        aiohttp.ClientSession() as admin,
    ):
        stock = Inventory(client, "eu")
        await stock.start()
        assert client.transport is transport and client.url == a.base
        raw: list[Event] = []
        assert stock._sub is not None
        stock._sub.listeners.append(lambda item: raw.append(item) if isinstance(item, Event) else None)
        final: dict[tuple[str, str], int] = {}
        for i in range(60):
            product = products[i % 3]["id"]
            final[(product, warehouse)] = await set_stock(admin, b, product, warehouse, 100 + i)
            if i == 20:
                await wait_for(lambda: len(raw) >= 10, what="events before the kill")
                await a.kill()
        await wait_for(
            lambda: all(
                (lvl := stock.get(p, w)) is not None and lvl.version == v for (p, w), v in final.items()
            ),
            what="the last version of every row",
        )
        assert client.reconnects >= 1 and client.url == b.base
        versions = assert_no_gap_no_duplicate([e for e in raw if e.data.get("warehouse_id") == warehouse])
        assert {k: v[-1] for k, v in versions.items()} == final
        assert all(v[0] == 1 for v in versions.values())  # every change, from the first
        assert stock.get(products[2]["id"], warehouse).on_hand == 159  # type: ignore[union-attr]


async def test_two_offline_devices_edit_one_cart_and_converge_through_different_nodes(
    cluster: Cluster, tmp_path: Path
) -> None:
    a, b = await cluster.ensure()
    _, products = await catalog(a, 3)
    tea, jam, oat = (p["sku"] for p in products)
    cart_id = str(uuid.uuid4())
    phone_client = Client([a.base], token=ALICE)
    laptop_client = Client([b.base], token=ALICE, encoding="json")
    phone = Documents(phone_client, str(tmp_path / "phone.sqlite3")).cart(cart_id)
    laptop = Documents(laptop_client, str(tmp_path / "laptop.sqlite3")).cart(cart_id)
    # Offline, both devices edit: their edits are queued in their SQLite files.
    phone.add(tea, 2)
    phone.set(jam, 3)
    laptop.add(tea, 1)
    laptop.set(oat, 5)
    laptop.add("NOT-IN-CATALOG", 1)  # the hub refuses it: unknown_sku
    laptop.remove(oat)
    assert (phone.pending, laptop.pending) == (2, 4)
    try:
        await phone_client.start()
        await phone.wait_synced(30)
        await laptop_client.start()
        await laptop.wait_synced(30)
        await wait_for(lambda: phone.state == laptop.state, what="the two replicas to converge")
        assert phone.value == laptop.value == {tea: 3, jam: 3}
        assert [(r.code, r.op["sku"]) for r in laptop.refused] == [("unknown_sku", "NOT-IN-CATALOG")]
        assert "NOT-IN-CATALOG" not in laptop.state.entry_skus()
        # The hub holds the same cart: a third device that syncs from nothing gets it.
        async with Client([b.base], token=ALICE) as third_client:
            third = Documents(third_client, str(tmp_path / "third.sqlite3")).cart(cart_id)
            await third.wait_synced(30)
            assert third.value == phone.value
        # Online now, an edit on one device reaches the other through the hub.
        phone.set(tea, 7)
        await wait_for(lambda: laptop.value.get(tea) == 7, what="the phone's edit on the laptop")
        # A third device, another process (tests/client_app.py, as a cross-language test drives one):
        # its offline edit reaches both.
        device = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.client_app", "cart", str(tmp_path / "tablet.sqlite3"), cart_id,
            b.base, ALICE, f"add {tea} 1; add {oat} 2",
            cwd=ROOT, env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'clients' / 'python'}"},
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(device.communicate(), 60)
        assert device.returncode == 0
        final = __import__("json").loads(out.decode().splitlines()[-1])["value"]
        assert final == {tea: 8, jam: 3, oat: 2}
        await wait_for(lambda: phone.value == laptop.value == final, what="the tablet's edits on both")
    finally:
        await phone_client.close()
        await laptop_client.close()


async def test_an_app_killed_with_queued_edits_delivers_them_after_restart_exactly_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    a, b = await cluster.ensure()
    _, products = await catalog(a, 5)
    sku = products[0]["sku"].rsplit("-", 1)[0]
    cart_id = str(uuid.uuid4())
    db = str(tmp_path / "app.sqlite3")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'clients' / 'python'}"}

    async def app(*args: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.client_app", *args, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE
        )

    offline_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the app is offline
    editing = await app("edit", db, cart_id, offline_url, ALICE, "30", sku)
    assert editing.stdout is not None
    line = await asyncio.wait_for(editing.stdout.readline(), 60)
    assert line.strip() == b"queued 30"
    editing.send_signal(signal.SIGKILL)
    await editing.wait()
    queued = OfflineStore(db)
    expected_ids = [p.mutation_id for p in queued.pending("cart", cart_id)]
    queued.close()
    assert len(expected_ids) == 30

    async with Client([a.base], token=ALICE) as watcher:
        opened = await watcher_sync(watcher, cart_id)  # makes the cart, so that its channel exists
        assert opened["type"] == "synced"
        events: list[dict[str, Any]] = []
        sub = watcher.subscribe(f"cart:{cart_id}")
        sub.listeners.append(lambda item: events.append(item.data) if isinstance(item, Event) else None)
        await sub.ready.wait()
        # First restart: killed again as soon as the hub has published one of its edits.
        first = await app("deliver", db, b.base, ALICE)
        await wait_for(lambda: len(events) >= 1, what="a first delivered edit")
        first.send_signal(signal.SIGKILL)
        await first.wait()
        # Second restart: delivers what is left.
        second = await app("deliver", db, a.base, ALICE)
        assert second.stdout is not None
        out = (await asyncio.wait_for(second.stdout.read(), 90)).decode()
        assert await second.wait() == 0 and "delivered 0" in out, out
        await wait_for(lambda: len({e.get("mutation_id") for e in events}) >= 30, what="every edit's event")
        await asyncio.sleep(0.5)  # a duplicate would have its event published by now
    delivered = [e["mutation_id"] for e in events if e["type"] == "cart.delta"]
    assert sorted(delivered) == sorted(expected_ids)  # each once: no loss, no duplicate
    state = Cart.new()
    for i in range(30):
        state.apply(state.add("x", f"{sku}-{i % 5}", 1 + i % 3))
    async with Client([b.base], token=ALICE) as reader:
        hub = Documents(reader, str(tmp_path / "reader.sqlite3")).cart(cart_id)
        await hub.wait_synced(30)
        assert hub.value == state.value()


async def watcher_sync(client: Client, cart_id: str) -> dict[str, Any]:
    await client.wait_connected(30)
    return await client.request({"type": "sync", "cart": cart_id, "context": None})


@pytest.mark.parametrize("buffer_sse", [False, True], ids=["upgrade-refused", "sse-buffered-too"])
async def test_a_proxy_that_refuses_websockets_makes_the_client_fall_back_and_receive_everything(
    cluster: Cluster, tmp_path: Path, buffer_sse: bool
) -> None:
    a, b = await cluster.ensure()
    warehouse, products = await catalog(b, 2)
    tea = products[0]["sku"]
    cart_id = str(uuid.uuid4())
    async with (
        running_proxy(b.base, buffer_sse=buffer_sse) as proxy,
        # A buffering proxy never lets the ready event through: waiting 1.5 s for it is enough there,
        # while an unbuffered stream gets all the time a loaded machine may need.
        Client(
            [proxy.url], token=ALICE, sse_ready_timeout=1.5 if buffer_sse else 15, poll_timeout=5
        ) as client,
        aiohttp.ClientSession() as admin,
    ):
        stock = Inventory(client, "eu")
        await stock.start()
        expected = Transport.POLL if buffer_sse else Transport.SSE
        assert client.transport is expected
        assert proxy.upgrades_refused >= 1
        cart = Documents(client, str(tmp_path / "device.sqlite3")).cart(cart_id)
        cart.add(tea, 2)
        final: dict[tuple[str, str], int] = {}
        for i in range(30):
            product = products[i % 2]["id"]
            final[(product, warehouse)] = await set_stock(admin, a, product, warehouse, 10 + i)
        await wait_for(
            lambda: all(
                (lvl := stock.get(p, w)) is not None and lvl.version == v for (p, w), v in final.items()
            ),
            what="every stock change through the proxy",
        )
        await cart.wait_synced(30)  # written over REST (POST …/sync)
        assert cart.value == {tea: 2} and cart.pending == 0
        if buffer_sse:
            assert proxy.poll_requests >= 1
        else:
            assert proxy.sse_requests >= 1
    assert stock.duplicates >= 0


async def test_a_node_going_away_sends_the_client_at_once_to_the_other_node_with_nothing_lost(
    cluster: Cluster,
) -> None:
    a, b = await cluster.ensure()
    warehouse, products = await catalog(b, 1)
    product = products[0]["id"]
    never = Backoff(base=3600.0, cap=3600.0, rng=Longest())  # a backoff would stall the test
    async with Client([a.base, b.base], backoff=never) as client, aiohttp.ClientSession() as admin:
        stock = Inventory(client, "eu")
        await stock.start()
        raw: list[Event] = []
        assert stock._sub is not None
        stock._sub.listeners.append(lambda item: raw.append(item) if isinstance(item, Event) else None)
        for i in range(5):
            await set_stock(admin, b, product, warehouse, i)
        await wait_for(lambda: len([e for e in raw if e.data.get("warehouse_id") == warehouse]) == 5)
        await a.stop()  # graceful: WebSockets closed with 1001
        last = 0
        for i in range(5, 10):
            last = await set_stock(admin, b, product, warehouse, i)
        await wait_for(lambda: (lvl := stock.get(product, warehouse)) is not None and lvl.version == last)
        assert client.url == b.base and client.reconnects == 1
        versions = assert_no_gap_no_duplicate([e for e in raw if e.data.get("warehouse_id") == warehouse])
        assert versions == {(product, warehouse): list(range(1, 11))}


async def test_an_expiring_token_is_refreshed_in_band_through_the_app_callback(cluster: Cluster) -> None:
    a, _ = await cluster.ensure()
    warehouse, products = await catalog(a, 1)
    product = products[0]["id"]
    refreshed: list[str] = []

    async def refresh() -> str:
        refreshed.append(token("carol-py", "customer", ttl=3600))
        return refreshed[-1]

    short = token("carol-py", "customer", ttl=2)
    async with (
        Client([a.base], token=short, refresh_token=refresh) as client,
        aiohttp.ClientSession() as admin,
    ):
        stock = Inventory(client, "eu", product)
        await stock.start()
        await wait_for(lambda: len(refreshed) == 1, timeout=30, what="the refresh callback")
        await asyncio.sleep(1.0)  # past the old token's expiry: the connection was kept
        version = await set_stock(admin, a, product, warehouse, 42)
        await wait_for(lambda: (lvl := stock.get(product, warehouse)) is not None and lvl.version == version)
        assert client.reconnects == 0 and client.token == refreshed[0]


async def test_synchub_watch_prints_a_channel_from_a_position_and_the_cart_demo_syncs_a_script(
    cluster: Cluster, tmp_path: Path
) -> None:
    a, b = await cluster.ensure()
    warehouse, products = await catalog(a, 1)
    product = products[0]["id"]
    async with aiohttp.ClientSession() as admin:
        async with admin.get(f"{a.base}/api/v1/inventory?region=eu&product_id={product}") as response:
            since = (await response.json())["position"]
        for i in range(3):
            await set_stock(admin, a, product, warehouse, i)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    watch = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub.cli", "watch", f"inventory:eu:{product}", "--url", b.base,
        "--since", since, "--count", "3", "--transport", "sse",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(watch.communicate(), 60)
    lines = [__import__("json").loads(line) for line in out.decode().splitlines()]
    assert watch.returncode == 0
    assert [line["data"]["version"] for line in lines] == [1, 2, 3]
    assert [line["data"]["on_hand"] for line in lines] == [0, 1, 2]

    sku = products[0]["sku"]
    cart_id = str(uuid.uuid4())
    demo = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "clients" / "python" / "examples" / "cart_demo.py"),
        "--url", a.base, "--token", ALICE, "--cart", cart_id, "--db", str(tmp_path / "demo.sqlite3"),
        "--script", f"add {sku} 2; set {sku} 5; add {sku}",
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT / "clients" / "python")},
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    shown, _ = await asyncio.wait_for(demo.communicate(), 60)
    assert demo.returncode == 0, shown
    assert "0 queued" in shown.decode() and f"{sku:<20}    6" in shown.decode(), shown.decode()


async def test_a_review_written_offline_is_pushed_judged_and_read_back_by_another_device(
    cluster: Cluster, tmp_path: Path
) -> None:
    a, b = await cluster.ensure()
    _, products = await catalog(a, 1)
    review_id = str(uuid.uuid4())
    phone_client = Client([a.base], token=ALICE)
    phone = Documents(phone_client, str(tmp_path / "phone.sqlite3")).review(review_id)
    phone.create(products[0]["id"], "alice-py")
    phone.set_rating(4)
    phone.set_text("Sturdy and light; the strap could be longer.")
    assert phone.pending == 3
    try:
        await phone_client.start()
        await phone.wait_synced(30)
        assert phone.review_status in ("published", "pending")
        async with Client([b.base], token=ALICE, transports=(Transport.SSE,)) as tablet_client:
            tablet = Documents(tablet_client, str(tmp_path / "tablet.sqlite3")).review(review_id)
            await tablet.wait_synced(30)  # over REST: POST /api/v1/reviews/{id}/sync
            assert tablet.value is not None and phone.value is not None
            assert (tablet.value.rating, tablet.value.text) == (4, phone.value.text)
            tablet.set_rating(5)
            await tablet.wait_synced(30)
        phone.sync_now()  # a review has no channel: the phone asks, as it does at every reconnect
        await phone.wait_synced(30)
        assert phone.value is not None and phone.value.rating == 5
    finally:
        await phone_client.close()


async def test_a_delta_too_large_for_a_websocket_message_goes_through_rest(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = await cluster.ensure()
    _, products = await catalog(a, 1)
    sku = products[0]["sku"]
    monkeypatch.setattr("synchub_client.documents.WS_DELTA_LIMIT", 0)  # every delta "too large"
    async with Client([a.base], token=ALICE) as client:
        cart = Documents(client, str(tmp_path / "device.sqlite3")).cart(str(uuid.uuid4()))
        cart.add(sku, 2)
        cart.set(sku, 4)
        await cart.wait_synced(30)
        assert client.transport is Transport.WEBSOCKET and cart.pending == 0 and cart.value == {sku: 4}
        assert cart.version == 2 and cart.error is None
