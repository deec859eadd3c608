"""The node's webhook deliveries: which endpoints this node delivers (leases), and for each one a runner
that takes its streams' events into its queue and delivers the queue.

**Leases.** Every ``lease_seconds / 4`` the worker reads the enabled endpoints and the region's leases,
and claims (or renews) the leases of its fair share: ceil(endpoints / live holders), its own first, free
and expired ones next; a node holding more than its share + 1 gives the excess back, so a node that
joins gets work. A claim is one conditional statement per endpoint (storage/sql_webhooks.py): free,
expired or already ours. The worker starts a runner for each lease it got and stops the runners of
those it lost; a runner starts no attempt unless the lease outlives it (its remaining time exceeds the
attempt's timeout), so a node cut off from the database stops sending before another node may take
over. Holders are ``{node id}:{random}``: a restarted node waits for its old leases to expire like any
other node (at most ``lease_seconds``).

**A runner** has two tasks. *Taking in*: for each stream its subscriptions need (sources.py), read the
broker's history after the endpoint's stored position, turn the publications into messages (matched,
filtered, visible to the owner) and queue them while moving the position, in one transaction. It reads
when the stream publishes (a broker subscription wakes it) and once a second anyway. A position the
broker no longer holds (trimmed past retention, or a new epoch: an in-process broker restarted) is a
gap: logged and counted (``synchub_webhook_gaps_total``); a new epoch is read from its start, a trimmed
stream from its newest position. *Delivering*: of each key, its oldest pending message when due, up to
``max_in_flight`` at once per endpoint (one per key), each attempt recorded when it ends (in batches:
those that end while one batch is written go in the next) — the outcome, the next attempt's time or the
dead letter, and the endpoint's failure streak, which may disable it (with a notice on
``user:{owner}`` and a warning in the log).

At least once: a message is marked delivered only after a 2xx; a crash between the two sends it again
under the same ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from hub.keys import BROKER, METRICS, PII_KEYS, SETTINGS, STORE, WEBHOOKS
from hub.pii import Keyring, PiiError
from hub.webhooks.delivery import RetryPolicy, Sender
from hub.webhooks.signing import SigningKeys, secret_key
from hub.webhooks.sources import Matcher, Owner, grants_of
from hub.webhooks.targets import AllowList
from storage.base import Store
from storage.errors import StoreError
from storage.webhooks import (
    AttemptResult,
    Delivery,
    DisablePolicy,
    Outcome,
    QueuedMessage,
    Recorded,
    StreamPosition,
    WebhookEndpoint,
)
from sync.broker import Broker, BrokerError, Position, PositionExpired, Publication

if TYPE_CHECKING:
    from hub.metrics import Metrics
    from hub.settings import Settings

log = logging.getLogger(__name__)

# The field name bound into a secret's ciphertext (hub/pii.py's associated data), not a secret.
SECRET_FIELD = "webhook_secret"  # noqa: S105
_FAILURES = (StoreError, BrokerError, OSError)
_PURGE_EVERY_SECONDS = 3600.0


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    region: str = "default"
    allow: AllowList = field(default_factory=AllowList)
    timeout_seconds: float = 10.0
    lease_seconds: float = 20.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    disable: DisablePolicy = field(default_factory=lambda: DisablePolicy(24 * 3600 * 10**6, 50))
    max_in_flight: int = 16
    poll_seconds: float = 1.0
    batch: int = 500  # publications read per history call
    retention_seconds: float = 7 * 24 * 3600.0

    def __post_init__(self) -> None:
        # Renewed every quarter of its time, a lease must outlive an attempt started just before a renewal.
        if self.lease_seconds * 0.75 <= self.timeout_seconds:
            raise ValueError(
                f"the webhook lease ({self.lease_seconds:g} s) must exceed 4/3 of the attempt timeout"
                f" ({self.timeout_seconds:g} s)"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerConfig:
        return cls(
            region=settings.region,
            allow=AllowList.parse(settings.webhook_allow_hosts),
            timeout_seconds=settings.webhook_timeout_seconds,
            lease_seconds=settings.webhook_lease_seconds,
            retry=RetryPolicy(
                settings.webhook_retry_base_seconds,
                settings.webhook_retry_max_seconds,
                settings.webhook_retry_window_seconds,
                settings.webhook_max_attempts,
            ),
            disable=DisablePolicy(
                int(settings.webhook_disable_after_seconds * 1e6), settings.webhook_disable_after_dead_letters
            ),
            max_in_flight=settings.webhook_max_in_flight,
            poll_seconds=settings.webhook_poll_seconds,
            retention_seconds=settings.webhook_log_retention_seconds,
        )


class WebhookWorker:
    def __init__(
        self,
        store: Store,
        broker: Broker,
        keyring: Keyring,
        config: WorkerConfig,
        node_id: str,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.broker = broker
        self.keyring = keyring
        self.config = config
        self.metrics = metrics
        self.holder = f"{node_id}:{secrets.token_hex(4)}"
        self.sender = Sender(config.allow, config.timeout_seconds)
        self._runners: dict[str, EndpointRunner] = {}
        self._broken: set[tuple[str, int]] = set()  # (endpoint, version) whose secret does not decrypt
        self._watchers: dict[str, set[EndpointRunner]] = {}
        self._unsubscribe: dict[str, Callable[[], None]] = {}
        self._lease_until = 0.0  # monotonic: when the leases held expire unless renewed
        self._poked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook-worker")

    async def stop(self) -> None:
        """Stop the runners (attempts under way are given their timeout to end and are recorded), give
        the leases back so another node takes over at once, close the HTTP client."""
        self._stopping = True
        self._poked.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        runners = list(self._runners.values())
        self._runners.clear()
        await asyncio.gather(*(runner.stop(graceful=True) for runner in runners), return_exceptions=True)
        with contextlib.suppress(*_FAILURES):
            await self.store.release_webhook_leases(
                self.holder, self.config.region, [runner.endpoint.id for runner in runners]
            )
        for unsubscribe in self._unsubscribe.values():
            unsubscribe()
        self._unsubscribe.clear()
        await self.sender.close()

    def poke(self, endpoint_id: str | None = None) -> None:
        """Something changed here (an endpoint made, changed or deleted; a ping or a replay queued): a
        lease round now, and that endpoint's runner, if it runs here, looks at its queue."""
        self._poked.set()
        runner = self._runners.get(endpoint_id) if endpoint_id else None
        if runner is not None:
            runner.wake()

    def rotated(self, endpoint: WebhookEndpoint) -> None:
        """The endpoint's secret was rotated by this node: its runner, if it runs here, signs its next
        attempt with the new keys (the others' take them at their next lease round)."""
        runner = self._runners.get(endpoint.id)
        if runner is not None:
            runner.take_keys(endpoint)

    @property
    def leased(self) -> list[str]:
        return sorted(self._runners)

    def lease_left(self) -> float:
        return self._lease_until - time.monotonic()

    async def _run(self) -> None:
        # (the first purge a minute after the start, not in it: a node's start writes nothing of its own)
        last_purge = time.monotonic() - _PURGE_EVERY_SECONDS + 60
        interval = self.config.lease_seconds / 4
        while not self._stopping:
            try:
                await self.lease_round()
                if time.monotonic() - last_purge > _PURGE_EVERY_SECONDS:
                    before = now_us() - int(self.config.retention_seconds * 1e6)
                    await self.store.purge_webhook_log(before)
                    last_purge = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook lease round failed; retrying")
            self._poked.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), interval)

    # -- leases ------------------------------------------------------------------------------------
    async def lease_round(self) -> None:
        config = self.config
        started = time.monotonic()
        now = now_us()
        enabled: dict[str, WebhookEndpoint] = {}
        owners: dict[str, bool] = {}
        for endpoint in await self.store.enabled_webhooks():
            usable = owners.get(endpoint.owner)
            if usable is None:
                usable = owners[endpoint.owner] = await self.store.webhook_owner_usable(endpoint.owner, now)
            if not usable:
                if await self.store.disable_webhook(endpoint.id, "owner_revoked", now):
                    log.warning(
                        "webhook %s disabled: its owner %s has no working API key left",
                        endpoint.id,
                        endpoint.owner,
                    )
                continue
            if (endpoint.id, endpoint.version) not in self._broken:
                enabled[endpoint.id] = endpoint
        leases = await self.store.webhook_leases(config.region, now)
        holders = {holder for holder in leases.values() if holder != self.holder}
        share = math.ceil(len(enabled) / (len(holders) + 1)) if enabled else 0
        mine = sorted(i for i in enabled if leases.get(i) == self.holder or i in self._runners)
        free = sorted(i for i in enabled if i not in leases and i not in self._runners)
        excess = mine[share + 1 :] if len(mine) > share + 1 else []
        wanted = [i for i in mine if i not in excess] + free[: max(0, share - len(mine))]
        held = await self.store.claim_webhook_leases(
            self.holder, config.region, wanted, now, now + int(config.lease_seconds * 1e6)
        )
        self._lease_until = started + config.lease_seconds
        for endpoint_id in [i for i in self._runners if i not in held]:
            gone = self._runners.pop(endpoint_id)
            self._unwatch(gone)
            # lost (another node has it, or it was disabled or deleted) or given back: stop at once
            await gone.stop(graceful=endpoint_id in excess)
        if excess:
            await self.store.release_webhook_leases(self.holder, config.region, excess)
        for endpoint_id in sorted(held):
            endpoint = enabled[endpoint_id]
            runner = self._runners.get(endpoint_id)
            if runner is None:
                try:
                    runner = EndpointRunner(self, endpoint)
                except (PiiError, ValueError) as exc:
                    log.error(
                        "webhook %s cannot be delivered: its secret does not decrypt (%s)", endpoint_id, exc
                    )
                    self._broken.add((endpoint_id, endpoint.version))
                    await self.store.release_webhook_leases(self.holder, config.region, [endpoint_id])
                    continue
                await runner.refresh(endpoint)
                self._runners[endpoint_id] = runner
                runner.start()
            else:
                self._unwatch(runner)
                try:
                    await runner.refresh(endpoint)  # a new version, or grants that changed
                except (PiiError, ValueError) as exc:
                    # A secret this node cannot read (a rotation by a node with another keyring): given
                    # up to a node that can, rather than signed with the replaced secret.
                    log.error(
                        "webhook %s cannot be delivered: its secret does not decrypt (%s)", endpoint_id, exc
                    )
                    del self._runners[endpoint_id]
                    await runner.stop(graceful=False)
                    self._broken.add((endpoint_id, endpoint.version))
                    await self.store.release_webhook_leases(self.holder, config.region, [endpoint_id])
                    continue
            self._watch(runner)
        if self.metrics is not None:
            self.metrics.webhook_endpoints_leased.set(len(self._runners))

    def _watch(self, runner: EndpointRunner) -> None:
        for stream in runner.matcher.streams:
            watchers = self._watchers.setdefault(stream, set())
            watchers.add(runner)
            if stream not in self._unsubscribe:
                self._unsubscribe[stream] = self.broker.subscribe(stream, self._published(stream))

    def _unwatch(self, runner: EndpointRunner) -> None:
        for stream, watchers in list(self._watchers.items()):
            watchers.discard(runner)
            if not watchers:
                del self._watchers[stream]
                unsubscribe = self._unsubscribe.pop(stream, None)
                if unsubscribe is not None:
                    unsubscribe()

    def _published(self, stream: str) -> Callable[[Publication], None]:
        def wake(_: Publication) -> None:
            for runner in self._watchers.get(stream, ()):
                runner.incoming()

        return wake


