"""``python -m bench <name>`` (or ``synchub bench <name>``): run one benchmark (``suite``,
``reservations``, ``fanout``, ``fanpath``, ``crdt``, ``sync``, ``reviews``, ``ratelimit``, ``auth``,
``parts``, ``webhooks``, ``events``, ``client``, ``brokers``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

NAMES = {
    "reservations": "bench.reservations",
    "fanout": "bench.fanout",
    "fanpath": "bench.fanpath",
    "crdt": "bench.crdt",
    "suite": "bench.suite",
    "sync": "bench.sync",
    "reviews": "bench.reviews",
    "ratelimit": "bench.ratelimit",
    "auth": "bench.auth",
    "parts": "bench.parts",
    "webhooks": "bench.webhooks",
    "events": "bench.events",
    "client": "bench.client",
    "brokers": "bench.brokers",
}


def main(argv: Sequence[str] | None = None, prog: str = "python -m bench") -> int:
    """Run the benchmark ``argv[0]`` with the rest of ``argv`` (default: this process's arguments)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in NAMES:
        print(f"usage: {prog} {{{','.join(NAMES)}}} [options]", file=sys.stderr)
        return 0 if args[:1] in (["-h"], ["--help"]) else 2
    module = __import__(NAMES[args[0]], fromlist=["main"])
    return int(module.main(args[1:]))


if __name__ == "__main__":
    sys.exit(main())
