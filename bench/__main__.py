"""``python -m bench <name>``: run one benchmark (``suite``, ``reservations``, ``fanout``, ``crdt``)."""

from __future__ import annotations

import sys


def main() -> int:
    names = {
        "reservations": "bench.reservations",
        "fanout": "bench.fanout",
        "crdt": "bench.crdt",
        "suite": "bench.suite",
    }
    if len(sys.argv) < 2 or sys.argv[1] not in names:
        print(f"usage: python -m bench {{{','.join(names)}}} [options]", file=sys.stderr)
        return 2
    module = __import__(names[sys.argv[1]], fromlist=["main"])
    return int(module.main(sys.argv[2:]))


if __name__ == "__main__":
    sys.exit(main())
