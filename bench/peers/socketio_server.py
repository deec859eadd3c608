"""Peer for synchub's fan-out benchmark: python-socketio's AsyncServer on aiohttp.

``python socketio_server.py <port>``: binds 127.0.0.1 only, on uvloop when installed (as the hub).
Socket.IO clients (Engine.IO v4, Socket.IO v5) connect to ``/socket.io/`` and join one room in the
``connect`` handler, before their CONNECT is acknowledged. ``POST /publish`` emits its body, a string, as
event ``"m"`` to that room with ``sio.emit('m', body, room=...)``; ``GET /stats`` answers
``{"clients": n, "peer": "python-socketio"}``. Everything else is python-socketio's defaults (stdlib
``json``, 25 s server pings, no compression for 200-byte messages).
"""

from __future__ import annotations

import resource
import sys
from typing import Any

import socketio
from aiohttp import web

PEER = "python-socketio"
ROOM = "bench"


def raise_nofile_limit() -> None:
    """Open-file soft limit up to the hard limit, so one process can hold ~19,000 sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def build_app() -> web.Application:
    sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False)
    app = web.Application()
    sio.attach(app)
    members: set[str] = set()

    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        await sio.enter_room(sid, ROOM)
        members.add(sid)

    async def disconnect(sid: str, *_reason: Any) -> None:
        members.discard(sid)

    sio.on("connect", connect)
    sio.on("disconnect", disconnect)

    async def publish(request: web.Request) -> web.Response:
        body = await request.text()
        await sio.emit("m", body, room=ROOM)
        return web.Response(status=204)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"clients": len(members), "peer": PEER})

    app.router.add_post("/publish", publish)
    app.router.add_get("/stats", stats)
    return app


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python socketio_server.py <port>", file=sys.stderr)
        return 2
    raise_nofile_limit()
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = None
    web.run_app(
        build_app(),
        host="127.0.0.1",
        port=int(argv[0]),
        backlog=4096,
        access_log=None,
        print=lambda *_: print("ready", flush=True),  # once listening: start_peer waits for it
        loop=loop,
        shutdown_timeout=2,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
