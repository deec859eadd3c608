"""Behaviour events and what is aggregated from them, across the Store seam: a user's consent, the events
a shop's apps send (views, searches, filters, adds to cart, wishes), and the aggregates that
recommendations are read from (hub/recommendations.py ranks them).

**Consent.** One row per user (``personalization_users``): ``granted`` or ``revoked`` and when. Events are
taken only while it is granted: ``ingest_events`` reads it under the row's lock (PostgreSQL ``FOR
UPDATE``; SQLite has one writer), in the transaction that stores the events, so a revocation that commits
first refuses every later batch, and a batch that committed first is deleted by the revocation — no
event outlives an opt-out. Refused: :class:`ConsentRequired`, and nothing is stored.

**Events** (``behaviour_events``) are stored as sent (type, product or query or filter attributes,
region, when it happened) with the user, when they arrived, the consent they were collected under (the
``consent_at`` of the grant: the snapshot that says under which consent a row was taken) and
``expires_at``: the event's time plus the retention (``--event-retention-days``). ``purge_behaviour``
deletes what expired, in bounded batches; so does a revocation (all of the user's) and an erasure.

**Aggregates**, changed in the transaction that stores the events, by increments the database adds to
the rows (never a value read into Python and written back: concurrent batches add up):

* ``co_viewed`` / ``co_carted``: for an ordered pair of products, how often and how recently one user
  viewed (added to a cart) both within a session window (:data:`VIEW_WINDOW_US`, :data:`CART_WINDOW_US`);
  a product counts once per user and window, so a user going back and forth adds nothing more;
* ``user_preferences``: per user, attribute and value (``material=organic-cotton``,
  ``certification=GOTS``, read from the attributes of the products they viewed, wished for or carted,
  and from their filters), weighted by what they did (:data:`PREFERENCE_WEIGHTS`);
* ``trending``: per region and product, the region's views, wishes and adds to carts
  (:data:`TRENDING_WEIGHTS`).

Each aggregate row holds ``count`` (how many increments) and ``score``, an exponentially decayed sum of
the increments' weights — a soft window: an increment's weight halves every half-life
(:data:`PAIR_HALF_LIFE_US`, :data:`TRENDING_HALF_LIFE_US`, :data:`PREFERENCE_HALF_LIFE_US`). It is kept
as a logarithm with a fixed landmark (forward decay, Cormode et al. 2009): ``score = ln Σ wᵢ·e^((tᵢ −
LANDMARK)/τ)``, so adding an increment is ``logaddexp`` (commutative and associative: the order of
concurrent batches does not matter), ordering rows by ``score`` is ordering them by decayed weight at any
moment (the indexes that give a product's top neighbours and a region's top products are read in
order, never re-sorted), and the decayed weight now is ``e^(score − (now − LANDMARK)/τ)``, without
overflow for as long as a double's exponent lasts (centuries).

A user's per-user aggregates — preferences and the recent products kept for pairing — are personal data:
a revocation and an erasure delete them with the events, and a preference no event has fed for the
retention period is purged. The co-occurrence and trending counts are anonymous sums (no user in them):
they stay, decaying, when the events that fed them go.

Times are epoch microseconds.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from storage.errors import StoreError

EVENT_TYPES = ("view", "search", "filter", "add_to_cart", "wishlist")
PRODUCT_EVENTS = frozenset({"view", "add_to_cart", "wishlist"})
MAX_BATCH = 100

_DAY_US = 86_400 * 10**6
LANDMARK_US = 1_700_000_000 * 10**6  # the forward decay's fixed origin (2023-11-14)
PAIR_HALF_LIFE_US = 14 * _DAY_US
TRENDING_HALF_LIFE_US = 1 * _DAY_US
PREFERENCE_HALF_LIFE_US = 30 * _DAY_US

RECENT_KEPT = 10  # products kept per list (views, carts, wishes): not recommended back, read for neighbours
PAIR_SPAN = 5  # a product viewed (carted) pairs with the last 5 others viewed (carted) within the window
VIEW_WINDOW_US = 3600 * 10**6  # two views pair when within an hour of each other
CART_WINDOW_US = _DAY_US  # two adds to a cart, within a day
PREFERENCE_WEIGHTS = {"view": 1.0, "wishlist": 3.0, "add_to_cart": 5.0, "filter": 2.0}
TRENDING_WEIGHTS = {"view": 1.0, "wishlist": 2.0, "add_to_cart": 3.0}
MAX_ATTRIBUTE_PAIRS = 16  # a product's (attribute, value) pairs that feed preferences
MAX_ATTRIBUTE_TEXT = 64  # longer attribute names or values are not preferences


class ConsentStatus(enum.StrEnum):
    GRANTED = "granted"
    REVOKED = "revoked"


class ConsentRequired(StoreError):
    """The user has not granted consent (or revoked it): nothing was stored."""

    code = "consent_required"


class NewEvent(NamedTuple):
    """One event as the hub validated it (a named tuple: a batch makes a hundred of them)."""

    type: str
    ts: int  # when it happened (the client's clock, bounded by the hub)
    region: str
    product_id: str | None = None  # view, add_to_cart, wishlist
    query: str | None = None  # search
    attributes: dict[str, list[str]] | None = None  # filter: attribute → values


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: int
    type: str
    product_id: str | None
    query: str | None
    attributes: dict[str, list[str]] | None
    region: str
    ts: int
    received_at: int
    consent_at: int  # when the consent it was collected under was granted
    expires_at: int


@dataclass(frozen=True, slots=True)
class Consent:
    sub: str
    status: ConsentStatus
    at: int  # when it was last granted or revoked


@dataclass(frozen=True, slots=True)
class ConsentChange:
    consent: Consent
    events_deleted: int  # a revocation's (0 for a grant)
    preferences_deleted: int


@dataclass(frozen=True, slots=True)
class Ingested:
    stored: int
    consent_at: int
    # Until when a node holds a live user:{sub} subscription (mark_listening): a batch taken elsewhere
    # should have the user's recommendations looked at again. 0: nobody said so.
    listening_until: int


@dataclass(frozen=True, slots=True)
class Preference:
    attribute: str
    value: str
    score: float  # the decayed weight's logarithm (see the module's docstring)
    count: int
    updated_at: int


@dataclass(frozen=True, slots=True)
class BehaviourData:
    """What a user's export holds of personalization: consent, events, preferences."""

    consent: Consent | None
    events: list[StoredEvent]
    preferences: list[Preference]


