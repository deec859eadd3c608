"""The ``synchub`` command: serve, migrate, token, bench.

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
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from hub.auth import ROLES, issue_token
from hub.pii import Keyring, dev_pii_keys
from hub.ratelimit.limiter import parse_optional_policy
from hub.settings import DEFAULT_DATA_DIR, DEFAULT_DATABASE_URL, Settings, dev_jwt_secret, dev_jwt_secret_path

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 10.0  # seconds a node gives its open requests and connections when it stops
# Pending connections the kernel queues before accept() (capped by net.core.somaxconn). aiohttp's
# default of 128 reset 41 of 10,000 clients connecting at once in the bench; Node uses 511.
LISTEN_BACKLOG = 4096


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"SYNCHUB_{name}", default)


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default (as argparse.ArgumentDefaultsHelpFormatter does), except
    where the help already says it, or there is none: no "(default: None)", and a secret taken from the
    environment is never printed (its help names its default in words)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "default" in text
            or action.default in (None, False, argparse.SUPPRESS, "")
            or "secret" in action.dest
            or action.dest.endswith("key")
            or not action.option_strings
        ):
            return text
        return text + " (default: %(default)s)"


def _add_database_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=_env("DATABASE_URL", DEFAULT_DATABASE_URL),
        help="SQLite file path (relative to the working directory) or postgresql://…"
        " (env SYNCHUB_DATABASE_URL)",
    )


def _add_jwt_secret(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--jwt-secret",
        default=_env("JWT_SECRET"),
        help="HS256 secret that signs and checks bearer tokens, at least 32 bytes (env SYNCHUB_JWT_SECRET);"
        f" default: a secret made on first use in {dev_jwt_secret_path()} ($XDG_STATE_HOME/synchub, else"
        " ~/.local/state/synchub: one per user, shared by synchub token and synchub serve wherever they run)",
    )


def _workers(value: str) -> int:
    if value.strip().lower() == "auto":
        return os.cpu_count() or 1
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of processes or 'auto', not {value!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {count}")
    return count


def _add_serve(serve: argparse.ArgumentParser) -> None:
    _add_database_url(serve)
    _add_jwt_secret(serve)
    serve.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="env SYNCHUB_HOST")
    serve.add_argument("--port", type=int, default=int(_env("PORT", "8080") or 8080), help="env SYNCHUB_PORT")
    serve.add_argument(
        "--redis-url",
        default=_env("REDIS_URL"),
        help="redis://host:port/db, or redis+cluster://host:port (any node) for a Redis Cluster"
        " (env SYNCHUB_REDIS_URL)",
    )
    serve.add_argument(
        "--nats-url",
        default=_env("NATS_URL"),
        help="nats://host:port: the broker on NATS JetStream instead of Redis Streams (docs/architecture.md"
        " says when); --redis-prefix names its streams too (env SYNCHUB_NATS_URL)",
    )
    serve.add_argument(
        "--redis-prefix",
        default=_env("REDIS_PREFIX", "synchub:"),
        help="prefix of every Redis key (env SYNCHUB_REDIS_PREFIX)",
    )
    serve.add_argument("--region", default=_env("REGION", "default"), help="env SYNCHUB_REGION")
    serve.add_argument(
        "--allowed-origins",
        default=_env("ALLOWED_ORIGINS", ""),
        help="comma-separated origins whose pages may open WebSocket/SSE connections, * for any; the hub's"
        " own origin and non-browser clients always may (env SYNCHUB_ALLOWED_ORIGINS)",
    )
    serve.add_argument(
        "--tokens-in-urls",
        action="store_true",
        default=(_env("TOKENS_IN_URLS", "") or "").lower() in ("1", "true", "yes", "on"),
        help="accept ?access_token= on real-time routes (off: browsers use tickets)"
        " (env SYNCHUB_TOKENS_IN_URLS)",
    )
    serve.add_argument(
        "--cors-origins",
        default=_env("CORS_ORIGINS", ""),
        help="comma-separated origins whose pages may call the REST API, * for any"
        " (env SYNCHUB_CORS_ORIGINS)",
    )
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
    serve.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"), help="env SYNCHUB_LOG_LEVEL")
    serve.add_argument(
        "--pii-keys",
        default=_env("PII_KEYS"),
        help="keys of the personal data encrypted at rest, 'kid:base64key,…' (AES, 16-32 bytes): the first"
        " encrypts, the others still decrypt (env SYNCHUB_PII_KEYS); default: a key file in var/pii-keys",
    )
    serve.add_argument(
        "--event-retention-days",
        type=_retention_days,
        default=_retention_days(_env("EVENT_RETENTION_DAYS", str(Settings().event_retention_days)) or ""),
        help="behaviour events (POST /api/v1/events) are deleted this many days after they happened, and a"
        " user's preferred attributes once no event fed them for as long (default %(default)s; env"
        " SYNCHUB_EVENT_RETENTION_DAYS)",
    )
    _add_media(serve)
    _add_limits(serve)
    _add_caps_and_tls(serve)
    _add_webhooks(serve)
    _add_identity(serve)
    serve.add_argument(
        "--workers",
        type=_workers,
        default=_env("WORKERS", "1"),
        help="worker processes sharing the port (SO_REUSEPORT), each a node of the region; 'auto' = one "
        "per CPU core. More than 1 needs --redis-url and a PostgreSQL --database-url (env SYNCHUB_WORKERS)",
    )
    # Internal: how the supervisor starts worker K, and the pipe on which the worker says it is ready.
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)


# The identity flags (hub/oidc.py): each is the Settings field of its name, set by SYNCHUB_<NAME>.
_IDENTITY_SETTINGS = (
    "jwks_url",
    "oidc_issuer",
    "oidc_audience",
    "roles_claim",
    "token_leeway_seconds",
    "token_refresh_grace_seconds",
)


def _add_identity(serve: argparse.ArgumentParser) -> None:
    defaults = Settings()
    serve.add_argument(
        "--jwks-url",
        default=_env("JWKS_URL"),
        help="an OpenID provider's JWKS URL: its RS/PS/ES/EdDSA tokens are accepted (env SYNCHUB_JWKS_URL)",
    )
    serve.add_argument(
        "--issuer",
        dest="oidc_issuer",
        default=_env("OIDC_ISSUER"),
        help="the iss every provider token must carry (env SYNCHUB_OIDC_ISSUER)",
    )
    serve.add_argument(
        "--audience",
        dest="oidc_audience",
        default=_env("OIDC_AUDIENCE"),
        help="the aud every provider token must carry (env SYNCHUB_OIDC_AUDIENCE)",
    )
    serve.add_argument(
        "--roles-claim",
        default=_env("ROLES_CLAIM", defaults.roles_claim),
        help="the claim holding a token's roles, or a dotted path such as realm_access.roles"
        " (default: %(default)s; env SYNCHUB_ROLES_CLAIM)",
    )
    serve.add_argument(
        "--token-leeway-seconds",
        type=int,
        default=int(_env("TOKEN_LEEWAY_SECONDS", str(defaults.token_leeway_seconds)) or 0),
        help="clock skew allowed on exp/nbf/iat (default: %(default)s; env SYNCHUB_TOKEN_LEEWAY_SECONDS)",
    )
    serve.add_argument(
        "--token-refresh-grace-seconds",
        type=float,
        default=float(_env("TOKEN_REFRESH_GRACE_SECONDS", str(defaults.token_refresh_grace_seconds)) or 0),
        help="a WebSocket whose token expired is closed with 4102 this long after, unless refreshed in"
        " band (default: %(default)s; env SYNCHUB_TOKEN_REFRESH_GRACE_SECONDS)",
    )
    serve.add_argument(
        "--trusted-proxies",
        default=_env("TRUSTED_PROXIES", ""),
        help="comma-separated addresses or networks of reverse proxies whose X-Forwarded-For names the"
        " client (for per-address limits and the log); none by default (env SYNCHUB_TRUSTED_PROXIES)",
    )
    serve.add_argument(
        "--private-metrics",
        action="store_true",
        default=(_env("PRIVATE_METRICS", "") or "").lower() in ("1", "true", "yes", "on"),
        help="/metrics answers only admin and service tokens (env SYNCHUB_PRIVATE_METRICS)",
    )
    serve.add_argument(
        "--hs256-tokens",
        choices=("on", "off", "auto"),
        default=_env("HS256_TOKENS", "auto"),
        help="accept the hub's own HS256 tokens; auto: yes, unless --jwks-url is set without an explicit"
        " --jwt-secret (env SYNCHUB_HS256_TOKENS)",
    )


def _networks(text: str) -> tuple[str, ...]:
    from hub.proxies import parse_networks

    items = tuple(item.strip() for item in text.split(",") if item.strip())
    try:
        parse_networks(items)
    except ValueError as exc:
        raise SystemExit(f"synchub: --trusted-proxies: {exc}") from None
    return items


def _hs256_tokens(args: argparse.Namespace) -> bool:
    if args.hs256_tokens == "auto":
        return not args.jwks_url or bool(args.jwt_secret)
    return bool(args.hs256_tokens == "on")


# The media flags: each is the Settings field of its name, and SYNCHUB_<NAME> sets it.
_MEDIA_SETTINGS = (
    "media_dir",
    "media_max_image_bytes",
    "media_max_video_bytes",
    "media_url_ttl_seconds",
    "media_s3_endpoint",
    "media_s3_bucket",
    "media_s3_access_key",
    "media_s3_secret_key",
    "media_s3_region",
)


def _add_media(serve: argparse.ArgumentParser) -> None:
    defaults = Settings()
    serve.add_argument(
        "--media-dir",
        default=_env("MEDIA_DIR", defaults.media_dir),
        help="directory of uploaded media when no S3 bucket is set (env SYNCHUB_MEDIA_DIR)",
    )
    for flag, name, default, what in (
        ("--media-max-image-bytes", "MEDIA_MAX_IMAGE_BYTES", defaults.media_max_image_bytes, "largest image"),
        ("--media-max-video-bytes", "MEDIA_MAX_VIDEO_BYTES", defaults.media_max_video_bytes, "largest video"),
        (
            "--media-url-ttl-seconds",
            "MEDIA_URL_TTL_SECONDS",
            defaults.media_url_ttl_seconds,
            "signed URL life",
        ),
    ):
        serve.add_argument(
            flag, type=int, default=int(_env(name, str(default)) or 0), help=f"{what} (env SYNCHUB_{name})"
        )
    for flag, name, what in (
        ("--media-s3-endpoint", "MEDIA_S3_ENDPOINT", "S3-compatible endpoint URL"),
        ("--media-s3-bucket", "MEDIA_S3_BUCKET", "bucket for media: set, it replaces --media-dir"),
        ("--media-s3-access-key", "MEDIA_S3_ACCESS_KEY", "S3 access key id"),
        ("--media-s3-secret-key", "MEDIA_S3_SECRET_KEY", "S3 secret key (prefer the env variable)"),
    ):
        serve.add_argument(flag, default=_env(name), help=f"{what} (env SYNCHUB_{name})")
    serve.add_argument(
        "--media-s3-region",
        default=_env("MEDIA_S3_REGION", defaults.media_s3_region),
        help="region the S3 requests are signed for (env SYNCHUB_MEDIA_S3_REGION)",
    )


# The rate limit flags (hub/ratelimit/): each is SYNCHUB_<DEST> in the environment.
_ROUTE_CLASSES = ("read", "write", "reservation", "review_post", "sync_push")
_LIMIT_FLAGS = (
    "rate_limits",
    *(f"rate_limit_{route_class}" for route_class in _ROUTE_CLASSES),
    "rate_limit_failure",
    "ws_message_rate",
    "max_connections_per_user",
    "max_connections_per_ip",
)


def _policy_arg(text: str) -> str:
    try:
        parse_optional_policy(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _add_limits(serve: argparse.ArgumentParser) -> None:
    defaults = Settings()
    serve.add_argument(
        "--rate-limits",
        choices=("on", "off"),
        default=_env("RATE_LIMITS", "on"),
        help="off: no request rate limits, WebSocket message limits or connection caps, for benchmarks"
        " (env SYNCHUB_RATE_LIMITS)",
    )
    for route_class in _ROUTE_CLASSES:
        dest = f"rate_limit_{route_class}"
        serve.add_argument(
            f"--rate-limit-{route_class.replace('_', '-')}",
            type=_policy_arg,
            default=_env(dest.upper(), str(getattr(defaults, dest) or "off")),
            metavar="RATE/PERIOD:BURST",
            help=f"{route_class} requests per user (else per IP), e.g. 50/s:100, 1/min:5, off"
            f" (default %(default)s; env SYNCHUB_{dest.upper()})",
        )
    serve.add_argument(
        "--rate-limit-failure",
        choices=("open", "closed"),
        default=_env("RATE_LIMIT_FAILURE", "open"),
        help="when the shared (Redis) limiter fails: let requests through (open) or answer 503"
        " (env SYNCHUB_RATE_LIMIT_FAILURE)",
    )
    serve.add_argument(
        "--ws-message-rate",
        type=_policy_arg,
        default=_env("WS_MESSAGE_RATE", str(defaults.ws_message_rate or "off")),
        metavar="RATE/PERIOD:BURST",
        help="messages a WebSocket connection may send (default %(default)s; env SYNCHUB_WS_MESSAGE_RATE)",
    )
    for flag, dest, what in (
        ("--max-connections-per-user", "max_connections_per_user", "per user"),
        ("--max-connections-per-ip", "max_connections_per_ip", "anonymous, per client IP"),
    ):
        serve.add_argument(
            flag,
            type=int,
            default=int(_env(dest.upper(), str(getattr(defaults, dest))) or 0),
            help=f"real-time connections on this node, {what}; 0: no cap (default %(default)s;"
            f" env SYNCHUB_{dest.upper()})",
        )


# The reservation caps and TLS flags: each is the Settings field of its name, SYNCHUB_<NAME> sets it.
_CAP_SETTINGS = ("max_reserve_per_line", "max_active_reserved_per_user")
_TLS_SETTINGS = ("tls_cert", "tls_key")


def _cap(value: str) -> int:
    try:
        cap = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of units (0: no cap), not {value!r}") from None
    if cap < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (no cap) or more, not {cap}")
    return cap


def _add_caps_and_tls(serve: argparse.ArgumentParser) -> None:
    defaults = Settings()
    for flag, dest, what in (
        ("--max-reserve-per-line", "max_reserve_per_line", "units of one product one reservation may take"),
        (
            "--max-active-reserved-per-user",
            "max_active_reserved_per_user",
            "units of one product one user may hold at once in pending reservations",
        ),
    ):
        serve.add_argument(
            flag,
            type=_cap,
            default=_cap(_env(dest.upper(), str(getattr(defaults, dest))) or "0"),
            help=f"{what}; 0: no cap; service and admin tokens are exempt (default %(default)s;"
            f" env SYNCHUB_{dest.upper()})",
        )
    serve.add_argument(
        "--tls-cert",
        default=_env("TLS_CERT"),
        help="PEM certificate chain: serve HTTPS and WSS (TLS 1.2+, HSTS), with --tls-key"
        " (env SYNCHUB_TLS_CERT)",
    )
    serve.add_argument(
        "--tls-key", default=_env("TLS_KEY"), help="the certificate's PEM private key (env SYNCHUB_TLS_KEY)"
    )


# The webhook flags (hub/webhooks/): each is the Settings field of its name, SYNCHUB_<NAME> sets it.
_WEBHOOK_SETTINGS = ("webhook_allow_hosts", "webhook_timeout_seconds", "webhook_lease_seconds")


def _allow_hosts(text: str) -> str:
    from hub.webhooks.targets import AllowList

    try:
        AllowList.parse(text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {value!r}") from None
    if not 0 < seconds <= 3600:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 3600 seconds, not {value}")
    return seconds


def _add_webhooks(serve: argparse.ArgumentParser) -> None:
    defaults = Settings()
    serve.add_argument(
        "--webhook-allow-hosts",
        type=_allow_hosts,
        default=_env("WEBHOOK_ALLOW_HOSTS", ""),
        help="comma-separated host names, addresses and networks webhooks may be sent to although they are"
        " loopback, private, link-local or otherwise not public (the SSRF checks); none by default"
        " (env SYNCHUB_WEBHOOK_ALLOW_HOSTS)",
    )
    for flag, dest, what in (
        ("--webhook-timeout-seconds", "webhook_timeout_seconds", "a webhook attempt's total timeout"),
        (
            "--webhook-lease-seconds",
            "webhook_lease_seconds",
            "how long a node's lease of a webhook endpoint lasts (renewed every quarter of it): another node"
            " takes over a dead node's endpoints within it; more than 4/3 of the timeout",
        ),
    ):
        serve.add_argument(
            flag,
            type=_seconds,
            default=_seconds(_env(dest.upper(), str(getattr(defaults, dest))) or ""),
            help=f"{what} (default %(default)s; env SYNCHUB_{dest.upper()})",
        )


def _webhook_settings(args: argparse.Namespace) -> dict[str, Any]:
    if args.webhook_lease_seconds * 0.75 <= args.webhook_timeout_seconds:
        raise SystemExit("synchub: --webhook-lease-seconds must exceed 4/3 of --webhook-timeout-seconds")
    return {
        "webhook_allow_hosts": tuple(h.strip() for h in args.webhook_allow_hosts.split(",") if h.strip()),
        "webhook_timeout_seconds": args.webhook_timeout_seconds,
        "webhook_lease_seconds": args.webhook_lease_seconds,
    }


def _tls(settings: Settings) -> ssl.SSLContext | None:
    """The node's TLS context; a one-line exit when its files cannot serve (hub/tls.py)."""
    from hub.tls import TlsConfigError, context_for

    try:
        return context_for(settings)
    except TlsConfigError as exc:
        raise SystemExit(f"synchub: {exc}") from None


