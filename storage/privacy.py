"""Users' personal data across the Store seam: profiles, the audit log, a user's export and erasure.

**Profiles.** One row per user (token subject): a display name in clear, the email and phone as
ciphertexts the hub made (``hub/pii.py``: AES-GCM, each ciphertext naming its key) and the id of the
key the row was last written under. The store never sees a key or a plaintext; it keeps what it is
given. ``put_profile`` replaces the whole row (a write under a new key rewrites every field).

**The audit log** is append-only: ``record_audit`` adds an entry, nothing updates or deletes one —
except an erasure, which replaces the erased user's subject by their pseudonym wherever it is the
actor or a ``user`` target. Both databases enforce it with triggers (migration 8): any other
``UPDATE`` or any ``DELETE`` of a row fails, whoever runs it. Entries are numbered by ``seq``, which
grows with every insert; ``list_audit`` pages newest first by ``seq`` (keyset: a page never repeats
or skips an entry because of later inserts). On PostgreSQL ``seq`` is taken at insert, so an entry
can commit after one with a higher ``seq``: a reader who began before that commit sees it only on a
fresh first page.

**Export** (``user_data``): everything the store holds about a subject, read in one transaction —
its profile, carts, reviews (every status), helpful votes, reports, reservations with their lines, the
device replica ids bound to it, and the audit entries it is the actor or the ``user`` target of.

**Erasure** (``erase_user``), one transaction, idempotent:

* carts: their content and mutation ids are deleted. The row stays as a tombstone (owner the
  pseudonym, empty state, no reservation, its version one higher) so that the id is never taken
  again: a cart id restarting at version 1 would see its events dropped by the broker, which appends
  a (key, version) once. Each cart's channel hears ``cart.deleted`` and the user's channel
  ``cart.status`` (``deleted``), through the outbox as every cart event;
* reservations (and their lines, stock untouched) are kept, their owner replaced by the pseudonym; the
  subject's stored idempotency outcomes are deleted (they repeat reservations' owners);
* reviews must have been erased first, through the review path (``push_review`` with the review's
  absorbing erasure: aggregates and events move there); the erased ones' author becomes the pseudonym,
  and a review still live (written meanwhile) is left and counted in ``reviews_left``;
* helpful votes and reports: their voter or reporter becomes the pseudonym (a duplicate of an earlier
  erasure's row is deleted; the review's counts stay);
* audit entries: the subject becomes the pseudonym as actor and as ``user`` target;
* the profile is deleted;
* personalization (storage/behaviour.py): the behaviour events, the consent record, the recent products
  and the preferred attributes are deleted (the anonymous co-occurrence and trending counts stay);
* ``record``, the erasure's own audit entry, is appended in the same transaction.

Kept, and why: the subject's device replica ids (``replicas``: bound for good so that no other user
ever writes with them; they hold no content) and its event counter (``user_events``: a later event of
the same subject must number after the earlier ones, or the broker would drop it). Events already
published stay in the broker's streams until their retention ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from storage.behaviour import BehaviourData
from storage.carts import CartDocument
from storage.models import Reservation
from storage.reviews import ReviewDocument

PSEUDONYM_PREFIX = "erased:"  # every pseudonym starts so (the audit log's trigger allows only these)


@dataclass(frozen=True, slots=True)
class UserProfile:
    sub: str
    display_name: str | None
    email_ciphertext: str | None
    phone_ciphertext: str | None
    key_id: str | None  # the key the ciphertexts were written under (None: no ciphertext)
    version: int = 0  # grows by one per write
    created_at: int = 0
    updated_at: int = 0


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit log entry. ``seq`` and ``at`` (epoch microseconds) are the store's: 0 in a record to
    append."""

    actor_sub: str
    actor_roles: tuple[str, ...]
    action: str  # the route's name, or an explicit action such as erase_user
    target_kind: str = ""  # user, product, review, reservation, ... ('' for none)
    target_id: str = ""
    request_id: str = ""
    detail: dict[str, Any] = field(default_factory=dict)  # never holds a subject: erasure cannot reach it
    seq: int = 0
    at: int = 0


@dataclass(frozen=True, slots=True)
class AuditQuery:
    actor: str | None = None
    action: str | None = None
    target_kind: str | None = None
    target_id: str | None = None
    since_us: int | None = None  # at >= since
    until_us: int | None = None  # at < until
    before_seq: int | None = None  # the keyset cursor: the last entry's seq
    limit: int = 50


@dataclass(frozen=True, slots=True)
class AuditPage:
    items: list[AuditEntry]
    next_before: int | None  # the cursor of the next (older) page; None at the end


@dataclass(frozen=True, slots=True)
class HelpfulVote:
    review_id: str
    created_at: int


@dataclass(frozen=True, slots=True)
class ReviewReport:
    review_id: str
    reason: str
    created_at: int


@dataclass(frozen=True, slots=True)
class DeviceReplica:
    replica_id: str
    created_at: int


@dataclass(frozen=True, slots=True)
class UserData:
    """Everything the store holds about one subject (see the module's "Export")."""

    sub: str
    profile: UserProfile | None
    carts: list[CartDocument]
    reviews: list[ReviewDocument]
    votes: list[HelpfulVote]
    reports: list[ReviewReport]
    reservations: list[Reservation]
    devices: list[DeviceReplica]
    audit: list[AuditEntry]
    behaviour: BehaviourData | None = None  # consent, behaviour events and preferences (personalization)


@dataclass(frozen=True, slots=True)
class Erasure:
    """What one ``erase_user`` changed (all zero when the subject had nothing left: erased twice)."""

    carts_deleted: int
    reservations: int
    reviews: int  # erased reviews whose author became the pseudonym
    reviews_left: int  # reviews of the subject not erased (written after their erasure began)
    votes: int
    reports: int
    audit_entries: int
    profile_deleted: bool
    entry: AuditEntry  # the erasure's own audit entry, as appended
    behaviour_events: int = 0  # behaviour events deleted (with the consent record and preferences)

    def counts(self) -> dict[str, int]:
        return {
            "carts_deleted": self.carts_deleted,
            "reservations_pseudonymised": self.reservations,
            "reviews_pseudonymised": self.reviews,
            "reviews_left": self.reviews_left,
            "votes_pseudonymised": self.votes,
            "reports_pseudonymised": self.reports,
            "audit_entries_pseudonymised": self.audit_entries,
            "profile_deleted": int(self.profile_deleted),
            "behaviour_events_deleted": self.behaviour_events,
        }
