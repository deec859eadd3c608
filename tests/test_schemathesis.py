"""Schemathesis over the OpenAPI document the hub serves, against a real hub over HTTP: requests made
from the schema (valid ones, and ones that break it) as an admin, as a customer and anonymously must
never be answered with a server error; every error is problem+json with a code.

Bounded: a fixed number of examples per operation, derandomized (the same requests in every run).
The real-time streams (SSE, long-poll, the WebSocket upgrade) are left to their own tests: a stream
does not end for a client that is not reading it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from hub.openapi import openapi_document
from tests.conftest import token
from tests.hub_thread import HubThread

schema = schemathesis.openapi.from_dict(openapi_document()).exclude(path_regex=r"^/api/v1/(sse|poll|ws)$")


@schemathesis.serializer("video/mp4", "video/webm")
def _raw_video(ctx: schemathesis.SerializationContext, value: object) -> bytes | None:
    """Uploads are the file's own bytes (images already are: schemathesis knows image/*)."""
    return value if isinstance(value, bytes) else str(value).encode()


CREDENTIALS = {
    "admin": token("fuzz-admin", "admin"),
    "customer": token("fuzz-customer", "customer"),
    "moderator": token("fuzz-moderator", "moderator"),
    "anonymous": None,
}


@pytest.fixture(scope="module")
def hub_thread(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubThread]:
    running = HubThread(tmp_path_factory.mktemp("schemathesis") / "hub.sqlite3", region="eu")
    hub = running.hub

    async def seed() -> None:
        await hub.warehouse("par-1", "eu")
        product = await hub.product("SKU-FUZZ")
        await hub.stock(product["id"], "par-1", 50)

    running.run(seed())
    # the document under test is the one the hub serves
    status, served, _ = running.run(hub.call("GET", "/api/v1/openapi.json"))
    assert status == 200 and served == openapi_document()
    yield running
    running.close()


@pytest.mark.parametrize("who", list(CREDENTIALS))
@schema.parametrize()
@settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_request_made_from_the_schema_gets_a_server_error(case, hub_thread, who):
    credential = CREDENTIALS[who]
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    response = case.call(base_url=hub_thread.hub.base, headers=headers, timeout=10)
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} as {who} answered {response.status_code}: {response.text[:500]}"
    )
    if response.status_code >= 400:
        content_type = response.headers.get("content-type", [""])[0]
        assert content_type.startswith("application/problem+json"), response.text[:300]
        assert isinstance(response.json().get("code"), str)


# Refusals of requests the schema calls valid that are about state, not form: a cursor this server
# did not issue (cursors are opaque strings), an Idempotency-Key reused with another body, a region
# another node serves, a webhook target whose host does not resolve or resolves to an address webhooks are
# not sent to (the DNS's state, not the URL's form).
STATEFUL_REFUSALS = frozenset(
    {
        "invalid_cursor",
        "idempotency_key_reused",
        "channel_not_served",
        "webhook_target_unresolvable",
        "webhook_target_forbidden",
    }
)


@schema.parametrize()
@settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_the_document_and_the_server_agree_on_what_is_valid(case, hub_thread):
    """Both directions, as admin (so that no refusal is about the caller): a request the document
    calls valid is not refused as malformed, and a body or path the document calls invalid is not
    accepted. (Unknown query parameters are ignored by the server, as HTTP caches and proxies add
    their own: the negative query cases are left out.)"""
    headers = {"Authorization": f"Bearer {CREDENTIALS['admin']}"}
    response = case.call(base_url=hub_thread.hub.base, headers=headers, timeout=10)
    modes = {location.value: info.mode for location, info in case.meta.components.items()}
    request = f"{case.method} {case.formatted_path} {case.query} {str(case.body)[:300]}"
    if all(mode.is_positive for mode in modes.values()) and response.status_code in (400, 413, 415, 422):
        code = response.json().get("code")
        assert code in STATEFUL_REFUSALS, (
            f"valid per the document, refused by the hub: {request} -> {response.text[:400]}"
        )
    negative = [where for where, mode in modes.items() if not mode.is_positive and where in ("body", "path")]
    if negative:
        assert response.status_code >= 400, f"invalid per the document ({negative}), accepted: {request}"
