"""Bearer tokens of either issuer: the hub's own HS256 tokens, and an OpenID provider's tokens.

Which key checks a token is decided by the token's header *and* the key, never by the header alone:

- ``HS256`` → the hub's secret, and only while ``hs256_tokens`` is on (on by default; off when the
  hub runs with ``--jwks-url`` and no explicit ``--jwt-secret``).
- ``RS*``/``PS*``/``ES*``/``EdDSA`` → the provider's key named by ``kid``, fetched from the JWKS
  (:mod:`hub.jwks`), and only with an algorithm that key's type and curve allow. An HS256 token
  signed with an RSA *public* key therefore fails (the secret is not that key), and an RS256 header
  over an HMAC fails (the key is RSA).
- anything else, ``none`` included → ``invalid_token``.

Claims: ``exp`` and ``sub`` always; ``iss`` and ``aud`` when ``--issuer``/``--audience`` are set;
``nbf`` and ``iat`` checked when present; a leeway (default 5 s) for clock skew. Roles come from the
claim ``--roles-claim`` names (``roles`` by default; a dotted path such as ``realm_access.roles`` for
Keycloak); roles the hub does not know are dropped.

Errors (401 problem+json unless said): ``invalid_token``, ``token_expired``, ``unknown_key`` (a kid
the provider does not publish, even after a refetch), ``keys_unavailable`` (503: the provider's keys
were never fetched; the token may be good, so retry).

Verified tokens are kept until they expire (so a client sending the same token on every request pays
for the signature once) unless their key leaves the provider's set.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import jwt
from aiohttp import web

from hub.auth import ROLES, Principal, decode_token
from hub.errors import ServiceUnavailable, Unauthenticated
from hub.jwks import JwksKeySource, KeysUnavailable, http_fetch
from hub.keys import SETTINGS, VERIFIER
from hub.settings import Settings

_ASYMMETRIC = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "ES256K", "EdDSA"}
)
_VERIFIED_MAX = 10_000
_HEADERS_MAX = 64  # a hub's own tokens share one header; a few more from other HS256 signers


class TokenVerifier:
    def __init__(
        self,
        *,
        secret: str | None,
        keys: JwksKeySource | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        roles_claim: str = "roles",
        leeway: int = 5,
    ) -> None:
        self._secret = secret
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._roles_claim = roles_claim
        self._leeway = leeway
        self._verified: dict[str, tuple[Principal, str | None]] = {}
        # The header segments (the text before the first dot) of HS256 tokens verified by the secret.
        self._hs256_headers: set[str] = set()

    @property
    def keys(self) -> JwksKeySource | None:
        return self._keys

    async def verify(self, token: str) -> Principal:
        cached = self._verified.get(token)
        if cached is not None:
            principal, kid = cached
            fresh = time.time() < principal.expires_at + self._leeway
            if fresh and (kid is None or (self._keys is not None and self._keys.known(kid))):
                return principal
            del self._verified[token]
        header_segment = token.partition(".")[0]
        if header_segment in self._hs256_headers and self._secret is not None:
            # A header this hub has verified a token under before, byte for byte: its parse would say
            # HS256 again, and decode_token's own parse (the same _load and header checks PyJWT's
            # get_unverified_header runs) refuses any fault of the rest of the token with the same
            # message and code. Every new user's first post skips a parse of the header (~19 µs).
            principal = decode_token(self._secret, token)
            self._remember(token, principal, None)
            return principal
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the token is invalid: {exc}", code="invalid_token") from exc
        alg = header.get("alg")
        if alg == "HS256":
            if self._secret is None:
                raise Unauthenticated("HS256 tokens are not accepted by this hub", code="invalid_token")
            principal = decode_token(self._secret, token)
            self._remember(token, principal, None)
            # Only after a verified signature: a forger cannot fill this set with headers of theirs.
            if len(self._hs256_headers) < _HEADERS_MAX:
                self._hs256_headers.add(header_segment)
            return principal
        if alg not in _ASYMMETRIC or self._keys is None:
            raise Unauthenticated(
                f"tokens signed with {str(alg)[:20]!r} are not accepted", code="invalid_token"
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("the token's kid must be a string", code="invalid_token")
        try:
            key = await self._keys.key(kid)
        except KeysUnavailable as exc:
            raise ServiceUnavailable(str(exc), code="keys_unavailable", headers={"Retry-After": "5"}) from exc
        if key is None:
            raise Unauthenticated(
                f"the token's key {str(kid)[:64]!r} is not one of the identity provider's", code="unknown_key"
            )
        if alg not in key.algorithms:
            raise Unauthenticated(f"key {kid!r} does not sign with {alg}", code="invalid_token")
        principal = self._principal(self._decode(token, key.key, alg))
        self._remember(token, principal, kid)
        return principal

    def _decode(self, token: str, key: Any, alg: str) -> dict[str, Any]:
        required = ["exp", "sub"]
        if self._issuer is not None:
            required.append("iss")
        if self._audience is not None:
            required.append("aud")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                # Without a configured audience a token's "aud" is not checked (it names the API it
                # was minted for; the issuer is the trust anchor then).
                options={"require": required, "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("the token has expired", code="token_expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the token is invalid: {exc}", code="invalid_token") from exc
        return claims

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise Unauthenticated("the token has no subject", code="invalid_token")
        roles = roles_from(claims, self._roles_claim)
        if roles is None:
            raise Unauthenticated(
                f"the token's {self._roles_claim} must be a list of strings", code="invalid_token"
            )
        return Principal(sub=sub, roles=frozenset(roles) & ROLES, expires_at=int(claims["exp"]))

    def _remember(self, token: str, principal: Principal, kid: str | None) -> None:
        if len(self._verified) >= _VERIFIED_MAX:
            for old in list(itertools.islice(self._verified, _VERIFIED_MAX // 2)):
                del self._verified[old]
        self._verified[token] = (principal, kid)


def roles_from(claims: Mapping[str, Any], claim: str) -> list[str] | None:
    """The roles under ``claim`` (a name, else a dotted path); [] when absent, None when malformed.
    A space-separated string (OAuth's ``scope`` style) is accepted as a list."""
    value: Any = claims.get(claim)
    if value is None and "." in claim:
        value = claims
        for part in claim.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list) and all(isinstance(role, str) for role in value):
        return value
    return None


def make_verifier(settings: Settings, session: aiohttp.ClientSession | None) -> TokenVerifier:
    keys = None
    if settings.jwks_url:
        if session is None:
            raise ValueError("a JWKS URL needs an HTTP client session")
        fetch = http_fetch(settings.jwks_url, settings.jwks_timeout_seconds, lambda: session)
        keys = JwksKeySource(fetch, kid_cooldown=settings.jwks_kid_cooldown_seconds)
    return TokenVerifier(
        secret=settings.jwt_secret if settings.hs256_tokens else None,
        keys=keys,
        issuer=settings.oidc_issuer,
        audience=settings.oidc_audience,
        roles_claim=settings.roles_claim,
        leeway=settings.token_leeway_seconds,
    )


async def verifier_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    session = aiohttp.ClientSession() if settings.jwks_url else None
    try:
        app[VERIFIER] = make_verifier(settings, session)
        yield
    finally:
        if session is not None:
            await session.close()
