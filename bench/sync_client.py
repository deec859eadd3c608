"""The synchub load client of ``python -m bench sync``: a worker process (``python -m bench sync
--worker``, on uvloop) whose devices — two per user, each its own WebSocket on ``synchub.msgpack`` or
``synchub.json`` — sync their cart, then push edits at the rate each step asks for and time the acks
and the other device's receipt. Commands on stdin, answers on stdout, one JSON object a line
(:mod:`bench.sync` drives it and says what the figures mean)."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, cast

import msgpack
import orjson

from bench.loadgen import client_frame
from crdt import codec
from crdt.cart import Cart
from crdt.hlc import HybridClock

ADD_BELOW, SET_BELOW = 0.5, 0.8  # the edit mix: r < 0.5 add, < 0.8 set, else remove
_BINARY, _TEXT, _CLOSE, _PING, _PONG = 0x2, 0x1, 0x8, 0x9, 0xA
_TICK_MS = 1.0  # the shortest sleep between sends: an event loop's timers are in whole milliseconds


def _now_ms() -> float:
    return time.perf_counter() * 1000.0


class _Device(asyncio.Protocol):
    """One device: a raw WebSocket client of the hub (RFC 6455 framing by hand, as bench.loadgen does),
    its local cart and the bookkeeping of one step."""

    def __init__(self, user: dict[str, Any], index: int, run: str, binary: bool) -> None:
        self.cart_id: str = user["cart"]
        self.token: str = user["token"]
        self.host, self.port = user["targets"][index]
        self.index = index
        self.binary = binary
        self.replica = f"u{user['user']}-d{index}-{run}"
        self.prefix = f"u{user['user']}d{index}-"  # of its mutation ids
        self.clock = HybridClock(self.replica, lambda: time.time_ns() // 1_000_000)
        self.cart = Cart.new()
        self.peer: _Device | None = None
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.buffer = bytearray()
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.failure: str | None = None
        self.seq = 0
        self.reset()

    def reset(self) -> None:
        self.sent = 0
        self.unacked: dict[str, float] = {}  # mutation id → send time (ms)
        self.undelivered: dict[str, float] = {}  # mutation id → send time, until the peer receives it
        self.ack_ms: list[float] = []
        self.delivery_ms: list[float] = []
        self.last_ack = 0.0
        self.last_delivery = 0.0
        self.acked = self.duplicates = self.errors = self.echoes = self.unknown = 0
        self.codes: Counter[str] = Counter()
        self.bytes_in = self.bytes_out = 0

    # -- the socket ------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # (uvloop's is no subclass)
        key = base64.b64encode(os.urandom(16)).decode()
        protocol = "synchub.msgpack" if self.binary else "synchub.json"
        transport.write(
            (
                f"GET /api/v1/ws HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Protocol: {protocol}\r\nAuthorization: Bearer {self.token}\r\n\r\n"
            ).encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.fail(f"connection lost: {exc!r}")

    def fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(ConnectionError(reason))
        self.waiting.clear()

    def data_received(self, data: bytes) -> None:
        now = _now_ms()
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self.fail(f"upgrade refused: {bytes(buffer[:200])!r}")
                return
            del buffer[: end + 4]
            self.upgraded = True
            future = self.waiting.pop("open", None)
            if future is not None and not future.done():
                future.set_result({})
        else:
            self.bytes_in += len(data)
        pos, size = 0, len(buffer)
        while size - pos >= 2:
            b0, n = buffer[pos], buffer[pos + 1] & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n, head = int.from_bytes(buffer[pos + 2 : pos + 4], "big"), 4
            elif n == 127:
                if size - pos < 10:
                    break
                n, head = int.from_bytes(buffer[pos + 2 : pos + 10], "big"), 10
            if size - pos < head + n:
                break
            payload = bytes(buffer[pos + head : pos + head + n])
            pos += head + n
            opcode = b0 & 0x0F
            if opcode in (_BINARY, _TEXT):
                self.message(msgpack.unpackb(payload) if self.binary else orjson.loads(payload), now)
            elif opcode == _PING:
                self.write(client_frame(_PONG, payload))
            elif opcode == _CLOSE:
                self.fail(f"closed by the hub: {payload[:2].hex()} {payload[2:200]!r}")
        del buffer[:pos]

    def write(self, frame: bytes) -> None:
        if self.transport is not None:
            self.transport.write(frame)
            self.bytes_out += len(frame)

    def send(self, message: dict[str, Any]) -> None:
        payload = msgpack.packb(message) if self.binary else orjson.dumps(message)
        self.write(client_frame(_BINARY if self.binary else _TEXT, payload))

    async def request(self, message: dict[str, Any], answer: str) -> dict[str, Any]:
        """Send ``message`` and wait (30 s at most) for the reply of type ``answer``."""
        future = asyncio.get_running_loop().create_future()
        self.waiting[answer] = future
        self.send(message)
        return await asyncio.wait_for(future, 30)

    # -- messages --------------------------------------------------------------------------------------
    def delta_of(self, raw: Any) -> Cart:
        decoded = codec.from_msgpack(raw) if self.binary else codec.from_dict(raw)
        assert isinstance(decoded, Cart)
        return decoded

    def message(self, msg: dict[str, Any], now: float) -> None:
        kind = msg.get("type")
        if kind == "event":
            data = msg["data"]
            mutation = data.get("mutation_id")
            if not isinstance(mutation, str):
                return
            if mutation.startswith(self.prefix):
                self.echoes += 1  # this device's own edit: its delta is in the local cart already
                return
            assert self.peer is not None
            sent = self.peer.undelivered.pop(mutation, None)
            if sent is None:
                self.unknown += 1
            else:
                self.delivery_ms.append(now - sent)
                self.last_delivery = now
            self.cart.apply(self.delta_of(data["delta"]))
        elif kind == "ack":
            sent = self.unacked.pop(msg["mutation_id"], None)
            if sent is not None:
                self.ack_ms.append(now - sent)
                self.last_ack = now
                self.acked += 1
                if msg["status"] == "duplicate":
                    self.duplicates += 1
                    self.undelivered.pop(msg["mutation_id"], None)
        elif kind == "error":
            self.errors += 1
            self.codes[str(msg.get("code"))] += 1
            mutation = msg.get("mutation_id")
            if mutation is not None:
                self.unacked.pop(mutation, None)
                self.undelivered.pop(mutation, None)
            future = self.waiting.pop("synced", None) or self.waiting.pop("subscribed", None)
            if future is not None and not future.done():
                future.set_exception(RuntimeError(f"hub answered {msg}"))
        elif kind in ("synced", "subscribed"):
            if kind == "synced" and msg.get("delta") is not None:
                self.cart.apply(self.delta_of(msg["delta"]))
            future = self.waiting.pop(kind, None)
            if future is not None and not future.done():
                future.set_result(msg)

    def edit(self, rng: random.Random, skus: Sequence[str]) -> None:
        """One edit of the mix, merged locally and pushed."""
        r = rng.random()
        lines = list(self.cart.value()) if r >= SET_BELOW else None
        cart = self.cart
        if lines:
            delta = cart.remove(self.replica, rng.choice(lines))
        elif ADD_BELOW <= r < SET_BELOW:
            delta = cart.set(self.replica, rng.choice(skus), rng.randint(1, 9), self.clock.now())
        else:
            delta = cart.add(self.replica, rng.choice(skus), rng.randint(1, 3))
        cart.apply(delta)
        self.seq += 1
        mutation = f"{self.prefix}{self.seq}"
        now = _now_ms()
        self.unacked[mutation] = now
        self.undelivered[mutation] = now
        self.sent += 1
        self.send(
            {
                "type": "push",
                "cart": self.cart_id,
                "mutation_id": mutation,
                "delta": codec.to_msgpack(delta) if self.binary else codec.to_dict(delta),
            }
        )


class _Worker:
    """The devices of one client process, and its commands."""

    def __init__(self) -> None:
        self.devices: list[_Device] = []
        self.skus: list[str] = []

    async def setup(self, cmd: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        self.skus = list(cmd["skus"])
        pairs = []
        for user in cmd["users"]:
            a, b = (_Device(user, i, cmd["run"], cmd["binary"]) for i in (0, 1))
            a.peer, b.peer = b, a
            pairs.append((a, b))
            self.devices += [a, b]
        gate = asyncio.Semaphore(50)

        async def open_device(device: _Device) -> None:
            future = loop.create_future()
            device.waiting["open"] = future
            await loop.create_connection(lambda: device, device.host, device.port)
            await asyncio.wait_for(future, 30)

        async def one(a: _Device, b: _Device) -> None:
            async with gate:
                await asyncio.gather(open_device(a), open_device(b))
                for device in (a, b):  # the first sync creates the cart, for its owner
                    await device.request({"type": "sync", "cart": device.cart_id, "context": None}, "synced")
                for device in (a, b):
                    await device.request(
                        {"type": "subscribe", "channel": f"cart:{device.cart_id}"}, "subscribed"
                    )

        await asyncio.gather(*(one(a, b) for a, b in pairs))
        return {"seconds": time.perf_counter() - started}

    async def step(self, cmd: dict[str, Any]) -> dict[str, Any]:
        rng = random.Random(cmd.get("seed", 1))
        rate, devices, skus = float(cmd["rate"]), self.devices, self.skus
        for device in devices:
            device.reset()
        cpu0 = time.process_time()
        total = max(1, round(rate * float(cmd["seconds"])))
        interval = 1000.0 / rate
        started = _now_ms()
        lag = 0.0
        i = 0
        while i < total:
            now = _now_ms()
            due = started + i * interval
            if due > now:
                # Never less than the loop's timer resolution (1 ms): a shorter sleep returns at the
                # loop's next turn, so between edits 0.2 ms apart the client spun (~190,000 turns/s)
                # on the cores it shares with the hub. The edits that came due meanwhile go below.
                await asyncio.sleep(max(due - now, _TICK_MS) / 1000.0)
                continue
            while i < total and started + i * interval <= now:
                lag = max(lag, now - (started + i * interval))
                rng.choice(devices).edit(rng, skus)
                i += 1
        sent_at = _now_ms()
        deadline = sent_at + float(cmd["drain"]) * 1000.0
        acked_at: float | None = None
        while _now_ms() < deadline:
            if acked_at is None and not any(d.unacked for d in devices):
                acked_at = _now_ms()
            if acked_at is not None and not any(d.undelivered for d in devices):
                break
            if all(d.failure is not None for d in devices):
                break
            await asyncio.sleep(0.005)
        ack_ms = [round(v, 3) for d in devices for v in d.ack_ms]
        delivery_ms = [round(v, 3) for d in devices for v in d.delivery_ms]
        codes: Counter[str] = Counter()
        for d in devices:
            codes.update(d.codes)
        last_ack = max((d.last_ack for d in devices), default=0.0)
        last_delivery = max((d.last_delivery for d in devices), default=0.0)
        sent = sum(d.sent for d in devices)
        undelivered = sum(len(d.undelivered) for d in devices)
        return {
            "sent": sent,
            "acked": sum(d.acked for d in devices),
            "duplicates": sum(d.duplicates for d in devices),
            "errors": sum(d.errors for d in devices) + sum(1 for d in devices if d.failure),
            "error_codes": dict(codes),
            "failures": sorted({d.failure for d in devices if d.failure})[:3],
            "noops": 0,
            "lost": undelivered,
            "echoes": sum(d.echoes for d in devices),
            "unknown": sum(d.unknown for d in devices),
            "expected_deliveries": sent - sum(d.errors + d.duplicates for d in devices),
            "delivered": len(delivery_ms),
            "ack_ms": ack_ms,
            "delivery_ms": delivery_ms,
            "acked_s": (last_ack - started) / 1000.0 if last_ack else 0.0,
            "delivered_s": (last_delivery - started) / 1000.0 if last_delivery else 0.0,
            "send_s": (sent_at - started) / 1000.0,
            "max_send_lag_ms": lag,
            "bytes_in": sum(d.bytes_in for d in devices),
            "bytes_out": sum(d.bytes_out for d in devices),
            "other_messages": 0,
            "client_cpu_s": time.process_time() - cpu0,
        }

    def close(self) -> None:
        for device in self.devices:
            if device.transport is not None:
                device.transport.abort()


async def worker_main() -> None:
    """Commands on stdin, answers on stdout, one JSON object a line (see the module docstring)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    worker = _Worker()
    try:
        while line := await reader.readline():
            cmd = orjson.loads(line)
            try:
                if cmd["cmd"] == "close":
                    break
                handler = worker.setup if cmd["cmd"] == "setup" else worker.step
                answer = {"ok": True, "cmd": cmd["cmd"], **(await handler(cmd))}
            except (OSError, RuntimeError, TimeoutError, ValueError, KeyError) as exc:
                answer = {"ok": False, "cmd": cmd.get("cmd"), "error": repr(exc)[:500]}
            sys.stdout.buffer.write(orjson.dumps(answer) + b"\n")
            sys.stdout.flush()
    finally:
        worker.close()
    sys.stdout.buffer.write(orjson.dumps({"ok": True, "cmd": "exit"}) + b"\n")
    sys.stdout.flush()