class Candidate(NamedTuple):
    """A product recommendations may name, with its stock in the user's region (a named tuple: a read
    makes a hundred or more)."""

    id: str
    sku: str
    name: str
    category: str
    price_units: int
    status: str
    attributes: dict[str, Any]
    low_stock_threshold: int
    available: int  # on_hand − reserved, summed over the region's warehouses


@dataclass(frozen=True, slots=True)
class Signals:
    """What ranks a user's recommendations, read in one statement (PostgreSQL) or transaction (SQLite):
    every candidate — a co-viewed or co-carted neighbour of a recent product, or a trending product of
    the region, less the user's recent products — with its decayed weights now (see the module's
    docstring), and the user's top preferences, decayed too."""

    sub: str
    consent: ConsentStatus | None
    region: str
    co_viewed: dict[str, float]  # candidate → Σ over the recent views of the pair's weight
    co_carted: dict[str, float]  # candidate → Σ over the recent adds to cart
    trending: dict[str, float]  # candidate → its weight in the region
    preferences: list[tuple[str, str, float]]  # (attribute, value, weight)
    products: dict[str, Candidate]  # the candidates that exist, with their stock in the region
    now: int


@dataclass(frozen=True, slots=True)
class Notified:
    sent: bool
    # Not sent because one was sent less than the interval ago (by any node): when to try again.
    retry_at: int | None = None


@dataclass(frozen=True, slots=True)
class Purged:
    events: int
    preferences: int


# -- decayed scores -----------------------------------------------------------------------------------


def tau(half_life_us: int) -> float:
    return half_life_us / math.log(2)


def logaddexp(a: float, b: float) -> float:
    high, low = (a, b) if a >= b else (b, a)
    return high + math.log1p(math.exp(low - high))


# -- a user's recent products ------------------------------------------------------------------------


@dataclass(slots=True)
class Recent:
    """The products a user viewed, carted and wished for last, newest first, as (product, ts)."""

    views: list[tuple[str, int]] = field(default_factory=list)
    carts: list[tuple[str, int]] = field(default_factory=list)
    wishes: list[tuple[str, int]] = field(default_factory=list)

    @classmethod
    def decode(cls, text: str | None) -> Recent:
        if not text:
            return cls()
        raw = orjson.loads(text)
        return cls(
            [(p, int(t)) for p, t in raw.get("v", [])],
            [(p, int(t)) for p, t in raw.get("c", [])],
            [(p, int(t)) for p, t in raw.get("w", [])],
        )

    def encode(self) -> str:
        return orjson.dumps({"v": self.views, "c": self.carts, "w": self.wishes}).decode()

    def products(self) -> set[str]:
        return {p for kept in (self.views, self.carts, self.wishes) for p, _ in kept}


