"""A product review written offline: one record per review id (product, author), with server-side
moderation, deletion and GDPR erasure.

**State model.** A causal context and:

* identity — review id, product, author: each written once (``create``), bottom until then;
* rating (1–5) and text: multi-value registers — ``dot → (value, Timestamp)``, the timestamp from
  the writer's own hybrid logical clock; a write's delta context covers the register's entries the
  writer has seen, so they are superseded;
* media URLs: an add-wins set — ``dot → url``; a remove's context covers the URL's entries it saw;
* ``deleted`` and ``erased``: grow-only flags (each write of one also mints a dot);
* moderation: ``(server_seq, status, judged)`` — written only by the server, ``judged`` being the
  context of the review the server judged.

**Merge** (the least upper bound). Registers and media: per entry dot, keep an entry both sides hold or
that the other side has not seen; drop it when the other side has seen its dot and no longer holds it.
Contexts: union. Flags: or. Identity: the defined value (two different defined values are two different
reviews: merging them raises ``ValueError``). Moderation: the highest ``server_seq`` (equal seqs with
different contents — which the server never writes — are ordered by status, then judged context, so
the merge stays deterministic). **Erasure is absorbing**: when either side is erased the result keeps
only the review id, the flags and the context — rating, text, media, moderation, product and author
are dropped — so no state from an offline device can bring content back.

**Who wins, concurrently**

==============================  ==============================================================
two ratings / two texts          the later by hybrid logical clock (tie: replica id, then dot);
                                 the others stay in :attr:`ReviewValue.rating_conflicts` /
                                 ``text_conflicts`` for the author to see. Text is replaced whole.
add and remove of one URL        the add (only the entries the remove saw are removed)
delete and any edit              the delete: the review is never shown again (value ``None``)
erase and anything               the erasure (absorbing, see above)
moderation and an author edit    the edit: the displayed status is ``pending`` while any write of
                                 the review is outside what the server judged
two moderations                  the higher server sequence number
==============================  ==============================================================

**Worked example** (``ts(n, r)`` is ``Timestamp(n, 0, r)``; the tablet's id is ``"tab"``)::

    r = Review.new(); r.apply(r.create("rev-1", "sku-9", "ana"))
    r.apply(r.set_rating("phone", 4, ts(1, "phone")))      # phone1: rating 4
    tablet = r.copy()
    r.apply(r.set_text("phone", "Great", ts(2, "phone")))  # phone2
    d = tablet.set_rating("tab", 5, ts(3, "tab"))          # tab1; context {phone1, tab1}
    r.apply(d)                                             # rating 5 (phone1 superseded), text "Great"
    server = r.copy()                                      # the server has it all
    r.apply(server.moderate(7, PUBLISHED))                 # judged {phone1, phone2, tab1}: published
    r.apply(r.add_media("phone", "https://img/1"))         # phone3 is not judged: pending again

(``tests/test_review.py`` runs this example.)

**Known anomalies**

* A rating or text written concurrently on two devices is decided by clock (drift-bounded, see
  :mod:`crdt.hlc`); the loser is kept only until the next write of that field supersedes it.
* Deleting is final: a device that has not heard of the delete keeps editing its copy; those edits
  merge into the state but are never shown. Mutators on a review this replica knows is deleted or
  erased raise :class:`ReviewGoneError` (erase itself is always allowed).
* Moderation is not authenticated by the data type: the hub must refuse client deltas that carry
  one (:meth:`Review.carries_moderation`). The judged context makes a concurrent edit — one the
  server had not received when it judged — read as ``pending`` too.
* Erasure keeps the context, so counters are never reused, and the review id, so the record can be
  found; the product and author ids go with the content.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, TypeVar

from crdt import codec
from crdt._compact import (
    ReplicaTable,
    decode_context,
    decode_table,
    encode_context,
    need_index,
    need_int,
    need_list,
    need_str,
)
from crdt.context import CausalContext
from crdt.dots import Dot
from crdt.hlc import Timestamp
from crdt.wire import check_own_timestamp, check_replica

MAX_TEXT_LENGTH = 10_000
MAX_URL_LENGTH = 2_048
MAX_ID_LENGTH = 200

_EMPTY = CausalContext({}, frozenset())
_V = TypeVar("_V")


class ReviewGoneError(ValueError):
    """The review is deleted or erased: it takes no more edits."""


class ModerationStatus(enum.Enum):
    PENDING = "pending"
    PUBLISHED = "published"
    FLAGGED = "flagged"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Moderation:
    seq: int
    status: ModerationStatus
    judged: CausalContext

    def key(self) -> tuple[Any, ...]:
        judged = self.judged.compact()
        return self.seq, self.status.value, sorted(judged.vv.items()), sorted(judged.cloud)


@dataclass(frozen=True, slots=True)
class ReviewValue:
    review_id: str | None
    product: str | None
    author: str | None
    rating: int | None
    text: str | None
    media: tuple[str, ...]
    status: ModerationStatus
    rating_conflicts: tuple[int, ...]
    text_conflicts: tuple[str, ...]


def _register(entries: dict[Dot, tuple[_V, Timestamp]]) -> tuple[_V | None, tuple[_V, ...]]:
    if not entries:
        return None, ()
    ranked = sorted(entries.items(), key=lambda item: (item[1][1], item[0]), reverse=True)
    winner = ranked[0][1][0]
    others: list[_V] = []
    for _, (value, _ts) in ranked[1:]:
        if value != winner and value not in others:
            others.append(value)
    return winner, tuple(others)


def _join_dots(
    mine: dict[Dot, _V], my_ctx: CausalContext, theirs: dict[Dot, _V], their_ctx: CausalContext
) -> None:
    for dot in [d for d in mine if d not in theirs and their_ctx.contains(d)]:
        del mine[dot]
    for dot, entry in theirs.items():
        if dot not in mine and not my_ctx.contains(dot):
            mine[dot] = entry


def _join_id(a: str | None, b: str | None, what: str) -> str | None:
    if a is None:
        return b
    if b is None or a == b:
        return a
    raise ValueError(f"cannot merge two different reviews: {what} {a!r} and {b!r}")


class Review:
    """A review (see the module docstring for the rules)."""

    __slots__ = (
        "_author",
        "_ctx",
        "_deleted",
        "_erased",
        "_media",
        "_moderation",
        "_product",
        "_rating",
        "_review_id",
        "_text",
    )

    TYPE_TAG = "review"

    def __init__(self) -> None:
        self._review_id: str | None = None
        self._product: str | None = None
        self._author: str | None = None
        self._ctx = _EMPTY
        self._rating: dict[Dot, tuple[int, Timestamp]] = {}
        self._text: dict[Dot, tuple[str, Timestamp]] = {}
        self._media: dict[Dot, str] = {}
        self._deleted = False
        self._erased = False
        self._moderation: Moderation | None = None

    @classmethod
    def new(cls) -> Review:
        return cls()

    # -- reading -----------------------------------------------------------------------------------

    @property
    def review_id(self) -> str | None:
        return self._review_id

    @property
    def product(self) -> str | None:
        return self._product

    @property
    def context(self) -> CausalContext:
        return self._ctx

    @property
    def deleted(self) -> bool:
        return self._deleted

    @property
    def erased(self) -> bool:
        return self._erased

    @property
    def moderation(self) -> Moderation | None:
        return self._moderation

    def status(self) -> ModerationStatus:
        """The displayed status: ``pending`` until the server has judged every write of the review."""
        mod = self._moderation
        if mod is None or not mod.judged.includes(self._ctx):
            return ModerationStatus.PENDING
        return mod.status

    def has_content(self) -> bool:
        return bool(self._rating or self._text or self._media)

    def value(self) -> ReviewValue | None:
        """What the app shows; ``None`` once deleted or erased."""
        if self._deleted or self._erased:
            return None
        rating, rating_conflicts = _register(self._rating)
        text, text_conflicts = _register(self._text)
        return ReviewValue(
            review_id=self._review_id,
            product=self._product,
            author=self._author,
            rating=rating,
            text=text,
            media=tuple(sorted(set(self._media.values()))),
            status=self.status(),
            rating_conflicts=rating_conflicts,
            text_conflicts=text_conflicts,
        )

    def carries_moderation(self) -> bool:
        """Does this state (or delta) hold a moderation record? Clients may not send one."""
        return self._moderation is not None

    def max_timestamp(self) -> Timestamp | None:
        """The latest timestamp in the review, for a clock to ``observe`` after a merge."""
        stamps = [ts for _v, ts in self._rating.values()] + [ts for _v, ts in self._text.values()]
        return max(stamps, default=None)

    # -- mutators: each returns a delta and leaves this review unchanged -----------------------------

    def _delta(self, ctx: CausalContext) -> Review:
        delta = Review()
        delta._ctx = ctx
        return delta

    def _check_editable(self) -> None:
        if self._erased:
            raise ReviewGoneError("the review is erased")
        if self._deleted:
            raise ReviewGoneError("the review is deleted")

    def create(self, review_id: str, product: str, author: str) -> Review:
        """Name the review (once): its id, the product it is about, its author."""
        self._check_editable()
        for name, value in (("review id", review_id), ("product", product), ("author", author)):
            if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
                raise ValueError(f"the {name} is a string of 1 to {MAX_ID_LENGTH} characters")
        _join_id(self._review_id, review_id, "id")
        _join_id(self._product, product, "product")
        _join_id(self._author, author, "author")
        delta = self._delta(_EMPTY)
        delta._review_id, delta._product, delta._author = review_id, product, author
        return delta

    def set_rating(self, replica: str, rating: int, ts: Timestamp) -> Review:
        """Rate 1 to 5; ``ts`` comes from this replica's own clock (``ts.replica == replica``)."""
        self._check_editable()
        if type(rating) is not int or not 1 <= rating <= 5:
            raise ValueError(f"a rating is an integer from 1 to 5, not {rating!r}")
        check_own_timestamp(ts, replica)
        dot = self._ctx.next_dot(check_replica(replica))
        delta = self._delta(CausalContext.of([*self._rating, dot]))
        delta._rating[dot] = (rating, ts)
        return delta

    def set_text(self, replica: str, text: str, ts: Timestamp) -> Review:
        """Replace the text, whole."""
        self._check_editable()
        if not isinstance(text, str) or len(text) > MAX_TEXT_LENGTH:
            raise ValueError(f"a review text is a string of at most {MAX_TEXT_LENGTH} characters")
        check_own_timestamp(ts, replica)
        dot = self._ctx.next_dot(check_replica(replica))
        delta = self._delta(CausalContext.of([*self._text, dot]))
        delta._text[dot] = (text, ts)
        return delta

    def add_media(self, replica: str, url: str) -> Review:
        self._check_editable()
        _check_url(url)
        dot = self._ctx.next_dot(check_replica(replica))
        delta = self._delta(CausalContext.of([*self._media_dots(url), dot]))
        delta._media[dot] = url
        return delta

    def remove_media(self, replica: str, url: str) -> Review:
        """Remove the URL as this replica sees it; a concurrent add of it wins."""
        self._check_editable()
        _check_url(url)
        dot = self._ctx.next_dot(check_replica(replica))
        return self._delta(CausalContext.of([*self._media_dots(url), dot]))

    def _media_dots(self, url: str) -> list[Dot]:
        return [dot for dot, u in self._media.items() if u == url]

    def delete(self, replica: str) -> Review:
        """Hide the review for good (a grow-only flag)."""
        if self._erased:
            raise ReviewGoneError("the review is erased")
        delta = self._delta(CausalContext.of([self._ctx.next_dot(check_replica(replica))]))
        delta._deleted = True
        return delta

    def erase(self, replica: str) -> Review:
        """Erase the content for good (GDPR): absorbing; keeps the id, the flags and the context."""
        delta = self._delta(CausalContext.of([self._ctx.next_dot(check_replica(replica))]))
        delta._erased = True
        return delta

    def moderate(self, seq: int, status: ModerationStatus) -> Review:
        """The server's judgment of this state, ordered by the server's own sequence ``seq`` (≥ 1)."""
        if type(seq) is not int or seq < 1:
            raise ValueError(f"a moderation sequence number is an integer ≥ 1, not {seq!r}")
        if not isinstance(status, ModerationStatus):
            raise ValueError(f"not a moderation status: {status!r}")
        delta = self._delta(_EMPTY)
        delta._moderation = Moderation(seq, status, self._ctx)
        return delta

    # -- join --------------------------------------------------------------------------------------

    def apply(self, delta: Review) -> None:
        # Identity first: a mismatch raises before anything changes.
        review_id = _join_id(self._review_id, delta._review_id, "id")
        erased = self._erased or delta._erased
        product, author = None, None
        if not erased:
            product = _join_id(self._product, delta._product, "product")
            author = _join_id(self._author, delta._author, "author")
        self._review_id, self._product, self._author = review_id, product, author
        mine, theirs = self._ctx, delta._ctx
        self._ctx = mine.merge(theirs)
        self._deleted = self._deleted or delta._deleted
        self._erased = erased
        if erased:
            self._rating.clear()
            self._text.clear()
            self._media.clear()
            self._moderation = None
            return
        _join_dots(self._rating, mine, delta._rating, theirs)
        _join_dots(self._text, mine, delta._text, theirs)
        _join_dots(self._media, mine, delta._media, theirs)
        other = delta._moderation
        if other is not None and (self._moderation is None or other.key() > self._moderation.key()):
            self._moderation = other

    def merge(self, other: Review) -> Review:
        out = self.copy()
        out.apply(other)
        return out

    def copy(self) -> Review:
        out = Review()
        out._review_id, out._product, out._author = self._review_id, self._product, self._author
        out._ctx = self._ctx
        out._rating = dict(self._rating)
        out._text = dict(self._text)
        out._media = dict(self._media)
        out._deleted, out._erased = self._deleted, self._erased
        out._moderation = self._moderation
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Review):
            return NotImplemented
        return (
            self._review_id == other._review_id
            and self._product == other._product
            and self._author == other._author
            and self._ctx == other._ctx
            and self._rating == other._rating
            and self._text == other._text
            and self._media == other._media
            and self._deleted == other._deleted
            and self._erased == other._erased
            and self._moderation == other._moderation
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        flags = "erased" if self._erased else "deleted" if self._deleted else "live"
        return f"Review({self._review_id!r}, {flags}, {self.value()!r}, context={self._ctx!r})"


def _check_url(url: str) -> None:
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise ValueError(f"a media URL is a string of 1 to {MAX_URL_LENGTH} characters")


# -- codec, version 1 -------------------------------------------------------------------------------
#
# s = {"r": replica table, "id": [review id, product, author] (each a string or null), "c": context
# (without the entries' own dots), "rt" / "tx": flat [replica index, counter, value, wall_ms, logical,
# ...] (the timestamp's replica is the dot's: a replica stamps its own writes), "m": flat [replica
# index, counter, url, ...], "f": flags (1 deleted, 2 erased), "mod": [] or [seq, status, judged
# context]}. See crdt._compact for tables and contexts.

_KEYS = {"r", "id", "c", "rt", "tx", "m", "f", "mod"}


def _encode_register(entries: dict[Dot, tuple[Any, Timestamp]], table: ReplicaTable) -> list[Any]:
    flat: list[Any] = []
    for dot, (value, ts) in entries.items():
        flat += (table.index(dot.replica), dot.counter, value, ts.wall_ms, ts.logical)
    return flat


def _encode_v1(review: Review) -> dict[str, Any]:
    table = ReplicaTable()
    media: list[Any] = []
    for dot, url in review._media.items():
        media += (table.index(dot.replica), dot.counter, url)
    implied = [*review._rating, *review._text, *review._media]
    mod = review._moderation
    state: dict[str, Any] = {
        "id": [review._review_id, review._product, review._author],
        "rt": _encode_register(review._rating, table),
        "tx": _encode_register(review._text, table),
        "m": media,
        "c": encode_context(review._ctx, table, set(implied)),
        "f": int(review._deleted) | int(review._erased) << 1,
        "mod": [] if mod is None else [mod.seq, mod.status.value, encode_context(mod.judged, table)],
    }
    state["r"] = table.encoded()
    return state


def _decode_register(raw: object, replicas: list[str], check: Any, seen: set[Dot]) -> dict[Dot, Any]:
    flat = need_list(raw)
    if len(flat) % 5:
        raise codec.CodecError("register entries are flat 5-tuples")
    out: dict[Dot, Any] = {}
    size = len(replicas)
    for i in range(0, len(flat), 5):
        dot = Dot(replicas[need_index(flat[i], size)], need_int(flat[i + 1], 1))
        if dot in seen:
            raise codec.CodecError(f"dot {dot} appears twice")
        seen.add(dot)
        ts = Timestamp(need_int(flat[i + 3], 0), need_int(flat[i + 4], 0), dot.replica)
        out[dot] = (check(flat[i + 2]), ts)
    return out


def _decode_v1(state: object) -> Review:
    if not isinstance(state, dict) or set(state) != _KEYS:
        raise codec.CodecError(f"a review is a map with the keys {sorted(_KEYS)}")
    replicas = decode_table(state["r"])
    review = Review()
    ident = need_list(state["id"], 3)
    review._review_id, review._product, review._author = (
        None if x is None else need_str(x, MAX_ID_LENGTH) for x in ident
    )
    seen: set[Dot] = set()
    review._rating = _decode_register(state["rt"], replicas, lambda x: need_int(x, 1, 5), seen)
    review._text = _decode_register(
        state["tx"], replicas, lambda x: need_str(x, MAX_TEXT_LENGTH, allow_empty=True), seen
    )
    media = need_list(state["m"])
    if len(media) % 3:
        raise codec.CodecError("media entries are flat (replica, counter, url) triples")
    for i in range(0, len(media), 3):
        dot = Dot(replicas[need_index(media[i], len(replicas))], need_int(media[i + 1], 1))
        if dot in seen:
            raise codec.CodecError(f"dot {dot} appears twice")
        seen.add(dot)
        review._media[dot] = need_str(media[i + 2], MAX_URL_LENGTH)
    review._ctx = decode_context(state["c"], replicas, seen)
    flags = need_int(state["f"], 0, 3)
    review._deleted, review._erased = bool(flags & 1), bool(flags & 2)
    mod = need_list(state["mod"])
    if mod:
        need_list(mod, 3)
        try:
            status = ModerationStatus(mod[1])
        except ValueError:
            raise codec.CodecError(f"unknown moderation status {mod[1]!r}") from None
        review._moderation = Moderation(need_int(mod[0], 1), status, decode_context(mod[2], replicas))
    if review._erased and (review.has_content() or review._moderation or review._product or review._author):
        raise codec.CodecError("an erased review holds nothing but its id, flags and context")
    return review


codec.register(Review, "review", 1, _encode_v1, _decode_v1)
