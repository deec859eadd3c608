"""The connection: one hub (from a list of nodes' URLs), every subscription resumed from its position.

``Client`` listens over the best transport that gets through — a WebSocket (MessagePack or JSON frames),
else Server-Sent Events, else long-poll — and keeps every subscription's last position, so that after
any disconnect it resumes each one where it was, on whichever node answers. It obeys the hub's close
codes (docs/protocol.md, "Close codes"):

====================  ===================================================================
1001 going away       reconnect at once, to the next node of the list
4101 slow consumer    reconnect (backoff) and resume from the last positions
4102 token expired    ask the app's ``refresh_token`` callback for a token, reconnect
4103 resync           each subscription's resync handler reads its snapshot, then resubscribe
4104 rate limited     back off for seconds, then resume
4000–4099, 1002,      stop: ``Client.error`` holds a :class:`ClientStopped`, every subscription
1007, 1009            ends with it
anything else, or a   reconnect with exponential backoff and full jitter, to the next node
dropped connection
====================  ===================================================================

A WebSocket upgrade that is answered but refused (a proxy that strips ``Upgrade``, or answers 403/405/
501…), or one accepted on which nothing comes back (the opening ``ping`` unanswered for
``ws_silence_timeout``, twice in a row), moves the client to SSE; an SSE stream that never delivers
its opening ``ready`` event within ``sse_ready_timeout`` (a buffering proxy) moves it to long-poll.
After ``upgrade_retry_after`` seconds in a fallback, the next reconnect tries the WebSocket again.
Over SSE and long-poll each subscription is its own stream, and ``request`` (WebSocket messages) is
unavailable: writes go through REST (:meth:`Client.http`), which :mod:`synchub_client.documents` does
by itself.

Heartbeats: a WebSocket is pinged every ``heartbeat`` seconds and dropped when a pong does not come
(aiohttp's heartbeat); an SSE stream silent for ``sse_idle_timeout`` (the hub writes a comment every
15 s) is dropped; a long-poll request has a deadline past its ``timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from synchub_client.backoff import Backoff
from synchub_client.errors import (
    ClientStopped,
    ConnectionLost,
    HttpError,
    NotConnected,
    SubscriptionError,
)
from synchub_client.events import Ended, Event, Item, Resync, State, Transport
from synchub_client.wire import JSON, MSGPACK, SseParser, decode_frame, encode_frame

log = logging.getLogger("synchub_client")

ResyncHandler = Callable[[Resync], Awaitable[str | None]]
TokenProvider = Callable[[], Awaitable[str]]
ConnectHook = Callable[[], Awaitable[None]]

# Answers to a subscribe (any transport) that refuse the channel itself: the subscription ends.
CHANNEL_REFUSALS = frozenset(
    {
        "invalid_channel",
        "channel_not_served",
        "channel_forbidden",
        "cart_not_found",
        "school_not_found",
        "channels_span_streams",
        "unauthenticated",
        "bad_request",
        "too_many_subscriptions",
    }
)

_TRANSITIONS: dict[State, frozenset[State]] = {
    State.IDLE: frozenset({State.CONNECTING, State.STOPPED}),
    State.CONNECTING: frozenset({State.CONNECTED, State.BACKOFF, State.CONNECTING, State.STOPPED}),
    State.CONNECTED: frozenset({State.CONNECTING, State.BACKOFF, State.STOPPED}),
    State.BACKOFF: frozenset({State.CONNECTING, State.STOPPED}),
    State.STOPPED: frozenset(),
}


class _Blocked(Exception):
    """The transport is refused on the way (a proxy): fall back to the next one."""

    def __init__(self, transport: Transport, why: str) -> None:
        super().__init__(f"{transport.value} blocked: {why}")
        self.transport = transport


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What to do after a connection ends."""

    kind: str  # "retry", "now", "refresh", "resync", "stop"
    code: int | str | None = None
    reason: str = ""
    min_delay: float = 0.0
    slow: bool = False  # dropped as a slow consumer (4101, SSE slow_consumer)


