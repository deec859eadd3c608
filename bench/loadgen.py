"""A multi-process load generator for the fan-out benchmark, cheaper per message than what it measures.

What it guarantees:

- **Every message is counted.** Each client is a raw :class:`asyncio.Protocol` on a uvloop event loop in
  one of several worker processes; it parses the wire itself (WebSocket frames per RFC 6455, Server-Sent
  Events over HTTP/1.1 with or without chunked transfer-encoding, Engine.IO v4 / Socket.IO v5 over
  WebSocket), so a frame split over TCP reads, several frames in one read, fragmented messages and
  7/16/64-bit frame lengths all count exactly once. Only *events* are counted: messages that acknowledge a
  subscription (synchub's ``"type":"subscribed"``, SSE's ``event: ready``), pings, pongs and Engine.IO
  packets are not deliveries. Pings are answered (WebSocket ping → pong, Engine.IO ``2`` → ``3``), a close
  from the server is answered and the connection counted as *ended*.
- **Latency from the embedded timestamp.** Every event carries ``"ts":<integer µs since the epoch>``
  (synchub: inside ``data``; the peers of :mod:`bench.peers.servers`: at the top level of the body, escaped
  as ``\\"ts\\":`` inside a Socket.IO event). It is found with a bytes search, never by decoding JSON;
  latency = receive time (``time.time_ns()``, taken when the read is parsed) − ts. Each worker keeps a
  histogram of 0.1 ms buckets up to 10 s plus one overflow bucket, and the exact maximum; the parent merges
  them. A percentile is the upper edge of its bucket (so it is accurate to 0.1 ms, never optimistic), capped
  by the exact maximum. Events without a ``ts`` are counted, and counted apart (``no_ts``).
- **Per connection**: the number of events received (summarised as min / max / a count → connections
  table), whether the server ended it, and the last ``"position":"…"`` seen. A connection is a *slot*
  that, reconnected with ``resume=True`` after :meth:`LoadGen.disconnect`, resumes from its last position
  and carries on counting, so after a reconnect storm ``min == max == events published`` still means
  every simulated client got every event exactly once (without ``resume``, a new generation starts
  afresh).
- **Sequence numbers, when asked for** (``Target.sequence``, e.g. synchub's ``"version"``): each slot
  also records which numbers it received and how often, across resumed reconnects, so
  :meth:`LoadGen.sequences` can say, against the numbers that were published, how many each client
  missed or got twice. Off by default: it costs a few hundred ns per delivery.
- **Cheap per message.** A read that is exactly one message (the usual case) is looked up by its bytes
  in a per-worker cache (every client of a fan-out receives the same bytes), so the marker, ``ts`` and
  position searches run once per event and worker, not once per delivery: ~0.5 µs of Python per
  delivery. What remains is the kernel's TCP receive path (the read, and the ACK it sends).
- **Every process it starts, it stops**: :meth:`LoadGen.close` (or leaving ``async with``) stops and joins
  the workers, terminating then killing one that does not exit; a worker also exits by itself when the
  parent's end of its control socket closes (the parent died), and ignores SIGINT (the parent handles it).
  Every wait is bounded by a timeout.

How it scales: connections are spread over several loopback *source* addresses (127.0.0.2, 127.0.0.3, …,
bound before connect, with ``IP_BIND_ADDRESS_NO_PORT``), so tens of thousands of them never exhaust one
address's ephemeral ports; each worker raises its open-file soft limit to the hard limit and holds at most
``per_worker`` (15,000) connections, more workers being started when needed (``max(workers, ceil(n /
per_worker))``); each worker opens at most ``concurrency`` (500) connections at a time, handshake
included, so 19,000 connections open in seconds without overflowing the server's SYN queue.

Use it from the bench's own event loop::

    async with LoadGen(workers=2) as gen:
        await gen.connect(Target.synchub_ws("127.0.0.1", port), 10_000, timeout=60)
        await gen.reset()                       # zero the counters before a measured step
        ...publish...
        await gen.wait_received(expected, timeout=20)
        stats = await gen.collect()             # received, min/max per connection, ended, p50/p99/max ms,
        print(stats.p50_ms, stats.cpu_s)        # the workers' CPU seconds since the reset
        await gen.disconnect(abort=True)        # a reconnect storm: every connection reset at once
        await gen.connect(target, 10_000, resume=True)  # each slot resumes from its last position

Peers: ``Target.for_peer(peer)`` (``peer.protocol`` ``"ws"`` or ``"socketio"``, ``peer.port``); synchub:
``Target.synchub_ws`` / ``Target.synchub_sse``. The workers are started with ``spawn``: the main module
of the program must guard its entry point with ``if __name__ == "__main__":`` (``python -m bench`` and
pytest do). The parent talks to each worker over a socket pair with small pickled commands, without
blocking its loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hashlib
import math
import multiprocessing
import os
import pickle
import re
import resource
import signal
import socket
import struct
import time
import traceback
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

__all__ = [
    "BUCKETS",
    "BUCKET_US",
    "ConnectError",
    "Histogram",
    "LoadGen",
    "Sequences",
    "Stats",
    "Target",
    "WorkerError",
]

BUCKET_US = 100  # histogram resolution: 0.1 ms
BUCKETS = 100_000  # 100,000 buckets of 0.1 ms: 10 s; index BUCKETS is the overflow bucket
PER_WORKER = 15_000  # connections per worker process (its hard open-file limit is 20,000)
CONCURRENCY = 500  # connections opening at a time, per worker
MAX_MESSAGE = 64 * 1024 * 1024  # a frame or message claiming more is a protocol error
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux: port chosen at connect

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_TS = re.compile(rb'"ts\\?":(\d+)')  # "ts":123 and, inside a JSON string (Socket.IO), \"ts\":123
_POSITION = re.compile(rb'"position\\?":\\?"([^"\\]*)')

Kind = Literal["ws", "sse", "socketio"]


# -- what to connect to --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What each connection opens, sends and waits for (picklable: it travels to the workers).

    - ``kind``: ``"ws"`` (WebSocket), ``"sse"`` (``GET`` with ``Accept: text/event-stream``) or
      ``"socketio"`` (Engine.IO v4 over WebSocket only: path ``/socket.io/?EIO=4&transport=websocket``).
    - ``path``: path and query of the request; ``subprotocol``: the WebSocket subprotocol to ask for (and
      to require in the answer); ``headers``: extra request headers (``Authorization``…).
    - ``send``: a text message sent once connected (synchub's subscribe); ``resume_send``: the same when
      reconnecting with ``resume=True``, ``{position}`` replaced by the slot's last position (SSE sends
      ``Last-Event-ID`` instead).
    - ``ready``: bytes that, seen in a message, mean the subscription is acknowledged (the message itself
      is not counted); ``None``: ready once open (WebSocket: on 101; SSE: on the 200 headers; Socket.IO:
      on the namespace CONNECT acknowledgement ``40``).
    - ``event``: bytes a message must contain to count as a delivery (e.g. ``"type":"event"``); ``None``:
      every data message once ready (SSE: every message with a ``data:`` line; Socket.IO: every ``42``
      event packet).
    - ``positions``: keep each connection's last ``"position":"…"`` (one more bytes search per event).
    - ``sequence``: the JSON key of an integer numbering the events (``b"version"``): each slot records
      the numbers it received, for :meth:`LoadGen.sequences` (``None``: not recorded).
    """

    kind: Kind
    host: str
    port: int
    path: str
    subprotocol: str | None = None
    send: bytes | None = None
    ready: bytes | None = None
    event: bytes | None = None
    resume_send: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    positions: bool = True
    sequence: bytes | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("ws", "sse", "socketio"):
            raise ValueError(f"kind is 'ws', 'sse' or 'socketio', not {self.kind!r}")

    @classmethod
    def synchub_ws(
        cls, host: str, port: int, channel: str = "inventory:eu", *, token: str | None = None
    ) -> Target:
        """A synchub WebSocket client (``synchub.json``) subscribed to ``channel``."""
        subscribe = b'{"type":"subscribe","channel":"' + channel.encode() + b'"'
        return cls(
            "ws",
            host,
            port,
            "/api/v1/ws",
            subprotocol="synchub.json",
            send=subscribe + b"}",
            ready=b'"type":"subscribed"',
            event=b'"type":"event"',
            resume_send=subscribe + b',"since":"{position}"}',
            headers=(("Authorization", f"Bearer {token}"),) if token else (),
        )

    @classmethod
    def synchub_sse(
        cls, host: str, port: int, channels: str = "inventory:eu", *, token: str | None = None
    ) -> Target:
        """A synchub SSE client of ``channels`` (comma-separated)."""
        return cls(
            "sse",
            host,
            port,
            f"/api/v1/sse?channels={channels}",
            ready=b"event: ready",
            event=b"event: inventory",
            headers=(("Authorization", f"Bearer {token}"),) if token else (),
        )

    @classmethod
    def peer(cls, protocol: str, host: str, port: int) -> Target:
        """A client of a :mod:`bench.peers.servers` peer speaking ``protocol`` ("ws" or "socketio")."""
        if protocol == "socketio":
            return cls("socketio", host, port, "/socket.io/?EIO=4&transport=websocket", positions=False)
        if protocol == "ws":
            return cls("ws", host, port, "/ws", positions=False)
        raise ValueError(f"unknown peer protocol {protocol!r}")

    @classmethod
    def for_peer(cls, peer: _PeerLike, host: str = "127.0.0.1") -> Target:
        """``Target.peer(peer.protocol, host, peer.port)`` for a running :class:`bench.peers.servers.Peer`."""
        return cls.peer(peer.protocol, host, peer.port)


