"""The identity provider's signing keys, fetched from its JWKS URL and kept.

Guarantees, for a hub that must keep verifying tokens when the provider is slow or down:

- **One fetch at a time** (single flight): however many requests need the keys at once, one HTTP
  request is made and every caller waits for its result.
- **Cached for as long as the provider says**: ``Cache-Control: max-age`` (clamped to
  ``[min_ttl, max_ttl]``; ``default_ttl`` without one). Keys past their time are refreshed on the
  next need.
- **The last good key set is served when a refresh fails** (timeout, 5xx, a body that is not a key
  set): tokens signed by known keys keep verifying through a provider outage. Only with no key set
  ever fetched does a caller get :class:`KeysUnavailable`.
- **Unknown ``kid``**: a key rotated in at the provider is found by refetching, but at most one
  refetch per ``kid_cooldown`` seconds *for all kids together* — a burst of tokens with random kids
  costs the provider one request, not one each. A kid still unknown after a refetch is remembered as
  unknown (a bounded LRU, ``negative_cache_size``) until the next refetch.
- **The algorithm is pinned by the key**: an RSA key verifies RS256 (or the RS*/PS* alg its JWK
  names), an EC key the ES* alg of its curve, an OKP key EdDSA. HMAC ("oct") keys in a JWKS are
  ignored: a public key can never be used as an HMAC secret (the HS/RS confusion attack).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import jwt

log = logging.getLogger(__name__)

_MAX_BODY_BYTES = 1 << 20
_MAX_AGE = re.compile(r"(?:^|,)\s*(?:s-)?max-age\s*=\s*\"?(\d+)\"?", re.IGNORECASE)
_NO_STORE = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\b", re.IGNORECASE)

# Which algorithms a key of each type and curve may verify. A JWK's own "alg" narrows this further.
_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALG_BY_CURVE = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "secp256k1": "ES256K"}
_OKP_ALGS = frozenset({"EdDSA"})


class KeysUnavailable(Exception):
    """No key set could be fetched, and none was fetched before."""


@dataclass(frozen=True, slots=True)
class VerificationKey:
    kid: str | None
    algorithms: frozenset[str]
    key: object  # the cryptography public key PyJWT verifies with


Fetch = Callable[[], Awaitable[tuple[bytes, str | None]]]


def key_algorithms(jwk: dict[str, object]) -> frozenset[str]:
    """The algorithms ``jwk`` may verify; empty for keys the hub will not use (symmetric, encryption)."""
    if jwk.get("use") not in (None, "sig"):
        return frozenset()
    kty = jwk.get("kty")
    if kty == "RSA":
        allowed = _RSA_ALGS
    elif kty == "EC":
        alg = _EC_ALG_BY_CURVE.get(str(jwk.get("crv")))
        allowed = frozenset({alg}) if alg else frozenset()
    elif kty == "OKP":
        allowed = _OKP_ALGS
    else:  # "oct" and anything unknown: never
        return frozenset()
    named = jwk.get("alg")
    if named is None:
        # RFC 7517 leaves "alg" optional; the common default for RSA is RS256 and nothing wider.
        return frozenset({"RS256"}) if kty == "RSA" else allowed
    return frozenset({named}) & allowed if isinstance(named, str) else frozenset()


def parse_key_set(body: bytes) -> dict[str | None, VerificationKey]:
    """The usable keys of a JWKS document, by kid. Raises ValueError for a body that is no key set."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the JWKS is not JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("the JWKS has no 'keys' list")
    keys: dict[str | None, VerificationKey] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict):
            continue
        algorithms = key_algorithms(entry)
        if not algorithms:
            continue
        kid = entry.get("kid")
        if kid is not None and not isinstance(kid, str):
            continue
        try:
            public = jwt.PyJWK(entry, algorithm=sorted(algorithms)[0]).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
            log.warning("JWKS key %r skipped: %s", kid, exc)
            continue
        if hasattr(public, "private_bytes"):
            continue  # a private key published by mistake is not ours to use
        keys[kid] = VerificationKey(kid, algorithms, public)
    return keys


def cache_seconds(cache_control: str | None, default: float, low: float, high: float) -> float:
    if cache_control:
        if _NO_STORE.search(cache_control):
            return low
        found = _MAX_AGE.search(cache_control)
        if found:
            return min(high, max(low, float(found.group(1))))
    return default


