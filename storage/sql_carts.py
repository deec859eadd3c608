"""Cart documents in SQL: merge a batch of pushed deltas into a cart in one transaction, with their
mutation ids and outbox entries; read a cart; check it out into a reservation (see :mod:`storage.carts`
for the guarantees).

The cart's row is locked first (an ``UPDATE`` that changes nothing but takes the row lock on
PostgreSQL, and SQLite has one writer), so two nodes merging into one cart serialise there; the state is
decoded, merged and written back in that transaction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol, TypeVar

import orjson

from crdt import codec
from crdt.cart import Cart
from storage.carts import (
    HUB_REPLICA,
    CartDocument,
    CartOwner,
    CartPush,
    CartRules,
    CheckoutOutcome,
    CheckoutResult,
    PushOutcome,
    PushResult,
    PushStatus,
    Refusal,
)
from storage.db import Database, Row, Tx
from storage.errors import InsufficientStock, NotFound
from storage.models import ReservationLineRequest
from storage.reservation_caps import CAP_CODE, ReservationCaps
from storage.sql_core import bind_replica, claim_idempotency_key, store_idempotent_outcome
from storage.streams import user_stream

T = TypeVar("T")

_CART_COLUMNS = "id, owner, region, state, version, closed_at, reservation_id, created_at, updated_at"


class _Core(Protocol):
    """What the cart statements need of the store they are part of."""

    db: Database
    region: str
    decoded_carts: DecodedCarts

    async def _write(self, work: Callable[[Tx], Awaitable[T]], *, single_statement: bool = False) -> T: ...
    async def append_event(
        self, tx: Tx, stream: str, key: str, version: int, payload: dict[str, Any], ts: int
    ) -> None: ...
    async def _append(self, tx: Tx, stream: str, key: str, version: int, payload: bytes, ts: int) -> None: ...
    def _appended(self, seq: int, stream: str, key: str, version: int, payload: bytes) -> None: ...
    async def user_event(
        self, tx: Tx, sub: str, payload: dict[str, Any], ts: int, *, region: str | None = None
    ) -> None: ...
    async def _reserve_lines(
        self,
        tx: Tx,
        owner: str,
        lines: Sequence[ReservationLineRequest],
        ttl_seconds: int,
        ts: int,
        *,
        region: str | None = None,
        caps: ReservationCaps | None = None,
    ) -> tuple[Any, dict[str, Any]]: ...


def _now_us() -> int:
    return time.time_ns() // 1000


_LOCKED_SELECT = {
    "sqlite": f"SELECT {_CART_COLUMNS} FROM carts WHERE id = $1",
    "postgres": f"SELECT {_CART_COLUMNS} FROM carts WHERE id = $1 FOR UPDATE",
}
# The same, with the version a mutation id ($2) produced if it was applied before: a push's first
# question answered in the statement that locks the cart.
_SEEN = "(SELECT version FROM cart_mutations WHERE cart_id = $1 AND mutation_id = $2) AS seen"
_LOCKED_SELECT_SEEN = {
    "sqlite": f"SELECT {_CART_COLUMNS}, {_SEEN} FROM carts WHERE id = $1",
    "postgres": f"SELECT {_CART_COLUMNS}, {_SEEN} FROM carts WHERE id = $1 FOR UPDATE",
}


class DecodedCarts:
    """The decoded states of the carts a store read or wrote lately, by id: (version, updated_at,
    state). A row whose version and update time match holds the same bytes — both change with every
    write that commits, and a write that rolled back changed neither — so its state is not decoded
    again. Cart states are immutable values here (merge returns a new one)."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._states: dict[str, tuple[int, int, Cart]] = {}

    def get(self, cart_id: str, version: int, updated_at: int) -> Cart | None:
        known = self._states.get(cart_id)
        return known[2] if known is not None and known[0] == version and known[1] == updated_at else None

    def put(self, cart_id: str, version: int, updated_at: int, cart: Cart) -> None:
        states = self._states
        states.pop(cart_id, None)
        if len(states) >= self._size:
            del states[next(iter(states))]  # the least recently put
        states[cart_id] = (version, updated_at, cart)


