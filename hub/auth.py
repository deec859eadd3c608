"""Bearer identity and role checks.

A token carries ``sub`` (who), ``roles`` (what they may do: customer, moderator, admin, service) and
``exp``. The hub's own tokens are HS256 (here); an OpenID provider's are verified against its JWKS
(:mod:`hub.oidc`, which also says which algorithm meets which key). ``alg: none``, expired,
not-yet-valid and tampered tokens are refused. A request without a token is anonymous: public reads
work, everything else answers 401; an authenticated request lacking the role answers 403.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jwt
from aiohttp import web
from jwt.algorithms import HMACAlgorithm

from hub.errors import Forbidden, Unauthenticated
from hub.keys import GRANTED_SCOPE, PRINCIPAL, SETTINGS, VERIFIER

ROLES = frozenset({"customer", "moderator", "admin", "service"})
ALGORITHM = "HS256"
_LEEWAY_SECONDS = 5


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling. ``expires_at`` (epoch seconds) ends a live connection's authority; ``scopes``
    are an API key's grants (empty for a user's token); ``api_key_id`` is set for API-key callers."""

    sub: str
    roles: frozenset[str]
    expires_at: int
    scopes: frozenset[str] = frozenset()
    api_key_id: str | None = None


# Verified tokens, so that a client sending the same token with every request pays for the HMAC
# and the JSON once: PyJWT's decode was 14% of the hub's CPU under a reservation load. Keyed by
# secret and token; an entry is used only until the token expires. Bounded: the oldest half goes
# when it is full.
_VERIFIED_MAX = 10_000
_verified: dict[tuple[str, str], Principal] = {}


class _RememberedSecretHMAC(HMACAlgorithm):
    """HS256 whose key preparation — PyJWT's checks that the secret is not a PEM, SSH, DER or JWK key,
    ~13 µs — runs once per secret, not once per token (every review post is a new user's token). The
    preparation is a function of the key alone; a key it refuses is refused every time (not kept)."""

    def __init__(self) -> None:
        super().__init__(HMACAlgorithm.SHA256)
        self._prepared: dict[str | bytes, bytes] = {}

    def prepare_key(self, key: str | bytes) -> bytes:
        prepared = self._prepared.get(key)
        if prepared is None:
            prepared = super().prepare_key(key)
            if len(self._prepared) < 8:  # the hub's secret (tests make a few)
                self._prepared[key] = prepared
        return prepared


def _prepared_secret_decoder() -> Any:
    """A PyJWT whose HS256 is the one above. Its JWS is a private attribute of PyJWT 2 (no public
    hook): a PyJWT that keeps it elsewhere gets its own module-level decode, slower by ~13 µs a token
    and as strict."""
    decoder = jwt.PyJWT()
    jws = getattr(decoder, "_jws", None)
    if jws is None or not hasattr(jws, "register_algorithm") or not hasattr(jws, "unregister_algorithm"):
        return jwt
    jws.unregister_algorithm(ALGORITHM)
    jws.register_algorithm(ALGORITHM, _RememberedSecretHMAC())
    return decoder


_decoder = _prepared_secret_decoder()


def issue_token(secret: str, sub: str, roles: Iterable[str], ttl_seconds: int = 3600) -> str:
    now = int(time.time())
    claims = {"sub": sub, "roles": sorted(set(roles)), "iat": now, "exp": now + ttl_seconds}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def decode_token(secret: str, token: str) -> Principal:
    cached = _verified.get((secret, token))
    if cached is not None and time.time() < cached.expires_at + _LEEWAY_SECONDS:
        return cached
    verified = _verify(secret, token)
    if len(_verified) >= _VERIFIED_MAX:
        for key in list(itertools.islice(_verified, _VERIFIED_MAX // 2)):
            del _verified[key]
    _verified[(secret, token)] = verified
    return verified


def _verify(secret: str, token: str) -> Principal:
    try:
        claims = _decoder.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["exp", "sub"]},
            leeway=_LEEWAY_SECONDS,
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthenticated("the token has expired", code="token_expired") from exc
    except jwt.PyJWTError as exc:
        raise Unauthenticated(f"the token is invalid: {exc}", code="invalid_token") from exc
    sub = claims.get("sub")
    roles = claims.get("roles", [])
    if not isinstance(sub, str) or not sub:
        raise Unauthenticated("the token has no subject", code="invalid_token")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise Unauthenticated("the token's roles must be a list of strings", code="invalid_token")
    return Principal(sub=sub, roles=frozenset(roles) & ROLES, expires_at=int(claims["exp"]))


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "the Authorization header must be 'Bearer <token>'",
            code="invalid_token",
            headers={"WWW-Authenticate": 'Bearer error="invalid_request"'},
        )
    return token.strip()


async def authenticate(app: web.Application, token: str) -> Principal:
    """The principal a bearer credential names, or :class:`Unauthenticated` with a stable code. The one
    place every transport (REST, WebSocket, SSE, long-poll) turns a credential into a caller."""
    if token.startswith("shk_"):  # an API key (hub/api_keys.py, which imports this module)
        from hub.api_keys import authenticate_api_key

        return await authenticate_api_key(app, token)
    verifier = app.get(VERIFIER)
    if verifier is None:  # an app not started by create_app's contexts (HS256 only)
        return decode_token(app[SETTINGS].jwt_secret, token)
    return await verifier.verify(token)


@web.middleware
async def auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    token = bearer_token(request)
    # Set for every request, None when anonymous: a lookup of a key that is there costs a dict read,
    # one that is not raises and catches a KeyError inside the request's Mapping.get (a few µs on a
    # busy hub, on every anonymous request, at each of the places that ask).
    request[PRINCIPAL] = None if token is None else await authenticate(request.app, token)
    return await handler(request)


def principal(request: web.Request) -> Principal | None:
    found: Principal | None = request.get(PRINCIPAL)
    return found


def require(request: web.Request, *roles: str) -> Principal:
    """The caller, if authenticated and holding one of ``roles`` (any role if none are given)."""
    who = principal(request)
    if who is None:
        raise Unauthenticated("this operation needs a bearer token", headers={"WWW-Authenticate": "Bearer"})
    if who.api_key_id is not None:
        # An API key holds scopes, not roles: it passes where hub/authz.py admitted it by a scope.
        if GRANTED_SCOPE not in request:
            raise Forbidden("API keys may not call this operation", code="insufficient_scope")
        return who
    if roles and not (who.roles & set(roles)):
        raise Forbidden(f"this operation needs the role {' or '.join(roles)}", required=list(roles))
    return who
