"""Review documents across the Store seam: what a create, a push, a moderation decision, a vote, a report
and a listing take and give back.

A review is one :class:`crdt.review.Review` state per review id, about one product, written by one
author (one live review per product and author: a second is ``ReviewExists``). The store merges every
accepted delta into it in the transaction that records the delta's mutation id, judges the result (the
hub's :class:`Screener`, then the store's own spam signals: the same text in another live review, and
the author's posting rate) and writes the judgment into the review as the server's moderation record
(``Review.moderate``, with the review's own server sequence), so:

* a push is acknowledged only once durable; a retried ``mutation_id`` applies once (as a cart's);
* a client delta that carries a moderation record, writes with the hub's replicas (``~``…), names
  another review, product or author, is from another user's replica, is ahead of the hub's clock, holds
  a text past ``max_text`` characters or names a media id that is not the author's is refused, and
  changes nothing;
* the product's rating aggregate (count, sum and 1–5 histogram of its **published** reviews) changes in
  the same transaction as the review's status or rating, by increments the database evaluates (never a
  value read into Python and written back) — on SQLite on the product's row; on PostgreSQL appended as
  a move that reads add to the row until a fold moves it there after commit (storage.rating_folds) —
  so it always equals a recount;
* public events (``reviews.{region}``) carry published content only: a review's publication, its
  changes while published, and its removal (unpublished, deleted or erased), and the aggregate's new
  value; the author hears of every status change on their own user stream.

Statuses: ``pending`` (needs a person), ``published``, ``flagged`` (reported or flagged by a moderator:
hidden until a moderator decides), ``rejected``, ``deleted`` and ``erased`` (both final). An author's edit
of a judged review is judged again (a published review goes back to ``pending`` if the screen holds it).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from crdt.review import Review
from storage.carts import PushOutcome

# Replica ids starting with "~" are the hub's own (REST edits are minted for the caller's device id).
HUB_REPLICA = "~hub"


class ReviewStatus(enum.StrEnum):
    PENDING = "pending"
    PUBLISHED = "published"
    FLAGGED = "flagged"
    REJECTED = "rejected"
    DELETED = "deleted"
    ERASED = "erased"


class Verdict(enum.StrEnum):
    """The automatic screen's outcome."""

    PUBLISH = "published"
    HOLD = "pending"  # a person decides
    REJECT = "rejected"


@dataclass(frozen=True, slots=True)
class Screening:
    verdict: Verdict
    reasons: tuple[str, ...] = ()  # stable reason codes, e.g. ("profanity",), ("contact_email", "link")


class Screener(Protocol):
    """The automatic moderation of a review's content: deterministic and offline (no I/O, no clock),
    called inside the store's transaction. The store adds its own signals (duplicate_text,
    posting_rate), which can only hold a review that the screen would publish."""

    def __call__(self, text: str | None, rating: int | None, media_count: int) -> Screening: ...


@dataclass(frozen=True, slots=True)
class ReviewRules:
    max_text: int = 5_000
    max_media: int = 10
    max_drift_ms: int = 60_000
    max_posts_per_hour: int = 20  # an author's new reviews past this are held for a person
    reports_to_flag: int = 3  # this many users' reports flag a published review


@dataclass(frozen=True, slots=True)
class RatingAggregate:
    count: int
    total: int
    histogram: tuple[int, int, int, int, int]  # reviews rated 1, 2, 3, 4, 5

    @property
    def average(self) -> float | None:
        return None if self.count == 0 else round(self.total / self.count, 4)


@dataclass(frozen=True, slots=True)
class ReviewDocument:
    id: str
    product_id: str
    author: str
    region: str
    review: Review | None  # the CRDT state (None in listings, which read the projection only)
    version: int  # grows by one per accepted change, the server's judgments included
    status: ReviewStatus
    reasons: tuple[str, ...]  # the last judgment's reason codes
    rating: int | None
    text: str | None
    media: tuple[str, ...]  # media ids
    helpful: int
    reports: int
    created_at: int
    updated_at: int
    mod_seq: int = 0  # the server's last moderation sequence number of this review


# A device's delta, or (for a REST edit) a function the store calls with the review as it is in the
# transaction, returning the delta the hub mints for the caller's device.
ReviewDeltaSource = Review | Callable[[Review], Review]


@dataclass(frozen=True, slots=True)
class ReviewPush:
    mutation_id: str
    delta: ReviewDeltaSource
    # The caller minted the review's id for this push (a REST creation): no review has it, so the
    # store need not look for one first (were one there, the insert would still refuse to overwrite it).
    new: bool = False


@dataclass(frozen=True, slots=True)
class ReviewPushResult:
    document: ReviewDocument | None  # None: the review does not exist (its creation was refused)
    outcomes: list[PushOutcome]


class ModerationAction(enum.StrEnum):
    PUBLISH = "publish"
    REJECT = "reject"
    FLAG = "flag"


class ReviewSort(enum.StrEnum):
    NEWEST = "newest"
    HIGHEST = "highest"
    LOWEST = "lowest"
    HELPFUL = "helpful"


@dataclass(frozen=True, slots=True)
class ReviewQuery:
    product_id: str | None  # None: every product (the moderation queue)
    statuses: tuple[ReviewStatus, ...] = (ReviewStatus.PUBLISHED,)
    min_rating: int | None = None
    max_rating: int | None = None
    with_media: bool | None = None
    author: str | None = None
    q: str | None = None  # full-text search of the text
    sort: ReviewSort = ReviewSort.NEWEST
    oldest_first: bool = False  # the moderation queue: by last change, oldest first
    after: tuple[int | str, ...] | None = None  # the keyset cursor: the last row's sort key
    limit: int = 20


@dataclass(frozen=True, slots=True)
class ReviewPage:
    items: list[ReviewDocument]
    next_after: tuple[int | str, ...] | None


class ReviewRefusal(Exception):
    """A review write broke a rule; ``code`` is stable (see docs/errors.md)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
