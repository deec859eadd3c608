"""OpenID provider tokens, verified against a real JWKS endpoint (an aiohttp server in the test) by a
real hub over HTTP: the token matrix, key rotation, a provider outage, and a burst of random kids."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from hub.jwks import JwksKeySource, KeysUnavailable, cache_seconds, key_algorithms, parse_key_set
from hub.oidc import roles_from
from tests.conftest import Hub, hub_settings, running_hub, token

ISSUER = "https://id.example.test/realms/shop"
AUDIENCE = "synchub"


def _b64(number: int) -> str:
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class Signer:
    kid: str
    key: Any
    alg: str

    def jwk(self) -> dict[str, Any]:
        public = self.key.public_key().public_numbers()
        if isinstance(self.key, rsa.RSAPrivateKey):
            return {
                "kty": "RSA",
                "kid": self.kid,
                "use": "sig",
                "alg": self.alg,
                "n": _b64(public.n),
                "e": _b64(public.e),
            }
        size = 32
        x = base64.urlsafe_b64encode(public.x.to_bytes(size, "big")).rstrip(b"=").decode()
        y = base64.urlsafe_b64encode(public.y.to_bytes(size, "big")).rstrip(b"=").decode()
        return {"kty": "EC", "kid": self.kid, "use": "sig", "crv": "P-256", "x": x, "y": y}

    def sign(
        self, sub: str = "alice", roles: Any = ("customer",), *, alg: str | None = None, **claims: Any
    ) -> str:
        now = int(time.time())
        listed = list(roles) if isinstance(roles, tuple | list) else roles
        body = {"sub": sub, "roles": listed, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, self.key, algorithm=alg or self.alg, headers={"kid": self.kid})


def rsa_signer(kid: str) -> Signer:
    return Signer(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")


def ec_signer(kid: str) -> Signer:
    return Signer(kid, ec.generate_private_key(ec.SECP256R1()), "ES256")


@dataclass
class Provider:
    """A JWKS endpoint whose key set, status and latency the test controls; it counts requests."""

    keys: list[dict[str, Any]]
    status: int = 200
    cache_control: str | None = "max-age=300"
    delay: float = 0.0
    requests: int = 0
    url: str = ""
    runner: web.AppRunner | None = field(default=None, repr=False)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.Response(status=self.status, text="provider down")
        headers = {"Cache-Control": self.cache_control} if self.cache_control else {}
        return web.json_response({"keys": self.keys}, headers=headers)


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    found = Provider(keys=[])
    app = web.Application()
    app.router.add_get("/certs", found.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    found.url, found.runner = f"http://127.0.0.1:{port}/certs", runner
    yield found
    await runner.cleanup()


@pytest.fixture
def signers() -> dict[str, Signer]:
    return {"rsa": rsa_signer("rsa-1"), "ec": ec_signer("ec-1")}


async def _oidc_hub(tmp_path: Any, provider: Provider, **overrides: Any) -> Any:
    settings = hub_settings(
        str(tmp_path / "hub.sqlite3"),
        jwks_url=provider.url,
        oidc_issuer=ISSUER,
        oidc_audience=AUDIENCE,
        **overrides,
    )
    return running_hub(settings)


async def _ticket(hub: Hub, bearer: str) -> tuple[int, Any]:
    status, body, _ = await hub.call("POST", "/api/v1/realtime/tickets", token=bearer)
    return status, body


def _hs256_with_public_key(signer: Signer) -> str:
    """The HS/RS confusion attack: an HMAC whose 'secret' is the provider's public key (PEM)."""
    pem = signer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": signer.kid}
    claims = {
        "sub": "mallory",
        "roles": ["admin"],
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": int(time.time()) + 600,
    }
    import hashlib
    import hmac

    def part(value: dict[str, Any]) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=")

    signing_input = part(header) + b"." + part(claims)
    signature = base64.urlsafe_b64encode(hmac.new(pem, signing_input, hashlib.sha256).digest()).rstrip(b"=")
    return (signing_input + b"." + signature).decode()


def _alg_none(signer: Signer) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    claims = {
        "sub": "mallory",
        "roles": ["admin"],
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": int(time.time()) + 600,
    }
    return f"{part({'alg': 'none', 'kid': signer.kid})}.{part(claims)}."


