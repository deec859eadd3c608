"""Every typed key stored on the application or a request, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from hub.api_keys import ApiKeys
    from hub.auth import Principal
    from hub.media_store import MediaStore
    from hub.metrics import Metrics
    from hub.oidc import TokenVerifier
    from hub.personalization import Personalization
    from hub.pii import Keyring
    from hub.ratelimit.connections import ConnectionCaps
    from hub.ratelimit.http import RateLimits
    from hub.realtime import Connections
    from hub.settings import Settings
    from hub.transports.writes import WriteBatcher
    from hub.webhooks.worker import WebhookWorker
    from storage.base import Store
    from sync.broker import Broker
    from sync.engine import SyncEngine
    from sync.relay import OutboxRelay

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
STORE: web.AppKey[Store] = web.AppKey("store")
BROKER: web.AppKey[Broker] = web.AppKey("broker")
RELAY: web.AppKey[OutboxRelay | None] = web.AppKey("relay")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
ENGINE: web.AppKey[SyncEngine] = web.AppKey("engine")
CONNECTIONS: web.AppKey[Connections] = web.AppKey("connections")
WRITES: web.AppKey[WriteBatcher] = web.AppKey("writes")
MEDIA: web.AppKey[MediaStore] = web.AppKey("media")
RATE_LIMITS: web.AppKey[RateLimits] = web.AppKey("rate_limits")  # only while rate limits are on
CONNECTION_CAPS: web.AppKey[ConnectionCaps] = web.AppKey("connection_caps")
API_KEYS: web.AppKey[ApiKeys] = web.AppKey("api_keys")
VERIFIER: web.AppKey[TokenVerifier] = web.AppKey("verifier")
PII_KEYS: web.AppKey[Keyring] = web.AppKey("pii_keys")
PERSONALIZATION: web.AppKey[Personalization] = web.AppKey("personalization")
WEBHOOKS: web.AppKey[WebhookWorker | None] = web.AppKey("webhooks")  # None: no deliveries on this node

PRINCIPAL: web.RequestKey[Principal | None] = web.RequestKey("principal")  # None when anonymous
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id")  # set by hub.audit.request_id
AUDITED: web.RequestKey[bool] = web.RequestKey("audited")  # the request's audit entry is written
# The scope by which hub/authz.py admitted an API key to this request's route (absent otherwise).
GRANTED_SCOPE: web.RequestKey[str] = web.RequestKey("granted_scope")
CLIENT_ADDRESS: web.RequestKey[str] = web.RequestKey("client_address")  # behind a trusted proxy only
