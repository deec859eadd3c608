"""Webhooks' records and the store's guarantees for them (the hub decides what is delivered and how:
``hub/webhooks/``; docs/api.md, "Webhooks").

An **endpoint** is a partner's URL, the event types it subscribed to (with filters), its signing secret
(a ciphertext the hub made: the store never sees the secret) and whether it is enabled. Its **positions**
say, per broker stream, up to where the events were taken into its queue. Its **queue**
(``webhook_deliveries``) holds one row per message: the exact body sent (the same bytes on every
attempt), the key messages are delivered in order within, and the row's state — ``pending`` (to be
attempted at ``next_attempt_at``), ``delivered``, or ``dead`` (a dead letter: every attempt of its
retry window failed). Every attempt is logged (``webhook_attempts``: when, HTTP status, latency,
error). A **lease** names the node delivering an endpoint's events of one region until it expires.

Guarantees:

* **Taking events in is atomic.** :meth:`WebhookStore.enqueue_webhook_messages` inserts the messages
  and moves the endpoint's positions in one transaction: after a crash the endpoint resumes from
  positions whose events are all in its queue, none skipped. A message id is inserted at most once per
  endpoint (a second insert of the same id is ignored), so taking the same events in twice — a crash
  between the read and the commit, two nodes whose leases overlapped — queues them once.
* **In order per key.** :meth:`WebhookStore.due_webhook_deliveries` returns, of each order key, only its
  oldest pending message (queue order), and only when it is due: a key's next message waits until the
  one before it is delivered or dead.
* **One node per endpoint and region.** :meth:`WebhookStore.claim_webhook_leases` gives a lease to a
  holder only if nobody else holds it unexpired (one conditional statement, evaluated by the database
  against the newest row), so two nodes never both believe they hold it — as long as a holder stops
  delivering when its lease runs out, which the hub's worker does.
* **Attempts are recorded with their outcome**, the queue row and the endpoint's failure streak moved
  in the same transaction; an endpoint whose streak passes the given limits is disabled there and
  then, and its owner's notice (``webhook.disabled`` on ``user:{owner}``) appended to the outbox in
  that transaction.
* **Replays** put messages still in the queue (delivered, dead or pending) back to pending with a fresh
  retry window, under their own message ids: a receiver sees a replay as a resend.

Times are epoch microseconds.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


class Outcome(enum.StrEnum):
    """What one attempt led to."""

    DELIVERED = "delivered"  # a 2xx
    RETRY = "retry"  # failed; attempted again at next_attempt_at
    DEAD = "dead"  # failed, and its retry window is over: a dead letter


@dataclass(frozen=True, slots=True)
class Subscription:
    """An event type (``stock.changed``) or a family of them (``reservation.*``), and filters: the event's
    field → the values it may have (every filter given must match)."""

    type: str
    filters: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    id: str
    owner: str  # the principal's sub: apikey.<family id>, or an admin's
    owner_is_admin: bool  # made by an admin (hears every user's private events it subscribed to)
    url: str
    description: str
    subscriptions: tuple[Subscription, ...]
    secret_ciphertext: str  # the hub's ciphertext of the signing secret (hub/pii.py's keyring)
    enabled: bool
    disabled_reason: str | None  # "owner" (by its owner), "failing", "owner_revoked"
    disabled_at: int | None
    failing_since: int | None  # the first failed attempt since the last success
    dead_letters: int  # dead letters since the last success
    version: int
    created_at: int
    updated_at: int
    # The secret a rotation replaced (its ciphertext) and until when deliveries are signed with it too,
    # so that a receiver can switch secrets without refusing a delivery; None: no such secret.
    previous_secret_ciphertext: str | None = None
    previous_secret_until: int | None = None


@dataclass(frozen=True, slots=True)
class StreamPosition:
    epoch: str
    offset: int


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A message to queue for an endpoint: its body and where it came from."""

    message_id: str
    region: str
    order_key: str
    event_type: str
    event_at: int  # when the event happened (its commit), for replays by time
    payload: bytes  # the JSON body, sent as is on every attempt
    stream: str = ""  # "" for a message of no stream (a ping)
    epoch: str = ""
    offset: int = 0


@dataclass(frozen=True, slots=True)
class Delivery:
    seq: int
    endpoint_id: str
    message_id: str
    region: str
    order_key: str
    event_type: str
    event_at: int
    payload: bytes
    stream: str
    epoch: str
    offset: int
    status: DeliveryStatus
    attempts: int
    next_attempt_at: int
    queued_at: int  # the start of its retry window (queued, or replayed)
    updated_at: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """One attempt of a delivery, as the worker reports it."""

    delivery_seq: int
    message_id: str
    event_type: str
    attempt: int  # 1 for the first
    at: int
    status_code: int | None  # the HTTP status, None if no response came (timeout, refused, reset)
    latency_us: int
    error: str | None
    outcome: Outcome
    next_attempt_at: int | None = None  # for RETRY


@dataclass(frozen=True, slots=True)
class Attempt:
    """A row of the delivery log."""

    seq: int
    endpoint_id: str
    delivery_seq: int
    message_id: str
    event_type: str
    attempt: int
    at: int
    status_code: int | None
    latency_us: int
    error: str | None
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class DisablePolicy:
    """When recorded failures disable an endpoint: a failure streak this long, or this many dead letters
    since its last success (0: never by that measure)."""

    failing_for_us: int
    dead_letters: int


