"""``python -m bench fanpath``: the Python cost of one delivery in a fan-out, without the socket.

A fan-out's length is what a client's p99 waits for: per delivery the socket write (the system call,
the same for every server) and synchub's own path around it — the engine offering the event to each
feed, the connection queueing the shared frame, and at the turn's end the batcher flushing each
connection. This measures that path alone: a real app (embedded default), N real
:class:`~hub.transports.websocket.WsConnection` objects live on ``inventory:eu``, over a transport
that takes each write and does nothing with it. It prints microseconds per delivery for the dispatch
(publication → every connection's queue) and the flush (every queue → ``transport.write``), the best
of several rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import orjson
import uvloop
from aiohttp import web

from hub.app import create_app
from hub.channel_access import public_channel
from hub.keys import ENGINE, WRITES
from hub.settings import Settings
from hub.transports.websocket import WsConnection
from sync.broker import Position, Publication
from sync.channels import inventory_stream


class NullTransport:
    """Takes every write and sends nothing (it counts them): what is left is synchub's Python."""

    __slots__ = ("writes",)

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False


async def measure(connections: int, events: int, rounds: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="synchub-fanpath-") as folder:
        settings = Settings(
            database_url=str(Path(folder) / "hub.sqlite3"),
            region="eu",
            jwt_secret="x" * 32,
            rate_limits_enabled=False,  # thousands of clients from one address: measure, not throttle
        )
        runner = web.AppRunner(create_app(settings))
        await runner.setup()
        try:
            app = runner.app
            engine, writes = app[ENGINE], app[WRITES]
            channel = public_channel("inventory:eu")
            assert channel is not None
            stream = inventory_stream("eu")
            top = await engine.broker.top(stream)
            transports = [NullTransport() for _ in range(connections)]
            held = []
            for transport in transports:
                connection = WsConnection(app, transport, False)  # type: ignore[arg-type]
                feed = engine.feed([channel], connection)
                await feed.start(None)
                feed.go_live()
                held.append(connection)
            best_dispatch = best_flush = float("inf")
            offset = top.offset
            for _ in range(rounds):
                dispatch = flush = 0.0
                for _ in range(events):
                    offset += 1
                    body = {"product_id": "p", "warehouse_id": "w", "on_hand": offset, "version": offset}
                    publication = Publication(stream, Position(top.epoch, offset), orjson.dumps(body))
                    writes._scheduled = True  # this loop flushes by hand, not at the turn's end
                    started = time.perf_counter()
                    engine._on_publication(publication)
                    queued = time.perf_counter()
                    writes._flush()
                    dispatch += queued - started
                    flush += time.perf_counter() - queued
                best_dispatch = min(best_dispatch, dispatch / events / connections * 1e6)
                best_flush = min(best_flush, flush / events / connections * 1e6)
            wrong = sum(1 for transport in transports if transport.writes != events * rounds)
            if wrong:  # a figure for a fan-out that did not happen would be worthless
                raise RuntimeError(f"{wrong} of {connections} connections did not get every event")
            return best_dispatch, best_flush
        finally:
            await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench fanpath", description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=20, help="events per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if not 0 < args.connections <= 100_000 or not 0 < args.events <= 1_000 or not 0 < args.rounds <= 50:
        parser.error("connections 1-100,000, events 1-1,000, rounds 1-50")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # the loop the hub serves on
        dispatch, flush = runner.run(measure(args.connections, args.events, args.rounds))
    print("| connections | dispatch µs / delivery | flush µs / delivery | total µs / delivery |")
    print("|---|---|---|---|")
    print(f"| {args.connections:,} | {dispatch:.2f} | {flush:.2f} | {dispatch + flush:.2f} |")
    return 0


if __name__ == "__main__":  # python -m bench.fanpath is python -m bench fanpath
    import sys

    sys.exit(main(sys.argv[1:]))
