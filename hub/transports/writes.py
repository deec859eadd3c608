"""One write per connection per event-loop turn.

A fan-out hands each connection the shared, already framed bytes of the events it should get (a
WebSocket frame, an SSE message as an HTTP chunk). They are not written at once: the connection queues
them and enlists itself here, once per turn. At the end of the turn (``loop.call_soon``) the batcher
asks each enlisted connection to flush, and what it queued in that turn reaches the kernel in one
``transport.write``. Events that arrive faster than one fan-out takes pile up during it and leave
together — fewer system calls than deliveries, and the system call is most of what a delivery costs
(≈ 7–11 µs per socket write on the machines we measure on).

Guarantees: per connection, frames leave in the order they were queued; a connection that stops (it
was closed, or cut off as a slow consumer) writes nothing more. Metrics are counted once per turn and
transport (one :class:`WriteMeter` each), not once per delivery: the latency observed is the oldest
queued event's, from its commit to the end of the turn's writes — the worst of that turn.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from prometheus_client import Counter, Histogram

log = logging.getLogger(__name__)


class WriteMeter:
    """The write metrics of one transport, summed over a turn and counted once at its end."""

    __slots__ = ("_latency", "_sent", "_sent_bytes", "messages", "oldest", "size")

    def __init__(self, sent: Counter, sent_bytes: Counter, latency: Histogram) -> None:
        self._sent = sent
        self._sent_bytes = sent_bytes
        self._latency = latency
        self.messages = 0
        self.size = 0
        self.oldest: float | None = None

    def add(self, messages: int, size: int, oldest: float | None) -> None:
        """One connection's flush of this turn (see :meth:`Flushable.flush`)."""
        self.messages += messages
        self.size += size
        if oldest is not None and (self.oldest is None or oldest < self.oldest):
            self.oldest = oldest

    def commit(self) -> None:
        if self.messages:
            self._sent.inc(self.messages)
            self._sent_bytes.inc(self.size)
            self.messages = self.size = 0
        if self.oldest is not None:
            self._latency.observe(max(0.0, time.time() - self.oldest))
            self.oldest = None


class Flushable(Protocol):
    @property
    def meter(self) -> WriteMeter:
        """Where this connection's writes are counted."""
        ...

    def flush(self) -> tuple[int, int, float | None]:
        """Write what is queued; returns (messages, bytes, oldest event timestamp or None)."""
        ...


NOTHING: tuple[int, int, float | None] = (0, 0, None)  # a flush that wrote nothing


class TurnQueue:
    """A connection's side of the batching: what it queued this turn, and the slow-consumer limits.

    Subclasses (a WebSocket, an SSE stream) decide when to queue and what a cut-off means; the queue,
    its accounting and the limits are the same for both. What the kernel has not taken stays in the
    transport's buffer: the backlog counts the messages written since it last took everything, and
    past ``max_messages`` or ``max_bytes`` the client is too slow and this turn's data is not written.
    """

    __slots__ = (
        "_backlog",
        "_max_bytes",
        "_max_messages",
        "_oldest_ts",
        "_queued",
        "_queued_bytes",
        "_writes",
    )

    def _init_queue(self, writes: WriteBatcher, max_messages: int, max_bytes: int) -> None:
        self._writes = writes
        self._queued: bytes | list[bytes] | None = None  # only while something waits for the turn's end
        self._queued_bytes = 0
        self._oldest_ts: float | None = None
        self._backlog = 0
        self._max_messages = max_messages
        self._max_bytes = max_bytes

    def _enqueue(self, data: bytes, ts: float | None) -> None:
        queued = self._queued
        if queued is None:
            # One frame is kept as it is; a list only from the second of a turn. A fan-out then
            # allocates nothing the garbage collector tracks per connection: 19,000 lists alive at
            # once were promoted by every young collection and brought on full ones (0.8-1.3 s).
            self._queued = data
            self._writes.enlist(self)  # type: ignore[arg-type]  # subclasses are Flushable
        elif isinstance(queued, bytes):
            self._queued = [queued, data]
        else:
            queued.append(data)
        if self._oldest_ts is None:
            self._oldest_ts = ts
        self._queued_bytes += len(data)

    def _write_turn(self, transport: asyncio.WriteTransport) -> tuple[int, int, float | None] | None:
        """Write this turn's queue in one write and empty it. Returns what was written — (messages,
        bytes, oldest event timestamp), :data:`NOTHING` if nothing was queued — or None, having
        written nothing, if the client is past the limits (the caller cuts it off)."""
        queued = self._queued
        if queued is None:
            return NOTHING
        size, ts = self._queued_bytes, self._oldest_ts
        self._queued, self._queued_bytes, self._oldest_ts = None, 0, None
        if isinstance(queued, bytes):
            count, data = 1, queued
        else:
            count, data = len(queued), b"".join(queued)
        unsent = transport.get_write_buffer_size()
        # The message limit is on what waits for the kernel, so it applies while something does: a turn
        # of more than max_messages to a client whose buffer is empty (a resume's replay of a long
        # backlog) is written, within max_bytes — else a client far behind is cut off before it gets
        # anything, and resuming from the same position cuts it off again, for ever.
        backlog = (self._backlog if unsent else 0) + count
        if (unsent and backlog > self._max_messages) or unsent + size > self._max_bytes:
            return None
        transport.write(data)
        left = transport.get_write_buffer_size()
        # What the kernel did not take, in messages: the backlog's share of it (messages of one turn are
        # of similar sizes), so a client that took most of a long replay is not counted as 2,000 behind.
        self._backlog = -(-backlog * left // (unsent + size)) if left else 0
        return count, size, ts

    def _drop_queue(self) -> None:
        self._queued, self._queued_bytes, self._oldest_ts = None, 0, None


class WriteBatcher:
    """The app's batcher. ``sent``, ``sent_bytes`` and ``latency`` make :attr:`default_meter` (the
    WebSocket's); :meth:`meter` gives other transports theirs."""

    def __init__(self, sent: Counter, sent_bytes: Counter, latency: Histogram) -> None:
        self._meters: dict[Counter, WriteMeter] = {}
        self.default_meter = self.meter(sent, sent_bytes, latency)
        self._enlisted: list[Flushable] = []
        self._scheduled = False

    def meter(self, sent: Counter, sent_bytes: Counter, latency: Histogram) -> WriteMeter:
        """The meter of these metrics (made on first use; one per transport)."""
        meter = self._meters.get(sent)
        if meter is None:
            meter = self._meters[sent] = WriteMeter(sent, sent_bytes, latency)
        return meter

    def enlist(self, connection: Flushable) -> None:
        """Flush ``connection`` at the end of this turn (call once per turn: when its queue was empty)."""
        self._enlisted.append(connection)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        enlisted, self._enlisted = self._enlisted, []
        for connection in enlisted:
            try:
                count, written, ts = connection.flush()
            except Exception:  # one broken connection must not stop the others' writes
                log.exception("flushing a connection failed")
                continue
            if count:
                connection.meter.add(count, written, ts)
        for meter in self._meters.values():
            meter.commit()