def http_fetch(url: str, timeout: float, session: Callable[[], aiohttp.ClientSession]) -> Fetch:
    """GET ``url`` with a total timeout, no redirects, and a bounded body."""

    async def fetch() -> tuple[bytes, str | None]:
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        async with session().get(url, timeout=client_timeout, allow_redirects=False) as response:
            if response.status != 200:
                raise ValueError(f"the JWKS URL answered {response.status}")
            body = await response.content.read(_MAX_BODY_BYTES + 1)
            if len(body) > _MAX_BODY_BYTES:
                raise ValueError("the JWKS is larger than 1 MiB")
            return body, response.headers.get("Cache-Control")

    return fetch


class JwksKeySource:
    def __init__(
        self,
        fetch: Fetch,
        *,
        default_ttl: float = 300.0,
        min_ttl: float = 30.0,
        max_ttl: float = 86400.0,
        kid_cooldown: float = 30.0,
        retry_after_failure: float = 5.0,
        negative_cache_size: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._default_ttl, self._min_ttl, self._max_ttl = default_ttl, min_ttl, max_ttl
        self._kid_cooldown = kid_cooldown
        self._retry_after_failure = retry_after_failure
        self._negative_size = negative_cache_size
        self._clock = clock
        self._keys: dict[str | None, VerificationKey] | None = None
        self._fresh_until = 0.0
        self._last_unknown_kid_fetch = float("-inf")
        self._unknown: OrderedDict[str | None, None] = OrderedDict()
        self._inflight: asyncio.Future[None] | None = None
        self.fetches = 0  # HTTP requests made (tests and metrics read it)
        self.failures = 0

    async def key(self, kid: str | None) -> VerificationKey | None:
        """The key named ``kid`` (a token without a kid: the set's only key), or None if the provider
        does not have it. Raises :class:`KeysUnavailable` only when no key set was ever fetched."""
        now = self._clock()
        if self._keys is None or now >= self._fresh_until:
            await self._refresh()
        if self._inflight is not None:  # a refresh under way may bring it: wait rather than refuse
            await asyncio.shield(self._inflight)
        found = self._lookup(kid)
        if found is not None or kid in self._unknown:
            return found
        if self._clock() - self._last_unknown_kid_fetch >= self._kid_cooldown:
            self._last_unknown_kid_fetch = self._clock()
            await self._refresh()
            found = self._lookup(kid)
        if found is None:
            self._remember_unknown(kid)
        return found

    def known(self, kid: str | None) -> bool:
        """Whether the current key set still holds ``kid`` (a verified token's key may be withdrawn)."""
        try:
            return self._lookup(kid) is not None
        except KeysUnavailable:
            return False

    def _lookup(self, kid: str | None) -> VerificationKey | None:
        if self._keys is None:
            raise KeysUnavailable("the identity provider's keys could not be fetched")
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    def _remember_unknown(self, kid: str | None) -> None:
        self._unknown[kid] = None
        self._unknown.move_to_end(kid)
        while len(self._unknown) > self._negative_size:
            self._unknown.popitem(last=False)

    async def _refresh(self) -> None:
        if self._inflight is None:
            self._inflight = asyncio.get_running_loop().create_future()
            try:
                await self._fetch_once()
            finally:
                self._inflight.set_result(None)
                self._inflight = None
        else:
            await asyncio.shield(self._inflight)

    async def _fetch_once(self) -> None:
        self.fetches += 1
        try:
            body, cache_control = await self._fetch()
            keys = parse_key_set(body)
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
            self.failures += 1
            log.warning("JWKS refresh failed (%s); %s", exc or type(exc).__name__, self._fallback())
            # Keep serving what we have, and do not hammer a failing provider on every request.
            self._fresh_until = self._clock() + self._retry_after_failure
            return
        self._keys = keys
        self._unknown.clear()
        self._fresh_until = self._clock() + cache_seconds(
            cache_control, self._default_ttl, self._min_ttl, self._max_ttl
        )

    def _fallback(self) -> str:
        if self._keys is None:
            return "no key set fetched yet: tokens of this provider are refused until one is"
        return f"serving the last good key set ({len(self._keys)} keys)"