def signing_keys(keyring: Keyring, endpoint: WebhookEndpoint) -> SigningKeys:
    """The endpoint's keys, decrypted (PiiError or ValueError if a secret does not decrypt)."""

    def key(ciphertext: str) -> bytes:
        return secret_key(keyring.decrypt(endpoint.id, SECRET_FIELD, ciphertext))

    previous = endpoint.previous_secret_ciphertext
    return SigningKeys(
        key(endpoint.secret_ciphertext),
        None if previous is None else key(previous),
        endpoint.previous_secret_until,
    )


class EndpointRunner:
    """One leased endpoint's taking in and delivering (see the module's docstring)."""

    def __init__(self, worker: WebhookWorker, endpoint: WebhookEndpoint) -> None:
        self.worker = worker
        self._keys = signing_keys(worker.keyring, endpoint)
        self.endpoint = endpoint
        self.matcher = self._matcher(endpoint, Owner(endpoint.owner, endpoint.owner_is_admin))
        self._incoming = asyncio.Event()
        self._due = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._rng = random.Random()  # jitter, not secrets
        self._in_flight: dict[int, asyncio.Task[AttemptResult]] = {}

    def _matcher(self, endpoint: WebhookEndpoint, owner: Owner) -> Matcher:
        return Matcher(endpoint.id, owner, endpoint.subscriptions, self.worker.config.region)

    def start(self) -> None:
        name = f"webhook-{self.endpoint.id}"
        self._tasks = [
            asyncio.create_task(self._forever(self._take_in), name=f"{name}-in"),
            asyncio.create_task(self._forever(self._deliver), name=f"{name}-out"),
        ]

    def take_keys(self, endpoint: WebhookEndpoint) -> None:
        self._keys = signing_keys(self.worker.keyring, endpoint)

    async def refresh(self, endpoint: WebhookEndpoint) -> None:
        """The endpoint as the lease round read it, and what its owner may hear now (a key bound to a
        school since, or unbound): a new matcher if either changed."""
        owner = await grants_of(
            self.worker.store, Owner(endpoint.owner, endpoint.owner_is_admin), endpoint.subscriptions
        )
        if endpoint.version != self.endpoint.version or owner != self.matcher.owner:
            if endpoint.version != self.endpoint.version:
                self.take_keys(endpoint)  # (a rotation is a new version)
            self.endpoint = endpoint
            self.matcher = self._matcher(endpoint, owner)
            self.wake()

    def incoming(self) -> None:
        self._incoming.set()

    def wake(self) -> None:
        self._incoming.set()
        self._due.set()

    async def stop(self, *, graceful: bool) -> None:
        """Stop taking in and starting attempts; graceful: let the attempts under way end (their timeout
        at most) and record them; else cancel them (they are attempted again, same webhook-id)."""
        self._stopping = True
        self.wake()
        if not graceful:
            for task in self._in_flight.values():
                task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*self._tasks, return_exceptions=True), self.worker.config.timeout_seconds + 5
            )
        for loop in self._tasks:
            loop.cancel()
        for loop in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await loop

    async def _forever(self, loop: Callable[[], Awaitable[None]]) -> None:
        while not self._stopping:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except _FAILURES as exc:
                log.warning("webhook %s: %s; retrying in 1 s", self.endpoint.id, exc)
            except Exception:
                log.exception("webhook %s failed; retrying in 1 s", self.endpoint.id)
            await asyncio.sleep(1.0)

    # -- taking in ---------------------------------------------------------------------------------
    async def _take_in(self) -> None:
        worker = self.worker
        positions = await worker.store.webhook_positions(self.endpoint.id)
        while not self._stopping:
            self._incoming.clear()
            read = 0
            for stream in list(self.matcher.streams):
                read += await self._take_in_stream(stream, positions)
            if read == 0 and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._incoming.wait(), worker.config.poll_seconds)

    async def _take_in_stream(self, stream: str, positions: dict[str, StreamPosition]) -> int:
        worker, endpoint_id = self.worker, self.endpoint.id
        stored = positions.get(stream)
        if stored is None:  # a stream its subscriptions did not need before: where a change of them put it
            positions.update(await worker.store.webhook_positions(endpoint_id))
            stored = positions.get(stream)
        if stored is None:  # (or none: from now on)
            top = await worker.broker.top(stream)
            await self._move(stream, top, positions, [])
            return 0
        since = Position(stored.epoch, stored.offset)
        try:
            publications = await worker.broker.history(stream, since, limit=worker.config.batch)
        except PositionExpired as exc:
            current = exc.current or await worker.broker.top(stream)
            restart = Position(current.epoch, 0) if current.epoch != since.epoch else current
            log.warning(
                "webhook %s: position %s of %s is no longer in the broker (%s); resuming from %s: events in"
                " between are not delivered",
                endpoint_id,
                since,
                stream,
                "a new epoch" if current.epoch != since.epoch else "trimmed",
                restart,
            )
            if worker.metrics is not None:
                worker.metrics.webhook_gaps.inc()
            await self._move(stream, restart, positions, [])
            return 0
        if not publications:
            return 0
        messages = [m for m in map(self.matcher.message, publications) if m is not None]
        await self._move(stream, publications[-1].position, positions, messages)
        return len(publications)

    async def _move(
        self,
        stream: str,
        position: Position,
        positions: dict[str, StreamPosition],
        messages: list[QueuedMessage],
    ) -> None:
        moved = StreamPosition(position.epoch, position.offset)
        queued = await self.worker.store.enqueue_webhook_messages(
            self.endpoint.id,
            messages,
            {stream: moved},
            now_us(),
        )
        positions[stream] = moved
        if queued:
            self._due.set()

    # -- delivering --------------------------------------------------------------------------------
    async def _deliver(self) -> None:
        """Start the due attempts, and record those that end from a task of its own, so that a write (an
        fsync) does not hold up starting the next ones: a message finished but not yet recorded stays its
        key's head in the store and is left out here (``recording``), so its key's next one waits."""
        worker, config = self.worker, self.worker.config
        in_flight = self._in_flight
        finished: list[AttemptResult] = []
        recording: dict[int, AttemptResult] = {}
        recorder: asyncio.Task[Recorded] | None = None
        while True:
            if recorder is not None and recorder.done():
                try:
                    self._recorded(recorder.result())
                    recording.clear()
                except asyncio.CancelledError:
                    raise
                except _FAILURES as exc:
                    log.warning("webhook %s: recording attempts failed (%s); retrying", self.endpoint.id, exc)
                    finished[:0] = recording.values()  # written again with the next batch
                    recording.clear()
                    await asyncio.sleep(1.0)
                recorder = None
            if finished and recorder is None:
                recording.update((result.delivery_seq, result) for result in finished)
                recorder = asyncio.create_task(
                    worker.store.record_webhook_attempts(self.endpoint.id, finished, config.disable, now_us())
                )
                finished = []
            if self._stopping and not in_flight and recorder is None and not finished:
                return
            timeout = config.poll_seconds
            # (an attempt may only start if the lease outlives it: see the module's docstring)
            may_start = not self._stopping and worker.lease_left() > config.timeout_seconds
            if may_start and len(in_flight) < config.max_in_flight:
                self._due.clear()
                busy = [*in_flight, *recording, *(result.delivery_seq for result in finished)]
                due = await worker.store.due_webhook_deliveries(
                    self.endpoint.id, config.region, now_us(), config.max_in_flight - len(in_flight), busy
                )
                for delivery in due:
                    in_flight[delivery.seq] = asyncio.create_task(self._attempt(delivery))
                if not in_flight and recorder is None:
                    upcoming = await worker.store.next_webhook_attempt(self.endpoint.id, config.region)
                    if upcoming is not None:
                        timeout = min(timeout, max(0.0, (upcoming - now_us()) / 1e6))
            woken = asyncio.ensure_future(self._due.wait())
            waiting: set[asyncio.Future[Any]] = {woken, *in_flight.values()}
            if recorder is not None:
                waiting.add(recorder)
            try:
                await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                woken.cancel()
            for seq, task in list(in_flight.items()):
                if task.done():
                    del in_flight[seq]
                    if not task.cancelled():
                        finished.append(task.result())

    def _recorded(self, recorded: Recorded) -> None:
        if recorded.disabled:
            log.warning(
                "webhook %s (%s) disabled: every attempt failed since %s, %d dead letters",
                self.endpoint.id,
                self.endpoint.url,
                recorded.endpoint.failing_since if recorded.endpoint else None,
                recorded.endpoint.dead_letters if recorded.endpoint else 0,
            )
            self._stopping = True
            self.worker.poke()
        if recorded.endpoint is None:
            self._stopping = True

    async def _attempt(self, delivery: Delivery) -> AttemptResult:
        worker = self.worker
        attempt = delivery.attempts + 1
        at = now_us()
        reply = await worker.sender.send(
            self.endpoint.url, self._keys.at(at), delivery.message_id, delivery.payload
        )
        if reply.delivered:
            outcome, upcoming = Outcome.DELIVERED, None
        else:
            upcoming = worker.config.retry.next_attempt(attempt, delivery.queued_at, now_us(), self._rng)
            outcome = Outcome.RETRY if upcoming is not None else Outcome.DEAD
        if worker.metrics is not None:
            worker.metrics.webhook_attempts.labels(outcome.value).inc()
            worker.metrics.webhook_attempt_seconds.observe(reply.latency_us / 1e6)
        return AttemptResult(
            delivery_seq=delivery.seq,
            message_id=delivery.message_id,
            event_type=delivery.event_type,
            attempt=attempt,
            at=at,
            status_code=reply.status,
            latency_us=reply.latency_us,
            error=reply.error,
            outcome=outcome,
            next_attempt_at=upcoming,
        )


async def webhooks_context(app: web.Application) -> AsyncIterator[None]:
    """The node's worker, from after the store, the broker and the relay started to before they stop."""
    settings = app[SETTINGS]
    if not settings.webhook_delivery:
        app[WEBHOOKS] = None
        yield
        return
    worker = WebhookWorker(
        app[STORE],
        app[BROKER],
        app[PII_KEYS],
        WorkerConfig.from_settings(settings),
        settings.node_id,
        app[METRICS],
    )
    app[WEBHOOKS] = worker
    worker.start()
    try:
        yield
    finally:
        await worker.stop()
