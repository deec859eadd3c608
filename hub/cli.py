"""The ``synchub`` command: serve, migrate, token, bench. Its flags are :mod:`hub.cli_flags`, the
settings they make :mod:`hub.cli_settings`.

``serve --workers N`` (N > 1) makes this process a supervisor (:mod:`hub.workers`) of N worker
processes, each running ``serve`` again with the hidden ``--worker-index``/``--ready-fd`` flags.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from hub.auth import ROLES, issue_token
from hub.cli_flags import (
    CAP_SETTINGS,
    IDENTITY_SETTINGS,
    LIMIT_FLAGS,
    MEDIA_SETTINGS,
    TLS_SETTINGS,
    WEBHOOK_SETTINGS,
    HelpFormatter,
    add_database_url,
    add_jwt_secret,
    add_serve,
    env,
    hs256_tokens,
)
from hub.cli_settings import pii_keys_of, secret_of, secret_source, settings_from, tls_context
from hub.settings import Settings

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 10.0  # seconds a node gives its open requests and connections when it stops
# Pending connections the kernel queues before accept() (capped by net.core.somaxconn). aiohttp's
# default of 128 reset 41 of 10,000 clients connecting at once in the bench; Node uses 511.
LISTEN_BACKLOG = 4096


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synchub", description="Real-time sync hub")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run a hub node", formatter_class=HelpFormatter)
    add_serve(serve)

    migrate = commands.add_parser(
        "migrate", help="apply schema migrations and exit", formatter_class=HelpFormatter
    )
    add_database_url(migrate)

    token = commands.add_parser(
        "token",
        help="print a signed bearer token for trying the API",
        description="Print an HS256 bearer token signed with the hub's secret (the same --jwt-secret, or"
        " the same default secret file, as the synchub serve it is meant for).",
        formatter_class=HelpFormatter,
    )
    add_jwt_secret(token)
    token.add_argument("--sub", required=True, help="subject (user or service id)")
    token.add_argument(
        "--role",
        action="append",
        choices=sorted(ROLES),
        default=None,
        help="a role; repeat for several (default: customer)",
    )
    token.add_argument("--ttl", type=int, default=3600, help="seconds until the token expires")

    migrate_redis = commands.add_parser(
        "migrate-redis",
        help="rename the broker's Redis keys of versions before hash tags (layout 1 to 2) and exit",
    )
    migrate_redis.add_argument("--redis-url", default=env("REDIS_URL"), required=not env("REDIS_URL"))
    migrate_redis.add_argument("--redis-prefix", default=env("REDIS_PREFIX", "synchub:"))
    migrate_redis.add_argument("--dry-run", action="store_true", help="say what would be renamed")

    # Listed here for --help; main() hands everything after "bench" to bench.__main__ unparsed.
    bench = commands.add_parser(
        "bench",
        help="run a benchmark, as python -m bench does: suite, reservations, fanout, crdt",
        add_help=False,
    )
    bench.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark and its options")

    # Also handed on unparsed: the client SDK's watch (clients/python), imported only when asked for.
    watch = commands.add_parser(
        "watch",
        help="follow a channel and print its events as JSON lines (the Python client SDK's watch)",
        add_help=False,
    )
    watch.add_argument("args", nargs=argparse.REMAINDER, help="CHANNEL [--url URL] [--token T] [--since P]")
    return parser


def _new_loop() -> asyncio.AbstractEventLoop | None:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency, but not on every platform
        return None


_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def _serve(args: argparse.Namespace) -> int:
    if args.worker_index is not None:
        return _serve_worker(args)
    if args.workers > 1:
        return _supervise(args)
    from hub.app import create_app

    logging.basicConfig(level=args.log_level.upper(), format=_LOG_FORMAT)
    loop = _new_loop()
    settings = settings_from(args)
    ssl_context = tls_context(settings)
    _check_port(settings)
    app = create_app(settings)
    app.on_startup.append(_freeze_startup_objects)
    scheme = "https" if ssl_context else "http"

    def listening(_message: str) -> None:  # called by run_app once the socket listens, not before
        print(
            f"synchub {settings.node_id} serving region {settings.region!r} on"
            f" {scheme}://{settings.host}:{settings.port} (store: {settings.database_url.split('@')[-1]};"
            f" {secret_source(args)})",
            flush=True,
        )

    try:
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            print=listening,
            loop=loop,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            backlog=LISTEN_BACKLOG,
            ssl_context=ssl_context,
        )
    except Exception as exc:
        return _startup_failed(exc, settings, args.log_level)
    return 0


def _check_port(settings: Settings) -> None:
    """A port already taken is said before the store is opened or migrated (run_app would find out
    only after its start-up, and :func:`_startup_failed` still catches a port taken meanwhile)."""
    from hub.startup import bind_error
    from hub.workers import check_port_free

    if settings.port == 0:
        return
    try:
        check_port_free(settings.host, settings.port)
    except OSError as exc:
        message = bind_error(exc, settings)
        if message is not None:
            raise SystemExit(f"synchub: {message}") from None


def _startup_failed(exc: Exception, settings: Settings, log_level: str) -> int:
    """A known start-up failure is one line on stderr and exit status 1 (with its traceback at debug
    level); anything else is raised as it is."""
    from hub.startup import explain

    message = explain(exc, settings)
    if message is None:
        raise exc
    if log_level.upper() == "DEBUG":
        log.error("start-up failed", exc_info=exc)
    print(f"synchub: {message}", file=sys.stderr, flush=True)
    return 1


# -- serve --workers N

# Every serve flag, by the SYNCHUB_* variable that sets it: how the supervisor hands its resolved
# settings to the workers (beside RELAY, JWT_SECRET, NODE_ID and WORKERS, set in _worker_env; the
# tests check that no flag is left out).
_FORWARDED = {
    "host": "HOST",
    "port": "PORT",
    "database_url": "DATABASE_URL",
    "redis_url": "REDIS_URL",
    "nats_url": "NATS_URL",
    "redis_prefix": "REDIS_PREFIX",
    "allowed_origins": "ALLOWED_ORIGINS",
    "cors_origins": "CORS_ORIGINS",
    "tokens_in_urls": "TOKENS_IN_URLS",
    "private_metrics": "PRIVATE_METRICS",
    "trusted_proxies": "TRUSTED_PROXIES",
    "region": "REGION",
    "max_body_bytes": "MAX_BODY_BYTES",
    "sqlite_commit_spacing_ms": "SQLITE_COMMIT_SPACING_MS",
    "log_level": "LOG_LEVEL",
    "pii_keys": "PII_KEYS",
    "event_retention_days": "EVENT_RETENTION_DAYS",
    **{name: name.upper() for name in MEDIA_SETTINGS},
    **{name: name.upper() for name in IDENTITY_SETTINGS},
    **{name: name.upper() for name in LIMIT_FLAGS},
    **{name: name.upper() for name in (*CAP_SETTINGS, *TLS_SETTINGS)},
    **{name: name.upper() for name in WEBHOOK_SETTINGS},
}


def _check_workers(args: argparse.Namespace) -> None:
    """Workers share state only through the store and the broker: both must be shared ones."""
    missing = []
    if not args.redis_url and not args.nats_url:
        missing.append("--redis-url or --nats-url (a shared broker)")
    if not Settings(database_url=args.database_url).uses_postgres:
        missing.append("a PostgreSQL --database-url (postgresql://…)")
    if missing:
        raise SystemExit(
            f"synchub: --workers {args.workers} needs a broker and a store shared by every worker process: "
            f"pass {' and '.join(missing)}. The embedded default (SQLite and the in-process broker) runs "
            "as a single process: use --workers 1."
        )
    if args.port == 0:
        raise SystemExit("synchub: --workers needs a fixed --port (with 0 each worker would pick its own)")


def _worker_env(args: argparse.Namespace, jwt_secret: str, node_id: str) -> dict[str, str]:
    env = dict(os.environ)
    for dest, name in _FORWARDED.items():
        value = getattr(args, dest)
        if value is None:
            env.pop(f"SYNCHUB_{name}", None)
        else:
            env[f"SYNCHUB_{name}"] = str(value)
    env["SYNCHUB_RELAY"] = "off" if args.no_relay else "on"
    env["SYNCHUB_JWT_SECRET"] = jwt_secret  # resolved once: workers need not race to make the secret file
    if not hs256_tokens(args):  # (a worker's secret is explicit, which would turn "auto" on)
        env["SYNCHUB_HS256_TOKENS"] = "off"
    env["SYNCHUB_NODE_ID"] = node_id
    env["SYNCHUB_WORKERS"] = "1"
    return env


def _supervise(args: argparse.Namespace) -> int:
    from hub.workers import Supervisor, WorkerSlot, check_port_free

    logging.basicConfig(level=args.log_level.upper(), format=_LOG_FORMAT)
    _check_workers(args)
    scheme = "https" if tls_context(Settings(tls_cert=args.tls_cert, tls_key=args.tls_key)) else "http"
    try:
        check_port_free(args.host, args.port)
    except OSError as exc:
        raise SystemExit(f"synchub: cannot listen on {args.host}:{args.port}: {exc}") from None
    secret = secret_of(args)
    pii_keys_of(args)  # checked, and the default key file made, once: before the workers read it
    # Each worker is a node of its own (its /healthz, its logs): <node-id>-w<k>, kept across restarts.
    base = args.node_id or Settings().node_id
    slots = [
        WorkerSlot(k, f"{base}-w{k}", _worker_env(args, secret, f"{base}-w{k}")) for k in range(args.workers)
    ]
    address = f"{scheme}://{args.host}:{args.port}"
    print(
        f"synchub supervisor (pid {os.getpid()}) starting {args.workers} workers, nodes {base}-w0…"
        f"{base}-w{args.workers - 1}, serving region {args.region!r} on {address}"
        f" (store: {args.database_url.split('@')[-1]})",
        flush=True,
    )
    supervisor = Supervisor(
        [sys.executable, "-m", "hub.cli", "serve"],
        slots,
        address=address,
        shutdown_timeout=SHUTDOWN_TIMEOUT + 5,
    )
    return supervisor.run()


async def _freeze_startup_objects(app: web.Application) -> None:
    """Once the app started (its cleanup contexts run first): what exists now lives as long as the
    process, so the cycle collector is told to stop scanning it at every full collection (gc.freeze)
    — about 55,000 objects of modules and the app, measured as a 25–40 ms pause per full collection
    under load, 5 ms after. Only the served process does it: a test process that starts many hubs
    would keep each one's cycles for good."""
    gc.collect()
    gc.freeze()
    collect_young_less_often()


