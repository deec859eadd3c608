"""The OpenAPI document and the hub agree on personalization's requests, both ways, as a customer who
granted consent (tests/test_schemathesis.py checks agreement as an admin, whom these routes refuse
before reading a body): a batch, a consent or a query the document calls valid is not refused as
malformed — but for an event time the hub's clock puts out of range, which the document says in words —
and a body it calls invalid is not accepted. Bounded and derandomized, as test_schemathesis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from hub.openapi import openapi_document
from tests.conftest import token
from tests.hub_thread import HubThread

schema = schemathesis.openapi.from_dict(openapi_document()).include(
    path_regex=r"^/api/v1/(events|me/consent|me/recommendations)$"
)
SHOPPER = token("fuzz-shopper", "customer")


@pytest.fixture(scope="module")
def hub_thread(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubThread]:
    running = HubThread(tmp_path_factory.mktemp("personalization") / "hub.sqlite3", region="eu")
    hub = running.hub

    async def seed() -> None:
        await hub.warehouse("par-1", "eu")
        status, _, _ = await hub.call("PUT", "/api/v1/me/consent", token=SHOPPER, json={"status": "granted"})
        assert status == 200

    running.run(seed())
    yield running
    running.close()


def _only_clock_refusals(problem: dict[str, object]) -> bool:
    errors = problem.get("errors")
    return isinstance(errors, list) and all(
        e["field"].endswith(".ts") and e["code"] == "out_of_range" for e in errors
    )


@schema.parametrize()
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_the_document_and_the_hub_agree_on_personalization_requests(case, hub_thread):
    if case.method == "PUT" and case.body == {"status": "revoked"}:
        case.body = {"status": "granted"}  # (a revocation would make every later batch a 403)
    headers = {"Authorization": f"Bearer {SHOPPER}"}
    response = case.call(base_url=hub_thread.hub.base, headers=headers, timeout=10)
    modes = {location.value: info.mode for location, info in case.meta.components.items()}
    request = f"{case.method} {case.formatted_path} {case.query} {str(case.body)[:500]}"
    assert response.status_code < 500, f"{request} -> {response.text[:500]}"
    if all(mode.is_positive for mode in modes.values()) and response.status_code in (400, 413, 415, 422):
        assert _only_clock_refusals(response.json()), (
            f"valid per the document, refused: {request} -> {response.text[:500]}"
        )
    if any(not mode.is_positive for where, mode in modes.items() if where == "body"):
        assert response.status_code >= 400, f"invalid per the document, accepted: {request}"
