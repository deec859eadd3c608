"""``synchub-client watch CHANNEL``: follow a channel and print its events, one JSON line each.

    synchub-client watch inventory:eu --url http://127.0.0.1:8080 --url http://127.0.0.1:8081
    synchub-client watch cart:5a0f… --token "$TOKEN" --transport sse

It resumes across disconnects and nodes as any client of the SDK does; ``--since`` starts from a
position, ``--count`` stops after that many events. A resync is printed as ``{"resync": …}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence

from synchub_client.client import Client
from synchub_client.errors import SyncHubError
from synchub_client.events import Event, Resync, Transport

TRANSPORTS = {
    "auto": (Transport.WEBSOCKET, Transport.SSE, Transport.POLL),
    "websocket": (Transport.WEBSOCKET,),
    "sse": (Transport.SSE,),
    "poll": (Transport.POLL,),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synchub-client", description="synchub's Python client")
    commands = parser.add_subparsers(dest="command", required=True)
    watch = commands.add_parser("watch", help="print a channel's events as JSON lines")
    add_watch_arguments(watch)
    return parser


def add_watch_arguments(watch: argparse.ArgumentParser) -> None:
    watch.add_argument("channel", help="e.g. inventory:eu, cart:{id}, user:{sub}, reviews:eu")
    watch.add_argument(
        "--url",
        action="append",
        help="a node's base URL (repeat for several; default $SYNCHUB_URL or http://127.0.0.1:8080)",
    )
    watch.add_argument(
        "--token", default=os.environ.get("SYNCHUB_TOKEN"), help="bearer token ($SYNCHUB_TOKEN)"
    )
    watch.add_argument("--since", help="resume from this position")
    watch.add_argument("--transport", choices=sorted(TRANSPORTS), default="auto")
    watch.add_argument("--encoding", choices=("msgpack", "json"), default="msgpack")
    watch.add_argument("--count", type=int, help="stop after this many events")


async def watch(args: argparse.Namespace) -> int:
    urls = args.url or [os.environ.get("SYNCHUB_URL", "http://127.0.0.1:8080")]
    seen = 0
    async with Client(
        urls, token=args.token, transports=TRANSPORTS[args.transport], encoding=args.encoding
    ) as client:
        sub = client.subscribe(args.channel, since=args.since)
        try:
            async for item in sub:
                if isinstance(item, Event):
                    line = {"channel": item.channel, "position": item.position, "data": item.data}
                    seen += 1
                elif isinstance(item, Resync):
                    line = {
                        "resync": {
                            "reason": item.reason,
                            "position": item.position,
                            "snapshot": item.snapshot,
                        }
                    }
                print(json.dumps(line, default=_bytes), flush=True)
                if args.count is not None and seen >= args.count:
                    break
        except SyncHubError as exc:
            print(f"synchub-client: {exc}", file=sys.stderr)
            return 1
    return 0


def _bytes(value: object) -> object:
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    raise TypeError(f"not JSON: {type(value).__name__}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(watch(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