# -- the token matrix -------------------------------------------------------------------------------


async def test_the_token_matrix(tmp_path, provider, signers):
    rsa_key, ec_key = signers["rsa"], signers["ec"]
    provider.keys = [rsa_key.jwk(), ec_key.jwk(), {"kty": "oct", "kid": "shared", "k": "c2VjcmV0LXNlY3JldA"}]
    other = rsa_signer("rsa-1")  # same kid, another key: a forgery
    now = int(time.time())
    cases: dict[str, tuple[str, int, str | None]] = {
        "RS256 good": (rsa_key.sign(), 201, None),
        "ES256 good": (ec_key.sign(), 201, None),
        "alg none": (_alg_none(rsa_key), 401, "invalid_token"),
        "HS256 signed with the RSA public key": (_hs256_with_public_key(rsa_key), 401, "invalid_token"),
        "ES256 header on the RSA key's kid": (
            jwt.encode(
                {"sub": "m", "exp": now + 60, "iss": ISSUER, "aud": AUDIENCE},
                ec_key.key,
                "ES256",
                {"kid": "rsa-1"},
            ),
            401,
            "invalid_token",
        ),
        "forged with another key under a known kid": (other.sign(), 401, "invalid_token"),
        "wrong audience": (rsa_key.sign(aud="another-api"), 401, "invalid_token"),
        "no audience": (rsa_key.sign(aud=None), 401, "invalid_token"),
        "wrong issuer": (rsa_key.sign(iss="https://evil.test"), 401, "invalid_token"),
        "unknown kid": (rsa_signer("rotated-away").sign(), 401, "unknown_key"),
        "kid of a symmetric key in the set": (
            jwt.encode(
                {"sub": "m", "exp": now + 60},
                "a-secret-long-enough-for-hs384-" * 2,
                "HS384",
                {"kid": "shared"},
            ),
            401,
            "invalid_token",
        ),
        "expired": (rsa_key.sign(exp=now - 60), 401, "token_expired"),
        "not yet valid": (rsa_key.sign(nbf=now + 3600), 401, "invalid_token"),
        "no exp": (rsa_key.sign(exp=None), 401, "invalid_token"),
        "no sub": (rsa_key.sign(sub=None), 401, "invalid_token"),
        "roles not a list": (rsa_key.sign(roles={"a": 1}), 401, "invalid_token"),
        "the hub's own HS256 token": (token("alice", "customer"), 201, None),
    }
    async with await _oidc_hub(tmp_path, provider) as hub:
        outcomes = {}
        for name, (bearer, _, _) in cases.items():
            status, body = await _ticket(hub, bearer)
            outcomes[name] = (status, body.get("code") if status != 201 else None)
    assert outcomes == {name: (status, code) for name, (_, status, code) in cases.items()}


async def test_roles_come_from_the_configured_claim_and_unknown_roles_are_dropped(
    tmp_path, provider, signers
):
    signer = signers["rsa"]
    provider.keys = [signer.jwk()]
    async with await _oidc_hub(tmp_path, provider, roles_claim="realm_access.roles") as hub:
        admin = signer.sign("root", roles=(), realm_access={"roles": ["admin", "offline_access"]})
        flat = signer.sign("root", roles=("admin",))  # the top-level claim is not the configured one
        body = {"id": "par-1", "region": "eu", "name": "Paris"}
        status, answer, _ = await hub.call("POST", "/api/v1/warehouses", token=admin, json=body)
        assert status == 201, answer
        status, answer, _ = await hub.call(
            "POST", "/api/v1/warehouses", token=flat, json={**body, "id": "par-2"}
        )
        assert (status, answer["code"]) == (403, "forbidden")


async def test_hs256_tokens_are_refused_when_turned_off(tmp_path, provider, signers):
    provider.keys = [signers["rsa"].jwk()]
    async with await _oidc_hub(tmp_path, provider, hs256_tokens=False) as hub:
        status, body = await _ticket(hub, token("alice", "customer"))
        assert (status, body["code"]) == (401, "invalid_token")
        assert (await _ticket(hub, signers["rsa"].sign()))[0] == 201