class _PeerLike(Protocol):
    @property
    def protocol(self) -> str: ...

    @property
    def port(self) -> int: ...


# -- results -------------------------------------------------------------------------------------------


@dataclass
class Histogram:
    """Latencies in buckets of ``BUCKET_US`` µs (bucket ``i`` holds [i, i+1) × 0.1 ms; ``BUCKETS`` is
    everything from 10 s up), stored sparsely, with the exact maximum."""

    counts: dict[int, int] = field(default_factory=dict)
    max_us: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def merge(self, other: Histogram) -> None:
        for bucket, count in other.counts.items():
            self.counts[bucket] = self.counts.get(bucket, 0) + count
        self.max_us = max(self.max_us, other.max_us)

    def quantile_ms(self, q: float) -> float:
        """The ``q`` quantile (0 < q ≤ 1) in ms: its bucket's upper edge, at most the exact maximum."""
        total = self.total
        if total == 0:
            return 0.0
        rank = max(1, math.ceil(q * total))
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                if bucket >= BUCKETS:
                    return self.max_us / 1000
                return min((bucket + 1) * BUCKET_US, self.max_us) / 1000
        return self.max_us / 1000

    @property
    def max_ms(self) -> float:
        return self.max_us / 1000


@dataclass
class Stats:
    """What the clients received since the last :meth:`LoadGen.reset`, merged over the workers.

    ``received``: events (not subscription acknowledgements, pings or heartbeats) since the reset;
    ``no_ts``: how many of them carried no ``ts`` (counted, not in the histogram). ``connections``: those
    of the current generation (since the last :meth:`LoadGen.disconnect`) that became ready, open or not;
    ``open``: still open; ``ended``: closed by the server or broken since the reset (not those closed by
    :meth:`LoadGen.disconnect`); ``failed``: attempts of this generation that never became ready.
    ``per_connection`` maps a number of events received since the reset to how many connections (slots:
    one reconnected with ``resume=True`` carries on counting) received exactly that many. ``cpu_s``: the
    workers' user + system CPU seconds since the reset (``cpu_total_s``: since they started).
    """

    received: int
    no_ts: int
    connections: int
    open: int
    ended: int
    failed: int
    per_connection: dict[int, int]
    histogram: Histogram
    cpu_s: float
    cpu_total_s: float
    worker_pids: list[int]

    @property
    def min_per_connection(self) -> int:
        return min(self.per_connection, default=0)

    @property
    def max_per_connection(self) -> int:
        return max(self.per_connection, default=0)

    @property
    def p50_ms(self) -> float:
        return self.histogram.quantile_ms(0.50)

    @property
    def p99_ms(self) -> float:
        return self.histogram.quantile_ms(0.99)

    @property
    def max_ms(self) -> float:
        return self.histogram.max_ms

    def cpu_per_million(self) -> float:
        """The workers' CPU seconds per 1,000,000 events received."""
        return self.cpu_s * 1e6 / self.received if self.received else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "no_ts": self.no_ts,
            "connections": self.connections,
            "open": self.open,
            "ended": self.ended,
            "failed": self.failed,
            "min_per_connection": self.min_per_connection,
            "max_per_connection": self.max_per_connection,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "cpu_s": self.cpu_s,
            "cpu_s_per_million": self.cpu_per_million(),
            "cpu_total_s": self.cpu_total_s,
        }


