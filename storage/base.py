"""The Store seam: every durable operation synchub performs.

Implementations: :mod:`storage.sqlite` (embedded default) and :mod:`storage.postgres`. Both pass the
one contract suite in ``tests/test_store_contract.py``.

Guarantees every implementation gives:

* **Atomic stock.** Stock is changed only by conditional updates inside the database
  (``reserved = reserved + q WHERE on_hand - reserved >= q``); available stock never goes below zero,
  whatever the concurrency, and nothing reads-modifies-writes stock in Python.
* **All or nothing.** A reservation reserves every line or none.
* **Idempotency.** ``reserve`` with an idempotency key already used by the same owner returns the
  stored outcome (success *or* failure) and changes nothing; with a different request hash it raises
  :class:`~storage.errors.IdempotencyMismatch`. Concurrent requests with one key produce one outcome.
* **Transactional outbox.** Every change others must hear of appends an
  :class:`~storage.models.OutboxEntry` (its stream, key, version and encoded payload) in the same
  transaction: a stock change its :class:`~storage.models.InventoryDelta` (key product/warehouse,
  version the stock row's, which grows by exactly one per change), a cart push its merged delta (key
  ``cart:{id}``, the cart's version), a reservation's or cart's status change a ``user:{sub}`` event
  (the user's event counter). ``read_outbox`` returns entries in ``seq`` order, and for one key ``seq``
  order is commit order (a row lock — the stock row, the cart row, the user's counter — orders the
  writers).
  Entries stay until ``ack_outbox``: a crash between commit and publish loses nothing.
* **Committed entries are announced.** A listener given to ``watch_outbox`` is told of this process's
  outbox entries as their transaction commits, on the event loop, before the call that wrote them
  returns. Where this process is the database's only writer (the embedded SQLite store), commit order
  is outbox order and the entries are handed over: ``outbox_committed(entries)``, the transaction's
  entries in append order, in commit order across transactions. Where several processes write
  (PostgreSQL), concurrent commits can only be put in order by reading the outbox, so the listener is
  told ``outbox_changed()`` — read it. Never for a transaction that rolled back; a commit whose outcome
  was lost (the connection dropped at COMMIT) is not announced, and other processes' entries never are:
  readers must still read the outbox.
* **Expiry survives restarts.** Pending reservations past ``expires_at`` are released by
  ``expire_reservations`` whenever it runs, including the first run after a restart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from storage.api_keys import ApiKey, NewSecret
from storage.behaviour import (
    Consent,
    ConsentChange,
    ConsentStatus,
    Ingested,
    NewEvent,
    Notified,
    Purged,
    Signals,
)
from storage.carts import CartDocument, CartOwner, CartPush, CartRules, CheckoutResult, PushResult
from storage.models import (
    IdempotentResult,
    InventoryDelta,
    NewProduct,
    OutboxEntry,
    Product,
    ProductPage,
    ProductQuery,
    Reservation,
    ReservationLineRequest,
    StockLevel,
    Warehouse,
)
from storage.parts import PartsStore
from storage.privacy import AuditEntry, AuditPage, AuditQuery, Erasure, UserData, UserProfile
from storage.reservation_caps import ReservationCaps
from storage.reviews import (
    RatingAggregate,
    ReviewDocument,
    ReviewPage,
    ReviewPush,
    ReviewPushResult,
    ReviewQuery,
    ReviewRules,
    ReviewStatus,
    Screener,
)
from storage.webhooks import WebhookStore


class OutboxListener(Protocol):
    """Told of outbox entries as this process commits them (see the module's guarantees)."""

    async def outbox_committed(self, entries: Sequence[OutboxEntry]) -> None:
        """``entries`` were committed, in append order. Awaited before the writing call returns
        and before the next commit is announced, so it must be quick (an in-process publish) and must
        not raise."""
        ...

    def outbox_changed(self) -> None:
        """Entries were committed that the store did not read back: read the outbox to find them."""
        ...


class Store(WebhookStore, PartsStore, Protocol):
    """(Webhooks' operations, and their guarantees: storage.webhooks.WebhookStore; schools' parts
    requests': storage.parts.PartsStore.)"""

    backend: str  # "sqlite" or "postgres"

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def migrate(self) -> list[int]:
        """Apply pending schema migrations; return the versions applied now."""
        ...

    async def ping(self) -> None:
        """Raise StoreUnavailable unless a trivial query succeeds."""
        ...

    # -- catalog -------------------------------------------------------------------------------
    async def create_product(self, new: NewProduct) -> Product: ...
    async def get_product(self, product_id: str) -> Product | None: ...
    async def update_product(
        self, product_id: str, changes: Mapping[str, Any], expected_version: int | None = None
    ) -> Product:
        """Apply ``changes`` (already validated field values) and bump ``version``.

        With ``expected_version`` the update is conditional: VersionMismatch if the stored version
        differs. A status change rewrites the derived stock status of every stock row, each as an
        outbox event.
        """
        ...

    async def delete_product(self, product_id: str, expected_version: int | None = None) -> None:
        """Delete the product and its stock rows. Conflict while it has pending reservations."""
        ...

    async def list_products(self, query: ProductQuery) -> ProductPage:
        """Keyset pagination: a page never repeats or skips a row because of concurrent inserts."""
        ...

    # -- warehouses and stock ------------------------------------------------------------------
    async def create_warehouse(self, warehouse: Warehouse) -> Warehouse: ...
    async def get_warehouse(self, warehouse_id: str) -> Warehouse | None: ...
    async def list_warehouses(self, region: str | None = None) -> list[Warehouse]: ...
    async def set_stock(self, product_id: str, warehouse_id: str, on_hand: int) -> StockLevel:
        """Set on_hand absolutely. InsufficientStock if it would fall below what is reserved."""
        ...

    async def adjust_stock(self, product_id: str, warehouse_id: str, delta: int) -> StockLevel:
        """Add a signed delta to on_hand. InsufficientStock if on_hand would fall below reserved."""
        ...

    async def get_inventory(self, product_id: str) -> list[StockLevel]: ...
    async def list_stock(
        self,
        region: str,
        product_id: str | None = None,
        after: tuple[str, str] | None = None,
        limit: int = 1000,
    ) -> list[tuple[StockLevel, str]]:
        """Stock rows of a region (and sku), ordered by (product_id, warehouse_id), after ``after``."""
        ...

    # -- reservations --------------------------------------------------------------------------
    async def reserve(
        self,
        owner: str,
        idempotency_key: str,
        request_hash: str,
        lines: Sequence[ReservationLineRequest],
        ttl_seconds: int,
        caps: ReservationCaps | None = None,
    ) -> IdempotentResult:
        """Reserve every line or none; the outcome is stored under (owner, idempotency_key). Past one of
        ``caps`` (checked before any stock moves; exact under concurrency: storage.reservation_caps) the
        outcome is CAP_EXCEEDED and nothing else changes."""
        ...

    async def get_reservation(self, reservation_id: str) -> Reservation | None: ...
    async def list_reservations(
        self, owner: str | None, limit: int, after: tuple[int, str] | None = None
    ) -> list[Reservation]:
        """``owner``'s reservations (None: everyone's), newest first, keyset-paginated by
        (created_at, id) after ``after``, each with its lines."""
        ...

    async def commit_reservation(self, reservation_id: str) -> Reservation:
        """pending → committed: the reserved units leave on_hand. Committing twice is a no-op."""
        ...

    async def release_reservation(self, reservation_id: str) -> Reservation:
        """pending → released: the units return to available. Releasing twice is a no-op."""
        ...

    async def expire_reservations(self, limit: int = 500) -> list[Reservation]:
        """pending and past expires_at → expired, stock returned. Returns what it expired."""
        ...

    async def purge_idempotency_keys(self, older_than_us: int) -> int:
        """Delete idempotency keys created before ``older_than_us``; return how many."""
        ...

    # -- carts (storage.carts states the guarantees) --------------------------------------------
    async def cart_owner(self, cart_id: str) -> CartOwner | None: ...
    async def get_cart(self, cart_id: str) -> CartDocument | None: ...
    async def open_cart(self, cart_id: str, owner: str) -> CartDocument:
        """The cart, created empty for ``owner`` if new; NotFound(resource="cart") if another's."""
        ...

    async def push_cart(
        self, cart_id: str, owner: str, pushes: Sequence[CartPush], rules: CartRules
    ) -> PushResult:
        """Merge each push in order, in one transaction with their mutation ids and outbox deltas."""
        ...

    async def purge_cart_mutations(self, older_than_us: int) -> int:
        """Forget mutation ids applied before ``older_than_us`` (a later retry merges again: no change)."""
        ...

    async def checkout_cart(
        self,
        cart_id: str,
        owner: str,
        idempotency_key: str,
        request_hash: str,
        ttl_seconds: int,
        caps: ReservationCaps | None = None,
    ) -> CheckoutResult:
        """Close the cart with the hub's replica and reserve its lines all or none (within ``caps``, as
        ``reserve``), once per key."""
        ...

    # -- reviews (storage.reviews states the guarantees) ----------------------------------------
    async def get_review(self, review_id: str) -> ReviewDocument | None: ...
    async def live_review_of(self, product_id: str, author: str) -> str | None:
        """The id of ``author``'s live (neither deleted nor erased) review of the product, if any."""
        ...

    async def rating_of(self, product_id: str) -> RatingAggregate | None:
        """The product's aggregate of published reviews; None if no such product."""
        ...

    async def recount_ratings(self) -> dict[str, tuple[RatingAggregate, RatingAggregate]]:
        """Products whose stored aggregate differs from a recount: id → (stored, recounted)."""
        ...

    async def list_reviews(self, query: ReviewQuery) -> ReviewPage:
        """Keyset pagination in the query's order; ``q`` matches every word of the text."""
        ...

    async def push_review(
        self,
        review_id: str,
        author: str,
        pushes: Sequence[ReviewPush],
        rules: ReviewRules,
        screener: Screener,
    ) -> ReviewPushResult:
        """Merge each push in order (the first may create the review), judge the result once and move
        the product's aggregate, in one transaction. NotFound(resource="review") if it is another's;
        a result with no document if it does not exist and no push created it."""
        ...

    async def moderate_review(
        self,
        review_id: str,
        status: ReviewStatus,
        reasons: Sequence[str],
        expected_version: int | None = None,
    ) -> ReviewDocument:
        """A moderator's decision on the review as it is (VersionMismatch if it changed since
        ``expected_version``); ReviewRefusal(review_gone) once deleted or erased."""
        ...

    async def report_review(
        self, review_id: str, reporter: str, reason: str, rules: ReviewRules
    ) -> tuple[ReviewDocument, bool]:
        """One report per user of a published review; the rules' threshold flags it."""
        ...

    async def vote_helpful(self, review_id: str, voter: str) -> tuple[int, bool]:
        """One helpful vote per user per published review (not one's own): (count, new?)."""
        ...

    async def purge_review_mutations(self, older_than_us: int) -> int: ...

    # -- real-time tickets (hub/tickets.py) -----------------------------------------------------
    async def use_ticket(self, jti: str, expires_at_us: int) -> bool:
        """Record a ticket's use; False if it was used before, on any node."""
        ...

    async def purge_tickets(self, now_us: int) -> int:
        """Forget the tickets that expired before ``now_us``; return how many."""
        ...

    # -- API keys (storage.api_keys states the guarantees) --------------------------------------
    async def create_api_key(self, key: ApiKey) -> ApiKey: ...
    async def get_api_key(self, key_id: str) -> ApiKey | None: ...
    async def list_api_keys(self, limit: int, after: tuple[int, str] | None = None) -> list[ApiKey]:
        """Newest first, keyset-paginated by (created_at, id)."""
        ...

    async def revoke_api_key(self, key_id: str, now_us: int) -> ApiKey:
        """Stamp revoked_at (the first revocation's time stays); NotFound(resource="api_key")."""
        ...

    async def rotate_api_key(
        self, key_id: str, successor: NewSecret, overlap_ends_at: int
    ) -> tuple[ApiKey, ApiKey]:
        """(old, new): a new key of the old one's name, scopes, expiry and family; the old one works
        until ``overlap_ends_at``. Once per key: Conflict(api_key_not_rotatable) unless it is active."""
        ...

    async def touch_api_key(self, key_id: str, now_us: int, interval_us: int) -> bool:
        """last_used_at = now_us unless it is within interval_us of it already."""
        ...

    # -- users' personal data and the audit log (storage.privacy states the guarantees) ---------
    async def get_profile(self, sub: str) -> UserProfile | None: ...
    async def put_profile(self, profile: UserProfile, expected_version: int | None = None) -> UserProfile:
        """Write the whole profile; with ``expected_version`` (0: new) VersionMismatch if it differs."""
        ...

    async def user_data(self, sub: str) -> UserData:
        """Everything held about ``sub``, read in one transaction (the export)."""
        ...

    async def erase_user(self, sub: str, pseudonym: str, entry: AuditEntry) -> Erasure:
        """Delete or pseudonymise what is left of ``sub`` once its reviews are erased, and append
        ``entry``, in one transaction; erasing again changes nothing more."""
        ...

    async def record_audit(self, entry: AuditEntry) -> AuditEntry:
        """Append an entry to the append-only audit log; the entry as stored (seq, time)."""
        ...

    async def list_audit(self, query: AuditQuery) -> AuditPage:
        """Newest first, keyset-paginated by seq, every filter given matched."""
        ...

    # -- personalization (storage.behaviour states the guarantees) ------------------------------
    async def get_consent(self, sub: str) -> Consent | None: ...
    async def set_consent(self, sub: str, status: ConsentStatus) -> ConsentChange:
        """Grant or revoke; a revocation deletes the user's events and per-user aggregates with it."""
        ...

    async def ingest_events(self, sub: str, events: Sequence[NewEvent], retention_us: int) -> Ingested:
        """Store the events and add their increments to the aggregates, all or nothing;
        ConsentRequired (nothing stored) unless the user's consent is granted."""
        ...

    async def purge_behaviour(self, now_us: int, retention_us: int, limit: int = 10_000) -> Purged:
        """Delete expired events and preferences older than the retention, ``limit`` of each at most."""
        ...

    async def recommendation_signals(
        self,
        sub: str,
        default_region: str,
        *,
        neighbours: int = 5,
        trending: int = 50,
        preferences: int = 20,
    ) -> Signals:
        """The candidates of ``sub``'s recommendations with their decayed weights, their products and
        stock in the user's region, and the user's preferences (storage.behaviour.Signals)."""
        ...

    async def notify_recommendations(
        self, sub: str, etag: str, payload: dict[str, Any], min_interval_us: int
    ) -> Notified:
        """Append ``payload`` to the user's events unless ``etag`` was the last notified, or one was
        notified (by any node) less than ``min_interval_us`` ago."""
        ...

    async def mark_listening(self, subs: Sequence[str], until_us: int) -> None: ...

    # -- outbox --------------------------------------------------------------------------------
    def watch_outbox(self, listener: OutboxListener) -> Callable[[], None]:
        """Tell ``listener`` of every outbox entry this process commits from now on; return a
        function that stops it."""
        ...

    async def read_outbox(self, limit: int = 500) -> list[OutboxEntry]: ...
    async def ack_outbox(self, seqs: Sequence[int]) -> None: ...
    async def outbox_backlog(self) -> tuple[int, int | None]:
        """(entries waiting, created_at of the oldest in epoch microseconds or None)."""
        ...


__all__ = ["InventoryDelta", "OutboxListener", "Store"]