def _document(row: Row, decoded: DecodedCarts) -> CartDocument:
    cart_id, version, updated_at = row["id"], row["version"], row["updated_at"]
    cart = decoded.get(cart_id, version, updated_at)
    if cart is None:
        state = row["state"]
        cart = codec.from_msgpack(bytes(state)) if state else Cart.new()
        decoded.put(cart_id, version, updated_at, cart)
    return CartDocument(
        id=row["id"],
        owner=row["owner"],
        region=row["region"],
        cart=cart,
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        closed_at=row["closed_at"],
        reservation_id=row["reservation_id"],
    )


class CartSql:
    async def cart_owner(self: _Core, cart_id: str) -> CartOwner | None:
        async def work(tx: Tx) -> Row | None:
            return await tx.fetchrow("SELECT owner, region FROM carts WHERE id = $1", cart_id)

        row = await self.db.run(work, readonly=True, single_statement=True)
        return None if row is None else CartOwner(str(row["owner"]), str(row["region"]))

    async def get_cart(self: _Core, cart_id: str) -> CartDocument | None:
        async def work(tx: Tx) -> Row | None:
            return await tx.fetchrow(f"SELECT {_CART_COLUMNS} FROM carts WHERE id = $1", cart_id)

        row = await self.db.run(work, readonly=True, single_statement=True)
        return None if row is None else _document(row, self.decoded_carts)

    async def _locked_cart(self: _Core, tx: Tx, cart_id: str, owner: str, ts: int) -> CartDocument:
        """The cart, created for ``owner`` if new, with its row locked for this transaction: PostgreSQL
        locks the row read ``FOR UPDATE``; SQLite's write transaction holds the whole database."""
        return (await CartSql._locked_cart_row(self, tx, cart_id, owner, ts, None))[0]

    async def _locked_cart_row(
        self: _Core, tx: Tx, cart_id: str, owner: str, ts: int, mutation_id: str | None
    ) -> tuple[CartDocument, int | None]:
        """:meth:`_locked_cart`, and the version ``mutation_id`` produced if it was applied before."""
        args: tuple[str, ...] = (cart_id,) if mutation_id is None else (cart_id, mutation_id)
        select = (_LOCKED_SELECT if mutation_id is None else _LOCKED_SELECT_SEEN)[self.db.dialect]
        row = await tx.fetchrow(select, *args)
        if row is None:
            await tx.execute(
                f"INSERT INTO carts ({_CART_COLUMNS}) VALUES ($1, $2, $3, $4, 0, NULL, NULL, $5, $5)"
                " ON CONFLICT (id) DO NOTHING",
                cart_id,
                owner,
                self.region,
                b"",
                ts,
            )
            row = await tx.fetchrow(select, *args)
            assert row is not None
        if row["owner"] != owner:
            raise NotFound("no such cart", resource="cart")
        seen = row["seen"] if mutation_id is not None else None
        return _document(row, self.decoded_carts), seen

    async def open_cart(self: _Core, cart_id: str, owner: str) -> CartDocument:
        """The cart, created empty for ``owner`` if it does not exist; NotFound if it is another's."""

        async def work(tx: Tx) -> CartDocument:
            return await CartSql._locked_cart(self, tx, cart_id, owner, _now_us())

        return await self._write(work)

    async def push_cart(
        self: _Core, cart_id: str, owner: str, pushes: Sequence[CartPush], rules: CartRules
    ) -> PushResult:
        async def work(tx: Tx) -> PushResult:
            ts = _now_us()
            first = pushes[0].mutation_id if pushes else None
            document, seen_first = await CartSql._locked_cart_row(self, tx, cart_id, owner, ts, first)
            cart, version = document.cart, document.version
            outcomes: list[PushOutcome] = []
            changed = False
            applied: dict[str, int] = {}  # mutation id → version, for the writes after the loop
            events: list[tuple[int, bytes]] = []  # (version, payload) of the cart's outbox entries
            for index, push in enumerate(pushes):
                if push.mutation_id in applied:
                    seen: int | None = applied[push.mutation_id]
                elif index == 0:
                    seen = seen_first
                else:
                    row = await tx.fetchrow(
                        "SELECT version FROM cart_mutations WHERE cart_id = $1 AND mutation_id = $2",
                        cart_id,
                        push.mutation_id,
                    )
                    seen = None if row is None else row["version"]
                if seen is not None:
                    outcomes.append(PushOutcome(push.mutation_id, PushStatus.DUPLICATE, seen))
                    continue
                try:
                    delta = push.delta if isinstance(push.delta, Cart) else push.delta(cart)
                    merged = await _checked_merge(tx, cart, delta, owner, rules, ts)
                except Refusal as refusal:
                    outcomes.append(
                        PushOutcome(
                            push.mutation_id, PushStatus.REFUSED, version, refusal.code, refusal.message
                        )
                    )
                    continue
                if merged != cart:
                    cart = merged
                    version += 1
                    changed = True
                    event: dict[str, Any] = {
                        "type": "cart.delta",
                        "cart_id": cart_id,
                        "version": version,
                        "mutation_id": push.mutation_id,
                        "delta": codec.to_dict(delta),
                        "ts": ts,
                    }
                    if push.origin is not None:
                        event["origin"] = push.origin
                    events.append((version, orjson.dumps(event)))
                applied[push.mutation_id] = version
                outcomes.append(PushOutcome(push.mutation_id, PushStatus.APPLIED, version))
            if applied:
                stream = user_stream(document.region, owner)
                await CartSql._write_pushes(
                    self, tx, cart_id, stream, cart if changed else None, version, ts, events, applied
                )
            if changed:
                self.decoded_carts.put(cart_id, version, ts, cart)
            if not changed:
                return PushResult(document, outcomes)
            # (Written out, not dataclasses.replace: this runs once per push, and replace costs ~10 µs.)
            updated = CartDocument(
                id=document.id,
                owner=document.owner,
                region=document.region,
                cart=cart,
                version=version,
                created_at=document.created_at,
                updated_at=ts,
                closed_at=document.closed_at,
                reservation_id=document.reservation_id,
            )
            return PushResult(updated, outcomes)

        return await self._write(work)

    async def _write_pushes(
        self: _Core,
        tx: Tx,
        cart_id: str,
        stream: str,
        cart: Cart | None,
        version: int,
        ts: int,
        events: list[tuple[int, bytes]],
        applied: dict[str, int],
    ) -> None:
        """The writes of a push batch: its outbox entries (in version order), its mutation ids, and the
        cart's new state (``cart``; None: unchanged). On PostgreSQL one statement — a round trip each
        was most of a push's cost there; SQLite runs its statements in process."""
        key = f"cart:{cart_id}"
        if self.db.dialect != "postgres":
            for event_version, payload in events:
                await self._append(tx, stream, key, event_version, payload, ts)
            for mutation_id, mutation_version in applied.items():
                await tx.execute(
                    "INSERT INTO cart_mutations (cart_id, mutation_id, version, created_at)"
                    " VALUES ($1, $2, $3, $4)",
                    cart_id,
                    mutation_id,
                    mutation_version,
                    ts,
                )
            if cart is not None:
                await _save(tx, cart_id, cart, version, ts)
            return
        rows = await tx.fetch(
            "WITH o AS ("
            " INSERT INTO outbox (product_id, warehouse_id, payload, created_at, stream, dedupe_key, version)"
            " SELECT '', '', e.payload, $1, $2, $3, e.version"
            " FROM unnest($4::TEXT[], $5::BIGINT[]) WITH ORDINALITY AS e(payload, version, n) ORDER BY e.n"
            " RETURNING seq, version),"
            " m AS (INSERT INTO cart_mutations (cart_id, mutation_id, version, created_at)"
            " SELECT $6, x.mutation_id, x.version, $1"
            " FROM unnest($7::TEXT[], $8::BIGINT[]) AS x(mutation_id, version)),"
            " u AS (UPDATE carts SET state = $9, version = $10, updated_at = $1"
            " WHERE id = $6 AND $11::BOOLEAN)"
            " SELECT seq, version FROM o ORDER BY seq",
            ts,
            stream,
            key,
            [payload.decode() for _, payload in events],
            [event_version for event_version, _ in events],
            cart_id,
            list(applied),
            list(applied.values()),
            codec.to_msgpack(cart) if cart is not None else b"",
            version,
            cart is not None,
        )
        payloads = dict(events)
        for row in rows:
            self._appended(row["seq"], stream, key, row["version"], payloads[row["version"]])

    async def purge_cart_mutations(self: _Core, older_than_us: int) -> int:
        """Forget the mutation ids applied before ``older_than_us``; return how many. A push retried
        after that is merged again, which changes nothing (a join is idempotent): it is answered
        ``applied`` with the cart's current version instead of ``duplicate``."""

        async def work(tx: Tx) -> int:
            return await tx.execute("DELETE FROM cart_mutations WHERE created_at < $1", older_than_us)

        return await self._write(work, single_statement=True)

    async def checkout_cart(
        self: _Core,
        cart_id: str,
        owner: str,
        idempotency_key: str,
        request_hash: str,
        ttl_seconds: int,
        caps: ReservationCaps | None = None,
    ) -> CheckoutResult:
        """Close the cart (the hub's replica checks it out) and reserve its lines, all or nothing and
        within ``caps``, in one transaction; the outcome is stored under (owner, idempotency key) as a
        reservation's is. A cart that cannot be reserved stays open."""

        async def work(tx: Tx) -> CheckoutResult:
            ts = _now_us()
            document = await CartSql._locked_cart(self, tx, cart_id, owner, ts)
            prior = await claim_idempotency_key(tx, owner, idempotency_key, request_hash, ts)
            if prior is not None:
                stored = json.loads(prior[1])
                return CheckoutResult(CheckoutOutcome(stored["outcome"]), stored["body"], True, document)
            outcome, body, document = await CartSql._checkout(self, tx, document, ttl_seconds, ts, caps)
            # (status 1: a checkout's outcome, its body says which; a reservation's are 201/404/409)
            stored = json.dumps({"outcome": outcome.value, "body": body}, separators=(",", ":"))
            await store_idempotent_outcome(tx, owner, idempotency_key, 1, stored)
            return CheckoutResult(outcome, body, False, document)

        return await self._write(work)

    async def _checkout(
        self: _Core, tx: Tx, document: CartDocument, ttl_seconds: int, ts: int, caps: ReservationCaps | None
    ) -> tuple[CheckoutOutcome, dict[str, Any], CartDocument]:
        if document.closed_at is not None:
            return (
                CheckoutOutcome.RESERVED,
                {"reservation_id": document.reservation_id, "already_closed": True},
                document,
            )
        value = document.cart.value()
        if not value:
            return CheckoutOutcome.EMPTY_CART, {"detail": "the cart has no lines"}, document
        rows = await tx.fetch(
            "SELECT id, sku FROM products WHERE sku IN ("
            + ", ".join(f"${i + 1}" for i in range(len(value)))
            + ")",
            *value,
        )
        product_of = {row["sku"]: row["id"] for row in rows}
        missing = sorted(set(value) - product_of.keys())
        if missing:
            return (
                CheckoutOutcome.PRODUCT_NOT_FOUND,
                {"detail": "a line's product no longer exists", "skus": missing},
                document,
            )
        lines = [ReservationLineRequest(product_of[sku], quantity) for sku, quantity in sorted(value.items())]
        _status, body = await self._reserve_lines(
            tx, document.owner, lines, ttl_seconds, ts, region=document.region, caps=caps
        )
        if body.get("code") == InsufficientStock.code:
            return CheckoutOutcome.INSUFFICIENT_STOCK, body, document
        if body.get("code") == CAP_CODE:
            return CheckoutOutcome.CAP_EXCEEDED, body, document
        if "code" in body:
            return CheckoutOutcome.PRODUCT_NOT_FOUND, body, document
        delta = document.cart.close(HUB_REPLICA)
        cart = document.cart.merge(delta)
        version = document.version + 1
        reservation_id = str(body["id"])
        await _save(tx, document.id, cart, version, ts)
        await tx.execute(
            "UPDATE carts SET closed_at = $2, reservation_id = $3 WHERE id = $1",
            document.id,
            ts,
            reservation_id,
        )
        await self.append_event(
            tx,
            user_stream(document.region, document.owner),
            f"cart:{document.id}",
            version,
            {
                "type": "cart.closed",
                "cart_id": document.id,
                "version": version,
                "reservation_id": reservation_id,
                "delta": codec.to_dict(delta),
                "ts": ts,
            },
            ts,
        )
        await self.user_event(
            tx,
            document.owner,
            {
                "type": "cart.status",
                "cart_id": document.id,
                "status": "checked_out",
                "reservation_id": reservation_id,
            },
            ts,
            region=document.region,
        )
        closed = replace(
            document, cart=cart, version=version, updated_at=ts, closed_at=ts, reservation_id=reservation_id
        )
        return CheckoutOutcome.RESERVED, body, closed