@dataclass
class Sequences:
    """Per client (slot) of a ``Target.sequence``, against the sequence numbers that were published:
    each maps a number of events missed (never received), duplicated (received more than once) or
    unexpected (received but not published) to how many clients had exactly that many."""

    clients: int
    missed: dict[int, int]
    duplicated: dict[int, int]
    unexpected: dict[int, int]

    @staticmethod
    def _total(counts: dict[int, int]) -> int:
        return sum(n * clients for n, clients in counts.items())

    @staticmethod
    def _affected(counts: dict[int, int]) -> int:
        return sum(clients for n, clients in counts.items() if n)

    def summary(self) -> dict[str, int]:
        return {
            "clients": self.clients,
            "missed": self._total(self.missed),
            "clients_missing": self._affected(self.missed),
            "max_missed_per_client": max(self.missed, default=0),
            "duplicated": self._total(self.duplicated),
            "clients_with_duplicates": self._affected(self.duplicated),
            "max_duplicated_per_client": max(self.duplicated, default=0),
            "unexpected": self._total(self.unexpected),
        }


class ConnectError(Exception):
    """Not every connection became ready in time (the message says how many did, and the first errors)."""


class WorkerError(Exception):
    """A worker process failed a command or went away."""


# -- the wire: clients running in a worker -------------------------------------------------------------

# What an event message is, worked out once per distinct message and cached per worker and target: every
# connection of a fan-out receives the same bytes, so the bytes searches and the integer parse run once
# per event and worker, not once per delivery. ``(ts in µs or -1, position or None)``.
# With ``Target.sequence`` a third element: the event's sequence number (-1 when it has none).
_Info = tuple[int, bytes | None] | tuple[int, bytes | None, int]
_SKIP: _Info = (-2, None)  # a complete message that is not an event (heartbeat, pong, error...)
_SLOW: _Info = (-3, None)  # not exactly one complete message: parsed the long way (never cached)
CACHE_ENTRIES = 20_000  # distinct messages remembered per worker and target (then forgotten at once)


class _Shared:
    """One worker's counters, shared by its clients (a few attribute increments per event)."""

    __slots__ = ("caches", "ended", "hist", "max_us", "no_ts", "received")

    def __init__(self) -> None:
        self.hist = [0] * (BUCKETS + 1)
        self.received = 0
        self.no_ts = 0
        self.max_us = 0
        self.ended = 0
        self.caches: dict[Target, dict[bytes, _Info]] = {}

    def reset(self) -> None:
        self.hist[:] = _ZEROS
        self.received = self.no_ts = self.max_us = self.ended = 0

    def cache(self, target: Target) -> dict[bytes, _Info]:
        return self.caches.setdefault(target, {})


_ZEROS = [0] * (BUCKETS + 1)


def _mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if n == 0:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked client frame (RFC 6455 §5.2-5.3)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = os.urandom(4)
    return head + key + _mask(payload, key)


class _Seen:
    """The sequence numbers one slot received and how often (a count per number, saturating at 255),
    in one byte per number from the lowest seen: compact for the dense numbers of one event stream."""

    __slots__ = ("low", "marks", "stray")

    SPAN = 1 << 22  # numbers further than this from the lowest are not stored, only counted (stray)

    def __init__(self) -> None:
        self.low = 0
        self.marks = bytearray()
        self.stray = 0

    def add(self, seq: int) -> None:
        marks = self.marks
        if not marks:
            self.low = seq
            marks.append(1)
            return
        i = seq - self.low
        if i < 0:
            if len(marks) - i > self.SPAN:
                self.stray += 1
                return
            marks[0:0] = bytes(-i)
            self.low = seq
            i = 0
        elif i >= len(marks):
            if i >= self.SPAN:
                self.stray += 1
                return
            marks.extend(bytes(i + 1 - len(marks)))
        if marks[i] < 255:
            marks[i] += 1

    def check(self, expected: frozenset[int]) -> tuple[int, int, int]:
        """(missed, duplicated, unexpected): numbers of ``expected`` never received, receipts beyond the
        first of a number, and receipts of numbers not in ``expected``."""
        low, marks = self.low, self.marks
        missed = duplicated = 0
        for seq in expected:
            i = seq - low
            if not 0 <= i < len(marks) or not marks[i]:
                missed += 1
        unexpected = self.stray
        for i, times in enumerate(marks):
            if times:
                if low + i in expected:
                    duplicated += times - 1
                else:
                    unexpected += times
        return missed, duplicated, unexpected


_CONNECTING, _OPEN, _DONE = 0, 1, 2


