"""The ``synchub`` command: serve, migrate, token."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from aiohttp import web

from hub.auth import ROLES, issue_token
from hub.settings import DEFAULT_DATABASE_URL, Settings, dev_jwt_secret


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"SYNCHUB_{name}", default)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=_env("DATABASE_URL", DEFAULT_DATABASE_URL),
        help="SQLite file path or postgresql://… (env SYNCHUB_DATABASE_URL)",
    )
    parser.add_argument(
        "--jwt-secret",
        default=_env("JWT_SECRET"),
        help="HS256 secret for bearer tokens (env SYNCHUB_JWT_SECRET); "
        "default: a per-checkout secret in var/jwt-secret",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synchub", description="Real-time sync hub")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run a hub node")
    _add_common(serve)
    serve.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="env SYNCHUB_HOST")
    serve.add_argument("--port", type=int, default=int(_env("PORT", "8080") or 8080), help="env SYNCHUB_PORT")
    serve.add_argument("--redis-url", default=_env("REDIS_URL"), help="env SYNCHUB_REDIS_URL")
    serve.add_argument(
        "--redis-prefix",
        default=_env("REDIS_PREFIX", "synchub:"),
        help="prefix of every Redis key (env SYNCHUB_REDIS_PREFIX)",
    )
    serve.add_argument("--region", default=_env("REGION", "default"), help="env SYNCHUB_REGION")
    serve.add_argument("--node-id", default=_env("NODE_ID"), help="env SYNCHUB_NODE_ID")
    serve.add_argument(
        "--max-body-bytes",
        type=int,
        default=int(_env("MAX_BODY_BYTES", str(256 * 1024)) or 0),
        help="largest accepted request body (env SYNCHUB_MAX_BODY_BYTES)",
    )
    serve.add_argument(
        "--no-relay",
        action="store_true",
        default=_env("RELAY", "on") == "off",
        help="do not relay the outbox on this node (env SYNCHUB_RELAY=off)",
    )
    serve.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))

    migrate = commands.add_parser("migrate", help="apply schema migrations and exit")
    _add_common(migrate)

    token = commands.add_parser("token", help="print a signed bearer token for trying the API")
    token.add_argument("--jwt-secret", default=_env("JWT_SECRET"))
    token.add_argument("--sub", required=True, help="subject (user or service id)")
    token.add_argument(
        "--role",
        action="append",
        choices=sorted(ROLES),
        default=None,
        help="a role; repeat for several (default: customer)",
    )
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    return parser


MIN_SECRET_BYTES = 32  # RFC 7518 §3.2: an HS256 key at least as long as the hash


def _secret(args: argparse.Namespace) -> str:
    secret: str = args.jwt_secret or dev_jwt_secret()
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise SystemExit(f"synchub: --jwt-secret must be at least {MIN_SECRET_BYTES} bytes long")
    return secret


def _settings(args: argparse.Namespace) -> Settings:
    kwargs = {}
    if args.node_id:
        kwargs["node_id"] = args.node_id
    return Settings(
        host=args.host,
        port=args.port,
        database_url=args.database_url,
        redis_url=args.redis_url,
        redis_prefix=args.redis_prefix,
        region=args.region,
        jwt_secret=_secret(args),
        max_body_bytes=args.max_body_bytes,
        relay_enabled=not args.no_relay,
        **kwargs,
    )


def _serve(args: argparse.Namespace) -> int:
    from hub.app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    loop: asyncio.AbstractEventLoop | None = None
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency, but not on every platform
        pass
    settings = _settings(args)
    app = create_app(settings)
    print(
        f"synchub {settings.node_id} serving region {settings.region!r} on http://{settings.host}:{settings.port}"
        f" (store: {settings.database_url.split('@')[-1]})",
        flush=True,
    )
    web.run_app(app, host=settings.host, port=settings.port, print=None, loop=loop, shutdown_timeout=10)
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from storage.factory import open_store

    async def run() -> list[int]:
        store = open_store(args.database_url)
        await store.open()
        try:
            return await store.migrate()
        finally:
            await store.close()

    applied = asyncio.run(run())
    print(f"applied migrations: {applied}" if applied else "schema is up to date")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "migrate":
        return _migrate(args)
    if args.command == "token":
        print(issue_token(_secret(args), args.sub, args.role or ["customer"], args.ttl))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
