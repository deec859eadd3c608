"""``python -m bench.hub_probe.summary FILE [--from-writes N]``: from a hub probe's file (see
``sitecustomize.py`` beside this), the hub's CPU per write between the first sample with at least N
writes (default 1,500: past the bench's setup) and the last, split into the event loop's and the
other threads' (SQLite's COMMIT thread), and the writes per group commit."""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("file")
    parser.add_argument("--from-writes", type=int, default=1500)
    args = parser.parse_args()
    with open(args.file) as f:
        rows = [tuple(float(x) for x in line.split()) for line in f if line.strip()]
    first = next(row for row in rows if row[1] >= args.from_writes)
    last = rows[-1]
    batches, writes, main_cpu, other_cpu = (b - a for a, b in zip(first, last, strict=True))
    if writes <= 0:
        raise SystemExit("no writes after --from-writes")
    print(
        f"writes {writes:.0f}, {writes / max(batches, 1):.1f} per commit; hub CPU per write "
        f"{(main_cpu + other_cpu) / writes * 1e6:.0f} µs (event loop {main_cpu / writes * 1e6:.0f}, "
        f"other threads {other_cpu / writes * 1e6:.0f})"
    )


if __name__ == "__main__":
    main()
