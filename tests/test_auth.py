"""Bearer JWT authentication and roles, over real HTTP on both backends."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest

from tests.conftest import JWT_SECRET, token

ADMIN_ROUTE = "/api/v1/products"  # POST: admin only
NEW_PRODUCT = {"sku": "AUTH-1", "name": "auth", "price": "1.00"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def segment(obj: dict[str, Any]) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def admin_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "mallory", "roles": ["admin"], "iat": now, "exp": now + 3600, **overrides}


def hmac_signed(header: dict[str, Any], claims: dict[str, Any], digest: str = "sha256") -> str:
    """A JWT signed by hand with HMAC and the hub's secret, whatever the header claims."""
    signing_input = f"{segment(header)}.{segment(claims)}"
    signature = hmac.new(JWT_SECRET.encode(), signing_input.encode(), getattr(hashlib, digest)).digest()
    return f"{signing_input}.{b64url(signature)}"


async def create_as(hub: Any, headers: dict[str, str]) -> tuple[int, Any, Any]:
    return await hub.call("POST", ADMIN_ROUTE, json=NEW_PRODUCT, headers=headers)


async def assert_nothing_created(hub: Any) -> None:
    status, body, _ = await hub.call("GET", ADMIN_ROUTE)
    assert status == 200
    assert body["items"] == []


def assert_problem(status: int, body: Any, headers: Any, expected: int, code: str) -> None:
    assert status == expected, body
    assert headers["Content-Type"].startswith("application/problem+json")
    assert body["status"] == expected
    assert body["code"] == code
    assert body["type"].endswith("/" + code)
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]


# -- who may do what --------------------------------------------------------------------------------


async def test_no_token_on_an_admin_route_is_401_unauthenticated_with_a_challenge(hub):
    status, body, headers = await hub.call("POST", ADMIN_ROUTE, json=NEW_PRODUCT)
    assert_problem(status, body, headers, 401, "unauthenticated")
    assert headers["WWW-Authenticate"].startswith("Bearer")
    await assert_nothing_created(hub)


async def test_a_customer_on_an_admin_route_is_403_forbidden(hub):
    for who in (hub.alice, hub.service, token("mod", "moderator")):
        status, body, headers = await create_as(hub, {"Authorization": f"Bearer {who}"})
        assert_problem(status, body, headers, 403, "forbidden")
    await assert_nothing_created(hub)


async def test_an_admin_token_is_accepted(hub):
    status, body, _ = await create_as(hub, {"Authorization": f"Bearer {hub.admin}"})
    assert status == 201, body
    status, body, _ = await hub.call(
        "POST", ADMIN_ROUTE, token=token("two", "customer", "admin"), json={**NEW_PRODUCT, "sku": "AUTH-2"}
    )
    assert status == 201, body


async def test_the_bearer_scheme_is_case_insensitive(hub):
    status, body, _ = await create_as(hub, {"Authorization": f"bearer {hub.admin}"})
    assert status == 201, body


async def test_an_unknown_role_grants_nothing(hub):
    status, body, headers = await hub.call(
        "POST", ADMIN_ROUTE, token=token("eve", "superuser", "root"), json=NEW_PRODUCT
    )
    assert_problem(status, body, headers, 403, "forbidden")
    await assert_nothing_created(hub)


# -- refused tokens ---------------------------------------------------------------------------------


async def test_an_expired_token_is_401_token_expired(hub):
    expired = token("root", "admin", ttl=-60)
    status, body, headers = await create_as(hub, {"Authorization": f"Bearer {expired}"})
    assert_problem(status, body, headers, 401, "token_expired")
    await assert_nothing_created(hub)


def tampered_tokens(good: str) -> dict[str, str]:
    header, payload, signature = good.split(".")
    # Flip a character in the middle of the signature: the last one may only carry padding bits.
    middle = len(signature) // 2
    flipped = signature[:middle] + ("A" if signature[middle] != "A" else "B") + signature[middle + 1 :]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    escalated = segment({**claims, "roles": ["admin"]})
    return {
        "flipped signature": f"{header}.{payload}.{flipped}",
        "escalated payload, old signature": f"{header}.{escalated}.{signature}",
        "no signature": f"{header}.{payload}.",
        "signature dropped": f"{header}.{payload}",
        "truncated signature": f"{header}.{payload}.{signature[:10]}",
    }