# Objects the cycle collector lets accumulate before it scans the young ones (CPython's default: 700).
# Under load most young objects belong to requests in flight (a cart push's until its batch commits):
# at 700 the collector ran every few pushes, scanned objects still in use and promoted them into the
# older generations, to be scanned again there — at 2,500 pushes/s 15% of py-spy's samples of the hub,
# and by the thread's CPU clock (gc.callbacks) 0.45 s over a run whose step alone took 5.4 CPU-seconds.
# At 10,000: 0.13 s, start-up included, most objects freed by their reference count before any scan.
# The price: a young scan pauses the loop 4-9 ms instead of ~0.7 (bench/README.md, cart sync).
GC_YOUNG_THRESHOLD = 10_000


def collect_young_less_often() -> None:
    _young, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _serve_worker(args: argparse.Namespace) -> int:
    """One worker of a supervisor: a node like any other, but on a port shared with SO_REUSEPORT."""
    from hub.app import create_app

    settings = settings_from(args)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=_LOG_FORMAT.replace("%(name)s", f"[{settings.node_id.replace('%', '%%')}] %(name)s"),
    )
    loop = _new_loop() or asyncio.new_event_loop()
    ssl_context = tls_context(settings)
    app = create_app(settings)
    app.on_startup.append(_freeze_startup_objects)

    # The supervisor signals once; the kernel may too (parent death), or a service manager that signals
    # the whole group. The first signal starts the graceful shutdown, later ones must not cut it short
    # (aiohttp's own handlers would raise again in the middle of it).
    stopping = False

    def stop() -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise web.GracefulExit()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)

    reporting: set[asyncio.Task[None]] = set()

    def listening(_message: str) -> None:  # once the socket listens
        print(
            f"synchub {settings.node_id} (worker {args.worker_index}, pid {os.getpid()}) serving region "
            f"{settings.region!r} on {'https' if ssl_context else 'http'}://{settings.host}:{settings.port}",
            flush=True,
        )
        if args.ready_fd is not None:
            task = loop.create_task(_report_ready(app, args.ready_fd, args.worker_index))
            reporting.add(task)
            task.add_done_callback(reporting.discard)

    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        print=listening,
        loop=loop,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        reuse_port=True,
        backlog=LISTEN_BACKLOG,
        handle_signals=False,
        ssl_context=ssl_context,
    )
    return 0


