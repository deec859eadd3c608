"""The Redis broker: Redis Streams shared by every node of a region.

Keys, per stream ``S`` (all under ``prefix``; :mod:`sync.redis_keys` names them, with ``{S}`` as a
Redis Cluster hash tag so the three share a slot):

* ``{S}:stream`` — a Redis stream; each entry holds ``o`` (offset), ``e`` (epoch) and ``d`` (the data).
  Entry ids are Redis' time-based ids, so retention by age can trim by id.
* ``{S}:meta`` — a hash: ``epoch``, ``offset`` (of the newest publication) and ``id`` (its entry id).
* ``{S}:dedupe`` — a hash: the last version appended under each dedupe key.

``start`` refuses keys of the layout before hash tags (:class:`~sync.redis_keys.LegacyLayout`, which
names ``synchub migrate-redis``).

One server or a Redis Cluster (``redis+cluster://`` URLs, :mod:`sync.redis_connect`): every command
touches one stream's keys, hence one slot, so each runs on the node that holds the stream, and streams
spread over the cluster's masters. On a cluster the scripts go as EVAL (a node promoted after a
failover has no script cache to EVALSHA from), and the client follows MOVED/ASK and retries across a
failover (see :mod:`sync.redis_connect`).

``publish`` is one Lua script (``lua/publish.lua``, loaded once, reloaded after a Redis restart):
dedupe check, epoch, offset, XADD and trimming happen atomically. A Redis that lost the keys (flushed,
restarted without persistence, evicted) has no epoch; the next publish or ``top`` draws a new one, so
positions from before raise :class:`~sync.broker.PositionExpired`.

Retention: by length exactly (``history`` refuses positions more than ``max_len`` behind, by offset
arithmetic) while Redis trims approximately (``MAXLEN ~``, whole nodes); by age approximately
(``MINID ~`` on every publish). ``history`` never returns a partial replay: it checks that the entries it
read are exactly the offsets asked for.

Subscriptions: every node reads every stream it serves with its own blocking XREAD loop (broadcast, no
consumer groups), one reader task and one connection per subscribed stream, so a busy stream does not
hold up another. A subscription takes effect when ``subscribe`` is called: the reader, whenever it first
reaches Redis, reads from that moment on Redis' clock (entry ids are times), so nothing appended after
the call is missed, and a few publications from just before may be delivered too (callers drop what
they already have by offset, as the Protocol says). A reader survives Redis going away: it backs off,
reconnects and continues after the last entry it read (on a cluster, with a new client after each
failed read: see ``RedisBroker._read``). If the stream was lost meanwhile, its new entries
carry a new epoch; a reader that sees the stream's epoch change without seeing new entries (their ids are
not after the old ones: another server's clock, or a recreation within the same millisecond) rereads the
stream from its start.

A failover that lost acknowledged publications (Redis replicates asynchronously) gives their offsets
to the next ones: a reader that finds a new entry at an offset it delivered, or a publisher given a
position twice, forks the stream's epoch (``lua/fork.lua``), so the lost history's positions expire and
subscribers see the new epoch and resync, rather than two histories under one epoch.

Errors: Redis unreachable or timing out, or a cluster down or failing over (``_UNAVAILABLE``) →
:class:`BrokerUnavailable` (the relay retries); any other Redis error → :class:`~sync.broker.BrokerError`.
Commands are not retried by the client: a publish whose reply was lost may have been appended, and only
the caller knows whether repeating it is safe (with ``dedupe`` it is).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from importlib import resources
from typing import Any, cast

from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import (
    ClusterDownError,
    RedisClusterUnreachableError,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sync.broker import (
    BrokerError,
    BrokerUnavailable,
    Handler,
    Position,
    PositionExpired,
    Publication,
    PublishIncomplete,
    PublishItem,
    deliver,
)
from sync.redis_connect import Client, open_client
from sync.redis_keys import StreamKeys, check_layout, check_prefix, stream_keys

log = logging.getLogger(__name__)

_BACKOFF_MIN = 0.1
_BACKOFF_MAX = 2.0
_READ_COUNT = 1000  # entries per XREAD, so a reader catching up does not pull the whole tail at once
_RECENT_POSITIONS = 4096  # positions remembered per stream by the publishing side
_NEXT_PAGES = 10_000  # paged history reads remembered (one entry id each)
_READ_TIMEOUT_MARGIN = 5.0  # seconds a blocking read may take beyond block_ms before it counts as lost
_REPORT_EVERY = 30.0  # seconds between the log lines of a reader that keeps failing


@cache
def _lua(name: str) -> str:
    return resources.files("sync").joinpath("lua").joinpath(name).read_text(encoding="utf-8")


# Redis (or the cluster's slot of a stream) cannot answer now but may later: unreachable, timing out, or
# a cluster that is down, reshaping or without a node for the slot (a failover under way). redis-py's
# RedisClusterException is not a RedisError: its outage kinds are named here.
_UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterDownError,
    TryAgainError,
    SlotNotCoveredError,
    RedisClusterUnreachableError,
)


@contextlib.contextmanager
def _translated_errors(what: str) -> Iterator[None]:
    try:
        yield
    except _UNAVAILABLE as exc:
        raise BrokerUnavailable(f"redis unavailable during {what}: {exc}") from exc
    except RedisError as exc:
        raise BrokerError(f"redis failed during {what}: {exc}") from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id_key(entry_id: bytes | str) -> tuple[int, int]:
    ms, _, seq = _text(entry_id).partition("-")
    return int(ms), int(seq or 0)


# Stream entries as this client returns them (raw bytes, redis-py's legacy reply shapes).
_Entry = tuple[bytes, dict[bytes, bytes]]


def _entries(reply: object) -> list[_Entry]:
    """The entries of an XRANGE/XREVRANGE reply."""
    return cast("list[_Entry]", reply or [])


def _read_entries(reply: object) -> list[_Entry]:
    """The entries of a one-stream XREAD reply: ``[[key, entries]]``, or empty after a timeout."""
    streams = cast("list[tuple[bytes, list[_Entry]]]", reply or [])
    return streams[0][1] if streams else []


async def _close(client: Client) -> None:
    """Close ``client`` even if cancelled meanwhile (stop() cancels again until its readers end): a
    cluster client's close awaits every node's, and one cut short leaves sockets open."""
    closing = asyncio.ensure_future(client.aclose())
    cancelled = False
    while not closing.done():
        try:
            await asyncio.shield(closing)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


async def _fork(client: Client, meta: str, epoch: str) -> str:
    """Give the stream a new epoch if its epoch is still ``epoch``; return its epoch afterwards."""
    reply = await client.eval(_lua("fork.lua"), 1, meta, epoch, secrets.token_hex(8))
    return _text(cast("bytes | str", reply))


async def _read_meta(
    client: Client, meta: str, *, draw_epoch: bool
) -> tuple[str | None, int, str | None, int, int]:
    """The stream's (epoch, offset, newest entry id) and Redis' time (seconds, microseconds), read on the
    node that holds the stream; with ``draw_epoch`` a stream without an epoch gets one first."""
    reply = await client.eval(_lua("meta.lua"), 1, meta, secrets.token_hex(8) if draw_epoch else "")
    epoch, offset, newest_id, seconds, microseconds = cast("list[bytes | None]", reply)
    return (
        _text(epoch) if epoch else None,
        int(offset or 0),
        _text(newest_id) if newest_id else None,
        int(seconds or 0),
        int(microseconds or 0),
    )


def _publication(stream: str, fields: dict[bytes, bytes]) -> Publication:
    return Publication(stream, Position(fields[b"e"].decode(), int(fields[b"o"])), fields[b"d"])


class _Reader:
    """The subscribers of one stream on this node, and where the task reading it for them stands."""

    def __init__(self, stream: str, keys: StreamKeys) -> None:
        self.stream, self.key, self.meta = stream, keys.stream, keys.meta
        self.handlers: list[Handler] = []
        self.task: asyncio.Task[None] | None = None
        self.active = True  # until the last subscriber leaves or the broker stops
        self.subscribed_at = time.monotonic()  # when the first subscriber came
        self.cursor: bytes | str | None = None  # id of the last entry read; None until started
        self.epoch: str | None = None  # of the last publication delivered (or the stream's at the start)
        self.delivered = 0  # offset of the last publication delivered in that epoch
        self.forked: dict[str, str] = {}  # epoch that diverged -> the epoch it was forked to
        # While rereading a recreated stream: the old cursor, and the epoch of the new incarnation.
        self.rereading: tuple[tuple[int, int], str] | None = None

    async def read(self, client: Client, block_ms: int) -> None:
        """Wait up to ``block_ms`` for entries after the cursor and deliver them."""
        if self.cursor is None:
            self.cursor = await self._starting_point(client)
        reply = await client.xread({self.key: self.cursor}, count=_READ_COUNT, block=block_ms)
        entries = _read_entries(reply)
        if not entries:
            await self._check_epoch(client)
        for entry_id, fields in entries:
            publication = _publication(self.stream, fields)
            position = publication.position
            forked_to = self.forked.get(position.epoch)
            if forked_to is not None:  # an entry of a forked epoch: delivered under the new one
                publication = Publication(self.stream, Position(forked_to, position.offset), publication.data)
            elif (
                self.rereading is None
                and position.epoch == self.epoch
                and 0 < position.offset <= self.delivered
            ):
                publication = await self._diverged(client, publication)
            # Only now: a fork that failed leaves the entry to the next read, which forks again.
            self.cursor = entry_id
            if self._is_new(entry_id, publication.position):
                self._deliver(publication)

    async def _diverged(self, client: Client, publication: Publication) -> Publication:
        """A new entry at an offset already delivered: a failover lost entries this reader had read and
        the offsets were used again. Fork the stream's epoch (lua/fork.lua) and deliver the entry, and
        the old epoch's entries after it, under the new one: subscribers see the epoch change and
        resync."""
        old = publication.position.epoch
        new = await _fork(client, self.meta, old)
        log.warning(
            "stream %s diverged at offset %d of epoch %s (a failover lost publications); new epoch %s",
            self.stream,
            publication.position.offset,
            old,
            new,
        )
        self.forked[old] = new
        return Publication(self.stream, Position(new, publication.position.offset), publication.data)

    async def _starting_point(self, client: Client) -> str:
        """The moment of the first ``subscribe``, as an entry id on Redis' clock.

        Entry ids are Redis' time in milliseconds when they were appended, so reading from (Redis' time
        now − the time elapsed since ``subscribe``) delivers everything appended since — and perhaps a
        few from just before — however late this task first reaches Redis.
        """
        epoch, _, _, seconds, microseconds = await _read_meta(client, self.meta, draw_epoch=False)
        elapsed_ms = math.ceil((time.monotonic() - self.subscribed_at) * 1000)
        now_ms = int(seconds) * 1000 + int(microseconds) // 1000
        self.epoch = _text(epoch) if epoch else None
        return f"{max(0, now_ms - elapsed_ms - 1)}-0"

    async def _check_epoch(self, client: Client) -> None:
        # If the stream was recreated with ids not after the cursor (another server's clock, or within
        # the same millisecond), XREAD would wait for them for ever: notice it by the epoch instead, and
        # reread the stream from its start.
        current = await client.hget(self.meta, "epoch")
        if current is None or _text(current) == self.epoch or self.cursor is None:
            return
        log.info("stream %s has a new epoch; rereading it from its start", self.stream)
        self.epoch, self.delivered = _text(current), 0
        self.rereading = (_id_key(self.cursor), self.epoch)
        self.cursor = "0-0"

    def _is_new(self, entry_id: bytes, position: Position) -> bool:
        if self.rereading is not None:
            old_cursor, new_epoch = self.rereading
            if _id_key(entry_id) > old_cursor:
                self.rereading = None
            elif position.epoch != new_epoch:
                return False  # an entry of the old incarnation, read before
        if position.epoch == self.epoch:
            if position.offset <= self.delivered:
                return False
            if self.delivered and position.offset > self.delivered + 1:
                # Trimmed before this reader could read them (it was cut off from Redis for longer than
                # the stream's retention). The Protocol has no way to tell subscribers; say it here.
                log.warning(
                    "subscribers of %s missed offsets %d to %d of epoch %s (trimmed before read)",
                    self.stream,
                    self.delivered + 1,
                    position.offset - 1,
                    position.epoch,
                )
        self.epoch, self.delivered = position.epoch, position.offset
        return True

    def _deliver(self, publication: Publication) -> None:
        if self.active:
            deliver(self.handlers, publication)


def _reader_ended(reader: _Reader, task: asyncio.Task[None]) -> None:
    # RedisBroker._read returns only once its reader is made inactive (unsubscribe, stop) and retries
    # every Exception: a reader that ends while still subscribed was cancelled by something else, and
    # its subscribers would get nothing more without a word in the log.
    if reader.active:
        outcome = "cancelled" if task.cancelled() else repr(task.exception())
        log.error("redis broker reader of %s ended while subscribed (%s)", reader.stream, outcome)


class RedisBroker:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "synchub:",
        max_len: int = 10_000,
        max_age_seconds: float | None = 3600,
        block_ms: int = 5000,
    ) -> None:
        """``url`` is a redis-py URL, or ``redis+cluster://host:port`` for a Redis Cluster. For publish,
        top and history, its query may set ``socket_timeout`` and ``socket_connect_timeout`` (default
        5 s each), ``max_connections`` (default 50) and ``timeout``, how long a call waits for a free
        connection (default 5 s; one server only). Each subscribed stream has a reader connection of
        its own, which waits ``block_ms`` per blocking read with a socket timeout of ``block_ms`` + 5 s,
        whatever the URL says."""
        if max_len < 1:
            raise ValueError("max_len must be at least 1")
        if max_age_seconds is not None and max_age_seconds <= 0:
            raise ValueError("max_age_seconds must be positive (or None)")
        if block_ms < 1:
            raise ValueError("block_ms must be at least 1")
        check_prefix(prefix)
        self._url = url
        self._prefix = prefix
        self._max_len = max_len
        self._max_age_ms = 0 if max_age_seconds is None else max(1, round(max_age_seconds * 1000))
        self._block_ms = block_ms
        # One server: a bounded pool that makes a burst of calls (clients resuming after a failover)
        # wait for a connection rather than fail, and no retries (see the module docstring).
        self._client: Client = open_client(url, max_connections=50, timeout=5)
        self._publish_script = self._client.register_script(_lua("publish.lua"))
        self._readers: dict[str, _Reader] = {}
        # Where a paged history read stopped: (stream, position of its last publication) -> entry id, so
        # the next page is read from there instead of counting back from the newest entry again.
        self._next_page: OrderedDict[tuple[str, Position], bytes] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        # stream -> the positions publishes returned lately (a bounded window), to notice one given twice
        self._appended: dict[str, OrderedDict[Position, None]] = {}
        self._stopped = False

    @property
    def prefix(self) -> str:
        """What every key of this broker starts with."""
        return self._prefix

    def keys(self, stream: str) -> StreamKeys:
        """The Redis keys of ``stream`` (one hash slot)."""
        return stream_keys(self._prefix, stream)

    # -- lifecycle

    async def start(self) -> None:
        """Check that Redis answers (and, on a cluster, learn its slots), load the publish script and
        check the key layout; BrokerUnavailable if Redis does not answer, LegacyLayout if keys of the
        layout before hash tags are left (see :mod:`sync.redis_keys`)."""
        self._check_open()
        with _translated_errors("start"):
            if isinstance(self._client, RedisCluster):
                await self._client.initialize()
            else:
                await self._client.script_load(self._publish_script.script)
            await check_layout(self._client, self._prefix)

    async def stop(self) -> None:
        self._stopped = True
        for reader in self._readers.values():
            reader.active = False
        self._readers.clear()
        pending = set(self._tasks)
        while pending:
            # Asked again if need be: on Python 3.11 redis-py's asyncio.wait_for around a socket write
            # can swallow a cancellation (CPython gh-86296); the reader then ends on its own flag.
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.1)
        await self._client.aclose()

    def _check_open(self) -> None:
        if self._stopped:
            raise BrokerError("the Redis broker was stopped")

    # -- the Broker protocol

    async def publish(
        self, stream: str, data: bytes, *, dedupe: tuple[str, int] | None = None
    ) -> Position | None:
        self._check_open()
        with _translated_errors("publish"):
            reply = await self._publish(stream, data, dedupe)
            if reply is None:
                return None
            return await self._checked(stream, Position(_text(reply[0]), int(reply[1])))

    async def publish_many(self, items: Sequence[PublishItem]) -> list[Position | None]:
        """One pipeline (no MULTI): Redis runs the scripts in order, as separate calls would run, and
        answers them together — one round trip for a relay's whole sweep instead of one per entry."""
        self._check_open()
        if not items:
            return []
        try:
            with _translated_errors("publish"):
                async with self._client.pipeline(transaction=False) as pipe:
                    for stream, data, dedupe in items:
                        args = self._publish_args(stream, data, dedupe)
                        if isinstance(pipe, ClusterPipeline):
                            pipe.eval(_lua("publish.lua"), 3, *args)  # queued, not awaited
                        else:
                            await self._publish_script(keys=args[:3], args=args[3:], client=pipe)
                    replies = await pipe.execute()
        except BrokerError as exc:
            raise PublishIncomplete([], exc) from exc  # which of them ran is not known
        positions: list[Position | None] = []
        for (stream, _, _), reply in zip(items, replies, strict=True):
            if reply is None:
                positions.append(None)
                continue
            try:
                with _translated_errors("publish"):
                    positions.append(await self._checked(stream, Position(_text(reply[0]), int(reply[1]))))
            except BrokerError as exc:
                raise PublishIncomplete(positions, exc) from exc
        return positions

    async def _checked(self, stream: str, position: Position) -> Position:
        """``position`` as appended, after checking that this broker was not given it before: a position
        given twice means a failover lost publications and their offsets were used again — fork the
        epoch (see ``_Reader._diverged``). (Order is no sign: concurrent publishes' replies may come
        back in any order.)"""
        recent = self._appended.setdefault(stream, OrderedDict())
        if position in recent:
            epoch = await _fork(self._client, self.keys(stream).meta, position.epoch)
            log.warning(
                "stream %s diverged at offset %d of epoch %s (a failover lost publications); new epoch %s",
                stream,
                position.offset,
                position.epoch,
                epoch,
            )
            position = Position(epoch, position.offset)
        recent[position] = None
        if len(recent) > _RECENT_POSITIONS:
            recent.popitem(last=False)
        return position

    async def top(self, stream: str) -> Position:
        epoch, offset, _ = await self._meta(stream, "top")
        return Position(epoch, offset)

    async def history(self, stream: str, since: Position, limit: int = 10_000) -> list[Publication]:
        epoch, offset, newest_id = await self._meta(stream, "history")
        current = Position(epoch, offset)
        wanted = offset - since.offset
        if since.epoch != epoch or wanted < 0 or wanted > self._max_len:
            raise PositionExpired(stream, since, current)
        count = min(wanted, limit)
        if count <= 0:
            return []
        key = self.keys(stream).stream
        after = self._next_page.pop((stream, since), None)
        with _translated_errors("history"):
            if after is not None:
                # The previous page ended at ``since``: read on from its entry.
                entries = _entries(await self._client.xrange(key, b"(" + after, "+", count=count))
            else:
                # Offsets are contiguous, so what follows ``since`` is the newest ``wanted`` entries up
                # to the one meta named (anything published since is after it and left out).
                entries = _entries(await self._client.xrevrange(key, newest_id, "-", count=wanted))
                entries.reverse()
                del entries[count:]
        publications = [_publication(stream, fields) for _, fields in entries]
        expected = [Position(epoch, since.offset + 1 + i) for i in range(count)]
        if [p.position for p in publications] != expected:
            # Trimmed (by age, or by a publish since we read meta), or not this incarnation's entries.
            raise PositionExpired(stream, since, current)
        if count < wanted:
            self._next_page[(stream, publications[-1].position)] = entries[-1][0]
            while len(self._next_page) > _NEXT_PAGES:
                self._next_page.popitem(last=False)
        return publications

    def subscribe(self, stream: str, handler: Handler) -> Callable[[], None]:
        """Call ``handler`` for every publication of ``stream`` appended from now on.

        The first subscription to a stream starts its reader task, which reads from the moment of this
        call whenever it first reaches Redis (see ``_Reader._starting_point``).
        """
        self._check_open()
        reader = self._readers.get(stream)
        if reader is None:
            reader = self._readers[stream] = _Reader(stream, self.keys(stream))
            task = asyncio.get_running_loop().create_task(self._read(reader), name=f"redis-broker:{stream}")
            reader.task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(functools.partial(_reader_ended, reader))
        reader.handlers.append(handler)

        def unsubscribe() -> None:
            if handler in reader.handlers:
                reader.handlers.remove(handler)
            if not reader.handlers and self._readers.get(stream) is reader:
                del self._readers[stream]
                reader.active = False  # in case the cancellation is swallowed (see stop)
                if reader.task is not None:
                    reader.task.cancel()

        return unsubscribe

    # -- internals

    def _publish_args(self, stream: str, data: bytes, dedupe: tuple[str, int] | None) -> list[Any]:
        """The publish script's keys and arguments."""
        key, version = dedupe if dedupe is not None else ("", 0)
        return [
            *self.keys(stream),
            data,
            secrets.token_hex(8),
            self._max_len,
            self._max_age_ms,
            key,
            int(version),
        ]

    async def _publish(self, stream: str, data: bytes, dedupe: tuple[str, int] | None) -> Any:
        """Run the publish script: EVALSHA with a reload on one server, EVAL on a cluster."""
        args = self._publish_args(stream, data, dedupe)
        if isinstance(self._client, RedisCluster):
            return await self._client.eval(_lua("publish.lua"), 3, *args)
        return await self._publish_script(keys=args[:3], args=args[3:])

    async def _meta(self, stream: str, what: str) -> tuple[str, int, str]:
        """The stream's epoch (drawn now if it has none), offset and newest entry id ("+" if none)."""
        self._check_open()
        with _translated_errors(what):
            epoch, offset, newest_id, _, _ = await _read_meta(
                self._client, self.keys(stream).meta, draw_epoch=True
            )
        if epoch is None:  # pragma: no cover - the script drew one
            raise BrokerError(f"stream {stream} has no epoch after drawing one")
        return epoch, offset, newest_id or "+"

    def _reader_client(self, seeds: Sequence[tuple[str, int]] = ()) -> Client:
        # A healthy XREAD BLOCK takes up to block_ms: the socket timeout must not cut it off (a URL's
        # socket_timeout, meant for publish, would cut it short, hence the override). No retries inside
        # the client: _read retries for ever, with a new client, and redis-py's retries of a read that
        # times out (a frozen node) would only hold that back, by a socket timeout each.
        return open_client(
            self._url,
            max_connections=4,
            socket_timeout=self._block_ms / 1000 + _READ_TIMEOUT_MARGIN,
            cluster_retries=0,
            seeds=seeds,
        )

    async def _read(self, reader: _Reader) -> None:
        """The reader task of one stream: survives Redis going away; ends when cancelled (or made
        inactive).

        On a cluster, a read that failed is retried with a new client, which learns the topology afresh
        from the nodes the old one knew. redis-py finds XREAD's key by asking its client's default node
        (COMMAND GETKEYS), before the command's own retries and outside the topology refresh they
        trigger: once that node is dead (a master killed, even one that held none of this stream),
        every XREAD of that client fails on the lookup alone, nothing asks for a refresh, and the old
        client would fail so for ever — after the failover too.
        """
        client = self._reader_client()
        delay = _BACKOFF_MIN
        failing_since: float | None = None
        reported_at = 0.0
        try:
            while reader.active:
                try:
                    await reader.read(client, self._block_ms)
                except Exception as exc:
                    now = time.monotonic()
                    if failing_since is None:
                        failing_since = reported_at = now
                        self._report_failure(reader, exc, None)
                    elif now - reported_at >= _REPORT_EVERY:
                        reported_at = now
                        self._report_failure(reader, exc, now - failing_since)
                    if isinstance(client, RedisCluster):
                        seeds = [(node.host, int(node.port)) for node in client.get_nodes()]
                        old, client = client, self._reader_client(seeds)
                        await _close(old)
                else:
                    if failing_since is not None:
                        log.info(
                            "redis broker reader of %s reads again after %.1f s",
                            reader.stream,
                            time.monotonic() - failing_since,
                        )
                        failing_since = None
                    delay = _BACKOFF_MIN
                    continue
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
        finally:
            await _close(client)

    @staticmethod
    def _report_failure(reader: _Reader, exc: Exception, for_seconds: float | None) -> None:
        """Say that ``reader`` cannot read (Redis unreachable: a line; anything else: the traceback),
        when it starts failing and every ``_REPORT_EVERY`` seconds while it still does, so a reader
        stuck on one error is visible in the log."""
        lost = isinstance(exc, _UNAVAILABLE)
        what = "lost Redis" if lost else "failed"
        since = "" if for_seconds is None else f" for {for_seconds:.0f} s"
        if lost:
            log.warning("redis broker reader of %s %s%s (%s); retrying", reader.stream, what, since, exc)
        else:
            log.error("redis broker reader of %s %s%s; retrying", reader.stream, what, since, exc_info=exc)
