"""Offline documents: a cart or a review replica on the device, edited without a connection and
brought to agreement with the hub whenever there is one (docs/protocol.md, Carts and Reviews).

An edit is a delta of the replica (``crdt/``, the hub's own merge rules), written to the
:class:`~synchub_client.offline.OfflineStore` with a fresh mutation id **before** it is shipped. A pump
per document then, on every (re)connection: ``sync`` (the hub answers what the replica lacks; merged),
``push`` every queued delta in order (dropped from the queue at its ``ack``, ``applied`` or
``duplicate``), and follows the cart's channel for other devices' edits. Over a WebSocket this is the
``sync``/``push`` messages; over SSE or long-poll, ``POST …/sync`` with the pushes.

A refused push (``unknown_sku``, ``quantity_out_of_range``, …) is dropped from the queue and kept in
:attr:`Document.refused`; the replica is then rebuilt as the protocol says — the hub's whole state
(a sync from an empty context, taken as the state) plus the deltas still queued, under a new replica id
— so the refused edit leaves the replica too. The app reads ``value``, ``conflicts`` and the
checkout's ``rejected_edits`` from the replica, and hears of every change through ``listeners``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aiohttp

from crdt import codec
from crdt.cart import Cart, Line, RejectedEdit
from crdt.hlc import HybridClock, Timestamp
from crdt.review import Review, ReviewValue
from crdt.wire import encode_context
from synchub_client.client import Client, Subscription
from synchub_client.errors import ConnectionLost, HttpError, NotConnected, SyncHubError
from synchub_client.events import Ended, Event, Item, Resync, Transport
from synchub_client.offline import OfflineStore, Pending, RefusedEdit
from synchub_client.wire import crdt_from_wire, crdt_to_wire

log = logging.getLogger("synchub_client")

T = TypeVar("T", Cart, Review)
PUSH_BATCH = 50  # REST takes 100 a request; a WebSocket message rate's burst is 100
WS_DELTA_LIMIT = 12 * 1024  # MessagePack bytes of a delta pushed over a WebSocket (messages ≤ 16 KiB)
RETRYABLE = frozenset({"store_unavailable", "store_error", "broker_unavailable", "rate_limited"})


class _RetryLater(SyncHubError):
    pass


@dataclass(frozen=True, slots=True)
class Change:
    """What moved a document: ``local`` (an edit), ``remote`` (another device's, from the hub),
    ``acked``, ``refused`` (see ``Document.refused``), ``synced``, ``rebuilt`` or ``error`` (see
    ``Document.error``: the hub refused the document itself, e.g. no token; retried with backoff)."""

    kind: str
    document: Document[Any]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Document(Generic[T]):
    kind: str = ""
    new_state: Callable[[], T]

    def __init__(self, client: Client, store: OfflineStore, doc_id: str) -> None:
        self.client = client
        self.store = store
        self.doc_id = doc_id
        stored = store.load(self.kind, doc_id)
        self.state: T
        if stored is None:
            replica = store.new_replica()
            state = self.new_state()
            store.create(self.kind, doc_id, replica, codec.to_msgpack(state))
            self.replica, self.state, self.status, self.version = replica, state, None, 0
        else:
            loaded = codec.from_msgpack(stored.state)
            self.replica, self.state = stored.replica, loaded
            self.status, self.version = stored.status, stored.version
        self.clock = HybridClock(self.replica, _now_ms)
        self.listeners: list[Callable[[Change], None]] = []
        self.synced = False  # a sync answered since the last (re)connection
        self.deleted = False
        self.error: Exception | None = None  # why the last round failed, when the hub refused it
        self._failures = 0
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._wake.set()
        self._pump_task: asyncio.Task[None] | None = None
        self._sub: Subscription | None = None

    # -- reading --------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Edits not yet acknowledged by the hub."""
        return self.store.pending_count(self.kind, self.doc_id)

    @property
    def refused(self) -> list[RefusedEdit]:
        return self.store.refused(self.kind, self.doc_id)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float | None = None) -> None:
        async def wait() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)

    def sync_now(self) -> None:
        """Ask the hub again for what this replica lacks (reviews have no channel: pull their changes)."""
        self.synced = False
        self._wake.set()

    async def wait_synced(self, timeout: float | None = None) -> None:
        """Until every edit is acknowledged and the replica has synced since the last connection."""
        await self.wait_until(lambda: self.synced and self.pending == 0, timeout)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._pump_task is None:
            self.client.on_connect(self._on_connect)
            self._pump_task = asyncio.create_task(self._pump(), name=f"synchub-{self.kind}-{self.doc_id}")

    async def stop(self) -> None:
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task
            self._pump_task = None

    def _notify(self, kind: str) -> None:
        self._changed.set()
        change = Change(kind, self)
        for listener in list(self.listeners):
            listener(change)

    # -- editing (write-ahead) ------------------------------------------------------------------

    def _edit(self, op: dict[str, Any], delta: T) -> T:
        state = self.state.merge(delta)
        self.store.record_edit(self.kind, self.doc_id, codec.to_msgpack(state), codec.to_msgpack(delta), op)
        self.state = state
        self._notify("local")
        self._wake.set()
        return delta

    def _timestamp(self) -> Timestamp:
        return self.clock.now()

    # -- the pump -------------------------------------------------------------------------------

    async def _on_connect(self) -> None:
        self.synced = False
        self._wake.set()

    async def _pump(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.client.wait_connected()
                await self._round()
            except (
                _RetryLater,
                ConnectionLost,
                NotConnected,
                aiohttp.ClientError,
                OSError,
                TimeoutError,
            ) as exc:
                log.debug("synchub %s %s: retrying after %r", self.kind, self.doc_id, exc)
                self.synced = False
                await asyncio.sleep(0.2 + self.client.backoff.rng.uniform(0, 0.5))
                self._wake.set()
            except Exception as exc:  # the hub refuses the document itself (no token, not the user's…)
                if self.client.closed:
                    return
                log.warning("synchub %s %s: %r", self.kind, self.doc_id, exc)
                self.error = exc
                self._failures += 1
                self._notify("error")
                await asyncio.sleep(min(30.0, 2.0**self._failures))
                self._wake.set()
            else:
                self.error, self._failures = None, 0

    async def _round(self) -> None:
        if self.deleted:
            return
        rebuild = False
        if self.client.transport is Transport.WEBSOCKET:
            if not self.synced:
                await self._apply_synced(await self._ws_sync(self._context()))
            while rows := self.store.pending(self.kind, self.doc_id, PUSH_BATCH):
                # A WebSocket message is at most 16 KiB: a larger delta goes through POST …/sync.
                limit = WS_DELTA_LIMIT if self.client.binary else WS_DELTA_LIMIT // 2
                large = [i for i, row in enumerate(rows) if len(row.delta) > limit]
                if large and large[0] == 0:
                    body = await self._rest_sync(self._context(), rows[:1])
                    rebuild |= self._apply_acks(body.get("acks", []))
                    self._merge_remote(body.get(self.rest_state_key))
                    self._save()
                    continue
                rebuild |= await self._ws_push(rows[: large[0]] if large else rows)
        else:
            rows = self.store.pending(self.kind, self.doc_id, PUSH_BATCH)
            while True:
                body = await self._rest_sync(self._context(), rows)
                rebuild |= self._apply_acks(body.get("acks", []))
                self._merge_remote(body.get(self.rest_state_key))
                self.version = int(body.get("version") or self.version)
                self._save()
                self.synced = True
                rows = self.store.pending(self.kind, self.doc_id, PUSH_BATCH)
                if not rows:
                    break
        if rebuild:
            await self._rebuild()
        await self._follow()
        self._notify("synced")

    def _context(self) -> dict[str, Any]:
        return encode_context(self.state.context)

    def _save(self) -> None:
        self.store.save(self.kind, self.doc_id, codec.to_msgpack(self.state), self.status, self.version)

    def _merge_remote(self, raw: Any) -> bool:
        if raw is None:
            return False
        delta = crdt_from_wire(raw)
        if not isinstance(delta, type(self.state)):
            raise SyncHubError(f"a {type(delta).__name__} where a {self.kind} was expected")
        self.state = self.state.merge(delta)
        return True

    async def _ws_sync(self, context: dict[str, Any] | None) -> dict[str, Any]:
        reply = await self.client.request({"type": "sync", self.kind: self.doc_id, "context": context})
        if reply.get("type") == "error":
            self._error(reply)
        return reply

    async def _apply_synced(self, reply: dict[str, Any]) -> None:
        self._merge_remote(reply.get("delta"))
        self.version = int(reply.get("version") or self.version)
        self.status = reply.get("status") or self.status
        self._save()
        self.synced = True
        self._notify("remote")

    async def _ws_push(self, rows: list[Pending]) -> bool:
        binary = self.client.binary
        messages = [
            {
                "type": "push",
                self.kind: self.doc_id,
                "mutation_id": row.mutation_id,
                "delta": row.delta if binary else crdt_to_wire(codec.from_msgpack(row.delta), binary=False),
            }
            for row in rows
        ]
        replies = await asyncio.gather(*(self.client.request(m) for m in messages))
        acks: list[dict[str, Any]] = []
        for row, reply in zip(rows, replies, strict=True):
            if reply.get("type") == "ack":
                acks.append(reply)
            elif reply.get("mutation_id") == row.mutation_id and reply.get(self.kind) == self.doc_id:
                acks.append({"mutation_id": row.mutation_id, "status": "refused", **reply})
            else:
                self._apply_acks(acks)
                self._error(reply)
        return self._apply_acks(acks)

    def _apply_acks(self, acks: list[dict[str, Any]]) -> bool:
        """Drop acknowledged rows, record refused ones; True when one was refused (rebuild)."""
        done = [a["mutation_id"] for a in acks if a.get("status") in ("applied", "duplicate")]
        self.store.acknowledge(done)
        for ack in acks:
            if ack.get("status") in ("applied", "duplicate"):
                self.version = max(self.version, int(ack.get("version") or 0))
                self._on_ack(ack)
        refused = [a for a in acks if a.get("status") == "refused"]
        for ack in refused:
            self.store.refuse(
                self.kind, self.doc_id, ack["mutation_id"], str(ack.get("code")), str(ack.get("message"))
            )
            self._notify("refused")
        if done:
            self._notify("acked")
        return bool(refused)

    def _on_ack(self, ack: dict[str, Any]) -> None:
        pass

    def _error(self, reply: dict[str, Any]) -> None:
        code = str(reply.get("code"))
        if code in RETRYABLE:
            raise _RetryLater(code)
        if code in ("cart_not_found", "review_not_found"):
            self.deleted = True
            self.status = "deleted"
            self._notify("remote")
        raise SyncHubError(f"{self.kind} {self.doc_id}: {code} {reply.get('message', '')}")

    async def _rest_sync(self, context: dict[str, Any] | None, rows: list[Pending]) -> dict[str, Any]:
        pushes = [
            {"mutation_id": r.mutation_id, "delta": codec.to_dict(codec.from_msgpack(r.delta))} for r in rows
        ]
        status, body = await self.client.http(
            "POST",
            f"/api/v1/{self.kind}s/{self.doc_id}/sync",
            json_body={"context": context, "pushes": pushes},
        )
        if status == 200 and isinstance(body, dict):
            return body
        if isinstance(body, dict) and body.get("code"):
            self._error({"code": body["code"], "message": body.get("detail", "")})
        raise HttpError(status, body)

    async def _rebuild(self) -> None:
        """After a refusal: the hub's whole state, plus what is still queued, under a new replica id."""
        if self.client.transport is Transport.WEBSOCKET:
            whole_raw = (await self._ws_sync(None)).get("delta")
        else:
            whole_raw = (await self._rest_sync(None, [])).get(self.rest_state_key)
        state = crdt_from_wire(whole_raw) if whole_raw is not None else self.new_state()
        for row in self.store.pending(self.kind, self.doc_id):
            state = state.merge(codec.from_msgpack(row.delta))
        replica = self.store.new_replica()
        self.store.replace(self.kind, self.doc_id, replica, codec.to_msgpack(state))
        self.replica, self.state = replica, state
        last = self.clock.last
        self.clock = HybridClock(replica, _now_ms)
        self.clock.last = Timestamp(last.wall_ms, last.logical, replica)
        self._notify("rebuilt")

    async def _follow(self) -> None:
        """Subscribe to the document's channel, if it has one (a cart has; a review has not)."""

    rest_state_key = "delta"


class CartDocument(Document[Cart]):
    """A cart on this device. ``add``, ``set`` and ``remove`` work offline; they are durable when
    they return."""

    kind = "cart"
    new_state = Cart.new

    @property
    def value(self) -> dict[str, int]:
        return self.state.value()

    @property
    def lines(self) -> dict[str, Line]:
        return self.state.lines()

    @property
    def conflicts(self) -> dict[str, tuple[int, ...]]:
        """Per SKU, the quantities that lost a concurrent "set quantity" (changed on another device)."""
        return self.state.conflicts()

    @property
    def rejected_edits(self) -> list[RejectedEdit]:
        """Edits the checkout did not see: kept, never applied."""
        return self.state.rejected_edits()

    @property
    def closed(self) -> bool:
        return self.state.closed

    def add(self, sku: str, amount: int = 1) -> Cart:
        return self._edit(
            {"op": "add", "sku": sku, "quantity": amount}, self.state.add(self.replica, sku, amount)
        )

    def set(self, sku: str, quantity: int) -> Cart:
        delta = self.state.set(self.replica, sku, quantity, self._timestamp())
        return self._edit({"op": "set", "sku": sku, "quantity": quantity}, delta)

    def remove(self, sku: str) -> Cart:
        return self._edit({"op": "remove", "sku": sku}, self.state.remove(self.replica, sku))

    async def _follow(self) -> None:
        sub = self._sub
        if sub is not None and sub.ended is None:
            return
        sub = self.client.subscribe(f"cart:{self.doc_id}", on_resync=self._resync)
        sub.listeners.append(self._on_item)
        self._sub = sub
        await sub.ready.wait()
        if sub.ended is None:  # what was written between the first sync and the subscription
            if self.client.transport is Transport.WEBSOCKET:
                await self._apply_synced(await self._ws_sync(self._context()))
            else:
                body = await self._rest_sync(self._context(), [])
                self._merge_remote(body.get("delta"))
                self._save()

    async def _resync(self, resync: Resync) -> str | None:
        self.synced = False
        self._wake.set()
        return resync.position

    def _on_item(self, item: Item) -> None:
        if isinstance(item, Ended):  # refused (a cart not made yet) or stopped: the next round asks again
            self._sub = None
            return
        if not isinstance(item, Event):
            return
        data = item.data
        kind = data.get("type")
        if kind in ("cart.delta", "cart.closed"):
            try:
                self._merge_remote(data.get("delta"))
            except (codec.CodecError, SyncHubError) as exc:
                log.warning("synchub cart %s: an undecodable event delta: %r", self.doc_id, exc)
                return
            version = int(data.get("version") or 0)
            if version > self.version + 1 and self.version:
                self.synced = False  # a jump: something was missed, sync
                self._wake.set()
            self.version = max(self.version, version)
            if kind == "cart.closed":
                self.status = "checked_out"
            self._save()
            self._notify("remote")
        elif kind == "cart.deleted":
            self.deleted = True
            self.status = "deleted"
            self._save()
            self._notify("remote")


class ReviewDocument(Document[Review]):
    """A review written on this device (its author's). ``create`` names it; the other edits work
    offline. ``review_status`` is the hub's judgment after the last acknowledged push."""

    kind = "review"
    new_state = Review.new
    rest_state_key = "state"

    def __init__(self, client: Client, store: OfflineStore, doc_id: str) -> None:
        super().__init__(client, store, doc_id)
        self.review_status: str | None = None
        self.reasons: list[str] = []

    @property
    def value(self) -> ReviewValue | None:
        return self.state.value()

    def create(self, product_id: str, author: str) -> Review:
        delta = self.state.create(self.doc_id, product_id, author)
        return self._edit({"op": "create", "product": product_id, "author": author}, delta)

    def set_rating(self, rating: int) -> Review:
        return self._edit(
            {"op": "rating", "rating": rating}, self.state.set_rating(self.replica, rating, self._timestamp())
        )

    def set_text(self, text: str) -> Review:
        return self._edit(
            {"op": "text", "text": text}, self.state.set_text(self.replica, text, self._timestamp())
        )

    def add_media(self, media_id: str) -> Review:
        return self._edit(
            {"op": "add_media", "media": media_id}, self.state.add_media(self.replica, media_id)
        )

    def remove_media(self, media_id: str) -> Review:
        return self._edit(
            {"op": "remove_media", "media": media_id}, self.state.remove_media(self.replica, media_id)
        )

    def delete(self) -> Review:
        return self._edit({"op": "delete"}, self.state.delete(self.replica))

    def _on_ack(self, ack: dict[str, Any]) -> None:
        if ack.get("review_status"):
            self.review_status = str(ack["review_status"])
            self.reasons = list(ack.get("reasons") or [])

    async def _apply_synced(self, reply: dict[str, Any]) -> None:
        await super()._apply_synced(reply)
        if reply.get("status"):
            self.review_status = str(reply["status"])


class Documents:
    """The device's documents, in one offline store, kept in sync through one client."""

    def __init__(self, client: Client, store: OfflineStore | str) -> None:
        self.client = client
        self.store = OfflineStore(store) if isinstance(store, str) else store
        self._open: dict[tuple[str, str], Document[Any]] = {}

    def cart(self, cart_id: str) -> CartDocument:
        doc = self._open.get(("cart", cart_id))
        if doc is None:
            doc = self._open[("cart", cart_id)] = CartDocument(self.client, self.store, cart_id)
            doc.start()
        assert isinstance(doc, CartDocument)
        return doc

    def review(self, review_id: str) -> ReviewDocument:
        doc = self._open.get(("review", review_id))
        if doc is None:
            doc = self._open[("review", review_id)] = ReviewDocument(self.client, self.store, review_id)
            doc.start()
        assert isinstance(doc, ReviewDocument)
        return doc

    def resume_all(self) -> list[Document[Any]]:
        """Open every document of the store (after a restart: their queued edits go out)."""
        docs: list[Document[Any]] = [self.cart(c) for c in self.store.doc_ids("cart")]
        docs += [self.review(r) for r in self.store.doc_ids("review")]
        return docs

    @property
    def pending(self) -> int:
        return self.store.pending_count()

    async def close(self) -> None:
        for doc in self._open.values():
            await doc.stop()
        self.store.close()