class _Client(asyncio.Protocol):
    """What the WebSocket and SSE clients share: the HTTP handshake, readiness, counting, ending.

    ``fast`` is true while the connection is ready and holds no partial message: a read that is then
    exactly one message (the usual case) is looked up in the cache by its bytes and counted without being
    parsed; anything else goes through the full parser.
    """

    def __init__(
        self,
        shared: _Shared,
        target: Target,
        resume_from: bytes | None = None,
        *,
        slot: int = 0,
        count: int = 0,
        position: bytes | None = None,
        seen: _Seen | None = None,
    ) -> None:
        self.sh = shared
        self.slot = slot  # its place in the worker: a slot keeps its count and position across reconnects
        self.target = target
        self.cache = shared.cache(target)
        self.socketio = target.kind == "socketio"
        self.marker = target.event
        self.track = target.positions
        self.resume_from = resume_from
        self.transport: asyncio.Transport | None = None
        self.phase = _CONNECTING
        self.head = bytearray()
        self.live = False  # ready: data messages are deliveries
        self.fast = False
        self.count = count
        self.position = position
        self.seen: _Seen | None = None
        self.sequence: re.Pattern[bytes] | None = None
        if target.sequence is not None:  # the per-event recording, only on clients that asked for it
            self.seen = seen if seen is not None else _Seen()
            self.sequence = re.compile(rb'"' + re.escape(target.sequence) + rb'\\?":(\d+)')
            self.tally = self.tally_sequenced  # type: ignore[method-assign]
        self.ended = False  # closed by the server, or broke the protocol, after it was ready
        self.ours = False  # we closed it (disconnect)
        self.error: str | None = None
        self.waiter: asyncio.Future[None] | None = asyncio.get_running_loop().create_future()

    # -- lifecycle -------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request())

    def request(self) -> bytes:
        raise NotImplementedError

    def set_ready(self) -> None:
        if not self.live:
            self.live = True
            waiter, self.waiter = self.waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def fail(self, reason: str) -> None:
        """A protocol error or a refusal: close at once (counted as ended if it was ready)."""
        if self.error is None:
            self.error = reason
        self.end()
        if self.transport is not None:
            self.transport.abort()

    def end(self) -> None:
        """The server ended the connection (close frame, end of stream, reset, error)."""
        self.fast = False
        if self.phase != _DONE:
            self.phase = _DONE
            if self.live and not self.ours and not self.ended:
                self.ended = True
                self.sh.ended += 1
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError(self.error or "closed before it was ready"))

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.error is None:
            self.error = repr(exc)
        self.end()

    def close(self, abort: bool) -> None:
        self.ours = True
        self.phase = _DONE
        self.fast = False
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if abort:
            transport.abort()
        else:
            self.goodbye(transport)
            transport.close()

    def goodbye(self, transport: asyncio.Transport) -> None:
        """What to send before a graceful close."""

    # -- the HTTP response -----------------------------------------------------------------------------
    def response_head(self, data: bytes) -> tuple[bytes, dict[bytes, bytes], bytes] | None:
        """Collect the response head: (status line, lower-cased headers, the bytes after it), or None."""
        head = self.head
        head += data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > 65536:
                self.fail("response head larger than 64 KiB")
            return None
        lines = bytes(head[:end]).split(b"\r\n")
        rest = bytes(head[end + 4 :])
        self.head = bytearray()
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return lines[0], headers, rest

    # -- counting --------------------------------------------------------------------------------------
    def classify(self, data: bytes | bytearray, start: int, stop: int) -> _Info:
        """What the complete message ``data[start:stop]`` is (not cached: see :meth:`info`)."""
        marker = self.marker
        if marker is not None and data.find(marker, start, stop) < 0:
            return _SKIP
        match = _TS.search(data, start, stop)
        ts = int(match[1]) if match is not None else -1
        position = None
        if self.track:
            found = _POSITION.search(data, start, stop)
            if found is not None:
                position = found[1]
        if self.sequence is not None:
            number = self.sequence.search(data, start, stop)
            return (ts, position, int(number[1]) if number is not None else -1)
        return (ts, position)

    def remember(self, key: bytes, info: _Info) -> _Info:
        cache = self.cache
        if len(cache) >= CACHE_ENTRIES:
            cache.clear()
        cache[key] = info
        return info

    def info(self, data: bytes | bytearray, start: int, stop: int) -> _Info:
        """:meth:`classify` through the cache, keyed by the message's bytes."""
        if start == 0 and stop == len(data) and isinstance(data, bytes):
            key = data
        else:
            key = bytes(data[start:stop])
        info = self.cache.get(key)
        if info is None:
            info = self.remember(key, self.classify(data, start, stop))
        return info

    def tally(self, info: _Info) -> None:
        """Count one message: a delivery unless it is not an event; its latency; its position."""
        ts = info[0]
        if ts == -2:
            return
        self.count += 1
        sh = self.sh
        sh.received += 1
        if ts >= 0:
            latency = _time_ns() // 1000 - ts
            if latency > sh.max_us:
                sh.max_us = latency
            bucket = latency // BUCKET_US
            if bucket >= BUCKETS:
                bucket = BUCKETS
            elif bucket < 0:
                bucket = 0
            sh.hist[bucket] += 1
        else:
            sh.no_ts += 1
        if info[1] is not None:
            self.position = info[1]

    def tally_sequenced(self, info: _Info) -> None:
        """:meth:`tally`, and the event's sequence number recorded (clients of a ``Target.sequence``)."""
        _Client.tally(self, info)
        if len(info) > 2 and info[0] != -2 and self.seen is not None:
            seq = info[2]
            if seq >= 0:
                self.seen.add(seq)


_time_ns = time.time_ns


class _WsClient(_Client):
    """A WebSocket client (and, with ``socketio``, an Engine.IO v4 / Socket.IO v5 one over it)."""

    def __init__(self, shared: _Shared, target: Target, resume_from: bytes | None = None, **kw: Any) -> None:
        super().__init__(shared, target, resume_from, **kw)
        self.buf = bytearray()  # an incomplete frame
        self.need = 0  # bytes ``buf`` must hold before parsing it again
        self.fragments: bytearray | None = None
        self.accept = b""

    def request(self) -> bytes:
        t = self.target
        key = base64.b64encode(os.urandom(16))
        self.accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
        lines = [
            f"GET {t.path} HTTP/1.1",
            f"Host: {t.host}:{t.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key.decode()}",
            "Sec-WebSocket-Version: 13",
        ]
        if t.subprotocol:
            lines.append(f"Sec-WebSocket-Protocol: {t.subprotocol}")
        lines.extend(f"{name}: {value}" for name, value in t.headers)
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def handshake(self, data: bytes) -> None:
        parsed = self.response_head(data)
        if parsed is None:
            return
        status, headers, rest = parsed
        if not status.startswith(b"HTTP/1.1 101"):
            self.fail(f"the upgrade was answered {status.decode(errors='replace')!r}: {rest[:200]!r}")
            return
        if headers.get(b"sec-websocket-accept") != self.accept:
            self.fail("wrong Sec-WebSocket-Accept")
            return
        wanted = self.target.subprotocol
        if wanted and headers.get(b"sec-websocket-protocol", b"").decode() != wanted:
            self.fail(f"the server did not accept subprotocol {wanted}")
            return
        self.phase = _OPEN
        first = self.target.send
        if self.resume_from is not None and self.target.resume_send is not None:
            first = self.target.resume_send.replace(b"{position}", self.resume_from)
        if first is not None:
            self.send_text(first)
        if self.target.ready is None and not self.socketio:
            self.set_ready()
        self.frames(rest)

    def send_text(self, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(0x1, payload))

    def goodbye(self, transport: asyncio.Transport) -> None:
        if self.phase == _OPEN or self.live:
            transport.write(client_frame(0x8, struct.pack("!H", 1000)))

    def data_received(self, data: bytes) -> None:
        if self.fast:  # ready, nothing pending: most reads are one whole frame seen before
            info = self.cache.get(data)
            if info is None:
                info = self.inspect(data)
            if info is not _SLOW:
                self.tally(info)
                return
            self.frames(data)
            return
        buf = self.buf
        if buf:
            buf += data
            if len(buf) < self.need:
                return
            self.buf = bytearray()
            self.frames(buf)
        elif self.phase == _OPEN:
            self.frames(data)
        elif self.phase == _CONNECTING:
            self.handshake(data)

    def inspect(self, data: bytes) -> _Info:
        """A read not in the cache: if it is exactly one final data frame, classify it and cache it."""
        n = len(data)
        if n < 2 or data[0] not in (0x81, 0x82):
            return _SLOW
        size = data[1]
        if size < 126:
            start = 2
        elif size == 126 and n >= 4:
            size = (data[2] << 8) | data[3]
            start = 4
        elif size == 127 and n >= 10:
            size = int.from_bytes(data[2:10], "big")
            start = 10
        else:
            return _SLOW
        if start + size != n or (self.socketio and not data.startswith(b"42", start)):
            return _SLOW
        return self.remember(data, self.classify(data, start, n))

    def frames(self, data: bytes | bytearray) -> None:
        """Parse every complete frame in ``data``; keep an incomplete tail for the next read."""
        pos = 0
        end = len(data)
        need = 0
        while pos < end:
            if end - pos < 2:
                need = 2
                break
            b0 = data[pos]
            size = data[pos + 1]
            if size < 126:
                start = pos + 2
            elif size == 126:
                if end - pos < 4:
                    need = 4
                    break
                size = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 4
            elif size == 127:
                if end - pos < 10:
                    need = 10
                    break
                size = int.from_bytes(data[pos + 2 : pos + 10], "big")
                start = pos + 10
                if size > MAX_MESSAGE:
                    self.fail(f"a frame of {size} bytes")
                    return
            else:
                self.fail("a masked frame from the server")
                return
            stop = start + size
            if stop > end:
                need = stop - pos
                break
            self.frame(b0, data, start, stop)
            if self.phase == _DONE:
                return
            pos = stop
        if pos < end:
            self.buf = bytearray(data[pos:])
            self.need = need
        self.fast = self.live and self.phase == _OPEN and not self.buf and self.fragments is None

    def frame(self, b0: int, data: bytes | bytearray, start: int, stop: int) -> None:
        if b0 & 0x70:
            self.fail("RSV bits set: no extension was negotiated")
            return
        opcode = b0 & 0x0F
        fin = b0 & 0x80
        if opcode in (0x1, 0x2):
            if self.fragments is not None:
                self.fail("a new message inside a fragmented one")
            elif fin:
                self.message(data, start, stop)
            else:
                self.fragments = bytearray(data[start:stop])
        elif opcode == 0x0:
            fragments = self.fragments
            if fragments is None:
                self.fail("a continuation frame outside a message")
                return
            fragments += data[start:stop]
            if len(fragments) > MAX_MESSAGE:
                self.fail(f"a message of more than {MAX_MESSAGE} bytes")
            elif fin:
                self.fragments = None
                whole = bytes(fragments)
                self.message(whole, 0, len(whole))
        elif opcode == 0x8:  # close: answer it (same code), then the connection is over
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.write(client_frame(0x8, bytes(data[start : start + 2])))
                transport.close()
            self.end()
        elif opcode == 0x9:  # ping → pong, same payload
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(client_frame(0xA, bytes(data[start:stop])))
        elif opcode != 0xA:
            self.fail(f"unknown opcode {opcode}")

    def message(self, data: bytes | bytearray, start: int, stop: int) -> None:
        """A whole data message."""
        if self.socketio:
            self.engineio(data, start, stop)
        elif self.live:
            self.tally(self.info(data, start, stop))
        elif self.target.ready is not None and data.find(self.target.ready, start, stop) >= 0:
            self.set_ready()

    def engineio(self, data: bytes | bytearray, start: int, stop: int) -> None:
        if stop == start:
            return
        kind = data[start]
        if kind == 0x34:  # "4": a Socket.IO packet
            packet = data[start + 1] if stop > start + 1 else 0
            if packet == 0x32:  # "2": EVENT
                if self.live:
                    self.tally(self.info(data, start, stop))
            elif packet == 0x30:  # "0": CONNECT acknowledged
                self.set_ready()
            elif packet == 0x34:  # "4": CONNECT_ERROR
                self.fail(f"Socket.IO connect refused: {bytes(data[start:stop])[:200]!r}")
            elif packet == 0x31:  # "1": the server disconnected the namespace
                self.end()
                if self.transport is not None:
                    self.transport.close()
        elif kind == 0x32:  # "2": ping → "3" + the same payload
            self.send_text(b"3" + bytes(data[start + 1 : stop]))
        elif kind == 0x30:  # "0": open → connect the default namespace
            self.send_text(b"40")
        elif kind == 0x31:  # "1": close
            self.end()
            if self.transport is not None:
                self.transport.close()