def attribute_pairs(attributes: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A product's (attribute, value) pairs that preferences count: text values, lists of texts,
    ``true`` flags, and the same one level down as ``outer.inner`` (at most :data:`MAX_ATTRIBUTE_PAIRS`)."""
    pairs: list[tuple[str, str]] = []

    def add(name: str, value: Any) -> None:
        if isinstance(value, bool):
            if value:
                pairs.append((name, "true"))
        elif isinstance(value, str):
            if 0 < len(value) <= MAX_ATTRIBUTE_TEXT:
                pairs.append((name, value))
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, str) and 0 < len(item) <= MAX_ATTRIBUTE_TEXT:
                    pairs.append((name, item))

    for name, value in attributes.items():
        if not 0 < len(name) <= MAX_ATTRIBUTE_TEXT:
            continue
        if isinstance(value, dict):
            for inner, nested in value.items():
                if isinstance(inner, str) and len(name) + 1 + len(inner) <= MAX_ATTRIBUTE_TEXT:
                    add(f"{name}.{inner}", nested)
        else:
            add(name, value)
    return pairs[:MAX_ATTRIBUTE_PAIRS]


# -- one batch, folded into increments ----------------------------------------------------------------


@dataclass(slots=True)
class Increments:
    """What one batch adds: key → (score of the increments, how many). A co-occurrence is counted in both
    directions, kept once here: ``co_viewed[(a, b)]`` adds to the rows (a, b) and (b, a). The store
    writes each table's rows in key order, so that concurrent batches lock the rows they share in one
    order."""

    co_viewed: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)
    co_carted: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)
    preferences: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)
    trending: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)

    @staticmethod
    def rows(table: dict[tuple[str, str], tuple[float, int]]) -> list[tuple[str, str, float, int]]:
        return [(a, b, score, count) for (a, b), (score, count) in table.items()]

    @staticmethod
    def pair_rows(table: dict[tuple[str, str], tuple[float, int]]) -> list[tuple[str, str, float, int]]:
        """Both directions of each pair (a product never pairs with itself)."""
        out = []
        for (a, b), (score, count) in table.items():
            out.append((a, b, score, count))
            out.append((b, a, score, count))
        return out


def _add(table: dict[tuple[str, str], tuple[float, int]], key: tuple[str, str], score: float) -> None:
    old = table.get(key)
    table[key] = (score, 1) if old is None else (logaddexp(old[0], score), old[1] + 1)


def _touch(
    kept: list[tuple[str, int]],
    product: str,
    ts: int,
    window: int,
    pairs: dict[tuple[str, str], tuple[float, int]] | None,
) -> None:
    """``product`` seen at ``ts``: paired with each of the last :data:`PAIR_SPAN` other kept products seen
    within ``window`` of it — unless it was itself seen within the window: a product counts once per
    user and window — then kept first."""
    previous = -1
    for p, t in kept:
        if p == product:
            previous = t
            break
    if pairs is not None and (previous < 0 or abs(previous - ts) > window):
        score = (ts - LANDMARK_US) / _PAIR_TAU  # (weight 1: its logarithm is 0)
        span = 0
        for other, seen in kept:
            if other == product or abs(seen - ts) > window:
                continue
            key = (product, other) if product < other else (other, product)
            old = pairs.get(key)
            pairs[key] = (score, 1) if old is None else (logaddexp(old[0], score), old[1] + 1)
            span += 1
            if span == PAIR_SPAN:
                break
    if previous >= 0:
        kept.remove((product, previous))
        ts = max(ts, previous)
    # newest first: an event replayed late (an offline queue) goes where its time puts it
    at = len(kept)
    for n, (_, t) in enumerate(kept):
        if t <= ts:
            at = n
            break
    kept.insert(at, (product, ts))
    del kept[RECENT_KEPT:]


_PAIR_TAU = tau(PAIR_HALF_LIFE_US)
_TRENDING_TAU = tau(TRENDING_HALF_LIFE_US)
_PREFERENCE_TAU = tau(PREFERENCE_HALF_LIFE_US)
_TRENDING_LOG = {kind: math.log(w) for kind, w in TRENDING_WEIGHTS.items()}
_PREFERENCE_LOG = {kind: math.log(w) for kind, w in PREFERENCE_WEIGHTS.items()}


def fold(
    recent: Recent, events: Sequence[NewEvent], attributes: Mapping[str, Sequence[tuple[str, str]]]
) -> Increments:
    """The increments ``events`` make, given the user's ``recent`` products (updated in place) and the
    attribute pairs of the products that exist (a product not in ``attributes`` feeds nothing)."""
    out = Increments()
    preferences, trending = out.preferences, out.trending
    for event in sorted(events, key=lambda e: e.ts):
        kind, ts = event.type, event.ts
        if kind == "filter":
            score = _PREFERENCE_LOG["filter"] + (ts - LANDMARK_US) / _PREFERENCE_TAU
            for name, values in (event.attributes or {}).items():
                for value in values:
                    _add(preferences, (name, value), score)
            continue
        product = event.product_id
        pairs = attributes.get(product) if product is not None else None
        if pairs is None:
            continue
        assert product is not None
        if kind == "view":
            _touch(recent.views, product, ts, VIEW_WINDOW_US, out.co_viewed)
        elif kind == "add_to_cart":
            _touch(recent.carts, product, ts, CART_WINDOW_US, out.co_carted)
        else:
            _touch(recent.wishes, product, ts, CART_WINDOW_US, None)
        _add(trending, (event.region, product), _TRENDING_LOG[kind] + (ts - LANDMARK_US) / _TRENDING_TAU)
        score = _PREFERENCE_LOG[kind] + (ts - LANDMARK_US) / _PREFERENCE_TAU
        for pair in pairs:
            old = preferences.get(pair)
            preferences[pair] = (score, 1) if old is None else (logaddexp(old[0], score), old[1] + 1)
    return out


def product_ids(events: Iterable[NewEvent]) -> list[str]:
    return sorted({e.product_id for e in events if e.product_id is not None})