async def _report_ready(app: web.Application, fd: int, index: int) -> None:
    """Once listening: wait until the store answers (what /readyz checks), then tell the supervisor."""
    from hub.keys import STORE
    from storage.errors import StoreError

    while True:
        try:
            await app[STORE].ping()
            break
        except StoreError as exc:
            log.warning("not ready yet, the store does not answer: %s", exc)
            await asyncio.sleep(0.5)
    with contextlib.suppress(OSError):  # the supervisor is gone: the kernel stops us anyway
        os.write(fd, f"{index} {os.getpid()}\n".encode())
    with contextlib.suppress(OSError):
        os.close(fd)


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


def _migrate_redis(args: argparse.Namespace) -> int:
    """``synchub migrate-redis``: sync.redis_keys.migrate, with a report; 1 if a stream was left alone."""
    from sync.redis_connect import open_client
    from sync.redis_keys import migrate

    async def run() -> tuple[list[str], list[str]]:
        client = open_client(args.redis_url)
        try:
            done = await migrate(client, args.redis_prefix, dry_run=args.dry_run)
        finally:
            await client.aclose()
        return done.migrated, done.conflicts

    migrated, conflicts = asyncio.run(run())
    verb = "would rename" if args.dry_run else "renamed"
    print(f"{verb} the keys of {len(migrated)} streams to the hash-tagged layout: {', '.join(migrated)}")
    if conflicts:
        print(
            f"left alone {len(conflicts)} streams that already have hash-tagged keys (delete one side):"
            f" {', '.join(conflicts)}"
        )
    return 1 if conflicts else 0