class _SseClient(_Client):
    """A Server-Sent Events client: one ``GET``, then ``\\n\\n``-separated messages (optionally chunked)."""

    def __init__(self, shared: _Shared, target: Target, resume_from: bytes | None = None, **kw: Any) -> None:
        super().__init__(shared, target, resume_from, **kw)
        if self.marker is None:
            self.marker = b"data:"
        self.chunked = False
        self.left = 0  # payload bytes left in the current chunk
        self.skip = 0  # bytes of the CRLF after a chunk still to skip
        self.line = bytearray()  # an incomplete chunk-size line
        self.text = bytearray()  # an incomplete SSE message

    def request(self) -> bytes:
        t = self.target
        lines = [
            f"GET {t.path} HTTP/1.1",
            f"Host: {t.host}:{t.port}",
            "Accept: text/event-stream",
            "Cache-Control: no-cache",
        ]
        if self.resume_from is not None:
            lines.append(f"Last-Event-ID: {self.resume_from.decode()}")
        lines.extend(f"{name}: {value}" for name, value in t.headers)
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def data_received(self, data: bytes) -> None:
        if self.fast:  # ready, nothing pending: most reads are one whole chunk of one message
            info = self.cache.get(data)
            if info is None:
                info = self.inspect(data)
            if info is not _SLOW:
                self.tally(info)
                return
        if self.phase == _OPEN:
            if self.chunked:
                self.dechunk(data)
            else:
                self.feed(data, 0, len(data))
            self.fast = (
                self.live and self.phase == _OPEN and not (self.left or self.skip or self.line or self.text)
            )
        elif self.phase == _CONNECTING:
            parsed = self.response_head(data)
            if parsed is None:
                return
            status, headers, rest = parsed
            if not status.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                self.fail(f"the request was answered {status.decode(errors='replace')!r}: {rest[:200]!r}")
                return
            self.chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
            self.phase = _OPEN
            if self.target.ready is None:
                self.set_ready()
            self.data_received(rest)

    def inspect(self, data: bytes) -> _Info:
        """A read not in the cache: if it is exactly one message (in one chunk), classify and cache it."""
        n = len(data)
        if self.chunked:
            head = data.find(b"\r\n", 0, 20)
            if head <= 0 or not data.endswith(b"\n\n\r\n"):
                return _SLOW
            try:
                size = int(data[:head].split(b";", 1)[0], 16)
            except ValueError:
                return _SLOW
            start, stop = head + 2, n - 2
            if stop - start != size:
                return _SLOW
        else:
            if not data.endswith(b"\n\n"):
                return _SLOW
            start, stop = 0, n
        if stop - start < 3 or data.find(b"\n\n", start, stop) != stop - 2:
            return _SLOW
        return self.remember(data, self.classify(data, start, stop - 2))

    def eof_received(self) -> bool | None:
        self.end()
        return None

    def dechunk(self, data: bytes | bytearray) -> None:
        pos = 0
        end = len(data)
        while pos < end:
            left = self.left
            if left:
                stop = pos + left if pos + left < end else end
                self.feed(data, pos, stop)
                self.left = left - (stop - pos)
                if not self.left:
                    self.skip = 2
                pos = stop
            elif self.skip:
                taken = min(self.skip, end - pos)
                self.skip -= taken
                pos += taken
            else:
                newline = data.find(b"\n", pos, end)
                if newline < 0:
                    self.line += data[pos:end]
                    if len(self.line) > 1024:
                        self.fail("a chunk-size line longer than 1 KiB")
                    return
                line = bytes(self.line + data[pos:newline]) if self.line else bytes(data[pos:newline])
                self.line = bytearray()
                pos = newline + 1
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    self.fail(f"a bad chunk-size line {line[:40]!r}")
                    return
                if size == 0:  # the last chunk: the server ended the stream
                    self.end()
                    if self.transport is not None:
                        self.transport.close()
                    return
                if size > MAX_MESSAGE:
                    self.fail(f"a chunk of {size} bytes")
                    return
                self.left = size

    def feed(self, data: bytes | bytearray, start: int, stop: int) -> None:
        """Stream bytes: handle every complete ``\\n\\n``-terminated message, keep the rest."""
        text = self.text
        if text:
            text += data[start:stop]
            data, start, stop = text, 0, len(text)
        pos = start
        while True:
            blank = data.find(b"\n\n", pos, stop)
            if blank < 0:
                break
            if blank > pos:
                self.message(data, pos, blank)
            pos = blank + 2
        if text:
            del text[:pos]
        elif pos < stop:
            self.text = bytearray(data[pos:stop])
        if len(self.text) > MAX_MESSAGE:
            self.fail(f"an SSE message of more than {MAX_MESSAGE} bytes")

    def message(self, data: bytes | bytearray, start: int, stop: int) -> None:
        if self.live:
            self.tally(self.info(data, start, stop))
        elif self.target.ready is not None and data.find(self.target.ready, start, stop) >= 0:
            self.set_ready()