RETRY = _Outcome("retry")


def outcome_for_close(code: int | None, reason: str = "") -> _Outcome:
    """The close-code table of docs/protocol.md."""
    if code == 1001:
        return _Outcome("now", code)
    if code in (1002, 1007, 1009) or (code is not None and 4000 <= code <= 4099):
        return _Outcome("stop", code, reason)
    if code == 4102:
        return _Outcome("refresh", code)
    if code == 4103:
        return _Outcome("resync", code)
    if code == 4104:
        return _Outcome("retry", code, min_delay=2.0)
    if code == 4101:
        return _Outcome("retry", code, slow=True)
    return _Outcome("retry", code)


def ws_url(base: str) -> str:
    if base.startswith(("ws://", "wss://")):
        return base
    return "ws" + base.removeprefix("http") + "/api/v1/ws"


def http_base(url: str) -> str:
    if url.startswith(("ws://", "wss://")):
        return "http" + url.removeprefix("ws").removesuffix("/api/v1/ws")
    return url.rstrip("/")


class Subscription:
    """One channel followed by the client; iterate it for its :class:`Event` and :class:`Resync` items.

    ``position`` is the last position received: the client resumes from it after any disconnect.
    ``ready`` is set once the hub has confirmed the subscription (so events from then on will come).
    """

    def __init__(self, channel: str, since: str | None, on_resync: ResyncHandler | None) -> None:
        self.channel = channel
        self.position = since
        self.on_resync = on_resync
        self.ready = asyncio.Event()
        self.ended: Ended | None = None
        self.listeners: list[Callable[[Item], None]] = []
        self.subscribed_at: float | None = None  # time.monotonic() of the hub's last confirmation
        self.confirmations = 0  # how many times the hub confirmed it (1 + resumes)
        self._queue: asyncio.Queue[Item] = asyncio.Queue()
        self._needs_resync = False
        self._in_flight = False  # a WebSocket subscribe sent, not answered yet

    def confirmed(self) -> None:
        """The hub took the subscription (``subscribed``, SSE ``ready``, a first poll answered)."""
        self.subscribed_at = time.monotonic()
        self.confirmations += 1
        self.ready.set()

    def deliver(self, item: Item) -> None:
        if self.ended is not None:
            return
        if isinstance(item, Ended):
            self.ended = item
            self.ready.set()
        self._queue.put_nowait(item)
        for listener in list(self.listeners):
            listener(item)

    async def get(self, timeout: float | None = None) -> Item:
        """The next item (an :class:`Ended` last)."""
        return await asyncio.wait_for(self._queue.get(), timeout)

    def __aiter__(self) -> AsyncIterator[Event | Resync]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event | Resync]:
        while True:
            item = await self._queue.get()
            if isinstance(item, Ended):
                if item.error is not None:
                    raise item.error
                return
            yield item