def _bench(argv: list[str]) -> int:
    """``synchub bench …``: ``python -m bench …`` under the installed command."""
    try:
        from bench.__main__ import main as bench_main
    except ImportError as exc:  # pragma: no cover - bench is part of the distribution
        raise SystemExit(f"synchub: the benchmarks are not installed: {exc}") from None
    return bench_main(argv, prog="synchub bench")


def _watch(argv: list[str]) -> int:
    """``synchub watch CHANNEL …``: ``synchub-client watch`` of the client SDK, imported here only, so the
    hub does not depend on it: installed (``pip install ./clients/python``) or from this checkout."""
    try:
        from synchub_client.cli import main as client_main
    except ImportError:
        checkout = Path(__file__).resolve().parent.parent / "clients" / "python"
        if not (checkout / "synchub_client").is_dir():
            raise SystemExit("synchub: watch needs the client SDK: pip install ./clients/python") from None
        sys.path.insert(0, str(checkout))
        from synchub_client.cli import main as client_main
    return client_main(["watch", *argv])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    if argv[:1] == ["watch"]:
        return _watch(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "migrate":
        return _migrate(args)
    if args.command == "migrate-redis":
        return _migrate_redis(args)
    if args.command == "token":
        print(issue_token(secret_of(args), args.sub, args.role or ["customer"], args.ttl))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
