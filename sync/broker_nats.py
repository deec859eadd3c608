"""The NATS JetStream broker: one JetStream stream per broker stream, shared by every node of a region.

Names, per stream ``S`` under ``prefix`` (letters, digits, ``_`` and ``-``): the JetStream stream
``{prefix}_{T}`` holds the subjects ``{prefix}.{T}.>``, where ``T`` is ``S`` with every character but
letters, digits, ``_`` and ``-`` made ``_``, then ``-`` and a digest of ``S`` (so two names never share
a stream). Publications without a dedupe key go to ``{prefix}.{T}.p``; those with one to
``{prefix}.{T}.k.{hex of the key}``, their version in the header ``Synchub-Version``.

Positions: the offset is the JetStream stream sequence — it grows by exactly one per publication,
as the Protocol wants. The epoch is a digest of the stream's name and creation time: a stream deleted
and created again (by an operator, or a server that lost its storage) has a new one, so positions
from before raise :class:`~sync.broker.PositionExpired`. A broker notices the recreation when a
publish is acknowledged with a sequence not after one it saw before, when its reader finds the
stream's creation time changed, or when a publish finds no stream and creates it.

Dedupe by (key, version), the Redis script's rule, kept without JetStream's dedupe window (which
forgets after a time and compares message ids, not versions): the last publication under a key is the
last message on the key's own subject, and it carries its version. ``publish`` reads it (a direct get
of the subject's last message), returns None if the new version is not greater, and otherwise
publishes with ``Nats-Expected-Last-Subject-Sequence`` set to the sequence it read (0: none; a broker
that appended the key's last message itself skips the read and expects that one's sequence). The
server appends only if no other publication landed on that subject meanwhile — a compare-and-set per
key — so of two relays racing with one version exactly one appends; the loser reads again and finds
its version already there. The dedupe state lives in the stream itself: lost with it (a new epoch, as
the Protocol allows), and kept only as long as retention keeps the key's last message — a version
republished after its predecessor was trimmed away (a relay stuck for longer than the retention) is
appended again. The Redis broker keeps versions until the stream is deleted.

``publish_many`` pipelines: each stream's items go as one chain whose first message expects the
stream's last sequence and each next one its predecessor's message id, so a chain appends in order
with nothing between or, from its first refusal on, not at all (the rest then goes one at a time).

Retention: ``max_msgs`` (exact) and ``max_age`` on the JetStream stream; ``history`` refuses positions
before the first message kept. Subscriptions: one reader task per subscribed stream with an ordered
push consumer (``ordered_consumer``: flow control and heartbeats, recreated on a gap), started by time
at the moment of ``subscribe`` less ``start_margin`` seconds (the server's clock stamps messages, so
clocks apart by more than that would miss a few; the few it delivers from before are dropped by offset
as the Protocol says). When idle, it checks the stream's epoch every ``check_interval`` seconds and
rereads a recreated stream from its start.

The URL is ``nats://host:port`` (several, comma-separated, for a NATS cluster); its query may set
``replicas`` (JetStream replicas of each stream, default 1) and ``storage`` (``file``, the default, or
``memory``). Errors: NATS unreachable or timing out → :class:`~sync.broker.BrokerUnavailable`; any
other JetStream error → :class:`~sync.broker.BrokerError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig, StreamInfo
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError

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

log = logging.getLogger(__name__)

VERSION_HEADER = "Synchub-Version"
_EXPECTED_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
_EXPECTED_LAST_SEQ = "Nats-Expected-Last-Sequence"
_EXPECTED_LAST_MSG_ID = "Nats-Expected-Last-Msg-Id"
_MSG_ID = "Nats-Msg-Id"
_EXPECTED_STREAM = "Nats-Expected-Stream"
_WRONG_LAST_SEQUENCE = 10071  # JetStream: the expected last subject sequence did not match
_STREAM_NOT_FOUND = 10059
_STREAM_NAME_IN_USE = 10058  # created meanwhile with another configuration
_PREFIX_RE = re.compile(r"[A-Za-z0-9_-]+")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_CAS_ATTEMPTS = 20
_REMEMBERED_SUBJECTS = 65_536
_BACKOFF_MIN = 0.1
_BACKOFF_MAX = 2.0
_READ_TIMEOUT = 5.0  # seconds a history read waits for its next message


@contextlib.contextmanager
def _translated_errors(what: str) -> Iterator[None]:
    try:
        yield
    except BrokerError:
        raise
    except (nats.errors.TimeoutError, TimeoutError, nats.errors.ConnectionClosedError) as exc:
        raise BrokerUnavailable(f"nats unavailable during {what}: {exc!r}") from exc
    except (nats.errors.NoServersError, nats.errors.ConnectionReconnectingError, OSError) as exc:
        raise BrokerUnavailable(f"nats unavailable during {what}: {exc!r}") from exc
    except nats.errors.Error as exc:
        raise BrokerError(f"nats failed during {what}: {exc!r}") from exc


def _token(stream: str) -> str:
    readable = _UNSAFE.sub("_", stream)[:48]
    return f"{readable}-{hashlib.blake2b(stream.encode(), digest_size=5).hexdigest()}"


def _epoch(info: StreamInfo) -> str:
    created = info.created or datetime.fromtimestamp(0, UTC)
    text = f"{info.config.name}|{created.isoformat()}"
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass
class _Names:
    stream: str  # the JetStream stream
    base: str  # its subjects' common head

    @property
    def plain(self) -> str:
        return f"{self.base}.p"

    def keyed(self, key: str) -> str:
        return f"{self.base}.k.{key.encode().hex() or '_'}"


@dataclass
class _Reader:
    """The subscribers of one stream on this node, and where the task reading it for them stands."""

    stream: str
    subscribed_at: float  # wall-clock seconds of the first subscribe
    handlers: list[Handler] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    active: bool = True
    epoch: str | None = None
    delivered: int = 0  # the stream sequence of the last publication delivered in that epoch
    floor: int = 0  # the stream's last sequence when the reader started by time

    def deliver(self, publication: Publication) -> None:
        if self.active:
            deliver(self.handlers, publication)


class NatsBroker:
    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        prefix: str = "synchub",
        max_len: int = 10_000,
        max_age_seconds: float | None = 3600,
        start_margin: float = 2.0,
        check_interval: float = 5.0,
        timeout: float = 5.0,
    ) -> None:
        if not _PREFIX_RE.fullmatch(prefix):
            raise ValueError(f"a NATS broker prefix is letters, digits, _ and -: {prefix!r}")
        if max_len < 1:
            raise ValueError("max_len must be at least 1")
        if max_age_seconds is not None and max_age_seconds <= 0:
            raise ValueError("max_age_seconds must be positive (or None)")
        parts = urlsplit(url)
        options = dict(parse_qsl(parts.query))
        self._servers = [
            urlunsplit((parts.scheme, netloc, "", "", "")) for netloc in parts.netloc.split(",") if netloc
        ]
        self._replicas = int(options.get("replicas", "1"))
        self._storage = StorageType(options.get("storage", "file"))
        self._prefix = prefix
        self._max_len = max_len
        self._max_age = max_age_seconds
        self._start_margin = start_margin
        self._check_interval = check_interval
        self._timeout = timeout
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._epochs: dict[str, str] = {}  # stream -> epoch of the incarnation last seen
        # dedupe subject -> (sequence, version) this broker appended there last (a bounded cache)
        self._last_appended: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._last_seq: dict[str, int] = {}  # stream -> highest sequence acknowledged in that epoch
        self._readers: dict[str, _Reader] = {}
        self._acks: dict[str, asyncio.Future[int]] = {}  # msg id -> its pipelined publish's sequence
        self._acks_subject: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped = False

    @property
    def prefix(self) -> str:
        return self._prefix

    def names(self, stream: str) -> _Names:
        token = _token(stream)
        return _Names(f"{self._prefix}_{token}", f"{self._prefix}.{token}")

    # -- lifecycle

    async def start(self) -> None:
        """Connect and check that JetStream answers; BrokerUnavailable if it does not."""
        self._check_open()
        self._nc = NatsClient()
        with _translated_errors("start"):
            # Reconnects for ever once connected; the first connection gets a deadline (nats-py would
            # retry it for ever too).
            await asyncio.wait_for(
                self._nc.connect(
                    servers=self._servers,
                    connect_timeout=max(1, math.ceil(self._timeout)),
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    error_cb=self._on_error,
                ),
                timeout=self._timeout * max(1, len(self._servers)) + 1,
            )
            self._js = self._nc.jetstream(timeout=self._timeout)
            await self._js.account_info()

    async def _on_error(self, exc: Exception) -> None:
        log.debug("nats client: %r", exc)

    async def stop(self) -> None:
        self._stopped = True
        for reader in self._readers.values():
            reader.active = False
        self._readers.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()

    def _check_open(self) -> None:
        if self._stopped:
            raise BrokerError("the NATS broker was stopped")

    @property
    def _jetstream(self) -> JetStreamContext:
        self._check_open()
        if self._js is None:
            raise BrokerError("the NATS broker was not started")
        return self._js

    # -- the Broker protocol

    async def publish(
        self, stream: str, data: bytes, *, dedupe: tuple[str, int] | None = None
    ) -> Position | None:
        js = self._jetstream
        names = self.names(stream)
        with _translated_errors("publish"):
            if stream not in self._epochs:
                await self._info(stream)
            for attempt in range(_CAS_ATTEMPTS):
                headers: dict[str, str] | None = None
                subject = names.plain
                if dedupe is not None:
                    key, version = dedupe[0], int(dedupe[1])
                    if version <= 0:
                        return None
                    subject = names.keyed(key)
                    last = self._last_appended.get(subject) if attempt == 0 else None
                    if last is not None and version > last[1]:
                        # What this broker appended last under the key: the compare-and-set below
                        # checks it is still the last, so trusting it saves the read.
                        last_seq = last[0]
                    else:
                        last_seq, last_version = await self._last_version(names, subject)
                        if last_seq < 0:  # no stream: create it (a new epoch) and read again
                            await self._info(stream)
                            continue
                        if version <= last_version:
                            return None
                    headers = {_EXPECTED_SUBJECT_SEQ: str(last_seq), VERSION_HEADER: str(version)}
                try:
                    ack = await js.publish(subject, data, stream=names.stream, headers=headers)
                except NoStreamResponseError:
                    self._last_appended.clear()
                    await self._info(stream)  # deleted: nothing was appended; create it and go again
                    continue
                except APIError as exc:
                    if exc.err_code == _WRONG_LAST_SEQUENCE:
                        continue  # another publisher appended under this key meanwhile: read again
                    raise
                if headers is not None:
                    self._remember(subject, ack.seq, int(headers[VERSION_HEADER]))
                return await self._position(stream, ack.seq)
        raise BrokerError(f"publish to {stream} lost {_CAS_ATTEMPTS} races in a row")

    async def publish_many(self, items: Sequence[PublishItem]) -> list[Position | None]:
        """Each stream's items go as one chain of pipelined publishes (``_publish_run``), the streams'
        chains at once; a chain another publisher interleaved with goes on one item at a time. On a
        failure, ``PublishIncomplete.published`` is the leading items known appended; of each stream's
        other items, a prefix may have been."""
        by_stream: dict[str, list[int]] = {}
        for index, (stream, _, _) in enumerate(items):
            by_stream.setdefault(stream, []).append(index)
        settled: dict[int, Position | None] = {}

        async def chain(stream: str, indices: list[int]) -> None:
            with _translated_errors("publish"):
                done = await self._publish_run(stream, [items[i] for i in indices])
            settled.update(zip(indices, done, strict=False))
            for i in indices[len(done) :]:
                _, data, dedupe = items[i]
                settled[i] = await self.publish(stream, data, dedupe=dedupe)

        failures = [
            r
            for r in await asyncio.gather(
                *(chain(s, ix) for s, ix in by_stream.items()), return_exceptions=True
            )
            if isinstance(r, BaseException)
        ]
        published: list[Position | None] = []
        while len(published) < len(items) and len(published) in settled:
            published.append(settled[len(published)])
        if failures:
            cause = failures[0]
            if not isinstance(cause, Exception):
                raise cause
            raise PublishIncomplete(published, cause) from cause
        return published

    async def _publish_run(self, stream: str, run: Sequence[PublishItem]) -> list[Position | None]:
        """Publish ``run`` (items of ``stream``) pipelined, as one publish after another would; return
        the positions of the leading items it settled (all of them, unless another publisher appended
        to the stream meanwhile: then the rest is left to the caller).

        The stream's last sequence is read first, then the last version of each dedupe key in the run
        (concurrently); the dedupe decisions are made in order against them. The items to append go
        out together, chained: the first expects the stream's last sequence to be the one read
        (``Nats-Expected-Last-Sequence``), each next one that its predecessor is the stream's last
        message (``Nats-Expected-Last-Msg-Id``). So they append in order with nothing in between, and
        the decisions hold; or, from the first refusal on, none appends.
        """
        if len(run) < 2:
            return []
        names = self.names(stream)
        info = await self._info(stream)
        last_seq = info.state.last_seq
        subjects = {names.keyed(item[2][0]) for item in run if item[2] is not None}
        read = await asyncio.gather(*(self._last_version(names, subject) for subject in subjects))
        if any(seq < 0 for seq, _ in read):
            return []  # the stream went away meanwhile: one at a time
        versions = {subject: version for subject, (_, version) in zip(subjects, read, strict=True)}
        plan: list[tuple[str, bytes, dict[str, str]] | None] = []
        for _, data, dedupe in run:
            headers: dict[str, str] = {}
            subject = names.plain
            if dedupe is not None:
                subject, version = names.keyed(dedupe[0]), int(dedupe[1])
                if version <= 0 or version <= versions[subject]:
                    plan.append(None)
                    continue
                versions[subject] = version
                headers[VERSION_HEADER] = str(version)
            plan.append((subject, data, headers))
        chain = [p for p in plan if p is not None]
        previous: str | None = None
        futures: list[asyncio.Future[int]] = []
        inbox = await self._ack_inbox()
        loop = asyncio.get_running_loop()
        try:
            for subject, data, headers in chain:
                msg_id = secrets.token_hex(12)
                if previous is None:
                    headers[_EXPECTED_LAST_SEQ] = str(last_seq)
                else:
                    headers[_EXPECTED_LAST_MSG_ID] = previous
                headers[_MSG_ID] = previous = msg_id
                headers[_EXPECTED_STREAM] = names.stream
                future: asyncio.Future[int] = loop.create_future()
                self._acks[msg_id] = future
                futures.append(future)
                await self._nats.publish(subject, data, reply=f"{inbox}.{msg_id}", headers=headers)
            results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), self._timeout)
        finally:
            for future in futures:
                future.cancel()
            for _, _, headers in chain:
                self._acks.pop(headers.get(_MSG_ID, ""), None)
        settled: list[Position | None] = []
        acks = iter(results)
        for step in plan:
            if step is None:
                settled.append(None)
                continue
            seq = next(acks)
            if isinstance(seq, BaseException):
                if isinstance(seq, APIError | NoStreamResponseError):
                    break  # refused (interleaved, or the stream went away): from here, one at a time
                raise seq
            subject, _, headers = step
            if VERSION_HEADER in headers:
                self._remember(subject, seq, int(headers[VERSION_HEADER]))
            settled.append(await self._position(stream, seq))
        return settled

    async def _ack_inbox(self) -> str:
        """This broker's inbox for the acknowledgements of pipelined publishes (made on first use).
        nats-py's own publish_async loses a refusal (its reply handler raises instead of failing the
        future), hence this."""
        if self._acks_subject is None:
            self._acks_subject = self._nats.new_inbox()
            await self._nats.subscribe(f"{self._acks_subject}.*", cb=self._on_ack)
        return self._acks_subject

    async def _on_ack(self, msg: Msg) -> None:
        future = self._acks.pop(msg.subject.rsplit(".", 1)[-1], None)
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get("Status") == "503":  # no responders: no such stream
            future.set_exception(NoStreamResponseError())
            return
        try:
            reply = json.loads(msg.data)
        except ValueError as exc:
            future.set_exception(BrokerError(f"a JetStream acknowledgement that is not JSON: {exc}"))
            return
        error = reply.get("error")
        if error is not None:
            future.set_exception(
                APIError(
                    code=error.get("code"),
                    err_code=error.get("err_code"),
                    description=error.get("description"),
                )
            )
        else:
            future.set_result(int(reply["seq"]))

    @property
    def _nats(self) -> NatsClient:
        self._check_open()
        if self._nc is None:
            raise BrokerError("the NATS broker was not started")
        return self._nc

    async def top(self, stream: str) -> Position:
        with _translated_errors("top"):
            info = await self._info(stream)
        return Position(_epoch(info), info.state.last_seq)

    async def history(self, stream: str, since: Position, limit: int = 10_000) -> list[Publication]:
        js = self._jetstream
        names = self.names(stream)
        with _translated_errors("history"):
            info = await self._info(stream)
            epoch, last, first = _epoch(info), info.state.last_seq, info.state.first_seq
            current = Position(epoch, last)
            wanted = last - since.offset
            if since.epoch != epoch or wanted < 0 or (wanted > 0 and since.offset + 1 < first):
                raise PositionExpired(stream, since, current)
            count = min(wanted, limit)
            if count <= 0:
                return []
            publications: list[Publication] = []
            sub = await js.subscribe(
                f"{names.base}.>",
                stream=names.stream,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                config=ConsumerConfig(opt_start_seq=since.offset + 1),
            )
            try:
                while len(publications) < count:
                    msg = await sub.next_msg(timeout=_READ_TIMEOUT)
                    seq = msg.metadata.sequence.stream
                    if seq != since.offset + 1 + len(publications):
                        raise PositionExpired(stream, since, current)  # trimmed since the check
                    publications.append(Publication(stream, Position(epoch, seq), msg.data))
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        return publications

    def subscribe(self, stream: str, handler: Handler) -> Callable[[], None]:
        self._check_open()
        reader = self._readers.get(stream)
        if reader is None:
            reader = self._readers[stream] = _Reader(stream, time.time())
            task = asyncio.get_running_loop().create_task(self._read(reader), name=f"nats-broker:{stream}")
            reader.task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        reader.handlers.append(handler)

        def unsubscribe() -> None:
            if handler in reader.handlers:
                reader.handlers.remove(handler)
            if not reader.handlers and self._readers.get(stream) is reader:
                del self._readers[stream]
                reader.active = False
                if reader.task is not None:
                    reader.task.cancel()

        return unsubscribe

    # -- internals

    def _config(self, stream: str) -> StreamConfig:
        names = self.names(stream)
        return StreamConfig(
            name=names.stream,
            description=f"synchub broker stream {stream}",
            subjects=[f"{names.base}.>"],
            max_msgs=self._max_len,
            max_age=self._max_age,
            storage=self._storage,
            num_replicas=self._replicas,
        )

    async def _info(self, stream: str) -> StreamInfo:
        """The stream's info, created first if it does not exist; remembers its epoch."""
        js = self._jetstream
        name = self.names(stream).stream
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            try:
                info = await js.add_stream(self._config(stream))
            except APIError as exc:
                if exc.err_code != _STREAM_NAME_IN_USE:
                    raise
                info = await js.stream_info(name)
        epoch = _epoch(info)
        if self._epochs.get(stream) != epoch:
            if stream in self._epochs:
                self._last_appended.clear()  # sequences of another incarnation
            self._epochs[stream] = epoch
            self._last_seq[stream] = 0
        return info

    def _remember(self, subject: str, seq: int, version: int) -> None:
        self._last_appended[subject] = (seq, version)
        self._last_appended.move_to_end(subject)
        if len(self._last_appended) > _REMEMBERED_SUBJECTS:
            self._last_appended.popitem(last=False)

    async def _last_version(self, names: _Names, subject: str) -> tuple[int, int]:
        """The sequence and version of the last message on ``subject``: (0, 0) if none, (-1, 0) if the
        stream does not exist."""
        try:
            msg = await self._jetstream.get_last_msg(names.stream, subject)
        except NotFoundError as exc:
            return (-1, 0) if exc.err_code == _STREAM_NOT_FOUND else (0, 0)
        version = (msg.headers or {}).get(VERSION_HEADER, "0")
        return msg.seq or 0, int(version)

    async def _position(self, stream: str, seq: int) -> Position:
        if seq <= self._last_seq.get(stream, 0):
            # Not after a sequence acknowledged before: the stream was recreated since.
            self._epochs.pop(stream, None)
            await self._info(stream)
        self._last_seq[stream] = max(seq, self._last_seq.get(stream, 0))
        return Position(self._epochs[stream], seq)

    async def _read(self, reader: _Reader) -> None:
        """The reader task of one stream: survives NATS going away; ends when cancelled."""
        delay = _BACKOFF_MIN
        failing = False
        while reader.active:
            try:
                await self._read_incarnation(reader)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    log.warning("nats broker reader of %s failed (%r); retrying", reader.stream, exc)
                    failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
            else:
                if failing:
                    log.info("nats broker reader of %s recovered", reader.stream)
                failing, delay = False, _BACKOFF_MIN

    async def _read_incarnation(self, reader: _Reader) -> None:
        """Deliver one incarnation of the stream until it is seen recreated (then return)."""
        js = self._jetstream
        names = self.names(reader.stream)
        info = await self._info(reader.stream)
        epoch = _epoch(info)
        config = ConsumerConfig()
        if reader.epoch is None or (reader.epoch == epoch and not reader.delivered):
            # From the moment of subscribe (again, if the last try delivered nothing).
            reader.epoch = epoch
            policy = DeliverPolicy.BY_START_TIME
            config.opt_start_time = datetime.fromtimestamp(reader.subscribed_at - self._start_margin, UTC)
        else:
            if reader.epoch != epoch:
                log.info("stream %s has a new epoch; rereading it from its start", reader.stream)
                reader.epoch, reader.delivered = epoch, 0
            policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = reader.delivered + 1
        if policy == DeliverPolicy.BY_START_TIME:
            reader.floor = info.state.last_seq  # up to there, only what the start time lets through
        else:
            reader.floor = 0
        sub = await js.subscribe(
            f"{names.base}.>",
            stream=names.stream,
            ordered_consumer=True,
            deliver_policy=policy,
            config=config,
        )
        idle_behind = 0
        try:
            while reader.active:
                try:
                    msg = await sub.next_msg(timeout=self._check_interval)
                except nats.errors.TimeoutError:
                    info = await self._info(reader.stream)
                    if _epoch(info) != reader.epoch:
                        return
                    # Publications this consumer has not delivered for two checks in a row: it is dead
                    # (the server restarted, the consumer went away); a new one goes on from there.
                    behind = info.state.last_seq > max(reader.delivered, reader.floor)
                    idle_behind = idle_behind + 1 if behind else 0
                    if idle_behind >= 2:
                        log.info(
                            "nats broker reader of %s is behind the stream; subscribing again", reader.stream
                        )
                        return
                    continue
                idle_behind = 0
                seq = msg.metadata.sequence.stream
                if seq <= reader.delivered:
                    continue
                if reader.delivered and seq > reader.delivered + 1:
                    log.warning(
                        "subscribers of %s missed offsets %d to %d of epoch %s (trimmed before read)",
                        reader.stream,
                        reader.delivered + 1,
                        seq - 1,
                        reader.epoch,
                    )
                reader.delivered = seq
                reader.deliver(Publication(reader.stream, Position(reader.epoch, seq), msg.data))
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


def nats_prefix(text: str) -> str:
    """A NATS broker prefix made of ``text`` (e.g. the hub's Redis prefix ``synchub:`` → ``synchub``):
    every character but letters, digits, ``_`` and ``-`` dropped."""
    return _UNSAFE.sub("", text) or "synchub"
