"""Peer for synchub's fan-out benchmark: bare aiohttp, the floor of aiohttp itself.

``python aiohttp_server.py <port>``: binds 127.0.0.1 only, on uvloop when installed (as the hub). WebSocket
clients connect to ``/ws``; ``POST /publish`` sends its body verbatim as one text message to every
connected client with ``send_str``, one after the other; ``GET /stats`` answers
``{"clients": n, "peer": "aiohttp"}``. No buffering, batching or per-client task: a client whose socket
buffer is full makes the broadcast wait for it (aiohttp drains above 64 KiB of pending output).
"""

from __future__ import annotations

import contextlib
import resource
import sys

from aiohttp import WSMsgType, web

PEER = "aiohttp"
CLIENTS = web.AppKey("clients", set[web.WebSocketResponse])


def raise_nofile_limit() -> None:
    """Open-file soft limit up to the hard limit, so one process can hold ~19,000 sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    clients = request.app[CLIENTS]
    clients.add(ws)
    try:
        async for message in ws:
            if message.type is WSMsgType.ERROR:
                break
    finally:
        clients.discard(ws)
    return ws


async def publish(request: web.Request) -> web.Response:
    body = await request.text()
    clients = request.app[CLIENTS]
    for ws in tuple(clients):  # a copy: clients come and go while we wait on a send
        if ws.closed:
            continue
        with contextlib.suppress(ConnectionError):  # the client went away: its handler removes it
            await ws.send_str(body)
    return web.Response(status=204)


async def stats(request: web.Request) -> web.Response:
    return web.json_response({"clients": len(request.app[CLIENTS]), "peer": PEER})


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python aiohttp_server.py <port>", file=sys.stderr)
        return 2
    raise_nofile_limit()
    app = web.Application()
    app[CLIENTS] = set()
    app.router.add_get("/ws", websocket)
    app.router.add_post("/publish", publish)
    app.router.add_get("/stats", stats)
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = None
    web.run_app(
        app,
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