def _limit_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "rate_limits_enabled": args.rate_limits == "on",
        **{
            f"rate_limit_{route_class}": parse_optional_policy(getattr(args, f"rate_limit_{route_class}"))
            for route_class in _ROUTE_CLASSES
        },
        "rate_limit_fail_open": args.rate_limit_failure == "open",
        "ws_message_rate": parse_optional_policy(args.ws_message_rate),
        "max_connections_per_user": args.max_connections_per_user,
        "max_connections_per_ip": args.max_connections_per_ip,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synchub", description="Real-time sync hub")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run a hub node", formatter_class=_HelpFormatter)
    _add_serve(serve)

    migrate = commands.add_parser(
        "migrate", help="apply schema migrations and exit", formatter_class=_HelpFormatter
    )
    _add_database_url(migrate)

    token = commands.add_parser(
        "token",
        help="print a signed bearer token for trying the API",
        description="Print an HS256 bearer token signed with the hub's secret (the same --jwt-secret, or"
        " the same default secret file, as the synchub serve it is meant for).",
        formatter_class=_HelpFormatter,
    )
    _add_jwt_secret(token)
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
    migrate_redis.add_argument("--redis-url", default=_env("REDIS_URL"), required=not _env("REDIS_URL"))
    migrate_redis.add_argument("--redis-prefix", default=_env("REDIS_PREFIX", "synchub:"))
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