async def _save(tx: Tx, cart_id: str, cart: Cart, version: int, ts: int) -> None:
    # The state's bytes hold the causal context, which every reply takes from the decoded state (a
    # JSON copy in a column of its own, read by nothing, cost ~1% of a push: migration 15 dropped it).
    await tx.execute(
        "UPDATE carts SET state = $2, version = $3, updated_at = $4 WHERE id = $1",
        cart_id,
        codec.to_msgpack(cart),
        version,
        ts,
    )


async def _checked_merge(tx: Tx, cart: Cart, delta: Cart, owner: str, rules: CartRules, ts: int) -> Cart:
    """``cart`` merged with ``delta``, if the delta keeps the rules (storage.carts); Refusal if not.
    Every check runs before anything is written, so a refused delta changes nothing."""
    if delta.entry_count() > rules.max_entries:
        raise Refusal("delta_too_large", f"a delta holds at most {rules.max_entries} entries")
    if delta.max_entry_amount() > rules.max_quantity:
        raise Refusal("quantity_out_of_range", f"a line holds 0 to {rules.max_quantity} units")
    if not delta.snapshot_within(cart):
        raise Refusal("checkout_required", "a device cannot check a cart out: POST …/checkout")
    stamp = delta.max_timestamp()
    if stamp is not None and stamp.wall_ms > ts // 1000 + rules.max_drift_ms:
        raise Refusal(
            "clock_skew",
            f"the delta's clock is {stamp.wall_ms - ts // 1000} ms ahead of the hub's"
            f" (at most {rules.max_drift_ms}): set it from the hub's time and write again",
        )
    # A writer the cart has heard from was bound to its owner when its first write was merged: only
    # the others are looked up. The hub's own ('~') may not write anything the cart has not seen.
    heard = cart.writers()
    writers = delta.writers()
    hubs = [replica for replica in writers if replica.startswith("~")]
    if hubs and any(replica.startswith("~") for replica in delta.new_replicas(cart.context)):
        raise Refusal("foreign_replica", f"replica ids starting with '~' are the hub's ({hubs[0][:40]!r})")
    unbound: list[str] = []
    for replica in sorted(writers - heard):
        bound = await tx.fetchrow("SELECT owner FROM replicas WHERE replica_id = $1", replica)
        if bound is None:
            unbound.append(replica)
        elif bound["owner"] != owner:
            raise Refusal("foreign_replica", f"replica {replica[:40]!r} belongs to another user")
    skus = sorted(delta.entry_skus() - cart.entry_skus())
    if skus:
        rows = await tx.fetch(
            "SELECT sku FROM products WHERE sku IN ("
            + ", ".join(f"${i + 1}" for i in range(len(skus)))
            + ")",
            *skus,
        )
        unknown = sorted(set(skus) - {row["sku"] for row in rows})
        if unknown:
            raise Refusal("unknown_sku", f"not in the catalog: {', '.join(unknown)[:200]}")
    merged = cart.merge(delta)
    _check_bounds(cart, delta, merged, rules)
    if unbound:
        # Bound on first use. Two users' concurrent first pushes with one id: the second's insert does
        # nothing and the re-read below refuses it — in a savepoint, so that the refusal takes back the
        # delta's other replicas bound before it.
        async with tx.savepoint():
            for replica in unbound:
                if await bind_replica(tx, replica, owner, ts) != owner:
                    raise Refusal("foreign_replica", f"replica {replica[:40]!r} belongs to another user")
    return merged


def _check_bounds(cart: Cart, delta: Cart, merged: Cart, rules: CartRules) -> None:
    """The live cart keeps at most ``max_lines`` lines (a line set to 0 is one) of at most
    ``max_quantity`` units — also once checked out, where edits keep arriving. A delta may not take the
    cart past a bound; a cart already past one (under older rules) may still be edited down. Only the
    lines the delta can change are looked at: a push costs its own lines, not the whole cart's."""
    before = cart.live_skus()
    if not delta.entry_skus() <= before:  # only a line the cart has no entry in adds to the count
        after = len(merged.live_skus())
        if after > rules.max_lines and after > len(before):
            raise Refusal("cart_too_large", f"a cart holds at most {rules.max_lines} lines")
    touched = cart.lines_touched_by(delta)
    for sku in merged.live_skus() if touched is None else touched:
        quantity = merged.live_line(sku).quantity
        if quantity > rules.max_quantity and quantity > cart.live_line(sku).quantity:
            raise Refusal(
                "quantity_out_of_range", f"{sku[:60]}: a line holds 0 to {rules.max_quantity} units"
            )


__all__ = ["CartSql"]
