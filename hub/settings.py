"""Settings of one hub node: flags of ``synchub serve`` and their SYNCHUB_* environment variables."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from hub.ratelimit.limiter import RatePolicy

DEFAULT_DATA_DIR = Path("var")
DEFAULT_DATABASE_URL = str(DEFAULT_DATA_DIR / "synchub.sqlite3")


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str | None = None
    nats_url: str | None = None  # the broker on NATS JetStream (wins over redis_url for the broker)
    region: str = "default"
    node_id: str = field(default_factory=lambda: f"node-{secrets.token_hex(3)}")
    jwt_secret: str = ""
    # Identity (hub/oidc.py, docs/security.md): HS256 tokens signed with jwt_secret (the embedded
    # default), and/or an OpenID provider's RS*/PS*/ES*/EdDSA tokens verified against its JWKS.
    hs256_tokens: bool = True
    jwks_url: str | None = None
    oidc_issuer: str | None = None  # required "iss" when set
    oidc_audience: str | None = None  # required "aud" when set
    roles_claim: str = "roles"  # the claim holding the roles: a name, or a dotted path (realm_access.roles)
    token_leeway_seconds: int = 5  # clock skew allowed on exp, nbf and iat
    jwks_timeout_seconds: float = 5.0
    jwks_kid_cooldown_seconds: float = 30.0  # an unknown kid refetches the key set at most this often
    # A WebSocket whose token expired without an in-band refresh is closed with 4102 after this.
    token_refresh_grace_seconds: float = 25.0
    metrics_public: bool = True  # False: /metrics needs an admin or service token
    # Keys of the personal data encrypted at rest (hub/pii.py): "kid:base64key,…", the first current.
    # Empty: a key for this process only (synchub serve passes its own: --pii-keys or var/pii-keys).
    pii_keys: str = ""
    # Reverse proxies whose X-Forwarded-For is believed (hub/proxies.py): addresses or networks.
    trusted_proxies: tuple[str, ...] = ()
    max_body_bytes: int = 256 * 1024
    # The embedded store's group commit (storage/sqlite.py): while writes keep coming, one COMMIT (one
    # fsync) at most this often serves every write of that time; a lone write commits at once. Lower:
    # sooner acks under load, more CPU per write.
    sqlite_commit_spacing_ms: float = 10.0
    keepalive_timeout_seconds: float = 15.0  # an idle keep-alive connection is closed after this
    body_timeout_seconds: float = 30.0  # a JSON body must arrive within this (408 body_timeout)
    # Browser pages of these origins may open WebSocket and SSE connections ("*": any; the hub's own
    # origin and non-browser clients always may) and call the REST API (hub/browsers.py).
    allowed_origins: tuple[str, ...] = ()
    # A token in a URL (?access_token=) is refused unless this is set: browsers use tickets instead.
    tokens_in_urls: bool = False
    # API keys (hub/api_keys.py): a node re-reads a key it has seen after this long, so a revocation
    # made on another node takes effect here within it (on the revoking node, at once).
    api_key_cache_seconds: float = 2.0
    cors_origins: tuple[str, ...] = ()
    reservation_ttl_seconds: int = 900
    reservation_max_ttl_seconds: int = 24 * 3600
    expiry_interval: float = 1.0
    relay_enabled: bool = True
    idempotency_retention_seconds: int = 24 * 3600
    # How long a cart push's mutation id is remembered (a retry within it is answered "duplicate";
    # after it, merged again, which changes nothing).
    cart_mutation_retention_seconds: int = 7 * 24 * 3600
    # Personalization (hub/personalization.py): behaviour events are kept this long after they happened;
    # the sweep deleting the expired ones runs this often; a user hears of their recommendations at most
    # once per interval.
    event_retention_days: int = 90
    event_purge_interval_seconds: float = 60.0
    recommendations_interval_seconds: float = 1.0
    # real time
    stream_max_len: int = 100_000  # broker retention by length, per region stream
    stream_max_age_seconds: float | None = 24 * 3600  # and by age (Redis)
    redis_prefix: str = "synchub:"
    ws_heartbeat_seconds: float = 20.0  # ping interval; a peer silent for half of it more is dead
    ws_max_frame_bytes: int = 16 * 1024  # larger client frames get a frame_too_large error
    ws_max_subscriptions: int = 100
    send_buffer_messages: int = 2_000  # per connection: past this the client is too slow, and is cut off
    send_buffer_bytes: int = 4 * 1024 * 1024
    sse_heartbeat_seconds: float = 15.0
    sse_retry_ms: int = 2_000
    poll_max_timeout_seconds: float = 60.0
    poll_max_events: int = 1_000
    # media uploads (hub/media.py): a local directory unless an S3 bucket is configured
    media_dir: str = str(DEFAULT_DATA_DIR / "media")
    media_max_image_bytes: int = 10 * 1024 * 1024
    media_max_video_bytes: int = 50 * 1024 * 1024
    media_url_ttl_seconds: int = 3600  # how long a signed media URL works
    media_s3_endpoint: str | None = None  # e.g. https://s3.eu-west-3.amazonaws.com, http://127.0.0.1:9000
    media_s3_bucket: str | None = None
    media_s3_region: str = "us-east-1"
    media_s3_access_key: str | None = None
    media_s3_secret_key: str | None = None
    # Rate limits (hub/ratelimit/; docs/api.md, "Rate limits"): per user (a token's sub; tokens of the
    # exempt roles are not limited), else per client IP, by route class (hub/ratelimit/classes.py) —
    # in this process, or shared by every node through Redis when redis_url is set. None: no limit.
    # Off altogether (False: no request limits, message limits or connection caps) for benchmarks.
    rate_limits_enabled: bool = True
    # A shop page fires 10–30 reads: 100 at once is a few pages opened together; 50/s sustained is
    # more than a person clicks and lets an app poll a watch list.
    rate_limit_read: RatePolicy | None = field(default=RatePolicy(50, 1.0, 100))
    # Catalog and stock edits, uploads, votes, reports: by hand a few a second (imports and back
    # offices use service tokens, which are exempt).
    rate_limit_write: RatePolicy | None = field(default=RatePolicy(10, 1.0, 20))
    # Reservations hold stock other buyers want, so these bound hoarding: an order is a reservation
    # and a commit, 2/s is an order a second, 10 at once absorbs a client's retries.
    rate_limit_reservation: RatePolicy | None = field(default=RatePolicy(2, 1.0, 10))
    # New or edited review text: reviewing an order's items at once (5), then one a minute; the
    # store's posting_rate signal holds an author's 21st review within an hour for a moderator anyway.
    rate_limit_review_post: RatePolicy | None = field(default=RatePolicy(1, 60.0, 5))
    # Cart and review sync and edits: a device back online replays its queue (50 at once; one REST sync
    # carries up to 100 deltas), a person edits a few times a second.
    rate_limit_sync_push: RatePolicy | None = field(default=RatePolicy(20, 1.0, 50))
    rate_limit_fail_open: bool = True  # Redis failing: let requests through (False: 503)
    rate_limit_exempt_roles: tuple[str, ...] = ("service",)
    # Messages a WebSocket connection sends: 100 at once (subscribing to ws_max_subscriptions on
    # connect), then 20/s; a client that goes on past 3 bursts of refusals is closed (4104).
    ws_message_rate: RatePolicy | None = field(default=RatePolicy(20, 1.0, 100))
    # Real-time connections (WebSocket and SSE) open on this node: per user, and anonymous ones per
    # client IP (0: no cap). A phone, a laptop and a few tabs are well under 20; 200 anonymous
    # followers behind one address is an office or a carrier's NAT.
    max_connections_per_user: int = 20
    max_connections_per_ip: int = 200
    # Reservation caps (storage/reservation_caps.py; docs/security.md, API6), for every token without an
    # exempt role: the units of one product a reservation may take (its lines of that product summed),
    # and the units of one product a user may hold at once in pending reservations (0: no cap). A few
    # of an item per order, a couple of orders in flight; beyond that is a reseller's basket.
    max_reserve_per_line: int = 10
    max_active_reserved_per_user: int = 20
    reservation_cap_exempt_roles: tuple[str, ...] = ("admin", "service")
    # HTTPS and WSS (hub/tls.py): a PEM certificate chain and its private key, both or neither.
    tls_cert: str | None = None
    tls_key: str | None = None
    # Webhooks (hub/webhooks/; docs/api.md, "Webhooks"; docs/security.md): targets allowed despite the
    # SSRF checks (host names, addresses, networks); an attempt's total timeout; how long a node's lease
    # of an endpoint lasts (renewed every quarter of it; more than 4/3 of the timeout); retries (full
    # jitter, base × 2^n up to max, for a window, at most max_attempts, then a dead letter); an endpoint
    # is disabled after failing every attempt for disable_after, or after that many dead letters since its
    # last success (0: never); attempts at once per endpoint (one per key); delivered and dead messages
    # and the log are kept this long (replays reach that far back). webhook_delivery off: this node
    # serves the API but delivers nothing.
    webhook_delivery: bool = True
    webhook_allow_hosts: tuple[str, ...] = ()
    webhook_timeout_seconds: float = 10.0
    webhook_lease_seconds: float = 20.0
    webhook_retry_base_seconds: float = 5.0
    webhook_retry_max_seconds: float = 6 * 3600.0
    webhook_retry_window_seconds: float = 24 * 3600.0
    webhook_max_attempts: int = 20
    webhook_disable_after_seconds: float = 24 * 3600.0
    webhook_disable_after_dead_letters: int = 50
    webhook_max_in_flight: int = 16
    webhook_poll_seconds: float = 1.0
    webhook_log_retention_seconds: float = 7 * 24 * 3600.0

    @property
    def uses_postgres(self) -> bool:
        return self.database_url.startswith(("postgres://", "postgresql://"))

    @property
    def serves_tls(self) -> bool:
        return self.tls_cert is not None


def state_dir() -> Path:
    """Where ``synchub`` keeps the newcomer's JWT secret: ``$XDG_STATE_HOME/synchub``, else
    ``~/.local/state/synchub``. Per user, not per working directory, so that ``synchub token`` run
    anywhere signs tokens the hub (started anywhere by the same user) accepts."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "synchub"


def dev_jwt_secret_path() -> Path:
    return state_dir() / "jwt-secret"


def dev_jwt_secret(path: Path | None = None) -> tuple[str, bool]:
    """The secret ``synchub token`` and ``synchub serve`` share out of the box, and whether it was made
    now: read from ``path`` (default :func:`dev_jwt_secret_path`), made there (0600) on first use.

    Production sets --jwt-secret / SYNCHUB_JWT_SECRET; this file is only the newcomer's default.
    """
    path = path or dev_jwt_secret_path()
    try:
        return path.read_text().strip(), False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Written whole under another name, then linked into place: a process racing this one reads either
    # nothing (and links its own, which fails) or the complete secret, never a half-written file.
    secret = secrets.token_urlsafe(32)
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    try:
        os.link(draft, path)
    except FileExistsError:
        return path.read_text().strip(), False
    finally:
        draft.unlink()
    return secret, True