MIN_SECRET_BYTES = 32  # RFC 7518 §3.2: an HS256 key at least as long as the hash


def _secret(args: argparse.Namespace) -> str:
    secret: str
    if args.jwt_secret:
        secret = args.jwt_secret
    else:
        secret, made = dev_jwt_secret()
        if made:
            print(
                f"synchub: made a new JWT secret in {dev_jwt_secret_path()} (synchub token and synchub serve"
                " share it; in production pass --jwt-secret)",
                file=sys.stderr,
                flush=True,
            )
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise SystemExit(f"synchub: --jwt-secret must be at least {MIN_SECRET_BYTES} bytes long")
    return secret


def _secret_source(args: argparse.Namespace) -> str:
    """Where the node's HS256 secret comes from, for its start-up banner."""
    if not _hs256_tokens(args):
        return "HS256 tokens off"
    if args.jwt_secret:
        return "JWT secret from --jwt-secret"
    return f"JWT secret in {dev_jwt_secret_path()}"


def _pii_keys(args: argparse.Namespace) -> str:
    spec: str = args.pii_keys or dev_pii_keys(DEFAULT_DATA_DIR)
    try:
        Keyring.parse(spec)
    except ValueError as exc:
        raise SystemExit(f"synchub: --pii-keys: {exc}") from None
    return spec