# -- a worker process ----------------------------------------------------------------------------------


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return int(soft)


class _Worker:
    """The clients of one worker process and the commands the parent sends it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.shared = _Shared()
        self.conns: list[_Client] = []
        # slot -> (count, position, sequence numbers) in the previous generation
        self.previous: dict[int, tuple[int, bytes | None, _Seen | None]] = {}
        self.disconnected = False
        self.next_slot = 0
        self.failed = 0
        self.cpu_mark = _cpu_self()
        self.nofile = _raise_nofile()

    async def cmd_hello(self) -> dict[str, Any]:
        loop = type(asyncio.get_running_loop()).__module__
        return {"pid": os.getpid(), "nofile": self.nofile, "loop": loop}

    async def cmd_connect(
        self,
        target: Target,
        count: int,
        first: int,
        sources: Sequence[str],
        seconds: float,
        concurrency: int,
        resume: bool,
    ) -> dict[str, Any]:
        if self.disconnected:  # a new generation: remember the last positions, for resume
            self.previous = {c.slot: (c.count, c.position, c.seen) for c in self.conns}
            self.conns = []
            self.next_slot = 0
            self.failed = 0
            self.disconnected = False
        if len(self.conns) + count > self.nofile - 100:
            raise ValueError(
                f"worker {self.index}: {len(self.conns) + count} connections exceed its open-file limit "
                f"({self.nofile})"
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        base = self.next_slot
        self.next_slot += count
        slots = iter(range(count))
        errors: Counter[str] = Counter()
        ready = [0]
        started = time.monotonic()

        async def opener() -> None:
            for i in slots:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    errors["not attempted: timed out"] += 1
                    continue
                source = sources[(first + i) % len(sources)]
                slot = base + i
                count, position, seen = (
                    self.previous.get(slot, (0, None, None)) if resume else (0, None, None)
                )
                opening = self.open(
                    target, source, position, slot=slot, count=count, position=position, seen=seen
                )
                try:
                    client = await asyncio.wait_for(opening, remaining)
                except Exception as exc:  # counted and reported; the others go on
                    errors[_describe(exc)] += 1
                    continue
                self.conns.append(client)
                ready[0] += 1

        await asyncio.gather(*(opener() for _ in range(min(concurrency, count))))
        self.failed += count - ready[0]
        gc.collect()
        gc.freeze()  # the connections live until the end: keep them out of later collections
        return {
            "ready": ready[0],
            "failed": count - ready[0],
            "errors": errors.most_common(5),
            "seconds": time.monotonic() - started,
        }

    async def open(self, target: Target, source: str, resume_from: bytes | None, **carried: Any) -> _Client:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client: _Client | None = None
        try:
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((source, 0))
            await loop.sock_connect(sock, (target.host, target.port))
            if target.kind == "sse":
                client = _SseClient(self.shared, target, resume_from, **carried)
            else:
                client = _WsClient(self.shared, target, resume_from, **carried)
            made = client
            await loop.create_connection(lambda: made, sock=sock)
            waiter = client.waiter
            if waiter is not None:
                await waiter
            return client
        except BaseException:
            if client is not None and client.transport is not None:
                client.ours = True
                client.transport.abort()
            else:
                sock.close()
            raise

    async def cmd_reset(self) -> None:
        self.shared.reset()
        for client in self.conns:
            client.count = 0
            if client.seen is not None:
                client.seen = _Seen()
        self.cpu_mark = _cpu_self()

    async def cmd_received(self) -> int:
        return self.shared.received

    async def cmd_collect(self) -> dict[str, Any]:
        sh = self.shared
        hist = {i: c for i, c in enumerate(sh.hist) if c}
        cpu = _cpu_self()
        return {
            "received": sh.received,
            "no_ts": sh.no_ts,
            "connections": len(self.conns),
            "open": sum(1 for c in self.conns if c.phase != _DONE),
            "ended": sh.ended,
            "failed": self.failed,
            "per_connection": dict(Counter(c.count for c in self.conns)),
            "hist": hist,
            "max_us": sh.max_us,
            "cpu_s": cpu - self.cpu_mark,
            "cpu_total_s": cpu,
            "pid": os.getpid(),
        }

    async def cmd_sequences(self, expected: frozenset[int]) -> dict[str, Any]:
        missed: Counter[int] = Counter()
        duplicated: Counter[int] = Counter()
        unexpected: Counter[int] = Counter()
        for client in self.conns:
            if client.seen is None:
                continue
            m, d, u = client.seen.check(expected)
            missed[m] += 1
            duplicated[d] += 1
            unexpected[u] += 1
        return {"missed": dict(missed), "duplicated": dict(duplicated), "unexpected": dict(unexpected)}

    async def cmd_positions(self) -> list[str | None]:
        return [None if c.position is None else c.position.decode() for c in self.conns]

    async def cmd_disconnect(self, abort: bool) -> int:
        closed = 0
        for client in self.conns:
            if client.phase != _DONE:
                closed += 1
            client.close(abort)
        self.disconnected = True
        gc.unfreeze()  # the closed clients may be collected now
        return closed

    def shutdown(self) -> None:
        for client in self.conns:
            client.close(True)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


async def _send_frame(writer: asyncio.StreamWriter, obj: Any) -> None:
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(struct.pack("!I", len(payload)) + payload)
    await writer.drain()


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    (size,) = struct.unpack("!I", await reader.readexactly(4))
    return pickle.loads(await reader.readexactly(size))


async def _serve(sock: socket.socket, index: int) -> None:
    worker = _Worker(index)
    reader, writer = await asyncio.open_connection(sock=sock)
    tasks: set[asyncio.Task[None]] = set()

    async def handle(ident: int, command: str, kwargs: dict[str, Any]) -> None:
        try:
            result = await getattr(worker, "cmd_" + command)(**kwargs)
            reply: tuple[int, bool, Any] = (ident, True, result)
        except Exception as exc:  # reported to the parent
            reply = (ident, False, "".join(traceback.format_exception(exc))[-3000:])
        with contextlib.suppress(ConnectionError):
            await _send_frame(writer, reply)

    try:
        while True:
            try:
                ident, command, kwargs = await _read_frame(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return  # the parent is gone
            if command == "stop":
                worker.shutdown()
                await _send_frame(writer, (ident, True, None))
                return
            task = asyncio.create_task(handle(ident, command, kwargs))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        worker.shutdown()
        for task in tasks:
            task.cancel()
        writer.close()


def _worker_main(sock: socket.socket, index: int) -> None:
    """A worker process: its clients on a uvloop event loop, until the parent says stop or goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent handles it
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(sock, index))
    else:
        uvloop.run(_serve(sock, index))