class Client:
    """A connection to a synchub region: ``urls`` are its nodes' base URLs (``http://host:port``)."""

    def __init__(
        self,
        urls: Sequence[str] | str,
        *,
        token: str | None = None,
        refresh_token: TokenProvider | None = None,
        encoding: str = "msgpack",
        transports: Sequence[Transport] = (Transport.WEBSOCKET, Transport.SSE, Transport.POLL),
        backoff: Backoff | None = None,
        heartbeat: float = 15.0,
        connect_timeout: float = 10.0,
        sse_ready_timeout: float = 5.0,
        sse_idle_timeout: float = 45.0,
        poll_timeout: int = 25,
        upgrade_retry_after: float = 300.0,
        going_away_spread: float = 0.0,
        ws_silence_timeout: float = 30.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if encoding not in ("msgpack", "json"):
            raise ValueError("encoding is 'msgpack' or 'json'")
        self.urls = [http_base(u) for u in ([urls] if isinstance(urls, str) else urls)]
        if not self.urls or not transports:
            raise ValueError("a client needs at least one URL and one transport")
        self.token = token
        self.refresh_token = refresh_token
        self.encoding = encoding
        self.transports = tuple(transports)
        self.backoff = backoff or Backoff()
        self.heartbeat = heartbeat
        self.connect_timeout = connect_timeout
        self.sse_ready_timeout = sse_ready_timeout
        self.sse_idle_timeout = sse_idle_timeout
        self.poll_timeout = poll_timeout
        self.upgrade_retry_after = upgrade_retry_after
        self.going_away_spread = going_away_spread
        self.ws_silence_timeout = ws_silence_timeout
        self._silent_connections = 0
        self.error: ClientStopped | None = None
        self.reconnects = 0
        self.state_changes: list[Callable[[State], None]] = []
        self._state = State.IDLE
        self._session = session
        self._own_session = session is None
        self._index = 0
        self._mode = self.transports[0]
        self._fell_back_at: float | None = None
        self._subs: dict[str, Subscription] = {}
        self._hooks: list[ConnectHook] = []
        self._connected = asyncio.Event()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._binary = encoding == "msgpack"
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._sub_ids: dict[str, Subscription] = {}
        self._stream_tasks: dict[str, asyncio.Task[_Outcome | None]] = {}
        self._stream_url: str | None = None
        self._stream_done: asyncio.Future[_Outcome] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._refreshes = 0

    # -- public ------------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def transport(self) -> Transport:
        """The transport in use (or about to be)."""
        return self._mode

    @property
    def url(self) -> str:
        """The node in use."""
        return self.urls[self._index % len(self.urls)]

    @property
    def binary(self) -> bool:
        """Whether requests carry MessagePack frames (CRDTs then travel as bytes)."""
        return self._ws is not None and self._binary

    @property
    def connected(self) -> bool:
        return self._connected.is_set() and not self.closed

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._subs.values())

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._runner is not None:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession()
        self._runner = asyncio.create_task(self._run(), name="synchub-client")

    async def close(self) -> None:
        self._closing = True
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
        self._disconnected()
        for task in list(self._tasks):
            task.cancel()
        for sub in list(self._subs.values()):
            sub.deliver(Ended(sub.channel, None))
        self._subs.clear()
        self._connected.set()  # wake waiters: they see the client closed
        if self._state is not State.STOPPED:
            self._set_state(State.STOPPED)
        if self._own_session and self._session is not None:
            await self._session.close()

    @property
    def closed(self) -> bool:
        return self._closing or self.error is not None

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Until the client is connected; :class:`ClientStopped` if it stopped or was closed."""
        if self.closed:
            raise self.error or ClientStopped("closed")
        await asyncio.wait_for(self._connected.wait(), timeout)
        if self.closed:
            raise self.error or ClientStopped("closed")

    def on_connect(self, hook: ConnectHook) -> None:
        """Run ``hook`` after every (re)connection, once the subscriptions were asked for again."""
        self._hooks.append(hook)
        if self.connected:
            self._spawn(hook())

    def subscribe(
        self, channel: str, *, since: str | None = None, on_resync: ResyncHandler | None = None
    ) -> Subscription:
        """Follow ``channel`` from ``since`` (None: from now). ``on_resync`` reads the snapshot when the
        position cannot be resumed and returns the position to continue from; without it the
        :class:`Resync` is yielded to the app and the subscription continues from the hub's position."""
        existing = self._subs.get(channel)
        if existing is not None and existing.ended is None:
            raise ValueError(f"already subscribed to {channel}")
        sub = Subscription(channel, since, on_resync)
        self._subs[channel] = sub
        if self.error is not None:
            sub.deliver(Ended(channel, self.error))
        elif self._ws is not None and not self._ws.closed:
            self._spawn(self._ws_subscribe(self._ws, sub))
        elif self._stream_url is not None and self._stream_done is not None:
            self._start_stream(self._stream_url, sub)
        return sub

    async def unsubscribe(self, sub: Subscription) -> None:
        if self._subs.get(sub.channel) is not sub:
            return
        del self._subs[sub.channel]
        task = self._stream_tasks.pop(sub.channel, None)
        if task is not None:
            task.cancel()
        ws = self._ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await self._send(ws, {"type": "unsubscribe", "channel": sub.channel})
        sub.deliver(Ended(sub.channel, None))

    async def request(self, message: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Send a WebSocket message and return its reply (an ``error`` reply is returned, not raised).
        :class:`NotConnected` when not on a WebSocket now; :class:`ConnectionLost` if it drops first."""
        ws = self._ws
        if ws is None or ws.closed or not self._connected.is_set():
            raise NotConnected("no WebSocket connection")
        ident = f"r{next(self._ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        try:
            await self._send(ws, {**message, "id": ident})
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(ident, None)

    async def http(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, Any]:
        """A REST call to the node in use (the next ones if it cannot be reached), with the token.
        Returns (status, JSON body or None); a 401 refreshes the token once and retries."""
        assert self._session is not None, "start() the client first"
        refreshed = False
        tries = 0
        while True:
            base = self._stream_url or self.url
            headers = self._auth_headers()
            try:
                async with self._session.request(
                    method,
                    base + path,
                    json=json_body,
                    params=params,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=self.connect_timeout),
                ) as response:
                    body = await response.json(content_type=None) if response.content_length != 0 else None
                    if response.status == 401 and self.refresh_token is not None and not refreshed:
                        refreshed = True
                        self.token = await self.refresh_token()
                        continue
                    return response.status, body
            except (aiohttp.ClientConnectionError, TimeoutError, json.JSONDecodeError):
                tries += 1
                if tries >= len(self.urls):
                    raise
                if self._stream_url is None:
                    self._index += 1

    async def http_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """:meth:`http`, raising :class:`HttpError` unless the answer is 2xx."""
        status, body = await self.http(method, path, **kwargs)
        if not 200 <= status < 300:
            raise HttpError(status, body)
        return body

    # -- the connection loop -----------------------------------------------------------------------

    def _set_state(self, state: State) -> None:
        if state is not self._state:
            if state not in _TRANSITIONS[self._state]:
                raise RuntimeError(f"no transition {self._state.value} → {state.value}")
            self._state = state
            for listener in list(self.state_changes):
                listener(state)

    def _spawn(self, work: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, (ConnectionLost, NotConnected, aiohttp.ClientError, ConnectionError)):
                log.warning("synchub client task failed", exc_info=exc)

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _pick_mode(self) -> Transport:
        if (
            self._mode is not self.transports[0]
            and self._fell_back_at is not None
            and time.monotonic() - self._fell_back_at > self.upgrade_retry_after
        ):
            self._mode, self._fell_back_at = self.transports[0], None
        return self._mode

    def _fall_back(self, blocked: Transport) -> None:
        index = self.transports.index(blocked)
        if index + 1 < len(self.transports):
            self._mode = self.transports[index + 1]
            self._fell_back_at = time.monotonic()
            log.info("synchub client: %s blocked, falling back to %s", blocked.value, self._mode.value)

    async def _run(self) -> None:
        stuck = 0  # slow-consumer drops in a row with no subscription moving on
        while not self._closing:
            mode = self._pick_mode()
            url = self.url
            before = {channel: sub.position for channel, sub in self._subs.items()}
            self._set_state(State.CONNECTING)
            try:
                if mode is Transport.WEBSOCKET:
                    outcome = await self._run_ws(url)
                else:
                    outcome = await self._run_streams(url, mode)
            except _Blocked as exc:
                self._disconnected()
                if exc.transport is not self.transports[-1]:
                    self._fall_back(exc.transport)
                    continue
                outcome = RETRY
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                log.debug("synchub client: connection to %s failed: %r", url, exc)
                outcome = RETRY
            self._disconnected()
            if self._closing:
                return
            self.reconnects += 1
            if outcome.kind == "stop":
                self._stop(ClientStopped(outcome.code or "stopped", outcome.reason))
                return
            if outcome.kind == "refresh":
                if not await self._refresh():
                    return
                continue
            if outcome.slow:
                moved = any(sub.position != before.get(channel) for channel, sub in self._subs.items())
                stuck = 0 if moved else stuck + 1
                if stuck >= 2:
                    # A backlog too long to replay within the hub's send buffer drops the client each
                    # time, before it gets anywhere: catch up from the snapshots instead.
                    stuck = 0
                    outcome = _Outcome("resync", outcome.code)
            if outcome.kind == "resync":
                for sub in self._subs.values():
                    sub._needs_resync = True
                continue
            self._index += 1
            if outcome.kind == "now":
                self.backoff.reset()
                if self.going_away_spread > 0:  # many clients of one node told at once: spread them
                    await asyncio.sleep(self.backoff.rng.uniform(0.0, self.going_away_spread))
                continue
            delay = max(outcome.min_delay, self.backoff.next_delay())
            self._set_state(State.BACKOFF)
            await asyncio.sleep(delay)

    async def _refresh(self) -> bool:
        if self.refresh_token is None:
            self._stop(ClientStopped(4102, "token expired and no refresh_token callback"))
            return False
        self._refreshes += 1
        if self._refreshes > 1:
            self._set_state(State.BACKOFF)
            await asyncio.sleep(self.backoff.next_delay())
        while not self._closing:
            try:
                self.token = await self.refresh_token()
                return True
            except Exception as exc:  # e.g. the identity provider unreachable: ask again after a backoff
                log.warning("synchub client: refresh_token failed: %r", exc)
                self._set_state(State.BACKOFF)
                await asyncio.sleep(max(1.0, self.backoff.next_delay()))
        return False

    def _stop(self, error: ClientStopped) -> None:
        self.error = error
        for sub in list(self._subs.values()):
            sub.deliver(Ended(sub.channel, error))
        self._connected.set()  # wake waiters: they see the error
        self._set_state(State.STOPPED)

    def _became_connected(self) -> None:
        self._set_state(State.CONNECTED)
        self._connected.set()
        for hook in self._hooks:
            self._spawn(hook())

    def _disconnected(self) -> None:
        self._connected.clear()
        self._ws = None
        self._stream_url = None
        self._stream_done = None
        for task in self._stream_tasks.values():
            task.cancel()
        self._stream_tasks.clear()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionLost("the connection dropped"))
        self._pending.clear()
        self._sub_ids.clear()
        for sub in self._subs.values():
            sub._in_flight = False

    def _http_outcome(self, status: int, body: Any, transport: Transport) -> _Outcome:
        """A refused handshake or stream request, as the whole connection's outcome."""
        code = body.get("code") if isinstance(body, dict) else None
        if status == 401:
            return _Outcome("refresh", 401, str(code or ""))
        if status == 429 or (status >= 500 and status != 501):
            return RETRY
        raise _Blocked(transport, f"HTTP {status} {code or ''}")

    # -- WebSocket ---------------------------------------------------------------------------------

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, message: dict[str, Any]) -> None:
        frame = encode_frame(message, self._binary)
        if isinstance(frame, bytes):
            await ws.send_bytes(frame)
        else:
            await ws.send_str(frame)

    async def _run_ws(self, url: str) -> _Outcome:
        assert self._session is not None
        protocol = MSGPACK if self.encoding == "msgpack" else JSON
        try:
            ws = await self._session.ws_connect(
                ws_url(url),
                protocols=(protocol,),
                headers=self._auth_headers(),
                heartbeat=self.heartbeat,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
                max_msg_size=2**21,
                compress=0,
                autoping=True,
            )
        except aiohttp.WSServerHandshakeError as exc:
            return self._http_outcome(exc.status, None, Transport.WEBSOCKET)
        heard = asyncio.Event()  # a message came back on this connection
        silent = False

        async def watch() -> None:
            nonlocal silent
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(heard.wait(), self.ws_silence_timeout)
                return
            silent = True
            await ws.close(code=1000)

        async with ws:
            self._binary = ws.protocol == MSGPACK
            self._ws = ws
            self._refreshes = 0
            await self._send(ws, {"type": "ping"})  # answered in turn: proof that messages get through
            watchdog = self._spawn(watch())
            for sub in list(self._subs.values()):
                self._spawn(self._ws_subscribe(ws, sub))
            self._became_connected()
            async for frame in ws:
                heard.set()
                if frame.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    try:
                        message = decode_frame(frame.data)
                    except ValueError:
                        log.warning("synchub client: an undecodable frame")
                        continue
                    self._ws_dispatch(ws, message)
                elif frame.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSED):
                    break
            self._ws = None
            self._connected.clear()
            watchdog.cancel()
        if silent:
            self._silent_connections += 1
            if self._silent_connections >= 2:  # twice in a row: something on the way holds the frames
                self._silent_connections = 0
                raise _Blocked(Transport.WEBSOCKET, "upgraded, but no message came back")
            return RETRY
        self._silent_connections = 0
        return outcome_for_close(ws.close_code, str(ws.exception() or ""))

    async def _ws_subscribe(self, ws: aiohttp.ClientWebSocketResponse, sub: Subscription) -> None:
        if sub._needs_resync:
            sub._needs_resync = False
            sub.position = await self._resolve_resync(sub, Resync(sub.channel, "resync_required", None, None))
        if ws.closed or self._subs.get(sub.channel) is not sub:
            return
        ident = f"s{next(self._ids)}"
        message: dict[str, Any] = {"type": "subscribe", "channel": sub.channel, "id": ident}
        if sub.position:
            message["since"] = sub.position
        self._sub_ids[ident] = sub
        sub._in_flight = True
        await self._send(ws, message)

    def _ws_dispatch(self, ws: aiohttp.ClientWebSocketResponse, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "event":
            sub = self._subs.get(str(message.get("channel")))
            if sub is not None:
                sub.position = str(message["position"])
                sub.deliver(Event(sub.channel, sub.position, message.get("data") or {}))
            return
        ident = message.get("id")
        if isinstance(ident, str) and ident in self._pending:
            future = self._pending.pop(ident)
            if not future.done():
                future.set_result(message)
            return
        if kind == "subscribed":
            sub = self._sub_ids.pop(str(ident), None) or self._subs.get(str(message.get("channel")))
            if sub is not None:
                sub._in_flight = False
                if sub.position is None and message.get("position"):
                    sub.position = str(message["position"])
                sub.confirmed()
                self.backoff.reset()
        elif kind == "resync":
            sub = self._subs.get(str(message.get("channel")))
            if sub is None:
                return
            resync = Resync(
                sub.channel, str(message.get("reason")), message.get("position"), message.get("snapshot")
            )
            if sub._in_flight:  # at subscribe: the subscription was not made
                self._sub_ids.pop(str(ident), None)
                sub._in_flight = False
                self._spawn(self._ws_resubscribe(ws, sub, resync))
            else:  # live: the subscription carries on from the resync's position
                if resync.position:
                    sub.position = resync.position
                self._spawn(self._resolve_resync(sub, resync))
        elif kind == "error":
            sub = self._sub_ids.pop(str(ident), None)
            if sub is not None:
                sub._in_flight = False
                code = str(message.get("code"))
                if code in CHANNEL_REFUSALS or code == "invalid_position":
                    self._subs.pop(sub.channel, None)
                    sub.deliver(
                        Ended(sub.channel, SubscriptionError(sub.channel, code, str(message.get("message"))))
                    )
                else:  # broker_unavailable, rate_limited: ask again shortly
                    self._spawn(self._ws_retry_subscribe(ws, sub))
        elif kind == "unsubscribed" and message.get("code"):
            sub = self._subs.pop(str(message.get("channel")), None)
            if sub is not None:
                sub.deliver(Ended(sub.channel, SubscriptionError(sub.channel, str(message["code"]))))
        elif kind == "token_expired":
            self._spawn(self._refresh_in_band())

    async def _ws_resubscribe(
        self, ws: aiohttp.ClientWebSocketResponse, sub: Subscription, resync: Resync
    ) -> None:
        sub.position = await self._resolve_resync(sub, resync)
        await self._ws_subscribe(ws, sub)

    async def _ws_retry_subscribe(self, ws: aiohttp.ClientWebSocketResponse, sub: Subscription) -> None:
        await asyncio.sleep(self.backoff.rng.uniform(0.2, 1.0))
        await self._ws_subscribe(ws, sub)

    async def _refresh_in_band(self) -> None:
        if self.refresh_token is None:
            return  # the hub closes with 4102 after the grace: the client stops then
        self.token = await self.refresh_token()
        await self.request({"type": "refresh", "token": self.token})

    async def _resolve_resync(self, sub: Subscription, resync: Resync) -> str | None:
        if sub.on_resync is not None:
            return await sub.on_resync(resync)
        sub.deliver(resync)
        return resync.position

    # -- SSE and long-poll -------------------------------------------------------------------------

    async def _run_streams(self, url: str, mode: Transport) -> _Outcome:
        assert self._session is not None
        async with self._session.get(
            url + "/readyz", timeout=aiohttp.ClientTimeout(total=self.connect_timeout)
        ) as response:
            if response.status != 200:
                return RETRY
        self._stream_url = url
        self._stream_done = asyncio.get_running_loop().create_future()
        self._refreshes = 0
        for sub in list(self._subs.values()):
            self._start_stream(url, sub)
        self._became_connected()
        return await self._stream_done

    def _start_stream(self, url: str, sub: Subscription) -> None:
        done = self._stream_done
        runner = self._sse if self._mode is Transport.SSE else self._poll
        task: asyncio.Task[_Outcome | None] = asyncio.create_task(runner(url, sub))
        self._stream_tasks[sub.channel] = task

        def finished(task: asyncio.Task[_Outcome | None]) -> None:
            if self._stream_tasks.get(sub.channel) is task:
                del self._stream_tasks[sub.channel]
            if task.cancelled():
                return
            exc = task.exception()  # retrieved even when nobody waits for it any more
            if done is None or done.done():
                return
            if exc is not None:
                done.set_exception(exc)
                return
            outcome = task.result()
            if outcome is not None:
                done.set_result(outcome)

        task.add_done_callback(finished)

    async def _refused(
        self, response: aiohttp.ClientResponse, sub: Subscription, mode: Transport
    ) -> _Outcome | None:
        body: Any = None
        with contextlib.suppress(Exception):
            body = await response.json(content_type=None)
        code = body.get("code") if isinstance(body, dict) else None
        if response.status in (400, 403, 404) and code in CHANNEL_REFUSALS | {"invalid_position"}:
            self._subs.pop(sub.channel, None)
            sub.deliver(
                Ended(sub.channel, SubscriptionError(sub.channel, str(code), str(body.get("detail", ""))))
            )
            return None
        return self._http_outcome(response.status, body, mode)

    async def _sse(self, url: str, sub: Subscription) -> _Outcome | None:
        assert self._session is not None
        while True:
            if sub._needs_resync:
                sub._needs_resync = False
                sub.position = await self._resolve_resync(
                    sub, Resync(sub.channel, "resync_required", None, None)
                )
            headers = {**self._auth_headers(), "Accept": "text/event-stream"}
            if sub.position:
                headers["Last-Event-ID"] = sub.position
            opening = self._session.get(
                url + "/api/v1/sse",
                params={"channels": sub.channel},
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout),
            )
            try:  # a proxy that buffers the stream may hold back even its headers
                response = await asyncio.wait_for(opening, self.sse_ready_timeout)
            except TimeoutError:
                raise _Blocked(Transport.SSE, "no response headers: the stream is buffered") from None
            async with response:
                if response.status != 200:
                    return await self._refused(response, sub, Transport.SSE)
                if not response.content_type.startswith("text/event-stream"):
                    raise _Blocked(Transport.SSE, f"content type {response.content_type}")
                outcome = await self._read_sse(response, sub)
                if outcome is not None:
                    return outcome

    async def _read_sse(self, response: aiohttp.ClientResponse, sub: Subscription) -> _Outcome | None:
        """Read one stream; None: open it again at once (a resync when connecting)."""
        parser = SseParser()
        ready = False
        rest = b""
        lines: list[bytes] = []  # complete lines read, last first
        while True:
            if not lines:  # one timed read per chunk (a chunk holds many lines), not per line
                try:
                    chunk = await asyncio.wait_for(
                        response.content.readany(), self.sse_idle_timeout if ready else self.sse_ready_timeout
                    )
                except TimeoutError:
                    if not ready:
                        raise _Blocked(Transport.SSE, "no ready event: the stream is buffered") from None
                    return RETRY
                if chunk == b"":
                    return RETRY
                *lines, rest = (rest + chunk).split(b"\n")
                lines.reverse()
                continue
            message = parser.feed(lines.pop().decode("utf-8").removesuffix("\r"))
            if message is None:
                continue
            event, ident, data = message
            body = json.loads(data)
            if event == "ready":
                ready = True
                if sub.position is None and ident:
                    sub.position = ident
                sub.confirmed()
                self.backoff.reset()
            elif event == "resync":
                resync = Resync(
                    sub.channel, str(body.get("reason")), body.get("position"), body.get("snapshot")
                )
                if not ready:  # the stream ends: open it again from the handler's position
                    sub.position = await self._resolve_resync(sub, resync)
                    return None
                if resync.position:
                    sub.position = resync.position
                self._spawn(self._resolve_resync(sub, resync))
            elif event == "close":
                code = body.get("code")
                if code == "going_away":
                    return _Outcome("now", code)
                if code == "token_expired":
                    return _Outcome("refresh", code)
                return _Outcome("retry", code, slow=code == "slow_consumer")
            elif isinstance(body, dict) and body.get("type") == "event":
                sub.position = str(body["position"])
                sub.deliver(Event(sub.channel, sub.position, body.get("data") or {}))

    async def _poll(self, url: str, sub: Subscription) -> _Outcome | None:
        assert self._session is not None
        first = True
        while True:
            if sub._needs_resync:
                sub._needs_resync = False
                sub.position = await self._resolve_resync(
                    sub, Resync(sub.channel, "resync_required", None, None)
                )
            wait = self.poll_timeout if sub.position else 0
            params = {"channels": sub.channel, "timeout": str(wait)}
            if sub.position:
                params["cursor"] = sub.position
            async with self._session.get(
                url + "/api/v1/poll",
                params=params,
                headers=self._auth_headers(),
                timeout=aiohttp.ClientTimeout(total=wait + 15, sock_connect=self.connect_timeout),
            ) as response:
                if response.status == 410:
                    body = await response.json(content_type=None)
                    resync = Resync(
                        sub.channel,
                        str(body.get("reason") or "position_expired"),
                        body.get("position"),
                        body.get("snapshot"),
                    )
                    sub.position = await self._resolve_resync(sub, resync)
                    continue
                if response.status != 200:
                    return await self._refused(response, sub, Transport.POLL)
                body = await response.json(content_type=None)
            for message in body.get("events", []):
                sub.position = str(message["position"])
                sub.deliver(Event(sub.channel, sub.position, message.get("data") or {}))
            if body.get("cursor"):
                sub.position = str(body["cursor"])
            if first:
                first = False
                sub.confirmed()
                self.backoff.reset()
