"""Reviews on two `synchub serve` nodes sharing one database: concurrent creates, edits, deletes, erasures,
reports and moderators' decisions over real HTTP keep every product's aggregate exactly equal to a
recount of its rows (PostgreSQL, and SQLite with two processes on one file); two offline devices
converge through the two nodes; a review published on one node reaches a subscriber of the other
(PostgreSQL + Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from storage.factory import open_store
from tests.cluster_helpers import Node, start_node
from tests.conftest import redis_url, token
from tests.realtime_helpers import JSON, WsClient
from tests.test_api_reviews import Device

pytestmark = pytest.mark.slow
ADMIN = token("root", "admin")
MODERATOR = token("mod", "moderator")
WORDS = [
    "soft",
    "light",
    "rich",
    "dry",
    "oily",
    "calm",
    "fresh",
    "sweet",
    "sharp",
    "smooth",
    "thick",
    "thin",
    "gentle",
    "strong",
    "mild",
]


@contextlib.asynccontextmanager
async def two_nodes(database_url: str, prefix: str | None) -> AsyncIterator[list[Node]]:
    redis = redis_url() if prefix is not None else None
    nodes = [await start_node("node-a", database_url, redis, prefix or "synchub:")]
    try:
        nodes.append(await start_node("node-b", database_url, redis, prefix or "synchub:"))
        yield nodes
    finally:
        for node in nodes:
            await node.stop()


async def call(
    session: aiohttp.ClientSession, node: Node, method: str, path: str, bearer: str, body: Any = None
) -> tuple[int, Any]:
    async with session.request(
        method, node.base + path, json=body, headers={"Authorization": f"Bearer {bearer}"}
    ) as response:
        data = await response.json() if response.content_type.endswith("json") else None
        return response.status, data


async def products(session: aiohttp.ClientSession, node: Node, count: int) -> list[str]:
    out = []
    for n in range(count):
        status, body = await call(
            session, node, "POST", "/api/v1/products", ADMIN, {"sku": f"HOT-{n}", "name": "x", "price": "1"}
        )
        assert status == 201, body
        out.append(body["id"])
    return out


async def churn(nodes: list[Node], product_ids: list[str], operations: int, seed: int) -> dict[str, int]:
    """``operations`` random review writes through random nodes, 32 at a time; what happened, by kind."""
    rng = random.Random(seed)
    reviews: list[tuple[str, str]] = []  # (review id, author)
    done: dict[str, int] = {}
    limit = asyncio.Semaphore(32)
    async with aiohttp.ClientSession() as session:

        async def one(n: int) -> None:
            async with limit:  # (chosen once running: the writes so far decide what there is to edit)
                node = rng.choice(nodes)
                kind = (
                    "create"
                    if len(reviews) < 20 or rng.random() < 0.35
                    else rng.choice(
                        ["rate", "rate", "text", "delete", "erase", "publish", "reject", "flag", "report"]
                    )
                )
                if kind == "create":
                    author = f"user{n}"
                    text = " ".join(rng.choice(WORDS) for _ in range(6)) + f" {n}"
                    status, body = await call(
                        session,
                        node,
                        "POST",
                        f"/api/v1/products/{rng.choice(product_ids)}/reviews",
                        token(author, "customer"),
                        {"rating": rng.randint(1, 5), "text": text},
                    )
                    assert status == 201, body
                    reviews.append((body["id"], author))
                else:
                    review_id, author = rng.choice(reviews)
                    path = f"/api/v1/reviews/{review_id}"
                    bearer = token(author, "customer")
                    if kind == "rate":
                        status, body = await call(
                            session, node, "PATCH", path, bearer, {"rating": rng.randint(1, 5)}
                        )
                    elif kind == "text":
                        status, body = await call(
                            session,
                            node,
                            "PATCH",
                            path,
                            bearer,
                            {"text": f"{rng.choice(WORDS)} edit {n} ok fine"},
                        )
                    elif kind == "delete":
                        status, body = await call(session, node, "DELETE", path, bearer)
                    elif kind == "erase":
                        status, body = await call(session, node, "DELETE", path + "?erase=true", bearer)
                    elif kind == "report":
                        status, body = await call(
                            session,
                            node,
                            "POST",
                            path + "/reports",
                            token(f"r{n}", "customer"),
                            {"reason": "spam"},
                        )
                    else:
                        action = {"publish": "publish", "reject": "reject", "flag": "flag"}[kind]
                        payload: dict[str, Any] = {"action": action}
                        if action == "reject":
                            payload["reason"] = "off_topic"
                        status, body = await call(
                            session, node, "POST", path + "/moderation", MODERATOR, payload
                        )
                    # A write to a review deleted or erased meanwhile is refused (404/409): expected.
                    assert status < 500, (kind, status, body)
                    kind = f"{kind}:{status}"
                done[kind] = done.get(kind, 0) + 1

        await asyncio.gather(*(one(n) for n in range(operations)))
    return done


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
async def test_500_concurrent_review_writes_through_two_nodes_keep_every_aggregate_exact(
    backend: str, pg: str, tmp_path: Any, redis_prefix: str
) -> None:
    url = pg if backend == "postgres" else str(tmp_path / "shared.sqlite3")
    async with two_nodes(url, redis_prefix if backend == "postgres" else None) as nodes:
        async with aiohttp.ClientSession() as session:
            product_ids = await products(session, nodes[0], 3)
        done = await churn(nodes, product_ids, 500, seed=14)
        assert done.get("create", 0) >= 100 and sum(done.values()) == 500
        writes = [kind for kind in done if kind.endswith(":200") or kind.endswith(":204")]
        assert len(writes) >= 5, done  # edits, deletes and decisions did happen, not only refusals
        store = open_store(url)
        await store.open()
        try:
            assert await store.recount_ratings() == {}
            async with aiohttp.ClientSession() as session:
                for product_id in product_ids:
                    stored = await store.rating_of(product_id)
                    assert stored is not None
                    status, body = await call(
                        session, nodes[1], "GET", f"/api/v1/products/{product_id}", ADMIN
                    )
                    assert status == 200 and body["rating"]["count"] == stored.count
                    listed = 0
                    cursor = None
                    while True:
                        query = "?limit=100" + (f"&cursor={cursor}" if cursor else "")
                        status, page = await call(
                            session, nodes[0], "GET", f"/api/v1/products/{product_id}/reviews{query}", ADMIN
                        )
                        assert status == 200, page
                        listed += len(page["items"])
                        cursor = page["next_cursor"]
                        if not cursor:
                            break
                    assert listed == stored.count  # the aggregate counts exactly the published listing
        finally:
            await store.close()


async def test_two_offline_devices_converge_through_two_nodes_and_publications_cross_nodes(
    pg: str, redis_prefix: str
) -> None:
    async with two_nodes(pg, redis_prefix) as nodes, aiohttp.ClientSession() as session:
        (product_id,) = await products(session, nodes[0], 1)
        async with session.ws_connect(nodes[1].ws, protocols=(JSON,), heartbeat=None) as raw:
            watcher = WsClient(raw, binary=False)
            subscribed = await watcher.subscribe(f"reviews:eu:{product_id}")
            assert subscribed["type"] == "subscribed", subscribed
            review_id = str(uuid.uuid4())
            alice = token("alice", "customer")
            phone = Device("alice-phone-c")
            hub_a = _NodeHub(session, nodes[0])
            hub_b = _NodeHub(session, nodes[1])
            await phone.sync(hub_a, review_id, alice, phone.create(review_id, product_id, "alice", 3, "fine"))  # type: ignore[arg-type]
            (published, _rating) = await watcher.events(2)
            assert (
                published["data"]["type"] == "review.published"
                and published["data"]["review"]["id"] == review_id
            )
            tablet = Device("alice-tablet-c")
            await tablet.sync(hub_b, review_id, alice)  # type: ignore[arg-type]
            edits = [phone.rate(5), phone.write("Great after a week")]
            tablet_edit = tablet.write("Stings a little")
            await asyncio.gather(
                phone.sync(hub_a, review_id, alice, *edits),  # type: ignore[arg-type]
                tablet.sync(hub_b, review_id, alice, tablet_edit),  # type: ignore[arg-type]
            )
            await phone.sync(hub_b, review_id, alice)  # type: ignore[arg-type]
            await tablet.sync(hub_a, review_id, alice)  # type: ignore[arg-type]
            assert phone.review == tablet.review or phone.review.value() == tablet.review.value()
            value = phone.review.value()
            assert value is not None and value.rating == 5
            assert {value.text, *value.text_conflicts} == {"Great after a week", "Stings a little"}


class _NodeHub:
    """The slice of tests.conftest.Hub that Device.sync uses, for a node process."""

    def __init__(self, session: aiohttp.ClientSession, node: Node) -> None:
        self.session = session
        self.node = node

    async def call(self, method: str, path: str, *, token: str, json: Any) -> tuple[int, Any, Any]:
        async with self.session.request(
            method, self.node.base + path, json=json, headers={"Authorization": f"Bearer {token}"}
        ) as response:
            return response.status, await response.json(), response.headers
