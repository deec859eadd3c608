"""What verifying a bearer token costs, alone and beside the request it authenticates.

  verify    µs per verification in this process (hub.oidc.TokenVerifier): the hub's HS256 tokens and
            an OpenID provider's RS256 and ES256 tokens, each first seen (the signature is checked)
            and seen again (the verified-token cache answers)
  requests  ``GET /api/v1/warehouses`` on a hub process started with ``--jwks-url`` (a JWKS served by
            this process): no token; an HS256 token; an RS256 and an ES256 token sent with every
            request (verified once); and a new RS256 token with every request (verified every time,
            the worst case). Latency one request at a time (µs, p50, p99), then ``--connections``
            keep-alive connections for ``--seconds``: requests/s and the hub's CPU µs per request.

Run: ``python -m bench auth [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bench._hub import hub_process
from bench.http_client import HttpConnection, request_bytes
from bench.ratelimit import _throughput
from hub.auth import issue_token
from hub.jwks import JwksKeySource
from hub.oidc import TokenVerifier

PATH = "/api/v1/warehouses"
ISSUER = "https://id.bench.test"
AUDIENCE = "synchub"


class Provider:
    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        rsa_jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa.public_key(), as_dict=True)
        ec_jwk: dict[str, Any] = jwt.algorithms.ECAlgorithm.to_jwk(self.ec.public_key(), as_dict=True)
        self.body = {
            "keys": [
                {**rsa_jwk, "kid": "rsa", "use": "sig", "alg": "RS256"},
                {**ec_jwk, "kid": "ec", "use": "sig"},
            ]
        }

    def token(self, kind: str, sub: str = "alice") -> str:
        now = int(time.time())
        claims = {"sub": sub, "roles": ["customer"], "iss": ISSUER, "aud": AUDIENCE, "exp": now + 3600}
        key, alg = (self.rsa, "RS256") if kind == "rsa" else (self.ec, "ES256")
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": kind})


async def bench_verify(provider: Provider, calls: int) -> list[tuple[str, float, float]]:
    import orjson

    async def fetch() -> tuple[bytes, str | None]:
        return orjson.dumps(provider.body), "max-age=3600"

    secret = secrets.token_urlsafe(32)
    rows = []
    makers: list[tuple[str, Callable[[int], str]]] = [
        ("HS256 (the hub's own)", lambda i: issue_token(secret, f"user-{i}", ["customer"])),
        ("RS256 (provider, 2048-bit)", lambda i: provider.token("rsa", f"user-{i}")),
        ("ES256 (provider, P-256)", lambda i: provider.token("ec", f"user-{i}")),
    ]
    for name, make in makers:
        verifier = TokenVerifier(secret=secret, keys=JwksKeySource(fetch), issuer=ISSUER, audience=AUDIENCE)
        tokens = [make(i) for i in range(calls)]
        await verifier.verify(make(-1))  # the key set fetched
        started = time.perf_counter()
        for token in tokens:
            await verifier.verify(token)
        first = (time.perf_counter() - started) / calls * 1e6
        started = time.perf_counter()
        for token in tokens:
            await verifier.verify(token)
        again = (time.perf_counter() - started) / calls * 1e6
        rows.append((name, first, again))
    return rows


async def _latencies(host: str, port: int, headers: Iterator[dict[str, str]], count: int) -> list[float]:
    conn = await HttpConnection.open(host, port)
    try:
        took = []
        for i in range(count + 100):
            request = request_bytes("GET", PATH, f"{host}:{port}", next(headers))
            started = time.perf_counter()
            response = await conn.send(request)
            if i >= 100:  # (the first hundred warm up)
                took.append(time.perf_counter() - started)
            if response.status != 200:
                raise RuntimeError(f"{PATH} answered {response.status}: {response.body[:200]!r}")
        return took
    finally:
        conn.close()


async def bench_requests(
    provider: Provider, count: int, connections: int, seconds: float
) -> list[tuple[str, float, float, float, float, float]]:
    jwks = web.Application()

    async def certs(_: web.Request) -> web.Response:
        return web.json_response(provider.body, headers={"Cache-Control": "max-age=3600"})

    jwks.router.add_get("/certs", certs)
    runner = web.AppRunner(jwks, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    jwks_port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    secret = secrets.token_urlsafe(32)
    # tokens made ahead: the new-token case must not measure this process's signing
    fresh_count = count + 100 + int(seconds * 3000)
    fresh = [provider.token("rsa", f"user-{i}") for i in range(fresh_count)]

    def same(value: str | None) -> Iterator[dict[str, str]]:
        return itertools.repeat({} if value is None else {"Authorization": f"Bearer {value}"})

    def each_new() -> Iterator[dict[str, str]]:
        return ({"Authorization": f"Bearer {t}"} for t in itertools.cycle(fresh))

    cases: list[tuple[str, Callable[[], Iterator[dict[str, str]]]]] = [
        ("no token", lambda: same(None)),
        ("HS256, same token", lambda: same(issue_token(secret, "alice", ["customer"]))),
        ("RS256, same token", lambda: same(provider.token("rsa"))),
        ("ES256, same token", lambda: same(provider.token("ec"))),
        ("RS256, a new token each request", each_new),
    ]
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="synchub-bench-auth-") as folder:
            flags = (
                f"--jwks-url=http://127.0.0.1:{jwks_port}/certs",
                f"--issuer={ISSUER}",
                f"--audience={AUDIENCE}",
                "--hs256-tokens=on",
            )
            async with hub_process(str(Path(folder) / "hub.sqlite3"), secret, *flags) as (base, pid):
                host, port = base.removeprefix("http://").split(":")
                for name, headers in cases:
                    took = sorted(await _latencies(host, int(port), headers(), count))
                    rate, cpu_us = await _throughput(host, int(port), pid, connections, seconds, headers())
                    mean = statistics.fmean(took) * 1e6
                    p50 = took[len(took) // 2] * 1e6
                    p99 = took[min(len(took) - 1, int(len(took) * 0.99))] * 1e6
                    rows.append((name, mean, p50, p99, rate, cpu_us))
    finally:
        await runner.cleanup()
    return rows


async def run(args: argparse.Namespace) -> None:
    provider = Provider()
    verify_rows = await bench_verify(provider, 500 if args.quick else 5000)
    print("\n## Token verification (this process, hub.oidc.TokenVerifier)\n")
    print("| token | µs, first seen (signature checked) | µs, seen again (cache) |")
    print("|---|---|---|")
    for name, first, again in verify_rows:
        print(f"| {name} | {first:.1f} | {again:.2f} |")
    rows = await bench_requests(
        provider, 300 if args.quick else 3000, args.connections, 1.0 if args.quick else args.seconds
    )
    print(f"\n## GET {PATH} on a hub process with --jwks-url\n")
    print(
        f"| credential | mean µs | p50 µs | p99 µs | req/s, {args.connections} connections"
        " | hub CPU µs/request |"
    )
    print("|---|---|---|---|---|---|")
    for name, mean, p50, p99, rate, cpu_us in rows:
        print(f"| {name} | {mean:.0f} | {p50:.0f} | {p99:.0f} | {rate:,.0f} | {cpu_us:.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench auth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer verifications and requests (a smoke run)")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections for req/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long each req/s run lasts")
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.run(run(args))
    except ImportError:  # pragma: no cover
        asyncio.run(run(args))
    return 0


if __name__ == "__main__":  # python -m bench.auth is python -m bench auth
    import sys

    sys.exit(main(sys.argv[1:]))