# -- the parent ----------------------------------------------------------------------------------------


class _Handle:
    """The parent's end of one worker: its process and a request/reply channel."""

    def __init__(self, index: int, proc: multiprocessing.process.BaseProcess, sock: socket.socket) -> None:
        self.index = index
        self.proc = proc
        self.sock = sock
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.next_id = 0
        self.listener: asyncio.Task[None] | None = None
        self.pid = 0
        self.loop = ""  # the event loop's module: "uvloop" (or "asyncio" where uvloop is missing)
        self.nofile = 0
        self.connections = 0

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(sock=self.sock)
        self.listener = asyncio.create_task(self.listen())

    async def listen(self) -> None:
        assert self.reader is not None
        error: BaseException = WorkerError(f"worker {self.index} (pid {self.proc.pid}) went away")
        try:
            while True:
                ident, ok, result = await _read_frame(self.reader)
                future = self.pending.pop(ident, None)
                if future is None or future.done():
                    continue
                if ok:
                    future.set_result(result)
                else:
                    future.set_exception(WorkerError(f"worker {self.index}: {result}"))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(error)
            self.pending.clear()

    async def call(self, command: str, limit: float, /, **kwargs: Any) -> Any:
        if self.writer is None or self.listener is None or self.listener.done():
            raise WorkerError(f"worker {self.index} is not running")
        self.next_id += 1
        ident = self.next_id
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[ident] = future
        try:
            await _send_frame(self.writer, (ident, command, kwargs))
            return await asyncio.wait_for(future, limit)
        except TimeoutError:
            raise WorkerError(f"worker {self.index}: {command} got no answer within {limit:.0f} s") from None
        finally:
            self.pending.pop(ident, None)


