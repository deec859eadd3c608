"""Operations endpoints: liveness, readiness and Prometheus metrics, over real HTTP."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from hub.keys import SETTINGS
from tests.conftest import hub_settings, running_hub

LATENCY = "synchub_http_request_duration_seconds"


async def scrape(hub: Any) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of /metrics, by sample name."""
    async with hub.session.get(hub.base + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def value(samples: dict[str, Any], name: str, **labels: str) -> float:
    """The value of the one sample with these labels, 0 if absent."""
    matching = [v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())]
    assert len(matching) <= 1, matching
    return matching[0] if matching else 0.0


async def reserve(hub: Any, pid: str, quantity: int, key: str | None = None) -> tuple[int, Any]:
    status, body, _ = await hub.call(
        "POST",
        "/api/v1/reservations",
        token=hub.alice,
        json={"lines": [{"product_id": pid, "quantity": quantity}]},
        headers={"Idempotency-Key": key or str(uuid.uuid4())},
    )
    return status, body


async def test_healthz_is_200(hub):
    status, body, _ = await hub.call("GET", "/healthz")
    assert status == 200
    assert body["status"] == "ok"
    assert body["node_id"] == hub.app[SETTINGS].node_id


async def test_readyz_is_200_and_names_the_store(hub):
    status, body, _ = await hub.call("GET", "/readyz")
    assert status == 200
    assert body["status"] == "ready"
    assert body["store"] == ("postgres" if hub.app[SETTINGS].uses_postgres else "sqlite")


async def test_metrics_count_requests_by_route_template_method_and_status(hub):
    product = await hub.product("M-1")
    before = await scrape(hub)
    await hub.call("GET", "/api/v1/products")
    await hub.call("GET", "/api/v1/products")
    await hub.call("GET", f"/api/v1/products/{product['id']}")
    await hub.call("GET", "/api/v1/products/not-a-uuid")
    after = await scrape(hub)

    count = f"{LATENCY}_count"
    listed = {"method": "GET", "route": "/api/v1/products", "status": "200"}
    assert value(after, count, **listed) - value(before, count, **listed) == 2
    one = {"method": "GET", "route": "/api/v1/products/{product_id}"}
    assert value(after, count, **one, status="200") - value(before, count, **one, status="200") == 1
    assert value(after, count, **one, status="400") - value(before, count, **one, status="400") == 1
    # The route label is the template: ids never become label values.
    routes = {lab["route"] for lab, _ in after[count]}
    assert not any(product["id"] in r or "not-a-uuid" in r for r in routes)
    assert value(after, f"{LATENCY}_sum", **listed) > 0
    buckets = [lab for lab, _ in after[f"{LATENCY}_bucket"] if lab["route"] == "/api/v1/products"]
    assert any(lab["le"] == "+Inf" for lab in buckets)


async def test_unknown_paths_share_one_route_label(hub):
    for i in range(3):
        status, _, _ = await hub.call("GET", f"/no/such/path/{i}")
        assert status == 404
    samples = await scrape(hub)
    count = f"{LATENCY}_count"
    assert value(samples, count, method="GET", route="unmatched", status="404") == 3
    assert not any("/no/such/path" in lab["route"] for lab, _ in samples[count])


async def test_metrics_count_reservations_by_outcome(hub):
    await hub.warehouse("par-1", "eu")
    product = await hub.product("M-2")
    await hub.stock(product["id"], "par-1", 5)
    before = await scrape(hub)
    status, reservation = await reserve(hub, product["id"], 2, key="m-key")
    assert status == 201, reservation
    status, _ = await reserve(hub, product["id"], 2, key="m-key")  # a retry: replayed
    assert status == 201
    status, _ = await reserve(hub, product["id"], 50)
    assert status == 409
    status, _, _ = await hub.call("POST", f"/api/v1/reservations/{reservation['id']}/commit", token=hub.alice)
    assert status == 200
    after = await scrape(hub)

    name = "synchub_reservations_total"
    for outcome, expected in (("reserved", 1), ("replayed", 1), ("insufficient_stock", 1), ("committed", 1)):
        delta = value(after, name, outcome=outcome) - value(before, name, outcome=outcome)
        assert delta == expected, (outcome, delta)


async def test_metrics_expose_the_outbox_backlog_and_it_drains(hub):
    await hub.warehouse("par-1", "eu")
    product = await hub.product("M-3")
    for on_hand in (5, 6, 7):
        await hub.stock(product["id"], "par-1", on_hand)
    async with hub.session.get(hub.base + "/metrics") as response:
        families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    assert families["synchub_outbox_backlog"].type == "gauge"
    assert families["synchub_outbox_lag_seconds"].type == "gauge"
    samples = await scrape(hub)
    for _ in range(100):  # the relay observes its backlog about once a second
        samples = await scrape(hub)
        if value(samples, "synchub_outbox_backlog") == 0:
            break
        await asyncio.sleep(0.05)
    assert value(samples, "synchub_outbox_backlog") == 0
    assert value(samples, "synchub_outbox_lag_seconds") >= 0


async def test_private_metrics_answer_only_admin_and_service_tokens(database_url):
    async with running_hub(hub_settings(database_url, metrics_public=False)) as private:
        async with private.session.get(private.base + "/metrics") as response:
            assert response.status == 401
            assert (await response.json())["code"] == "unauthenticated"
        status, body, _ = await private.call("GET", "/metrics", token=private.alice)
        assert (status, body["code"]) == (403, "forbidden")
        for credential in (private.admin, private.service):
            headers = {"Authorization": f"Bearer {credential}"}
            async with private.session.get(private.base + "/metrics", headers=headers) as response:
                assert response.status == 200
                assert "# TYPE synchub_http_request_duration_seconds histogram" in await response.text()