async def test_a_hub_without_a_jwks_refuses_provider_tokens(tmp_path, signers):
    async with running_hub(hub_settings(str(tmp_path / "hub.sqlite3"))) as hub:
        status, body = await _ticket(hub, signers["rsa"].sign())
        assert (status, body["code"]) == (401, "invalid_token")


# -- the key source over HTTP: rotation, outage, random kids ---------------------------------------


async def test_a_key_rotated_in_at_the_provider_is_found_by_one_refetch(tmp_path, provider, signers):
    old, new = signers["rsa"], rsa_signer("rsa-2")
    provider.keys = [old.jwk()]
    async with await _oidc_hub(tmp_path, provider, jwks_kid_cooldown_seconds=0.2) as hub:
        assert (await _ticket(hub, old.sign()))[0] == 201
        assert provider.requests == 1
        provider.keys = [old.jwk(), new.jwk()]
        await asyncio.sleep(0.25)
        assert (await _ticket(hub, new.sign()))[0] == 201
        assert provider.requests == 2
        # the old key withdrawn: a token it signed stops verifying once the set is refetched, even a
        # token verified (and cached) before
        cached = old.sign("carol")
        assert (await _ticket(hub, cached))[0] == 201
        provider.keys = [new.jwk()]
        await asyncio.sleep(0.25)
        assert (await _ticket(hub, rsa_signer("rsa-3").sign()))[1]["code"] == "unknown_key"  # refetch
        status, body = await _ticket(hub, cached)
        assert (status, body["code"]) == (401, "unknown_key")


async def test_keys_keep_verifying_through_a_provider_outage(tmp_path, provider, signers):
    signer = signers["ec"]
    provider.keys = [signer.jwk()]
    async with await _oidc_hub(tmp_path, provider, jwks_kid_cooldown_seconds=0.0) as hub:
        assert (await _ticket(hub, signer.sign("a")))[0] == 201
        provider.status = 503
        # unknown kids force refetches, which fail: the last good set still verifies known keys
        assert (await _ticket(hub, ec_signer("ghost").sign()))[1]["code"] == "unknown_key"
        assert provider.requests == 2
        for sub in ("b", "c", "d"):
            assert (await _ticket(hub, signer.sign(sub)))[0] == 201


async def test_a_provider_down_from_the_start_is_a_503_keys_unavailable(tmp_path, provider, signers):
    provider.status = 500
    async with await _oidc_hub(tmp_path, provider) as hub:
        status, body, headers = await hub.call(
            "POST", "/api/v1/realtime/tickets", token=signers["rsa"].sign()
        )
        assert (status, body["code"]) == (503, "keys_unavailable")
        assert headers["Retry-After"] == "5"
        assert (await _ticket(hub, token("alice")))[0] == 201  # the hub's own tokens are unaffected


async def test_a_burst_of_random_kids_costs_at_most_one_fetch_per_cooldown(tmp_path, provider, signers):
    signer = signers["rsa"]
    provider.keys = [signer.jwk()]
    provider.delay = 0.05  # a slow provider: concurrent misses must share one fetch
    async with await _oidc_hub(tmp_path, provider) as hub:
        assert (await _ticket(hub, signer.sign()))[0] == 201
        assert provider.requests == 1
        forged = [Signer(str(uuid.uuid4()), signer.key, "RS256").sign() for _ in range(1000)]
        codes: list[str] = []
        for start in range(0, len(forged), 100):
            answers = await asyncio.gather(*(_ticket(hub, t) for t in forged[start : start + 100]))
            codes.extend(body["code"] for _, body in answers)
        assert codes == ["unknown_key"] * 1000
        assert provider.requests == 2  # the first fetch and one refetch within the 30 s cooldown
        assert (await _ticket(hub, signer.sign("still-fine")))[0] == 201


# -- the key source's rules, on a fake clock -------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _source(bodies: list[Any], clock: FakeClock, **options: Any) -> tuple[JwksKeySource, list[int]]:
    calls = [0]

    async def fetch() -> tuple[bytes, str | None]:
        calls[0] += 1
        await asyncio.sleep(0.01)
        item = bodies[min(calls[0] - 1, len(bodies) - 1)]
        if isinstance(item, Exception):
            raise item
        return item

    return JwksKeySource(fetch, clock=clock, **options), calls


def _set(*signers: Signer) -> bytes:
    return json.dumps({"keys": [s.jwk() for s in signers]}).encode()


