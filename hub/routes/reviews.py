"""/api/v1/…/reviews: product reviews, written offline or online, moderated, voted, searched.

    POST   /api/v1/products/{id}/reviews     a customer's review: {"rating", "text", "media"}; one live
                                             review per product and author (409 review_exists)
    GET    /api/v1/products/{id}/reviews     published reviews: sort, filters, q=, cursor (moderators
                                             may list other statuses)
    GET    /api/v1/reviews/{id}              one review (unpublished: its author's and moderators')
    PATCH  /api/v1/reviews/{id}              the author's edit: {"rating", "text", "media"}
    DELETE /api/v1/reviews/{id}              the author deletes (?erase=true: erases; admins too)
    POST   /api/v1/reviews/{id}/sync         a device's sync: {"context", "pushes"} → acks, the state
    POST   /api/v1/reviews/{id}/helpful      one helpful vote per user
    POST   /api/v1/reviews/{id}/reports      a report: {"reason"}; enough reports flag the review
    POST   /api/v1/reviews/{id}/moderation   a moderator's decision: {"action", "reason", "version"}
    GET    /api/v1/moderation/queue          pending and flagged reviews, oldest first

REST edits are deltas the hub mints for the caller's REST replica (``hub/reviews.py``); every write
goes through the store's push, so a REST edit, a device's offline delta and a moderator's decision
follow one set of rules (storage/reviews.py).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp import web

from crdt.review import Review
from crdt.wire import encode_context
from hub.auth import Principal, require
from hub.carts import CartInputError, read_context, read_mutation_id, render_outcome
from hub.errors import BadRequest, ConflictError, Forbidden, NotFoundError, Unprocessable
from hub.keys import METRICS, PRINCIPAL, STORE
from hub.media import media_urls, owned_media
from hub.responses import json_response, not_modified, version_etag
from hub.reviews import (
    RULES,
    encode_review,
    is_moderator,
    may_read,
    new_media,
    read_review_pushes,
    render_review,
    rest_replica,
    screen,
    stamp,
    sync_reply,
)
from hub.validation import (
    Field,
    choice,
    integer,
    list_of,
    path_uuid,
    query_choice,
    query_int,
    query_text,
    read_json,
    string,
    uuid_string,
    validate,
)
from storage.carts import PushStatus
from storage.reviews import (
    ReviewDocument,
    ReviewPush,
    ReviewQuery,
    ReviewRefusal,
    ReviewSort,
    ReviewStatus,
)
from storage.sql_reviews import render_aggregate

routes = web.RouteTableDef()

MAX_PAGE = 100
REPORT_REASONS = ("spam", "abuse", "off_topic", "fake", "personal_data", "other")
REJECT_REASONS = string(1, 64, r"[a-z][a-z0-9_]*")


# (string() refuses lone surrogates too: invalid_text, not text any store or client can hold)
_text = string(0, RULES.max_text)


_MEDIA = list_of(uuid_string, 0, RULES.max_media)
_RATING = integer(1, 5)
CREATE_FIELDS = {
    "rating": Field(_RATING, required=True),
    "text": Field(_text),
    "media": Field(_MEDIA),
}
EDIT_FIELDS = {"rating": Field(_RATING), "text": Field(_text), "media": Field(_MEDIA)}
_SYNC_FIELDS = {"context": Field(lambda v: v), "pushes": Field(lambda v: v)}
REPORT_FIELDS = {"reason": Field(choice(*REPORT_REASONS), required=True)}
DECISION_FIELDS = {
    "action": Field(choice("publish", "reject", "flag"), required=True),
    "reason": Field(REJECT_REASONS),
    "version": Field(integer(0, 2**53 - 1)),
}
_DECISIONS = {
    "publish": ReviewStatus.PUBLISHED,
    "reject": ReviewStatus.REJECTED,
    "flag": ReviewStatus.FLAGGED,
}
_SORTS = frozenset(s.value for s in ReviewSort)


def _viewer(request: web.Request) -> Principal | None:
    viewer: Principal | None = request.get(PRINCIPAL)
    return viewer


async def _readable(request: web.Request) -> ReviewDocument:
    review_id = path_uuid(request, "review_id")
    document = await request.app[STORE].get_review(review_id)
    if document is None or not may_read(_viewer(request), document):
        raise NotFoundError("no such review", code="review_not_found")
    return document


async def _rendered(request: web.Request, document: ReviewDocument) -> dict[str, Any]:
    urls = await media_urls(request.app, document.media) if document.media else {}
    return render_review(document, _viewer(request), urls)


async def _check_media(request: web.Request, owner: str, ids: list[str]) -> None:
    foreign = await owned_media(request.app, owner, ids) if ids else []
    if foreign:
        raise Unprocessable(
            "media ids must name your own uploads (POST /api/v1/media)",
            code="unknown_media",
            media=foreign[:10],
        )


def _raise_refusal(code: str | None, message: str | None) -> None:
    code, message = code or "refused", message or "the edit was refused"
    if code in ("review_exists", "review_gone"):
        raise ConflictError(message, code=code)
    if code == "product_not_found":
        raise NotFoundError(message, code=code)
    raise Unprocessable(message, code=code)


async def _push_one(request: web.Request, review_id: str, author: str, push: ReviewPush) -> ReviewDocument:
    result = await request.app[STORE].push_review(review_id, author, [push], RULES, screen)
    outcome = result.outcomes[0]
    request.app[METRICS].review_pushes.labels(outcome.status.value).inc()
    if outcome.status is PushStatus.REFUSED:
        _raise_refusal(outcome.code, outcome.message)
    assert result.document is not None
    return result.document


Edit = Callable[[Review], Review]


def _minted(review: Review, first: Review, steps: list[Edit]) -> Review:
    """One delta of several edits, each made on the review as the ones before it left it."""
    work = review.merge(first)
    # (onto an empty review — a creation's — the edited copy is the delta itself, the empty review
    # being the merge's identity: each edit applied once, not twice)
    delta = work if review == _EMPTY else first
    for step in steps:
        made = step(work)
        work.apply(made)
        if delta is not work:
            delta.apply(made)
    return delta


_EMPTY = Review.new()  # (never changed: merge copies)


def _adding(replica: str, media_id: str) -> Edit:
    return lambda r: r.add_media(replica, media_id)


def _removing(replica: str, media_id: str) -> Edit:
    return lambda r: r.remove_media(replica, media_id)


def _mutation_id(request: web.Request, minted: str | None = None) -> str:
    """A REST write's mutation id: the Idempotency-Key header if sent (a retry applies once), else new
    (``minted``: an id drawn for this request already, the new review's: no second draw)."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return f"rest-{minted or uuid.uuid4()}"
    try:
        return read_mutation_id(key)
    except CartInputError as exc:
        raise BadRequest(exc.message, code="invalid_idempotency_key") from exc


# -- writing -------------------------------------------------------------------------------------------


@routes.post("/api/v1/products/{product_id}/reviews", name="create_review")
async def create_review(request: web.Request) -> web.StreamResponse:
    who = require(request, "customer")
    product_id = path_uuid(request, "product_id")
    data = validate(await read_json(request), CREATE_FIELDS)
    media: list[str] = data.get("media", [])
    await _check_media(request, who.sub, media)
    review_id = str(uuid.uuid4())
    replica = rest_replica(who.sub)

    def make(review: Review) -> Review:
        steps: list[Edit] = [
            lambda r: r.set_rating(replica, data["rating"], stamp(r, replica)),
            lambda r: r.set_text(replica, data.get("text", ""), stamp(r, replica)),
        ]
        steps += [_adding(replica, m) for m in dict.fromkeys(media)]
        return _minted(review, review.create(review_id, product_id, who.sub), steps)

    # (the store refuses a missing product and a second live review: no reads before the write)
    result = await request.app[STORE].push_review(
        review_id, who.sub, [ReviewPush(_mutation_id(request, review_id), make, new=True)], RULES, screen
    )
    outcome = result.outcomes[0]
    request.app[METRICS].review_pushes.labels(outcome.status.value).inc()
    if outcome.code == "review_exists":
        existing = await request.app[STORE].live_review_of(product_id, who.sub)
        raise ConflictError(
            "you have already reviewed this product: edit that review",
            code="review_exists",
            review_id=existing,
        )
    if outcome.status is PushStatus.REFUSED:
        _raise_refusal(outcome.code, outcome.message)
    document = result.document
    assert document is not None
    return json_response(
        await _rendered(request, document),
        status=201,
        headers={"Location": f"/api/v1/reviews/{review_id}", "ETag": version_etag(document.version)},
    )


@routes.patch("/api/v1/reviews/{review_id}", name="edit_review")
async def edit_review(request: web.Request) -> web.StreamResponse:
    who = require(request, "customer")
    document = await _readable(request)
    if document.author != who.sub:
        raise Forbidden("only the author edits a review", code="not_author")
    data = validate(await read_json(request), EDIT_FIELDS)
    if not data:
        raise BadRequest("send rating, text or media", code="validation_failed")
    wanted: list[str] | None = data.get("media")
    if wanted is not None:
        await _check_media(request, who.sub, [m for m in wanted if m not in document.media])
    replica = rest_replica(who.sub)

    def make(review: Review) -> Review:
        steps: list[Edit] = []
        if "rating" in data:
            steps.append(lambda r: r.set_rating(replica, data["rating"], stamp(r, replica)))
        if "text" in data:
            steps.append(lambda r: r.set_text(replica, data["text"], stamp(r, replica)))
        if wanted is not None:
            value = review.value()
            held = set(value.media) if value is not None else set()
            steps += [_removing(replica, m) for m in sorted(held - set(wanted))]
            steps += [_adding(replica, m) for m in dict.fromkeys(wanted) if m not in held]
        return _minted(review, Review.new(), steps)

    updated = await _push_one(request, document.id, who.sub, ReviewPush(_mutation_id(request), make))
    return json_response(await _rendered(request, updated), headers={"ETag": version_etag(updated.version)})


@routes.delete("/api/v1/reviews/{review_id}", name="delete_review")
async def delete_review(request: web.Request) -> web.StreamResponse:
    who = require(request, "customer", "admin")
    erase = request.query.get("erase", "false")
    if erase not in ("true", "false"):
        raise BadRequest("erase is true or false", code="invalid_parameter", parameter="erase")
    document = await _readable(request)
    own = document.author == who.sub
    if not own and not (erase == "true" and "admin" in who.roles):
        raise Forbidden("only the author deletes a review (admins may erase one)", code="not_author")
    replica = rest_replica(document.author)

    def make(review: Review) -> Review:
        return review.erase(replica) if erase == "true" else review.delete(replica)

    await _push_one(request, document.id, document.author, ReviewPush(_mutation_id(request), make))
    return web.Response(status=204)


@routes.post("/api/v1/reviews/{review_id}/sync", name="sync_review")
async def sync_review(request: web.Request) -> web.StreamResponse:
    who = require(request, "customer")
    review_id = path_uuid(request, "review_id")
    data = validate(await read_json(request), _SYNC_FIELDS)
    try:
        context = read_context(data.get("context"))
        pushes = read_review_pushes(data.get("pushes", []))
    except CartInputError as exc:
        raise BadRequest(exc.message, code=exc.code) from exc
    store = request.app[STORE]
    document = await store.get_review(review_id)
    if document is not None and document.author != who.sub:
        if pushes:
            raise NotFoundError("no such review", code="review_not_found")
        document = None  # another's: answered as a review that does not exist

    acks: list[dict[str, Any]] = []
    if pushes:
        current = document.review if document is not None else None
        for push in pushes:
            assert isinstance(push.delta, Review)
            await _check_media(request, who.sub, new_media(push.delta, current))
        result = await store.push_review(review_id, who.sub, pushes, RULES, screen)
        for outcome in result.outcomes:
            request.app[METRICS].review_pushes.labels(outcome.status.value).inc()
        acks = [render_outcome(o) for o in result.outcomes]
        document = result.document
    if document is None:
        return json_response({"review": None, "acks": acks, "state": None, "context": None, "version": 0})
    lacking = sync_reply(document.review, context)
    assert document.review is not None
    return json_response(
        {
            "review": await _rendered(request, document),
            "acks": acks,
            "state": None if lacking is None else encode_review(lacking, binary=False),
            "context": encode_context(document.review.context),
            "version": document.version,
        },
        headers={"ETag": version_etag(document.version)},
    )


@routes.post("/api/v1/reviews/{review_id}/helpful", name="vote_helpful")
async def vote_helpful(request: web.Request) -> web.StreamResponse:
    who = require(request, "customer")
    review_id = path_uuid(request, "review_id")
    try:
        count, counted = await request.app[STORE].vote_helpful(review_id, who.sub)
    except ReviewRefusal as refusal:
        raise ConflictError(refusal.message, code=refusal.code) from refusal
    return json_response({"review_id": review_id, "helpful": count, "counted": counted})


@routes.post("/api/v1/reviews/{review_id}/reports", name="report_review")
async def report_review(request: web.Request) -> web.StreamResponse:
    who = require(request, "customer")
    review_id = path_uuid(request, "review_id")
    data = validate(await read_json(request), REPORT_FIELDS)
    _document, counted = await request.app[STORE].report_review(review_id, who.sub, data["reason"], RULES)
    return json_response({"review_id": review_id, "reported": counted}, status=202)


@routes.post("/api/v1/reviews/{review_id}/moderation", name="moderate_review")
async def moderate_review(request: web.Request) -> web.StreamResponse:
    require(request, *sorted({"moderator", "admin"}))
    review_id = path_uuid(request, "review_id")
    data = validate(await read_json(request), DECISION_FIELDS)
    status = _DECISIONS[data["action"]]
    reasons = (data["reason"],) if "reason" in data else ()
    if status is ReviewStatus.REJECTED and not reasons:
        raise BadRequest("a rejection names its reason", code="reason_required")
    try:
        document = await request.app[STORE].moderate_review(review_id, status, reasons, data.get("version"))
    except ReviewRefusal as refusal:
        raise ConflictError(refusal.message, code=refusal.code) from refusal
    request.app[METRICS].review_decisions.labels(status.value).inc()
    return json_response(await _rendered(request, document), headers={"ETag": version_etag(document.version)})


# -- reading -------------------------------------------------------------------------------------------


@routes.get("/api/v1/reviews/{review_id}", name="get_review")
async def get_review(request: web.Request) -> web.StreamResponse:
    document = await _readable(request)
    etag = version_etag(document.version)
    if not_modified(request, etag):
        return web.Response(status=304, headers={"ETag": etag})
    return json_response(await _rendered(request, document), headers={"ETag": etag})


def encode_cursor(kind: str, after: tuple[Any, ...]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([kind, *after])).decode().rstrip("=")


def decode_cursor(raw: str, kind: str, length: int) -> tuple[Any, ...]:
    try:
        decoded = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise BadRequest("the cursor is not one this server issued", code="invalid_cursor") from exc
    if (
        not isinstance(decoded, list)
        or len(decoded) != length + 1
        or decoded[0] != kind
        or not all(isinstance(v, int | str) and not isinstance(v, bool) for v in decoded[1:])
    ):
        raise BadRequest("the cursor does not belong to this listing; start again", code="invalid_cursor")
    return tuple(decoded[1:])


def _statuses(request: web.Request, default: tuple[ReviewStatus, ...]) -> tuple[ReviewStatus, ...]:
    raw = request.query.get("status")
    if raw is None:
        return default
    if not is_moderator(_viewer(request)):
        raise Forbidden("only moderators list reviews by status", code="forbidden")
    try:
        return tuple(ReviewStatus(s) for s in dict.fromkeys(raw.split(",")))
    except ValueError as exc:
        raise BadRequest(
            f"status is a comma-separated list of {', '.join(s.value for s in ReviewStatus)}",
            code="invalid_parameter",
            parameter="status",
        ) from exc


async def _listing(request: web.Request, query: ReviewQuery, kind: str, base: str) -> web.StreamResponse:
    try:
        page = await request.app[STORE].list_reviews(query)
    except ValueError as exc:
        raise BadRequest(str(exc), code="invalid_cursor") from exc
    ids = [m for d in page.items for m in d.media]
    urls = await media_urls(request.app, ids) if ids else {}
    viewer = _viewer(request)
    body: dict[str, Any] = {
        "items": [render_review(d, viewer, urls) for d in page.items],
        "next_cursor": encode_cursor(kind, page.next_after) if page.next_after else None,
    }
    if page.next_after:
        query_args = dict(request.query)
        query_args["cursor"] = body["next_cursor"]
        body["next"] = base + "?" + urlencode(query_args)
    return json_response(body)


@routes.get("/api/v1/products/{product_id}/reviews", name="list_reviews")
async def list_reviews(request: web.Request) -> web.StreamResponse:
    product_id = path_uuid(request, "product_id")
    store = request.app[STORE]
    aggregate = await store.rating_of(product_id)
    if aggregate is None:
        raise NotFoundError("no such product", code="product_not_found")
    sort = ReviewSort(query_choice(request, "sort", _SORTS) or "newest")
    with_media = query_choice(request, "with_media", frozenset({"true", "false"}))
    statuses = _statuses(request, (ReviewStatus.PUBLISHED,))
    min_rating = query_int(request, "min_rating", 1, 1, 5)
    max_rating = query_int(request, "max_rating", 5, 1, 5)
    if min_rating > max_rating:
        raise BadRequest("min_rating is at most max_rating", code="invalid_parameter", parameter="min_rating")
    length = 2 if sort is ReviewSort.NEWEST else 3
    cursor = request.query.get("cursor")
    query = ReviewQuery(
        product_id,
        statuses=statuses,
        min_rating=min_rating if min_rating > 1 else None,
        max_rating=max_rating if max_rating < 5 else None,
        with_media=None if with_media is None else with_media == "true",
        author=query_text(request, "author", string(1, 200)),
        q=query_text(request, "q", string(1, 200)),
        sort=sort,
        after=decode_cursor(cursor, sort.value, length) if cursor else None,
        limit=query_int(request, "limit", 20, 1, MAX_PAGE),
    )
    response = await _listing(request, query, sort.value, request.path)
    return response


@routes.get("/api/v1/products/{product_id}/rating", name="get_rating")
async def get_rating(request: web.Request) -> web.StreamResponse:
    product_id = path_uuid(request, "product_id")
    aggregate = await request.app[STORE].rating_of(product_id)
    if aggregate is None:
        raise NotFoundError("no such product", code="product_not_found")
    return json_response({"product_id": product_id, "rating": render_aggregate(aggregate)})


@routes.get("/api/v1/moderation/queue", name="moderation_queue")
async def moderation_queue(request: web.Request) -> web.StreamResponse:
    require(request, *sorted({"moderator", "admin"}))
    statuses = _statuses(request, (ReviewStatus.PENDING, ReviewStatus.FLAGGED))
    product = query_text(request, "product_id", uuid_string)
    cursor = request.query.get("cursor")
    query = ReviewQuery(
        product,
        statuses=statuses,
        author=query_text(request, "author", string(1, 200)),
        oldest_first=True,
        after=decode_cursor(cursor, "queue", 2) if cursor else None,
        limit=query_int(request, "limit", 50, 1, MAX_PAGE),
    )
    return await _listing(request, query, "queue", request.path)