@dataclass(frozen=True, slots=True)
class Recorded:
    """What recording attempts did to the endpoint."""

    disabled: bool  # disabled now, by this recording
    endpoint: WebhookEndpoint | None  # as it is after (None: deleted meanwhile)


@dataclass(frozen=True, slots=True)
class Replay:
    """Which queued messages a replay sends again: after a position of one stream, from a time on, or one
    dead letter (exactly one of the three)."""

    stream: str | None = None
    after: StreamPosition | None = None
    since_us: int | None = None
    message_id: str | None = None


class WebhookStore(Protocol):
    # -- endpoints ------------------------------------------------------------------------------
    async def create_webhook(
        self, endpoint: WebhookEndpoint, positions: Mapping[str, StreamPosition]
    ) -> WebhookEndpoint:
        """Insert the endpoint and its starting positions (per stream) in one transaction."""
        ...

    async def get_webhook(self, endpoint_id: str) -> WebhookEndpoint | None: ...
    async def list_webhooks(
        self, owner: str | None, limit: int, after: tuple[int, str] | None = None
    ) -> list[WebhookEndpoint]:
        """Newest first, keyset-paginated by (created_at, id); only ``owner``'s unless None."""
        ...

    async def update_webhook(
        self, endpoint: WebhookEndpoint, positions: Mapping[str, StreamPosition]
    ) -> WebhookEndpoint:
        """Write the endpoint as given (its secrets too: a rotation is an update) if its stored
        version is ``endpoint.version - 1`` (VersionMismatch otherwise; NotFound(resource="webhook") if
        gone), and the positions of streams it has none for yet. Enabling clears the failure streak."""
        ...

    async def delete_webhook(self, endpoint_id: str) -> bool:
        """The endpoint, its positions, queue, log and leases; False if there was none."""
        ...

    async def enabled_webhooks(self) -> list[WebhookEndpoint]: ...
    async def disable_webhook(self, endpoint_id: str, reason: str, now_us: int) -> bool:
        """Disable an enabled endpoint and append its owner's notice; False if it was not enabled."""
        ...

    # -- leases, positions, the queue -------------------------------------------------------------
    async def claim_webhook_leases(
        self, holder: str, region: str, endpoint_ids: Sequence[str], now_us: int, expires_at: int
    ) -> set[str]:
        """Take or renew the lease of each enabled endpoint whose lease is free, expired or
        ``holder``'s; return those held now."""
        ...

    async def release_webhook_leases(self, holder: str, region: str, endpoint_ids: Sequence[str]) -> None: ...
    async def webhook_leases(self, region: str, now_us: int) -> dict[str, str]:
        """The unexpired leases of ``region``: endpoint id → holder."""
        ...

    async def webhook_positions(self, endpoint_id: str) -> dict[str, StreamPosition]: ...
    async def enqueue_webhook_messages(
        self,
        endpoint_id: str,
        messages: Sequence[QueuedMessage],
        positions: Mapping[str, StreamPosition],
        now_us: int,
    ) -> int:
        """Queue the messages (a message id already queued for the endpoint is skipped) and set the
        positions, in one transaction; return how many were queued now."""
        ...

    async def due_webhook_deliveries(
        self, endpoint_id: str, region: str, now_us: int, limit: int, exclude: Sequence[int] = ()
    ) -> list[Delivery]:
        """Of each order key, its oldest pending message, if due, but those of ``exclude`` (queue seqs the
        caller is attempting already); in queue order."""
        ...

    async def next_webhook_attempt(self, endpoint_id: str, region: str) -> int | None:
        """When the earliest pending message of the endpoint in ``region`` is due (None: none pending)."""
        ...

    async def record_webhook_attempts(
        self, endpoint_id: str, results: Sequence[AttemptResult], policy: DisablePolicy, now_us: int
    ) -> Recorded:
        """Log the attempts, move their deliveries and the endpoint's failure streak; disable it (with
        its owner's notice) if the streak passes ``policy``."""
        ...

    async def replay_webhook(self, endpoint_id: str, replay: Replay, now_us: int) -> int:
        """Put the chosen messages back to pending, due now, with a fresh retry window; return how many.
        NotFound(resource="dead_letter") for a message id that is not one of its dead letters."""
        ...

    async def list_webhook_attempts(
        self, endpoint_id: str, limit: int, before: int | None = None, message_id: str | None = None
    ) -> list[Attempt]:
        """The delivery log, newest first, keyset-paginated by seq."""
        ...

    async def list_webhook_dead_letters(
        self, endpoint_id: str, limit: int, before: int | None = None
    ) -> list[Delivery]:
        """The dead letters, newest first, keyset-paginated by seq."""
        ...

    async def webhook_owner_usable(self, owner: str, now_us: int) -> bool:
        """For an API key's subject (apikey.<family id>): whether a key of that family still works
        (not revoked, expired or rotated out). True for any other owner."""
        ...

    async def purge_webhook_log(self, before_us: int) -> int:
        """Forget delivered and dead messages, and attempts, last changed before ``before_us``."""
        ...


__all__ = [
    "Attempt",
    "AttemptResult",
    "Delivery",
    "DeliveryStatus",
    "DisablePolicy",
    "Outcome",
    "QueuedMessage",
    "Recorded",
    "Replay",
    "StreamPosition",
    "Subscription",
    "WebhookEndpoint",
    "WebhookStore",
]
