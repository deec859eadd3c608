"""The Redis broker: Redis Streams shared by every node of a region.

Keys, per stream ``S`` (all under ``prefix``):

* ``stream:S`` — a Redis stream; each entry holds ``o`` (offset), ``e`` (epoch) and ``d`` (the data).
  Entry ids are Redis' time-based ids, so retention by age can trim by id.
* ``meta:S`` — a hash: ``epoch``, ``offset`` (of the newest publication) and ``id`` (its entry id).
* ``dedupe:S`` — a hash: the last version appended under each dedupe key.

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
hold up another. A reader starts from the stream's newest entry when its task first runs, a moment
after ``subscribe`` returned: publications in that window are not delivered live (callers merge
``history`` and live, as the Protocol says; :meth:`RedisBroker.wait_ready` awaits the start). A reader
survives Redis going away: it backs off, reconnects and continues from the last entry it read. If the
stream was lost meanwhile, its new entries carry a new epoch; a reader that sees the stream's epoch
change without seeing new entries (their ids are not after the old ones: another server's clock, or a
recreation within the same millisecond) rereads the stream from its start.

Errors: Redis unreachable or timing out → :class:`BrokerUnavailable` (the relay retries); any other
Redis error → :class:`~sync.broker.BrokerError`. Commands are not retried by the client: a publish whose
reply was lost may have been appended, and only the caller knows whether repeating it is safe (with
``dedupe`` it is).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterator
from functools import cache
from importlib import resources
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sync.broker import BrokerError, Handler, Position, PositionExpired, Publication

log = logging.getLogger(__name__)

T = TypeVar("T")

_BACKOFF_MIN = 0.1
_BACKOFF_MAX = 2.0
_READ_COUNT = 1000  # entries per XREAD, so a reader catching up does not pull the whole tail at once
_READ_TIMEOUT_MARGIN = 5.0  # seconds a blocking read may take beyond block_ms before it counts as lost


class BrokerUnavailable(BrokerError):
    """The broker could not be reached (or did not answer in time); the operation may be retried."""


@cache
def _lua(name: str) -> str:
    return resources.files("sync").joinpath("lua", name).read_text(encoding="utf-8")


@contextlib.contextmanager
def _translated_errors(what: str) -> Iterator[None]:
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise BrokerUnavailable(f"redis unavailable during {what}: {exc}") from exc
    except RedisError as exc:
        raise BrokerError(f"redis failed during {what}: {exc}") from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id_key(entry_id: bytes | str) -> tuple[int, int]:
    ms, _, seq = _text(entry_id).partition("-")
    return int(ms), int(seq or 0)


def _publication(stream: str, fields: dict[bytes, bytes]) -> Publication:
    return Publication(stream, Position(fields[b"e"].decode(), int(fields[b"o"])), fields[b"d"])


class _Reader:
    """The subscribers of one stream on this node, and the task that reads it for them."""

    __slots__ = ("handlers", "ready", "task")

    def __init__(self) -> None:
        self.handlers: list[Handler] = []
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


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
        """``url`` is a redis-py URL; its query may set ``socket_timeout`` and ``socket_connect_timeout``
        (redis-py's default: 5 s each) for publish, top and history. Readers wait ``block_ms`` per
        blocking read, with a socket timeout of ``block_ms`` + 5 s whatever the URL says."""
        if max_len < 1:
            raise ValueError("max_len must be at least 1")
        if max_age_seconds is not None and max_age_seconds <= 0:
            raise ValueError("max_age_seconds must be positive (or None)")
        if block_ms < 1:
            raise ValueError("block_ms must be at least 1")
        self._url = url
        self._prefix = prefix
        self._max_len = max_len
        self._max_age_ms = 0 if max_age_seconds is None else max(1, round(max_age_seconds * 1000))
        self._block_ms = block_ms
        self._client = Redis.from_url(url, retry=Retry(NoBackoff(), 0))
        self._publish_script = self._client.register_script(_lua("publish.lua"))
        self._readers: dict[str, _Reader] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped = False

    # -- keys

    def _stream_key(self, stream: str) -> str:
        return f"{self._prefix}stream:{stream}"

    def _meta_key(self, stream: str) -> str:
        return f"{self._prefix}meta:{stream}"

    def _dedupe_key(self, stream: str) -> str:
        return f"{self._prefix}dedupe:{stream}"

    # -- lifecycle

    async def start(self) -> None:
        """Check that Redis answers and load the publish script; BrokerUnavailable if it does not."""
        self._check_open()
        with _translated_errors("start"):
            await self._client.script_load(self._publish_script.script)

    async def stop(self) -> None:
        self._stopped = True
        self._readers.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()

    def _check_open(self) -> None:
        if self._stopped:
            raise BrokerError("the Redis broker was stopped")

    async def _call(self, what: str, command: Awaitable[T]) -> T:
        self._check_open()
        with _translated_errors(what):
            return await command

    # -- the Broker protocol

    async def publish(
        self, stream: str, data: bytes, *, dedupe: tuple[str, int] | None = None
    ) -> Position | None:
        key, version = dedupe if dedupe is not None else ("", 0)
        reply = await self._call(
            "publish",
            self._publish_script(
                keys=[self._stream_key(stream), self._meta_key(stream), self._dedupe_key(stream)],
                args=[data, secrets.token_hex(8), self._max_len, self._max_age_ms, key, int(version)],
            ),
        )
        if reply is None:
            return None
        epoch, offset = reply
        return Position(_text(epoch), int(offset))

    async def top(self, stream: str) -> Position:
        epoch, offset, _ = await self._meta(stream)
        return Position(epoch, offset)

    async def history(self, stream: str, since: Position, limit: int = 10_000) -> list[Publication]:
        epoch, offset, newest_id = await self._meta(stream)
        current = Position(epoch, offset)
        wanted = offset - since.offset
        if since.epoch != epoch or wanted < 0 or wanted > self._max_len:
            raise PositionExpired(stream, since, current)
        if wanted == 0 or limit <= 0:
            return []
        # Offsets are contiguous, so what follows ``since`` is the newest ``wanted`` entries up to the
        # one ``meta`` named (anything published since is after it and left out).
        entries: list[tuple[bytes, dict[bytes, bytes]]] = await self._call(
            "history", self._client.xrevrange(self._stream_key(stream), newest_id, "-", count=wanted)
        )
        entries.reverse()
        publications = [_publication(stream, fields) for _, fields in entries]
        expected = [Position(epoch, since.offset + 1 + i) for i in range(wanted)]
        if [p.position for p in publications] != expected:
            # Trimmed (by age, or by a publish since we read meta), or not this incarnation's entries.
            raise PositionExpired(stream, since, current)
        return publications[:limit]

    def subscribe(self, stream: str, handler: Handler) -> Callable[[], None]:
        """Call ``handler`` for every publication of ``stream`` that this node's reader reads.

        The first subscription to a stream starts its reader; publications appended before the reader
        took its starting point (:meth:`wait_ready`) are not delivered live.
        """
        self._check_open()
        reader = self._readers.get(stream)
        if reader is None:
            reader = self._readers[stream] = _Reader()
            task = asyncio.get_running_loop().create_task(
                self._read(stream, reader), name=f"redis-broker-reader:{stream}"
            )
            reader.task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        reader.handlers.append(handler)

        def unsubscribe() -> None:
            if handler in reader.handlers:
                reader.handlers.remove(handler)
            if not reader.handlers and self._readers.get(stream) is reader:
                del self._readers[stream]
                if reader.task is not None:
                    reader.task.cancel()

        return unsubscribe

    async def wait_ready(self, stream: str) -> None:
        """Wait until the reader of ``stream`` (started by ``subscribe``) has taken its starting point:
        from then on every publication is delivered to its subscribers. Not part of the Protocol."""
        reader = self._readers.get(stream)
        if reader is None:
            raise BrokerError(f"no subscription to {stream}")
        await reader.ready.wait()

    # -- internals

    async def _meta(self, stream: str) -> tuple[str, int, str]:
        """The stream's epoch (drawn now if it has none), offset and newest entry id ("+" if none)."""
        meta = self._meta_key(stream)

        async def read() -> list[Any]:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hsetnx(meta, "epoch", secrets.token_hex(8))
                pipe.hmget(meta, ["epoch", "offset", "id"])
                result: list[Any] = await pipe.execute()
                return result

        _, (epoch, offset, newest_id) = await self._call("top", read())
        return _text(epoch), int(offset or 0), _text(newest_id) if newest_id else "+"

    def _reader_client(self) -> Redis:
        client = Redis.from_url(self._url, retry=Retry(NoBackoff(), 0))
        # A healthy XREAD BLOCK takes up to block_ms: the socket timeout must not cut it off (a URL's
        # socket_timeout, meant for publish, would win over a keyword argument, hence the override).
        client.connection_pool.connection_kwargs["socket_timeout"] = (
            self._block_ms / 1000 + _READ_TIMEOUT_MARGIN
        )
        return client

    async def _read(self, stream: str, reader: _Reader) -> None:
        key, meta = self._stream_key(stream), self._meta_key(stream)
        client = self._reader_client()
        cursor: bytes | str | None = None  # id of the last entry read
        epoch: str | None = None  # epoch followed: of the last delivered publication, or the start's
        delivered = 0  # offset of the last delivered publication in that epoch (or the start's)
        stale_until: tuple[int, int] | None = None  # rereading: entries up to here are the old stream's
        delay = _BACKOFF_MIN
        failing = False
        try:
            while True:
                try:
                    if cursor is None:
                        async with client.pipeline(transaction=True) as pipe:
                            pipe.hmget(meta, ["epoch", "offset"])
                            pipe.xrevrange(key, count=1)
                            (start_epoch, start_offset), newest = await pipe.execute()
                        cursor = newest[0][0] if newest else "0-0"
                        epoch = _text(start_epoch) if start_epoch else None
                        delivered = int(start_offset or 0)
                        reader.ready.set()
                    reply = await client.xread({key: cursor}, count=_READ_COUNT, block=self._block_ms)
                    if failing:
                        log.info("redis broker reader of %s reconnected", stream)
                        failing = False
                    delay = _BACKOFF_MIN
                    if not reply:
                        # Idle. If the stream was recreated with ids not after our cursor, XREAD would
                        # wait for them forever: notice by its epoch, and reread it from its start.
                        current = await client.hget(meta, "epoch")
                        if current is not None and epoch is not None and _text(current) != epoch:
                            log.info("stream %s has a new epoch; rereading it from its start", stream)
                            stale_until = _id_key(cursor)
                            cursor = "0-0"
                        continue
                    for entry_id, fields in reply[0][1]:
                        cursor = entry_id
                        publication = _publication(stream, fields)
                        position = publication.position
                        if stale_until is not None:
                            if _id_key(entry_id) > stale_until:
                                stale_until = None
                            elif position.epoch == epoch or position.epoch != _text(current):
                                continue
                        if position.epoch == epoch and position.offset <= delivered:
                            continue
                        epoch, delivered = position.epoch, position.offset
                        self._deliver(reader, publication)
                except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                    if not failing:
                        log.warning("redis broker reader of %s lost Redis (%s); reconnecting", stream, exc)
                        failing = True
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _BACKOFF_MAX)
                except Exception:
                    log.exception("redis broker reader of %s failed; retrying", stream)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _BACKOFF_MAX)
        finally:
            await client.aclose()

    @staticmethod
    def _deliver(reader: _Reader, publication: Publication) -> None:
        for handler in list(reader.handlers):
            try:
                handler(publication)
            except Exception:
                log.exception("a subscriber of %s failed on %s", publication.stream, publication.position)