@pytest.mark.parametrize(
    "case",
    [
        "flipped signature",
        "escalated payload, old signature",
        "no signature",
        "signature dropped",
        "truncated signature",
    ],
)
async def test_a_tampered_token_is_401_invalid_token(hub, case):
    bad = tampered_tokens(token("alice", "customer"))[case]
    status, body, headers = await create_as(hub, {"Authorization": f"Bearer {bad}"})
    assert_problem(status, body, headers, 401, "invalid_token")
    await assert_nothing_created(hub)


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_an_alg_none_token_is_401_invalid_token(hub, alg):
    forged = f"{segment({'alg': alg, 'typ': 'JWT'})}.{segment(admin_claims())}."
    status, body, headers = await create_as(hub, {"Authorization": f"Bearer {forged}"})
    assert_problem(status, body, headers, 401, "invalid_token")
    await assert_nothing_created(hub)


async def test_a_token_signed_with_another_secret_is_401_invalid_token(hub):
    forged = jwt.encode(admin_claims(), "not-the-" + JWT_SECRET, algorithm="HS256")
    status, body, headers = await create_as(hub, {"Authorization": f"Bearer {forged}"})
    assert_problem(status, body, headers, 401, "invalid_token")
    await assert_nothing_created(hub)


@pytest.mark.parametrize("alg", ["RS256", "ES256", "HS512", "HS384"])
async def test_a_token_with_another_alg_header_signed_by_hmac_is_401(hub, alg):
    # The key-confusion trick: claim an asymmetric algorithm but sign with HMAC and the shared
    # secret, hoping the server verifies with whatever the header names. HS384/HS512 with the real
    # secret are refused too: only HS256 is accepted.
    digest = {"HS512": "sha512", "HS384": "sha384"}.get(alg, "sha256")
    forged = hmac_signed({"alg": alg, "typ": "JWT"}, admin_claims(), digest)
    status, body, headers = await create_as(hub, {"Authorization": f"Bearer {forged}"})
    assert_problem(status, body, headers, 401, "invalid_token")
    await assert_nothing_created(hub)


async def test_a_hand_made_hs256_token_with_the_right_secret_is_accepted(hub):
    # The control for the forgeries above: the same construction with the right alg works.
    good = hmac_signed({"alg": "HS256", "typ": "JWT"}, admin_claims())
    status, body, _ = await create_as(hub, {"Authorization": f"Bearer {good}"})
    assert status == 201, body


@pytest.mark.parametrize(
    ("case", "claims"),
    [
        ("no sub", {"roles": ["admin"], "exp": int(time.time()) + 3600}),
        ("empty sub", {"sub": "", "roles": ["admin"], "exp": int(time.time()) + 3600}),
        ("no exp", {"sub": "root", "roles": ["admin"]}),
        ("roles as a string", {"sub": "root", "roles": "admin", "exp": int(time.time()) + 3600}),
        (
            "not yet valid",
            {
                "sub": "root",
                "roles": ["admin"],
                "exp": int(time.time()) + 7200,
                "nbf": int(time.time()) + 3600,
            },
        ),
    ],
)
async def test_a_well_signed_token_with_bad_claims_is_401_invalid_token(hub, case, claims):
    forged = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    status, body, headers = await create_as(hub, {"Authorization": f"Bearer {forged}"})
    assert_problem(status, body, headers, 401, "invalid_token")
    await assert_nothing_created(hub)


@pytest.mark.parametrize(
    "header",
    [
        "Basic cm9vdDpyb290",
        "Bearer",
        "Bearer   ",
        "Token abc",
        "bearer-ish abc",
        "Bearer not-a-jwt",
        "Bearer a.b.c",
    ],
)
async def test_a_malformed_authorization_header_is_401(hub, header):
    status, body, headers = await create_as(hub, {"Authorization": header})
    assert status == 401, body
    assert headers["Content-Type"].startswith("application/problem+json")
    assert body["code"] == "invalid_token"
    await assert_nothing_created(hub)


@pytest.mark.parametrize("case", ["expired", "tampered", "alg none", "malformed header"])
async def test_every_401_carries_a_bearer_challenge(hub, case):
    # RFC 9110 §15.5.2: a 401 response MUST carry WWW-Authenticate; RFC 6750 §3 gives its form.
    bad = {
        "expired": f"Bearer {token('root', 'admin', ttl=-60)}",
        "tampered": f"Bearer {tampered_tokens(hub.admin)['flipped signature']}",
        "alg none": f"Bearer {segment({'alg': 'none', 'typ': 'JWT'})}.{segment(admin_claims())}.",
        "malformed header": "Basic cm9vdDpyb290",
    }[case]
    status, _, headers = await create_as(hub, {"Authorization": bad})
    assert status == 401
    assert headers.get("WWW-Authenticate", "").startswith("Bearer"), dict(headers)


