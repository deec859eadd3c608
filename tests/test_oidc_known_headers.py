"""hub/oidc.py's TokenVerifier skips parsing the header of an HS256 token whose header text it has
verified a token under before. These tokens share such a header and are broken elsewhere (or expired,
or signed by another secret): each must be refused with the same status, code and message as by a
verifier that has never seen that header, which parses it first."""

from __future__ import annotations

import base64
import time

import jwt
import pytest

from hub.auth import issue_token
from hub.errors import ApiError
from hub.oidc import TokenVerifier

SECRET = "s" * 32


def _segments(token: str) -> list[str]:
    return token.split(".")


def _broken_tokens() -> dict[str, str]:
    good = issue_token(SECRET, "alice", ["customer"])
    header, payload, signature = _segments(good)
    now = int(time.time())
    other_secret = jwt.encode({"sub": "mallory", "exp": now + 60}, "t" * 32, algorithm="HS256")
    expired = jwt.encode({"sub": "alice", "exp": now - 3600}, SECRET, algorithm="HS256")
    no_subject = jwt.encode({"exp": now + 60}, SECRET, algorithm="HS256")
    bad_roles = jwt.encode({"sub": "alice", "exp": now + 60, "roles": "customer"}, SECRET, algorithm="HS256")
    forged_payload = base64.urlsafe_b64encode(b'{"sub":"mallory","exp":9999999999}').rstrip(b"=").decode()
    tokens = {
        "header only": header,
        "two segments": f"{header}.{payload}",
        "four segments": f"{header}.{payload}.{signature}.{signature}",
        "payload not base64": f"{header}.{payload[:-1]}!.{signature}",
        "payload cut": f"{header}.{payload[:-1]}.{signature}",
        "signature not base64": f"{header}.{payload}.{signature[:-1]}*",
        "signature empty": f"{header}.{payload}.",
        "payload swapped": f"{header}.{forged_payload}.{signature}",
        "signed by another secret": other_secret,
        "expired": expired,
        "no subject": no_subject,
        "roles not a list": bad_roles,
    }
    for name, forged in tokens.items():
        assert forged.partition(".")[0] == header, name  # every one shares the verified token's header
    return tokens


async def _refusal(verifier: TokenVerifier, token: str) -> tuple[int, str, str]:
    with pytest.raises(ApiError) as refused:
        await verifier.verify(token)
    return refused.value.status, refused.value.code, refused.value.detail


async def test_a_known_header_changes_no_refusal():
    warm = TokenVerifier(secret=SECRET)
    principal = await warm.verify(issue_token(SECRET, "bob", ["customer"]))  # its header is now known
    assert principal.sub == "bob"
    for name, token in _broken_tokens().items():
        expected = await _refusal(TokenVerifier(secret=SECRET), token)
        assert expected[0] == 401, name
        assert await _refusal(warm, token) == expected, name


async def test_a_known_header_still_verifies_each_token():
    verifier = TokenVerifier(secret=SECRET)
    first = await verifier.verify(issue_token(SECRET, "carol", ["customer"]))
    second = await verifier.verify(issue_token(SECRET, "dave", ["moderator"]))
    assert (first.sub, first.roles, second.sub, second.roles) == (
        "carol",
        frozenset({"customer"}),
        "dave",
        frozenset({"moderator"}),
    )


async def test_a_forged_token_does_not_make_its_header_known():
    verifier = TokenVerifier(secret=SECRET)
    odd_header = {"alg": "HS256", "typ": "JWT", "x": "forger"}
    forged = jwt.encode(
        {"sub": "m", "exp": int(time.time()) + 60}, "t" * 32, algorithm="HS256", headers=odd_header
    )
    expected = await _refusal(TokenVerifier(secret=SECRET), forged)
    for _ in range(2):
        assert await _refusal(verifier, forged) == expected
    # and a token under that header signed by the secret is verified as any other
    good = jwt.encode(
        {"sub": "erin", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256", headers=odd_header
    )
    assert (await verifier.verify(good)).sub == "erin"


async def test_hs256_off_refuses_a_header_known_elsewhere():
    token = issue_token(SECRET, "frank", ["customer"])
    await TokenVerifier(secret=SECRET).verify(token)
    refused = await _refusal(TokenVerifier(secret=None), token)
    assert refused == (401, "invalid_token", "HS256 tokens are not accepted by this hub")
