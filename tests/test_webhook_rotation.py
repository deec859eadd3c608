"""Rotating a webhook's signing secret (POST /api/v1/webhooks/{id}/rotate-secret): the new secret is shown
once; the replaced one signs too, as a second signature, until the overlap ends (0: at once); a node that
did not rotate takes the new secret at its lease round; bad requests change nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import datetime
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from hub.keys import PII_KEYS, STORE
from hub.keys import WEBHOOKS as WORKER
from hub.webhooks.signing import SigningKeys, new_secret
from hub.webhooks.worker import SECRET_FIELD
from tests.conftest import Hub
from tests.test_webhooks import api_key, webhook_hub
from tests.webhook_helpers import WEBHOOKS, Received, Receiver, create_webhook, receiver


def verifies(secret: str, request: Received) -> bool:
    headers = {
        "webhook-id": request.webhook_id,
        "webhook-timestamp": request.timestamp,
        "webhook-signature": request.signature,
    }
    try:
        Webhook(secret).verify(request.raw, headers)
    except WebhookVerificationError:
        return False
    return True


async def pinged(hub: Hub, target: Receiver, webhook_id: str) -> Received:
    status, body, _ = await hub.call("POST", f"{WEBHOOKS}/{webhook_id}/test", token=hub.admin)
    assert status == 202, body
    await target.wait_until(
        lambda: any(r.webhook_id == body["message_id"] for r in target.received), what="the ping"
    )
    return next(r for r in target.received if r.webhook_id == body["message_id"])


async def rotate(hub: Hub, webhook_id: str, body: Any = None, **headers: str) -> tuple[int, Any, Any]:
    return await hub.call(
        "POST", f"{WEBHOOKS}/{webhook_id}/rotate-secret", token=hub.admin, json=body, headers=headers
    )


async def test_the_replaced_secret_signs_beside_the_new_one_until_the_overlap_ends(database_url):
    async with receiver() as target, webhook_hub(database_url) as hub:
        made = await create_webhook(hub, hub.admin, target.url, [{"type": "review.published"}])
        first = made["secret"]
        before = await pinged(hub, target, made["id"])
        assert verifies(first, before) and " " not in before.signature

        status, body, headers = await rotate(hub, made["id"], {})
        assert status == 200, body
        second = body["secret"]
        assert second.startswith("whsec_") and second != first
        assert headers["ETag"] == '"2"' and headers["Cache-Control"] == "no-store"
        until = datetime.fromisoformat(body["previous_secret_expires_at"]).timestamp()
        assert abs(until - (time.time() + 24 * 3600)) < 60  # the default overlap: a day
        during = await pinged(hub, target, made["id"])
        assert len(during.signature.split(" ")) == 2
        assert verifies(second, during) and verifies(first, during)  # either secret's receiver accepts it

        status, shown, _ = await hub.call("GET", f"{WEBHOOKS}/{made['id']}", token=hub.admin)
        assert status == 200 and "secret" not in shown
        assert shown["previous_secret_expires_at"] == body["previous_secret_expires_at"]

        # A short overlap: the replaced secret stops signing when it ends.
        status, body, _ = await rotate(hub, made["id"], {"overlap_seconds": 1}, **{"If-Match": '"2"'})
        assert status == 200, body
        third = body["secret"]
        during = await pinged(hub, target, made["id"])
        assert verifies(third, during) and verifies(second, during) and not verifies(first, during)
        await asyncio.sleep(1.1)
        after = await pinged(hub, target, made["id"])
        assert verifies(third, after) and not verifies(second, after) and " " not in after.signature
        status, shown, _ = await hub.call("GET", f"{WEBHOOKS}/{made['id']}", token=hub.admin)
        assert shown["previous_secret_expires_at"] is None

        # A leaked secret: overlap 0, it stops signing at once.
        status, body, _ = await rotate(hub, made["id"], {"overlap_seconds": 0})
        assert status == 200 and body["previous_secret_expires_at"] is None and body["version"] == 4
        fourth = body["secret"]
        after = await pinged(hub, target, made["id"])
        assert verifies(fourth, after) and not verifies(third, after)


async def test_a_node_that_did_not_rotate_signs_with_the_new_secret_from_its_lease_round(database_url):
    async with receiver() as target, webhook_hub(database_url) as hub:
        made = await create_webhook(hub, hub.admin, target.url, [{"type": "review.published"}])
        assert verifies(made["secret"], await pinged(hub, target, made["id"]))
        # Another node's rotation: written to the store, this node told nothing but what a lease round reads.
        store, worker = hub.app[STORE], hub.app[WORKER]
        assert worker is not None and made["id"] in worker.leased
        endpoint = await store.get_webhook(made["id"])
        assert endpoint is not None
        rotated = new_secret()
        await store.update_webhook(
            dataclasses.replace(
                endpoint,
                secret_ciphertext=hub.app[PII_KEYS].encrypt(endpoint.id, SECRET_FIELD, rotated),
                previous_secret_ciphertext=None,
                previous_secret_until=None,
                version=endpoint.version + 1,
            ),
            {},
        )
        worker.poke()  # the next lease round, now rather than in lease_seconds / 4

        async def signed_with_the_new_secret() -> bool:
            return verifies(rotated, await pinged(hub, target, made["id"]))

        deadline = time.monotonic() + 10
        while not await signed_with_the_new_secret():
            assert time.monotonic() < deadline, "the runner kept signing with the replaced secret"
            await asyncio.sleep(0.2)


async def test_bad_rotations_are_refused_with_a_code_and_change_nothing(database_url):
    async with webhook_hub(database_url) as hub:
        made = await create_webhook(hub, hub.admin, "https://93.184.215.14/hook", [{"type": "stock.changed"}])
        path = f"{WEBHOOKS}/{made['id']}/rotate-secret"
        for body in (
            {"overlap_seconds": -1},
            {"overlap_seconds": 7 * 24 * 3600 + 1},
            {"overlap_seconds": "60"},
            {"overlap_seconds": True},
            {"overlap_seconds": 60, "grace": 1},
            [60],
        ):
            status, answer, _ = await hub.call("POST", path, token=hub.admin, json=body)
            assert (status, answer["code"]) == (400, "validation_failed"), (body, answer)
        status, answer, _ = await hub.call(
            "POST", path, token=hub.admin, data=b"{", headers={"Content-Type": "application/json"}
        )
        assert (status, answer["code"]) == (400, "malformed_json")
        status, answer, _ = await rotate(hub, made["id"], {}, **{"If-Match": '"9"'})
        assert (status, answer["code"]) == (412, "precondition_failed")
        status, answer, _ = await rotate(hub, "00000000-0000-4000-8000-000000000000", {})
        assert (status, answer["code"]) == (404, "webhook_not_found")
        status, answer, _ = await rotate(hub, "not-a-uuid", {})
        assert (status, answer["code"]) == (400, "invalid_id")
        reader, _ = await api_key(hub, "reservations:read")
        status, answer, _ = await hub.call("POST", path, token=reader, json={})
        assert (status, answer["code"]) == (403, "insufficient_scope"), answer
        manager, _ = await api_key(hub, "webhooks:manage")
        status, answer, _ = await hub.call("POST", path, token=manager, json={})
        assert (status, answer["code"]) == (404, "webhook_not_found")  # another owner's
        status, shown, headers = await hub.call("GET", f"{WEBHOOKS}/{made['id']}", token=hub.admin)
        assert headers["ETag"] == '"1"' and shown["previous_secret_expires_at"] is None
        stored = await hub.app[STORE].get_webhook(made["id"])
        assert stored is not None and stored.previous_secret_ciphertext is None


def test_signing_keys_hold_the_replaced_key_until_and_not_at_its_end():
    keys = SigningKeys(b"n" * 32, b"o" * 32, 1_000)
    assert keys.at(999) == (b"n" * 32, b"o" * 32)
    assert keys.at(1_000) == (b"n" * 32,)
    assert SigningKeys(b"n" * 32).at(0) == (b"n" * 32,)