# -- public routes ----------------------------------------------------------------------------------


async def test_public_reads_work_without_a_token(hub):
    await hub.warehouse("par-1", "eu")
    product = await hub.product("PUB-1")
    for path in (
        "/api/v1/products",
        f"/api/v1/products/{product['id']}",
        f"/api/v1/products/{product['id']}/inventory",
        "/api/v1/warehouses",
        "/api/v1/warehouses/par-1",
        "/api/v1/openapi.json",
        "/healthz",
    ):
        status, body, _ = await hub.call("GET", path)
        assert status == 200, (path, body)


async def test_an_invalid_token_is_refused_even_on_a_public_route(hub):
    product = await hub.product("PUB-2")
    bad_tokens = {
        "expired": (token("alice", "customer", ttl=-60), "token_expired"),
        "other secret": (
            jwt.encode(admin_claims(), "wrong-" + JWT_SECRET, algorithm="HS256"),
            "invalid_token",
        ),
        "garbage": ("garbage", "invalid_token"),
    }
    for path in ("/api/v1/products", f"/api/v1/products/{product['id']}", "/api/v1/warehouses"):
        for name, (bad, code) in bad_tokens.items():
            status, body, headers = await hub.call("GET", path, token=bad)
            assert status == 401, (path, name, body)
            assert headers["Content-Type"].startswith("application/problem+json")
            assert body["code"] == code


async def test_reservations_need_a_token(hub):
    status, body, headers = await hub.call(
        "POST",
        "/api/v1/reservations",
        json={"lines": [{"product_id": "00000000-0000-4000-8000-000000000000", "quantity": 1}]},
        headers={"Idempotency-Key": "k-1"},
    )
    assert_problem(status, body, headers, 401, "unauthenticated")
    status, body, headers = await hub.call("GET", "/api/v1/reservations/00000000-0000-4000-8000-000000000000")
    assert_problem(status, body, headers, 401, "unauthenticated")


# -- the cache of verified tokens ------------------------------------------------------------------

CACHE_SECRET = "cache-secret-" + "x" * 32
OTHER_SECRET = "other-secret-" + "y" * 32


def test_a_cached_token_is_still_refused_once_it_expires():
    from hub import auth
    from hub.errors import Unauthenticated

    time.sleep(1.01 - time.time() % 1)  # just past a whole second: the token below has ~1 s to live
    signed = auth.issue_token(CACHE_SECRET, "carol", ["customer"], ttl_seconds=-auth._LEEWAY_SECONDS + 1)
    assert auth.decode_token(CACHE_SECRET, signed).sub == "carol"
    assert (CACHE_SECRET, signed) in auth._verified
    time.sleep(1.2)
    with pytest.raises(Unauthenticated) as refused:
        auth.decode_token(CACHE_SECRET, signed)
    assert refused.value.code == "token_expired"


def test_a_token_verified_under_one_secret_is_not_accepted_under_another():
    from hub import auth
    from hub.errors import Unauthenticated

    signed = auth.issue_token(CACHE_SECRET, "dave", ["admin"])
    assert auth.decode_token(CACHE_SECRET, signed).roles == {"admin"}
    with pytest.raises(Unauthenticated) as refused:
        auth.decode_token(OTHER_SECRET, signed)
    assert refused.value.code == "invalid_token"


def test_the_cache_of_verified_tokens_stays_bounded(monkeypatch):
    from hub import auth

    monkeypatch.setattr(auth, "_VERIFIED_MAX", 8)
    monkeypatch.setattr(auth, "_verified", {})
    tokens = [auth.issue_token(CACHE_SECRET, f"user-{i}", ["customer"]) for i in range(20)]
    for signed in tokens:
        auth.decode_token(CACHE_SECRET, signed)
    assert 0 < len(auth._verified) <= 8
    assert (CACHE_SECRET, tokens[-1]) in auth._verified  # the newest stays
    assert [auth.decode_token(CACHE_SECRET, t).sub for t in tokens] == [f"user-{i}" for i in range(20)]
