"""What a rate limit check costs a hub, measured inside one hub process whose limits are switched on and
off every ``phase`` seconds while a load client keeps it busy (``python -m bench ratelimit
--alternating SECONDS``).

Comparing two hub processes (``--interleaved``, ``--together``) compares two processes as much as two
settings: on a shared 2-core machine their CPU per request differs by ±10% between identical hubs,
round to round, more than the check costs. Here one process serves both settings, alternating
every 250 ms, so whatever else the machine runs weighs on both alike and the same caches, allocator
and connections serve both. The hub is the one ``create_app`` builds, with ``--rate-limits on`` and
a read limit too high to reach; "off" empties its table of limited routes (the middleware then
goes straight to the authorization, as a hub started with the limits off does) and "on" restores it.
The process's CPU time (all threads) and the answers sent are summed per setting.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import secrets
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from bench._hub import free_port
from hub.ratelimit.limiter import RatePolicy

PHASE_SECONDS = 0.25
_HIGH = RatePolicy(1_000_000, 1.0, 1_000_000)


@dataclass(frozen=True)
class Split:
    """CPU seconds and answers of the hub, per setting."""

    cpu_off: float
    answers_off: int
    cpu_on: float
    answers_on: int

    @property
    def us_off(self) -> float:
        return self.cpu_off / max(1, self.answers_off) * 1e6

    @property
    def us_on(self) -> float:
        return self.cpu_on / max(1, self.answers_on) * 1e6


def _serve(port: int, folder: str, control: Connection) -> None:
    """The hub process: serves until told to stop, switching its limits every phase, then sends the
    :class:`Split`."""
    from aiohttp import web

    from hub.app import create_app
    from hub.keys import RATE_LIMITS
    from hub.settings import Settings

    async def main() -> None:
        settings = Settings(
            port=port,
            database_url=str(Path(folder) / "hub.sqlite3"),
            jwt_secret=secrets.token_urlsafe(32),
            rate_limits_enabled=True,
            rate_limit_read=_HIGH,
        )
        app = create_app(settings)
        answers = [0]

        async def count(_request: web.Request, _response: web.StreamResponse) -> None:
            answers[0] += 1  # the same step in both settings

        app.on_response_prepare.append(count)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        gc.collect()  # as `synchub serve` does once started (hub/cli.py): a full collection then skips
        gc.freeze()  # the start-up objects, and the checks' allocations cost what they cost there
        await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
        limits = app[RATE_LIMITS]
        limited = limits.by_route
        totals = {True: [0.0, 0], False: [0.0, 0]}
        control.send("ready")
        loop = asyncio.get_running_loop()
        on = True
        cpu, seen = time.process_time(), answers[0]
        while not await loop.run_in_executor(None, control.poll, PHASE_SECONDS):
            now, count_now = time.process_time(), answers[0]
            totals[on][0] += now - cpu
            totals[on][1] += count_now - seen
            cpu, seen = now, count_now
            on = not on
            limits.by_route = limited if on else {}
        control.send(Split(totals[False][0], int(totals[False][1]), totals[True][0], int(totals[True][1])))
        await runner.cleanup()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:  # pragma: no cover
        asyncio.run(main())


async def measure(connections: int, seconds: float) -> Split:
    from bench.ratelimit import _throughput

    port = free_port()
    parent, child = multiprocessing.Pipe()
    with tempfile.TemporaryDirectory(prefix="synchub-bench-rl-") as folder:
        hub = multiprocessing.get_context("spawn").Process(target=_serve, args=(port, folder, child))
        hub.start()
        try:
            loop = asyncio.get_running_loop()
            if not await loop.run_in_executor(None, parent.poll, 60):
                raise RuntimeError("the hub did not start within 60 s")
            parent.recv()
            pid = hub.pid or 0
            await _throughput("127.0.0.1", port, pid, connections, 1.0)  # warm-up, not counted
            await _throughput("127.0.0.1", port, pid, connections, seconds)
            parent.send("stop")
            if not await loop.run_in_executor(None, parent.poll, 30):
                raise RuntimeError("the hub did not report")
            split: Split = parent.recv()
        finally:
            hub.join(10)
            if hub.is_alive():
                hub.kill()
    return split
