"""The ``synchub serve`` flags (and the database and secret flags ``migrate`` and ``token`` share): each
takes its default from ``SYNCHUB_<NAME>`` in the environment, and its help says which. What the parsed
flags become is :mod:`hub.cli_settings`; the commands are :mod:`hub.cli`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import TypeVar

from hub.ratelimit.limiter import parse_optional_policy
from hub.settings import DEFAULT_DATABASE_URL, Settings, dev_jwt_secret_path


def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"SYNCHUB_{name}", default)


class HelpFormatter(argparse.HelpFormatter):
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


def add_database_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=env("DATABASE_URL", DEFAULT_DATABASE_URL),
        help="SQLite file path (relative to the working directory) or postgresql://…"
        " (env SYNCHUB_DATABASE_URL)",
    )


def add_jwt_secret(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--jwt-secret",
        default=env("JWT_SECRET"),
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


def add_serve(serve: argparse.ArgumentParser) -> None:
    add_database_url(serve)
    add_jwt_secret(serve)
    serve.add_argument("--host", default=env("HOST", "127.0.0.1"), help="env SYNCHUB_HOST")
    serve.add_argument("--port", type=int, default=int(env("PORT", "8080") or 8080), help="env SYNCHUB_PORT")
    serve.add_argument(
        "--redis-url",
        default=env("REDIS_URL"),
        help="redis://host:port/db, or redis+cluster://host:port (any node) for a Redis Cluster"
        " (env SYNCHUB_REDIS_URL)",
    )
    serve.add_argument(
        "--nats-url",
        default=env("NATS_URL"),
        help="nats://host:port: the broker on NATS JetStream instead of Redis Streams (docs/architecture.md"
        " says when); --redis-prefix names its streams too (env SYNCHUB_NATS_URL)",
    )
    serve.add_argument(
        "--redis-prefix",
        default=env("REDIS_PREFIX", "synchub:"),
        help="prefix of every Redis key (env SYNCHUB_REDIS_PREFIX)",
    )
    serve.add_argument("--region", default=env("REGION", "default"), help="env SYNCHUB_REGION")
    serve.add_argument(
        "--allowed-origins",
        default=env("ALLOWED_ORIGINS", ""),
        help="comma-separated origins whose pages may open WebSocket/SSE connections, * for any; the hub's"
        " own origin and non-browser clients always may (env SYNCHUB_ALLOWED_ORIGINS)",
    )
    serve.add_argument(
        "--tokens-in-urls",
        action="store_true",
        default=(env("TOKENS_IN_URLS", "") or "").lower() in ("1", "true", "yes", "on"),
        help="accept ?access_token= on real-time routes (off: browsers use tickets)"
        " (env SYNCHUB_TOKENS_IN_URLS)",
    )
    serve.add_argument(
        "--cors-origins",
        default=env("CORS_ORIGINS", ""),
        help="comma-separated origins whose pages may call the REST API, * for any"
        " (env SYNCHUB_CORS_ORIGINS)",
    )
    serve.add_argument("--node-id", default=env("NODE_ID"), help="env SYNCHUB_NODE_ID")
    serve.add_argument(
        "--max-body-bytes",
        type=int,
        default=int(env("MAX_BODY_BYTES", str(256 * 1024)) or 0),
        help="largest accepted request body (env SYNCHUB_MAX_BODY_BYTES)",
    )
    serve.add_argument(
        "--sqlite-commit-spacing-ms",
        type=_spacing_ms,
        default=_spacing_ms(env("SQLITE_COMMIT_SPACING_MS", str(Settings().sqlite_commit_spacing_ms)) or ""),
        help="the embedded (SQLite) store's group commit: while writes keep coming, one COMMIT at most this"
        " often (0-100 ms) serves all of them; a lone write commits at once. Lower answers writes sooner"
        " under load for more CPU per write (env SYNCHUB_SQLITE_COMMIT_SPACING_MS)",
    )
    serve.add_argument(
        "--no-relay",
        action="store_true",
        default=env("RELAY", "on") == "off",
        help="do not relay the outbox on this node (env SYNCHUB_RELAY=off)",
    )
    serve.add_argument("--log-level", default=env("LOG_LEVEL", "INFO"), help="env SYNCHUB_LOG_LEVEL")
    serve.add_argument(
        "--pii-keys",
        default=env("PII_KEYS"),
        help="keys of the personal data encrypted at rest, 'kid:base64key,…' (AES, 16-32 bytes): the first"
        " encrypts, the others still decrypt (env SYNCHUB_PII_KEYS); default: a key file in var/pii-keys",
    )
    serve.add_argument(
        "--event-retention-days",
        type=_retention_days,
        default=_retention_days(env("EVENT_RETENTION_DAYS", str(Settings().event_retention_days)) or ""),
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
        default=env("WORKERS", "1"),
        help="worker processes sharing the port (SO_REUSEPORT), each a node of the region; 'auto' = one "
        "per CPU core. More than 1 needs --redis-url and a PostgreSQL --database-url (env SYNCHUB_WORKERS)",
    )
    # Internal: how the supervisor starts worker K, and the pipe on which the worker says it is ready.
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)


# The identity flags (hub/oidc.py): each is the Settings field of its name, set by SYNCHUB_<NAME>.
IDENTITY_SETTINGS = (
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
        default=env("JWKS_URL"),
        help="an OpenID provider's JWKS URL: its RS/PS/ES/EdDSA tokens are accepted (env SYNCHUB_JWKS_URL)",
    )
    serve.add_argument(
        "--issuer",
        dest="oidc_issuer",
        default=env("OIDC_ISSUER"),
        help="the iss every provider token must carry (env SYNCHUB_OIDC_ISSUER)",
    )
    serve.add_argument(
        "--audience",
        dest="oidc_audience",
        default=env("OIDC_AUDIENCE"),
        help="the aud every provider token must carry (env SYNCHUB_OIDC_AUDIENCE)",
    )
    serve.add_argument(
        "--roles-claim",
        default=env("ROLES_CLAIM", defaults.roles_claim),
        help="the claim holding a token's roles, or a dotted path such as realm_access.roles"
        " (default: %(default)s; env SYNCHUB_ROLES_CLAIM)",
    )
    serve.add_argument(
        "--token-leeway-seconds",
        type=int,
        default=int(env("TOKEN_LEEWAY_SECONDS", str(defaults.token_leeway_seconds)) or 0),
        help="clock skew allowed on exp/nbf/iat (default: %(default)s; env SYNCHUB_TOKEN_LEEWAY_SECONDS)",
    )
    serve.add_argument(
        "--token-refresh-grace-seconds",
        type=float,
        default=float(env("TOKEN_REFRESH_GRACE_SECONDS", str(defaults.token_refresh_grace_seconds)) or 0),
        help="a WebSocket whose token expired is closed with 4102 this long after, unless refreshed in"
        " band (default: %(default)s; env SYNCHUB_TOKEN_REFRESH_GRACE_SECONDS)",
    )
    serve.add_argument(
        "--trusted-proxies",
        default=env("TRUSTED_PROXIES", ""),
        help="comma-separated addresses or networks of reverse proxies whose X-Forwarded-For names the"
        " client (for per-address limits and the log); none by default (env SYNCHUB_TRUSTED_PROXIES)",
    )
    serve.add_argument(
        "--private-metrics",
        action="store_true",
        default=(env("PRIVATE_METRICS", "") or "").lower() in ("1", "true", "yes", "on"),
        help="/metrics answers only admin and service tokens (env SYNCHUB_PRIVATE_METRICS)",
    )
    serve.add_argument(
        "--hs256-tokens",
        choices=("on", "off", "auto"),
        default=env("HS256_TOKENS", "auto"),
        help="accept the hub's own HS256 tokens; auto: yes, unless --jwks-url is set without an explicit"
        " --jwt-secret (env SYNCHUB_HS256_TOKENS)",
    )


def networks(text: str) -> tuple[str, ...]:
    from hub.proxies import parse_networks

    items = tuple(item.strip() for item in text.split(",") if item.strip())
    try:
        parse_networks(items)
    except ValueError as exc:
        raise SystemExit(f"synchub: --trusted-proxies: {exc}") from None
    return items


def hs256_tokens(args: argparse.Namespace) -> bool:
    if args.hs256_tokens == "auto":
        return not args.jwks_url or bool(args.jwt_secret)
    return bool(args.hs256_tokens == "on")


# The media flags: each is the Settings field of its name, and SYNCHUB_<NAME> sets it.
MEDIA_SETTINGS = (
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
        default=env("MEDIA_DIR", defaults.media_dir),
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
            flag, type=int, default=int(env(name, str(default)) or 0), help=f"{what} (env SYNCHUB_{name})"
        )
    for flag, name, what in (
        ("--media-s3-endpoint", "MEDIA_S3_ENDPOINT", "S3-compatible endpoint URL"),
        ("--media-s3-bucket", "MEDIA_S3_BUCKET", "bucket for media: set, it replaces --media-dir"),
        ("--media-s3-access-key", "MEDIA_S3_ACCESS_KEY", "S3 access key id"),
        ("--media-s3-secret-key", "MEDIA_S3_SECRET_KEY", "S3 secret key (prefer the env variable)"),
    ):
        serve.add_argument(flag, default=env(name), help=f"{what} (env SYNCHUB_{name})")
    serve.add_argument(
        "--media-s3-region",
        default=env("MEDIA_S3_REGION", defaults.media_s3_region),
        help="region the S3 requests are signed for (env SYNCHUB_MEDIA_S3_REGION)",
    )


# The rate limit flags (hub/ratelimit/): each is SYNCHUB_<DEST> in the environment.
ROUTE_CLASSES = ("read", "write", "reservation", "review_post", "sync_push")
LIMIT_FLAGS = (
    "rate_limits",
    *(f"rate_limit_{route_class}" for route_class in ROUTE_CLASSES),
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
        default=env("RATE_LIMITS", "on"),
        help="off: no request rate limits, WebSocket message limits or connection caps, for benchmarks"
        " (env SYNCHUB_RATE_LIMITS)",
    )
    for route_class in ROUTE_CLASSES:
        dest = f"rate_limit_{route_class}"
        serve.add_argument(
            f"--rate-limit-{route_class.replace('_', '-')}",
            type=_policy_arg,
            default=env(dest.upper(), str(getattr(defaults, dest) or "off")),
            metavar="RATE/PERIOD:BURST",
            help=f"{route_class} requests per user (else per IP), e.g. 50/s:100, 1/min:5, off"
            f" (default %(default)s; env SYNCHUB_{dest.upper()})",
        )
    serve.add_argument(
        "--rate-limit-failure",
        choices=("open", "closed"),
        default=env("RATE_LIMIT_FAILURE", "open"),
        help="when the shared (Redis) limiter fails: let requests through (open) or answer 503"
        " (env SYNCHUB_RATE_LIMIT_FAILURE)",
    )
    serve.add_argument(
        "--ws-message-rate",
        type=_policy_arg,
        default=env("WS_MESSAGE_RATE", str(defaults.ws_message_rate or "off")),
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
            default=int(env(dest.upper(), str(getattr(defaults, dest))) or 0),
            help=f"real-time connections on this node, {what}; 0: no cap (default %(default)s;"
            f" env SYNCHUB_{dest.upper()})",
        )


# The reservation caps and TLS flags: each is the Settings field of its name, SYNCHUB_<NAME> sets it.
CAP_SETTINGS = ("max_reserve_per_line", "max_active_reserved_per_user")
TLS_SETTINGS = ("tls_cert", "tls_key")


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
            default=_cap(env(dest.upper(), str(getattr(defaults, dest))) or "0"),
            help=f"{what}; 0: no cap; service and admin tokens are exempt (default %(default)s;"
            f" env SYNCHUB_{dest.upper()})",
        )
    serve.add_argument(
        "--tls-cert",
        default=env("TLS_CERT"),
        help="PEM certificate chain: serve HTTPS and WSS (TLS 1.2+, HSTS), with --tls-key"
        " (env SYNCHUB_TLS_CERT)",
    )
    serve.add_argument(
        "--tls-key", default=env("TLS_KEY"), help="the certificate's PEM private key (env SYNCHUB_TLS_KEY)"
    )


# The webhook flags (hub/webhooks/): each is the Settings field of its name, SYNCHUB_<NAME> sets it.
WEBHOOK_SETTINGS = ("webhook_allow_hosts", "webhook_timeout_seconds", "webhook_lease_seconds")


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
        default=env("WEBHOOK_ALLOW_HOSTS", ""),
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
            default=_seconds(env(dest.upper(), str(getattr(defaults, dest))) or ""),
            help=f"{what} (default %(default)s; env SYNCHUB_{dest.upper()})",
        )


N = TypeVar("N", int, float)


def _between(parse: Callable[[str], N], what: str, unit: str, low: N, high: N) -> Callable[[str], N]:
    """A flag's type: ``parse`` of the text, from ``low`` to ``high`` inclusive."""

    def check(value: str) -> N:
        try:
            number = parse(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, not {value!r}") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g} {unit}, not {value}")
        return number

    return check


_spacing_ms = _between(float, "milliseconds", "ms", 0.0, 100.0)
_retention_days = _between(int, "a number of days", "days", 1, 3650)
