"""Personalization on one node: live ``recommendations.changed`` events and the behaviour events' retention.

**Where aggregation happens.** In the ingest transaction (storage/sql_behaviour.py), not in a consumer of
the event stream: the increments are committed with the events or not at all, so no event is counted
twice or missed — no lease, no partitioning, no consumer position to keep — and a batch's effect is
readable as soon as its request is answered. It meets the ingest target (bench/events.py) because a
batch is a fixed handful of statements whatever its size.

**Who hears of a change**, on ``user:{sub}`` (docs/protocol.md): a user's list is looked at again
(:meth:`Personalization.touch`) when

* a batch of the user's events was taken on this node and someone listens to the user: a
  ``user:{sub}`` subscription on this node (the engine knows), or on another (that node marks the
  user's row ``listening_until``, refreshed while the subscription lives: :meth:`mark_listening`);
* a subscription to ``user:{sub}`` starts on this node (the current list, unless already sent);
* the stock of a product the list shows, or left out for stock, changes in this node's region (the
  inventory stream every node reads), for the users listening here.

Looking again means ranking anew (hub/recommendations.py) and, when the list's ETag differs from the one
last sent, appending the event through the outbox — conditionally on the user's row: not if the ETag
was sent already (by any node), nor less than ``recommendations_interval_seconds`` (1 s) after the
last one (by any node: the row keeps when; the change is then sent when the interval ends). So a user
gets at most one event a second, the first change after a quiet second at once and a burst's last
state at the end of the second. The event carries the list's product ids and its ETag: the ETag that
``GET /api/v1/me/recommendations`` answers without filters, so a client holding it knows it is current.

**Retention.** A sweep every ``event_purge_interval_seconds`` deletes the expired events and the
preferences no event fed during the retention (storage/behaviour.py), in batches of 10,000.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from hub.keys import ENGINE, METRICS, PERSONALIZATION, SETTINGS, STORE
from hub.recommendations import rank
from hub.settings import Settings
from storage.base import Store
from storage.behaviour import Ingested
from sync.broker import Position
from sync.channels import USER, Channel, inventory_channel, route_key, user_stream
from sync.engine import Feed, SyncEngine
from sync.events import Event

log = logging.getLogger(__name__)
WATCHED_USERS = 50_000  # users whose shown products this node follows for stock changes
LISTENING_TTL_US = 90 * 10**6  # a node's mark on a user's row lasts this long
LISTENING_REFRESH_S = 30.0  # and is renewed this often while the subscription lives
CONCURRENCY = 8  # lists ranked at once


class _StockSink:
    """The node's own feed of its region's inventory stream: every stock change of a product."""

    def __init__(self, owner: Personalization) -> None:
        self.owner = owner

    def deliver(self, event: Event, channel: Channel) -> None:
        self.owner.stock_changed(event.key)

    def resync(self, reason: str, current: Position, channels: tuple[Channel, ...]) -> None:
        self.owner.stock_lost()


class Personalization:
    def __init__(
        self, store: Store, engine: SyncEngine, settings: Settings, registry: CollectorRegistry
    ) -> None:
        self.store = store
        self.engine = engine
        self.region = settings.region
        self.interval = settings.recommendations_interval_seconds
        self.retention_us = settings.event_retention_days * 86_400 * 10**6
        self.purge_interval = settings.event_purge_interval_seconds
        self._due: dict[str, float] = {}  # sub → when (loop clock) its list is to be looked at
        self._sent: dict[str, float] = {}  # sub → when this node last sent its event
        self._watched: OrderedDict[str, frozenset[str]] = OrderedDict()
        self._by_product: dict[str, set[str]] = {}
        self._listening: dict[str, float] = {}  # sub → when its row was last marked
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._feed: Feed | None = None
        self._running: set[asyncio.Task[None]] = set()
        self.events_accepted = Counter(
            "synchub_behaviour_events_total",
            "Behaviour events stored",
            registry=registry,
        )
        self.notifications = Counter(
            "synchub_recommendations_changed_total",
            "recommendations.changed events appended, and lists looked at again without one, by outcome",
            ["outcome"],
            registry=registry,
        )
        self.purged = Counter(
            "synchub_behaviour_purged_total",
            "Behaviour events and preferences deleted by the retention sweep",
            ["what"],
            registry=registry,
        )

    # -- what happened ----------------------------------------------------------------------------

    def listens_here(self, sub: str) -> bool:
        return self.engine.follows(user_stream(self.region, sub), route_key(USER, sub))

    def ingested(self, sub: str, result: Ingested) -> None:
        """A batch of ``sub``'s events was stored by this node."""
        self.events_accepted.inc(result.stored)
        if self.listens_here(sub) or result.listening_until > time.time_ns() // 1000:
            self.touch(sub)

    def touch(self, sub: str) -> None:
        """Look at ``sub``'s list again: now, or when a second has passed since this node's last event."""
        loop = asyncio.get_running_loop()
        due = max(loop.time(), self._sent.get(sub, 0.0) + self.interval)
        if sub not in self._due or due < self._due[sub]:
            self._due[sub] = due
            self._wake.set()

    def stock_changed(self, product_id: str) -> None:
        for sub in list(self._by_product.get(product_id, ())):
            if self.listens_here(sub):
                self.touch(sub)
            else:
                self._unwatch(sub)

    def stock_lost(self) -> None:
        """Stock changes may have been missed (the stream jumped): every watched list is looked at."""
        for sub in list(self._watched):
            self.touch(sub)

    def _watch(self, sub: str, products: set[str]) -> None:
        self._unwatch(sub)
        self._watched[sub] = frozenset(products)
        for product in products:
            self._by_product.setdefault(product, set()).add(sub)
        while len(self._watched) > WATCHED_USERS:
            self._unwatch(next(iter(self._watched)))

    def _unwatch(self, sub: str) -> None:
        for product in self._watched.pop(sub, frozenset()):
            subs = self._by_product.get(product)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_product[product]

    # -- the loops --------------------------------------------------------------------------------

    async def start(self) -> None:
        feed = self.engine.feed([inventory_channel(self.region)], _StockSink(self))
        await feed.start(None)
        feed.go_live()
        self._feed = feed
        self._tasks = [
            asyncio.create_task(self._notify_forever(), name="recommendations-notify"),
            asyncio.create_task(self._listeners_forever(), name="recommendations-listeners"),
            asyncio.create_task(self._purge_forever(), name="behaviour-purge"),
        ]

    async def stop(self) -> None:
        if self._feed is not None:
            self._feed.close()
        for task in [*self._tasks, *self._running]:
            task.cancel()
        for task in [*self._tasks, *self._running]:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _notify_forever(self) -> None:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(CONCURRENCY)
        while True:
            now = loop.time()
            ready = [sub for sub, due in self._due.items() if due <= now]
            for sub in ready:
                del self._due[sub]
                await slots.acquire()
                task = asyncio.create_task(self._look_again(sub, slots))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            self._wake.clear()
            wait = min(self._due.values(), default=now + 60.0) - loop.time()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)

    async def _look_again(self, sub: str, slots: asyncio.Semaphore) -> None:
        try:
            ranked = rank(await self.store.recommendation_signals(sub, self.region))
            if self.listens_here(sub):
                self._watch(sub, ranked.watched)
            payload = {
                "type": "recommendations.changed",
                "etag": ranked.etag,
                "region": ranked.body["region"],
                "personalized": ranked.body["personalized"],
                "items": ranked.product_ids,
            }
            notified = await self.store.notify_recommendations(
                sub, ranked.etag, payload, int(self.interval * 1_000_000)
            )
            if notified.sent:
                self._sent[sub] = asyncio.get_running_loop().time()
                self.notifications.labels("sent").inc()
            elif notified.retry_at is not None:
                self.notifications.labels("deferred").inc()
                delay = max(0.0, notified.retry_at / 1e6 - time.time())
                self._due[sub] = min(
                    self._due.get(sub, float("inf")), asyncio.get_running_loop().time() + delay
                )
                self._wake.set()
            else:
                self.notifications.labels("unchanged").inc()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("looking at %s's recommendations again failed", sub)
        finally:
            slots.release()
            if len(self._sent) > 4 * WATCHED_USERS:  # (forget who was sent to long ago)
                horizon = asyncio.get_running_loop().time() - self.interval
                self._sent = {s: at for s, at in self._sent.items() if at > horizon}

    async def _listeners_forever(self) -> None:
        """Every second: users newly followed here are looked at, and every node is told (their rows)
        who listens here, renewed while they do."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                now = loop.time()
                following = set(self.engine.followed_keys(USER))
                for sub in following - self._listening.keys():
                    self.touch(sub)
                stale = [s for s in following if now - self._listening.get(s, -1e9) >= LISTENING_REFRESH_S]
                for sub in self._listening.keys() - following:
                    del self._listening[sub]
                    self._unwatch(sub)
                if stale:
                    await self.store.mark_listening(stale, time.time_ns() // 1000 + LISTENING_TTL_US)
                    for sub in stale:
                        self._listening[sub] = now
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("marking the users listening here failed; retrying")
            await asyncio.sleep(1.0)

    async def _purge_forever(self) -> None:
        while True:
            try:
                for _ in range(100):  # (at most a million a sweep: then the next sweep goes on)
                    purged = await self.store.purge_behaviour(time.time_ns() // 1000, self.retention_us)
                    self.purged.labels("events").inc(purged.events)
                    self.purged.labels("preferences").inc(purged.preferences)
                    if purged.events < 10_000 and purged.preferences < 10_000:
                        break
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("purging expired behaviour events failed; retrying")
            await asyncio.sleep(self.purge_interval)


async def personalization_context(app: web.Application) -> AsyncIterator[None]:
    """After the store's and the engine's: it reads the one and follows the other."""
    service = Personalization(app[STORE], app[ENGINE], app[SETTINGS], app[METRICS].registry)
    await service.start()
    app[PERSONALIZATION] = service
    try:
        yield
    finally:
        await service.stop()