async def test_concurrent_misses_share_one_fetch(signers):
    clock = FakeClock()
    source, calls = _source([(_set(signers["rsa"]), None)], clock)
    found = await asyncio.gather(*(source.key("rsa-1") for _ in range(50)))
    assert calls == [1] and all(key is not None for key in found)


async def test_cache_control_sets_the_lifetime_within_bounds(signers):
    clock = FakeClock()
    body = _set(signers["rsa"])
    source, calls = _source([(body, "public, max-age=120")], clock, min_ttl=30, max_ttl=3600)
    await source.key("rsa-1")
    clock.now += 119
    await source.key("rsa-1")
    assert calls == [1]
    clock.now += 2
    await source.key("rsa-1")
    assert calls == [2]
    assert cache_seconds("max-age=5", 300, 30, 3600) == 30
    assert cache_seconds("max-age=999999", 300, 30, 3600) == 3600
    assert cache_seconds("no-store", 300, 30, 3600) == 30
    assert cache_seconds(None, 300, 30, 3600) == 300


async def test_the_last_good_set_is_served_when_refreshes_fail(signers):
    clock = FakeClock()
    source, calls = _source([(_set(signers["rsa"]), "max-age=60"), TimeoutError(), ValueError("bad")], clock)
    assert await source.key("rsa-1") is not None
    clock.now += 61
    assert await source.key("rsa-1") is not None  # refresh failed: still the old set
    assert calls == [2] and source.failures == 1
    clock.now += 1
    assert await source.key("rsa-1") is not None  # no new attempt within retry_after_failure (5 s)
    assert calls == [2]


async def test_no_set_ever_fetched_is_keys_unavailable(signers):
    source, _ = _source([OSError("refused")], FakeClock())
    with pytest.raises(KeysUnavailable):
        await source.key("rsa-1")


async def test_unknown_kids_refetch_once_per_cooldown_and_are_remembered_boundedly(signers):
    clock = FakeClock()
    source, calls = _source(
        [(_set(signers["rsa"]), "max-age=3600")], clock, kid_cooldown=30, negative_cache_size=10
    )
    await source.key("rsa-1")
    for n in range(100):
        assert await source.key(f"kid-{n}") is None
    assert calls == [2]
    assert len(source._unknown) == 10
    clock.now += 30
    assert await source.key("kid-new") is None
    assert calls == [3]


def test_only_signature_keys_of_known_types_are_used_and_their_algorithm_is_pinned(signers):
    rsa_jwk, ec_jwk = signers["rsa"].jwk(), signers["ec"].jwk()
    assert key_algorithms(rsa_jwk) == {"RS256"}
    no_alg = {k: v for k, v in rsa_jwk.items() if k != "alg"}
    assert key_algorithms(no_alg) == {"RS256"}
    assert key_algorithms({**rsa_jwk, "alg": "PS384"}) == {"PS384"}
    assert key_algorithms({**rsa_jwk, "alg": "HS256"}) == set()
    assert key_algorithms(ec_jwk) == {"ES256"}
    assert key_algorithms({**ec_jwk, "alg": "ES384"}) == set()  # not its curve's
    assert key_algorithms({**rsa_jwk, "use": "enc"}) == set()
    assert key_algorithms({"kty": "oct", "k": "c2VjcmV0"}) == set()
    keys = parse_key_set(
        json.dumps({"keys": [rsa_jwk, {"kty": "oct", "k": "eA", "kid": "o"}, "junk"]}).encode()
    )
    assert list(keys) == ["rsa-1"]
    with pytest.raises(ValueError):
        parse_key_set(b"<html>")
    with pytest.raises(ValueError):
        parse_key_set(b'{"keys": 3}')


def test_roles_from_claims():
    assert roles_from({"roles": ["a"]}, "roles") == ["a"]
    assert roles_from({}, "roles") == []
    assert roles_from({"realm_access": {"roles": ["x", "y"]}}, "realm_access.roles") == ["x", "y"]
    assert roles_from({"https://shop.test/roles": ["admin"]}, "https://shop.test/roles") == ["admin"]
    assert roles_from({"scope": "customer admin"}, "scope") == ["customer", "admin"]
    assert roles_from({"roles": [1]}, "roles") is None