def _origins(text: str) -> tuple[str, ...]:
    return tuple(o.strip().rstrip("/") for o in text.split(",") if o.strip())


def _retention_days(value: str) -> int:
    try:
        days = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of days, not {value!r}") from None
    if not 1 <= days <= 3650:
        raise argparse.ArgumentTypeError(f"must be between 1 and 3650 days, not {days}")
    return days


def _settings(args: argparse.Namespace) -> Settings:
    kwargs = {}
    if args.node_id:
        kwargs["node_id"] = args.node_id
    return Settings(
        host=args.host,
        port=args.port,
        database_url=args.database_url,
        redis_url=args.redis_url,
        nats_url=args.nats_url,
        redis_prefix=args.redis_prefix,
        region=args.region,
        allowed_origins=_origins(args.allowed_origins),
        cors_origins=_origins(args.cors_origins),
        tokens_in_urls=args.tokens_in_urls,
        jwt_secret=_secret(args),
        pii_keys=_pii_keys(args),
        hs256_tokens=_hs256_tokens(args),
        metrics_public=not args.private_metrics,
        trusted_proxies=_networks(args.trusted_proxies),
        max_body_bytes=args.max_body_bytes,
        relay_enabled=not args.no_relay,
        event_retention_days=args.event_retention_days,
        **{name: getattr(args, name) for name in _MEDIA_SETTINGS},
        **{name: getattr(args, name) for name in _IDENTITY_SETTINGS},
        **_limit_settings(args),
        **{name: getattr(args, name) for name in (*_CAP_SETTINGS, *_TLS_SETTINGS)},
        **_webhook_settings(args),
        **kwargs,
    )


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
    settings = _settings(args)
    ssl_context = _tls(settings)
    _check_port(settings)
    app = create_app(settings)
    app.on_startup.append(_freeze_startup_objects)
    scheme = "https" if ssl_context else "http"

    def listening(_message: str) -> None:  # called by run_app once the socket listens, not before
        print(
            f"synchub {settings.node_id} serving region {settings.region!r} on"
            f" {scheme}://{settings.host}:{settings.port} (store: {settings.database_url.split('@')[-1]};"
            f" {_secret_source(args)})",
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
    "log_level": "LOG_LEVEL",
    "pii_keys": "PII_KEYS",
    "event_retention_days": "EVENT_RETENTION_DAYS",
    **{name: name.upper() for name in _MEDIA_SETTINGS},
    **{name: name.upper() for name in _IDENTITY_SETTINGS},
    **{name: name.upper() for name in _LIMIT_FLAGS},
    **{name: name.upper() for name in (*_CAP_SETTINGS, *_TLS_SETTINGS)},
    **{name: name.upper() for name in _WEBHOOK_SETTINGS},
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
    if not _hs256_tokens(args):  # (a worker's secret is explicit, which would turn "auto" on)
        env["SYNCHUB_HS256_TOKENS"] = "off"
    env["SYNCHUB_NODE_ID"] = node_id
    env["SYNCHUB_WORKERS"] = "1"
    return env


def _supervise(args: argparse.Namespace) -> int:
    from hub.workers import Supervisor, WorkerSlot, check_port_free

    logging.basicConfig(level=args.log_level.upper(), format=_LOG_FORMAT)
    _check_workers(args)
    scheme = "https" if _tls(Settings(tls_cert=args.tls_cert, tls_key=args.tls_key)) else "http"
    try:
        check_port_free(args.host, args.port)
    except OSError as exc:
        raise SystemExit(f"synchub: cannot listen on {args.host}:{args.port}: {exc}") from None
    secret = _secret(args)
    _pii_keys(args)  # checked, and the default key file made, once: before the workers read it
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


def _serve_worker(args: argparse.Namespace) -> int:
    """One worker of a supervisor: a node like any other, but on a port shared with SO_REUSEPORT."""
    from hub.app import create_app

    settings = _settings(args)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=_LOG_FORMAT.replace("%(name)s", f"[{settings.node_id.replace('%', '%%')}] %(name)s"),
    )
    loop = _new_loop() or asyncio.new_event_loop()
    ssl_context = _tls(settings)
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
        print(issue_token(_secret(args), args.sub, args.role or ["customer"], args.ttl))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