class LoadGen:
    """N client connections over worker processes, driven from the caller's event loop.

    ``workers``: processes to start (more are started by :meth:`connect` when a worker would hold more
    than ``per_worker`` connections; ``connections``, if known, starts enough at once). ``sources``: the
    loopback addresses to connect from (an int k means 127.0.0.2 … 127.0.0.(k+1)). ``concurrency``:
    connections opening at a time per worker. ``command_timeout``: the bound on every other command.
    """

    def __init__(
        self,
        workers: int = 2,
        *,
        connections: int | None = None,
        per_worker: int = PER_WORKER,
        sources: int | Sequence[str] = 8,
        concurrency: int = CONCURRENCY,
        start_method: str = "spawn",
        command_timeout: float = 30.0,
    ) -> None:
        if workers < 1 or per_worker < 1 or concurrency < 1:
            raise ValueError("workers, per_worker and concurrency are at least 1")
        self.per_worker = per_worker
        self.initial = max(workers, math.ceil((connections or 0) / per_worker))
        if isinstance(sources, int):
            if not 1 <= sources <= 250:
                raise ValueError("sources: 1 to 250 loopback addresses")
            self.sources: tuple[str, ...] = tuple(f"127.0.0.{2 + i}" for i in range(sources))
        else:
            self.sources = tuple(sources)
            if not self.sources:
                raise ValueError("sources: at least one address")
        self.concurrency = concurrency
        self.command_timeout = command_timeout
        self._context: Any = multiprocessing.get_context(start_method)
        self._workers: list[_Handle] = []
        self._next_index = 0
        self._generation_closed = False

    @property
    def worker_pids(self) -> list[int]:
        return [h.pid for h in self._workers]

    @property
    def worker_info(self) -> list[dict[str, Any]]:
        """Per worker: pid, event loop module, open-file limit, connections of this generation."""
        return [
            {"pid": h.pid, "loop": h.loop, "nofile": h.nofile, "connections": h.connections}
            for h in self._workers
        ]

    async def __aenter__(self) -> LoadGen:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the workers (each answers once its event loop runs)."""
        try:
            await self._spawn(self.initial - len(self._workers))
        except BaseException:
            await self.close()
            raise

    async def _spawn(self, count: int) -> None:
        fresh = []
        for _ in range(count):
            index = len(self._workers)
            parent, child = socket.socketpair()
            proc = self._context.Process(
                target=_worker_main, args=(child, index), name=f"loadgen-{index}", daemon=True
            )
            handle = _Handle(index, proc, parent)
            self._workers.append(handle)
            try:
                proc.start()
            finally:
                child.close()
            fresh.append(handle)
        for handle in fresh:
            await handle.open()
        hellos = await asyncio.gather(*(h.call("hello", self.command_timeout) for h in fresh))
        for handle, hello in zip(fresh, hellos, strict=True):
            handle.pid, handle.loop, handle.nofile = (
                hello["pid"],
                hello["loop"].split(".")[0],
                hello["nofile"],
            )
            if hello["nofile"] < 100:
                raise WorkerError(f"worker {handle.index}: open-file limit {hello['nofile']}")

    async def connect(
        self,
        target: Target,
        n: int,
        timeout: float = 60.0,  # noqa: ASYNC109 - passed on to the workers, which bound each connection
        *,
        resume: bool = False,
    ) -> int:
        """Open ``n`` more connections to ``target``, spread over the workers (and source addresses);
        return once all are ready. Raises :class:`ConnectError` (saying how many are ready and the first
        errors) if some failed or were not ready within ``timeout`` seconds; those ready stay open.

        After :meth:`disconnect`, a connect starts a new generation; with ``resume``, slot ``i`` of each
        worker resumes from the last position of slot ``i`` of the previous generation and carries on
        its count (the same ``n`` over the same workers maps every slot to itself).
        """
        if n < 1:
            return 0
        if not self._workers:
            await self.start()
        if self._generation_closed:
            for handle in self._workers:
                handle.connections = 0
            self._generation_closed = False
        total = sum(h.connections for h in self._workers) + n
        wanted = math.ceil(total / self.per_worker)
        if wanted > len(self._workers):
            await self._spawn(wanted - len(self._workers))
        shares = [0] * len(self._workers)
        loads = [h.connections for h in self._workers]
        for _ in range(n):  # fill the least loaded worker first
            i = min(range(len(loads)), key=loads.__getitem__)
            loads[i] += 1
            shares[i] += 1
        calls = []
        first = self._next_index
        started = time.monotonic()
        for handle, share in zip(self._workers, shares, strict=True):
            if share:
                calls.append(
                    (
                        handle,
                        share,
                        handle.call(
                            "connect",
                            timeout + self.command_timeout,
                            target=target,
                            count=share,
                            first=first,
                            sources=self.sources,
                            seconds=timeout,
                            concurrency=self.concurrency,
                            resume=resume,
                        ),
                    )
                )
                first += share
        self._next_index = first
        results = await asyncio.gather(*(c for _, _, c in calls))
        ready = 0
        errors: Counter[str] = Counter()
        for (handle, _share, _), result in zip(calls, results, strict=True):
            handle.connections += result["ready"]
            ready += result["ready"]
            errors.update(dict(result["errors"]))
        if ready < n:
            elapsed = time.monotonic() - started
            detail = "; ".join(f"{count} × {error}" for error, count in errors.most_common(5))
            raise ConnectError(
                f"{ready} of {n} connections to {target.kind}://{target.host}:{target.port}{target.path} "
                f"ready after {elapsed:.1f} s (timeout {timeout:.0f} s); {n - ready} not: {detail}"
            )
        return ready

    async def _all(self, command: str, **kwargs: Any) -> list[Any]:
        limit = self.command_timeout
        return list(await asyncio.gather(*(h.call(command, limit, **kwargs) for h in self._workers)))

    async def reset(self) -> None:
        """Zero the counters, histograms, ended counts and the CPU marks (between measured steps)."""
        await self._all("reset")

    async def received(self) -> int:
        return sum(await self._all("received"))

    async def wait_received(
        self,
        total: int,
        timeout: float,  # noqa: ASYNC109 - a polling loop with its own deadline
        interval: float = 0.05,
    ) -> int:
        """Poll until ``total`` events were received (since the reset) or ``timeout``; the count."""
        deadline = time.monotonic() + timeout
        while True:
            count = await self.received()
            if count >= total or time.monotonic() >= deadline:
                return count
            await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))

    async def wait_idle(
        self,
        idle: float,
        timeout: float,  # noqa: ASYNC109 - a polling loop with its own deadline
        interval: float = 0.05,
    ) -> int:
        """Poll until nothing new arrived for ``idle`` seconds (or ``timeout``); the count."""
        deadline = time.monotonic() + timeout
        last = await self.received()
        since = time.monotonic()
        while time.monotonic() < deadline:
            await asyncio.sleep(interval)
            count = await self.received()
            if count != last:
                last, since = count, time.monotonic()
            elif time.monotonic() - since >= idle:
                break
        return last

    async def collect(self) -> Stats:
        """The merged statistics since the last reset."""
        parts = await self._all("collect")
        histogram = Histogram()
        per_connection: Counter[int] = Counter()
        for part in parts:
            histogram.merge(Histogram(part["hist"], part["max_us"]))
            per_connection.update(part["per_connection"])
        return Stats(
            received=sum(p["received"] for p in parts),
            no_ts=sum(p["no_ts"] for p in parts),
            connections=sum(p["connections"] for p in parts),
            open=sum(p["open"] for p in parts),
            ended=sum(p["ended"] for p in parts),
            failed=sum(p["failed"] for p in parts),
            per_connection=dict(per_connection),
            histogram=histogram,
            cpu_s=sum(p["cpu_s"] for p in parts),
            cpu_total_s=sum(p["cpu_total_s"] for p in parts),
            worker_pids=[p["pid"] for p in parts],
        )

    async def sequences(self, published: Iterable[int]) -> Sequences:
        """What every connection of a ``Target.sequence`` received (through resumed reconnects too),
        against the sequence numbers ``published`` (since the last :meth:`reset`)."""
        expected = frozenset(published)
        parts = await self._all("sequences", expected=expected)
        merged: dict[str, Counter[int]] = {
            "missed": Counter(),
            "duplicated": Counter(),
            "unexpected": Counter(),
        }
        for part in parts:
            for key, counts in merged.items():
                counts.update(part[key])
        return Sequences(
            clients=sum(merged["missed"].values()),
            missed=dict(merged["missed"]),
            duplicated=dict(merged["duplicated"]),
            unexpected=dict(merged["unexpected"]),
        )

    async def positions(self) -> list[str | None]:
        """Each connection's last event position (``None`` before one), worker by worker."""
        return [p for part in await self._all("positions") for p in part]

    async def disconnect(self, *, abort: bool = False) -> int:
        """Close every connection (a WebSocket close frame and FIN; with ``abort``, a reset at once); the
        number that were open. The statistics stay until the next :meth:`connect` starts a new
        generation."""
        closed = int(sum(await self._all("disconnect", abort=abort)))
        self._generation_closed = True
        return closed

    async def close(self, seconds: float = 10.0) -> None:
        """Stop every worker: ask, then terminate, then kill; join them all (idempotent)."""
        workers, self._workers = self._workers, []
        try:
            await asyncio.gather(
                *(self._stop(h, seconds) for h in workers if h.proc.pid is not None),
                return_exceptions=True,
            )
        finally:
            for handle in workers:  # also when cancelled: nothing may outlive the generator
                _kill(handle.proc)
                if handle.listener is not None:
                    handle.listener.cancel()
                if handle.writer is not None:
                    handle.writer.close()
                handle.sock.close()

    async def _stop(self, handle: _Handle, seconds: float) -> None:
        with contextlib.suppress(Exception):
            if handle.listener is not None and not handle.listener.done():
                await handle.call("stop", seconds / 2)
        await asyncio.to_thread(handle.proc.join, seconds / 2)


def _kill(proc: multiprocessing.process.BaseProcess) -> None:
    """Terminate, then kill; join (bounded). A no-op for a process that has exited (it is reaped)."""
    if proc.pid is None:
        return
    if proc.is_alive():
        proc.terminate()
        proc.join(2)
    if proc.is_alive():
        proc.kill()
        proc.join(2)
    else:
        proc.join(0)
