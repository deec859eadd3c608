"""hub/auth.py prepares the HS256 secret once (PyJWT's checks that it is not an asymmetric key), not per
token: tokens keep being verified one by one, and a secret PyJWT refuses is refused every time."""

from __future__ import annotations

import time

import jwt
import pytest
from jwt.algorithms import HMACAlgorithm

from hub import auth
from hub.errors import Unauthenticated

SECRET = "p" * 32


def test_the_secret_is_prepared_once_for_many_tokens(monkeypatch):
    prepared: list[object] = []
    original = HMACAlgorithm.prepare_key

    def counting(self: HMACAlgorithm, key: str | bytes) -> bytes:
        prepared.append(key)
        return original(self, key)

    monkeypatch.setattr(HMACAlgorithm, "prepare_key", counting)
    secret = "q" * 32  # not prepared by any other test of this process
    subs = [
        auth.decode_token(secret, auth.issue_token(secret, f"user-{i}", ["customer"])).sub for i in range(5)
    ]
    assert subs == [f"user-{i}" for i in range(5)]
    # issue_token (PyJWT's encoder) prepares it each time; the hub's decoder once
    assert prepared.count(secret) == 5 + 1


def test_each_token_is_still_verified():
    forged = jwt.encode({"sub": "mallory", "exp": int(time.time()) + 60}, "x" * 32, algorithm="HS256")
    for _ in range(2):
        with pytest.raises(Unauthenticated) as refused:
            auth.decode_token(SECRET, forged)
        assert (refused.value.code, refused.value.detail) == (
            "invalid_token",
            "the token is invalid: Signature verification failed",
        )
    expired = jwt.encode({"sub": "alice", "exp": int(time.time()) - 3600}, SECRET, algorithm="HS256")
    with pytest.raises(Unauthenticated) as refused:
        auth.decode_token(SECRET, expired)
    assert refused.value.code == "token_expired"


def test_a_secret_that_is_an_asymmetric_key_is_refused_every_time():
    pem = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"
    header_and_claims = jwt.encode({"sub": "a", "exp": int(time.time()) + 60}, "y" * 32, algorithm="HS256")
    for _ in range(2):
        with pytest.raises(Unauthenticated) as refused:
            auth.decode_token(pem, header_and_claims)
        assert refused.value.code == "invalid_token"
        assert "asymmetric key" in refused.value.detail
