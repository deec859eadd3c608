"""The parsed ``synchub serve`` flags (:mod:`hub.cli_flags`) made into the node's :class:`Settings`,
with a one-line exit for a value that cannot serve (a short secret, unreadable keys, bad TLS files)."""

from __future__ import annotations

import argparse
import ssl
import sys
from typing import Any

from hub.cli_flags import (
    CAP_SETTINGS,
    IDENTITY_SETTINGS,
    MEDIA_SETTINGS,
    ROUTE_CLASSES,
    TLS_SETTINGS,
    hs256_tokens,
    networks,
)
from hub.pii import Keyring, dev_pii_keys
from hub.ratelimit.limiter import parse_optional_policy
from hub.settings import DEFAULT_DATA_DIR, Settings, dev_jwt_secret, dev_jwt_secret_path


def _webhook_settings(args: argparse.Namespace) -> dict[str, Any]:
    if args.webhook_lease_seconds * 0.75 <= args.webhook_timeout_seconds:
        raise SystemExit("synchub: --webhook-lease-seconds must exceed 4/3 of --webhook-timeout-seconds")
    return {
        "webhook_allow_hosts": tuple(h.strip() for h in args.webhook_allow_hosts.split(",") if h.strip()),
        "webhook_timeout_seconds": args.webhook_timeout_seconds,
        "webhook_lease_seconds": args.webhook_lease_seconds,
    }


def tls_context(settings: Settings) -> ssl.SSLContext | None:
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
            for route_class in ROUTE_CLASSES
        },
        "rate_limit_fail_open": args.rate_limit_failure == "open",
        "ws_message_rate": parse_optional_policy(args.ws_message_rate),
        "max_connections_per_user": args.max_connections_per_user,
        "max_connections_per_ip": args.max_connections_per_ip,
    }


MIN_SECRET_BYTES = 32  # RFC 7518 §3.2: an HS256 key at least as long as the hash


def secret_of(args: argparse.Namespace) -> str:
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


def secret_source(args: argparse.Namespace) -> str:
    """Where the node's HS256 secret comes from, for its start-up banner."""
    if not hs256_tokens(args):
        return "HS256 tokens off"
    if args.jwt_secret:
        return "JWT secret from --jwt-secret"
    return f"JWT secret in {dev_jwt_secret_path()}"


def pii_keys_of(args: argparse.Namespace) -> str:
    spec: str = args.pii_keys or dev_pii_keys(DEFAULT_DATA_DIR)
    try:
        Keyring.parse(spec)
    except ValueError as exc:
        raise SystemExit(f"synchub: --pii-keys: {exc}") from None
    return spec


def origins(text: str) -> tuple[str, ...]:
    return tuple(o.strip().rstrip("/") for o in text.split(",") if o.strip())


def settings_from(args: argparse.Namespace) -> Settings:
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
        allowed_origins=origins(args.allowed_origins),
        cors_origins=origins(args.cors_origins),
        tokens_in_urls=args.tokens_in_urls,
        jwt_secret=secret_of(args),
        pii_keys=pii_keys_of(args),
        hs256_tokens=hs256_tokens(args),
        metrics_public=not args.private_metrics,
        trusted_proxies=networks(args.trusted_proxies),
        max_body_bytes=args.max_body_bytes,
        sqlite_commit_spacing_ms=args.sqlite_commit_spacing_ms,
        relay_enabled=not args.no_relay,
        event_retention_days=args.event_retention_days,
        **{name: getattr(args, name) for name in MEDIA_SETTINGS},
        **{name: getattr(args, name) for name in IDENTITY_SETTINGS},
        **_limit_settings(args),
        **{name: getattr(args, name) for name in (*CAP_SETTINGS, *TLS_SETTINGS)},
        **_webhook_settings(args),
        **kwargs,
    )
