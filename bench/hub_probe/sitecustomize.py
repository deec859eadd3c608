"""A probe for a benchmark's hub process, loaded only when this folder is on ``PYTHONPATH``: every half
second, a hub process (``hub.cli``) appends to ``$HUB_PROBE_DIR/<pid>.txt`` (default: the system's
temporary folder) a line with its SQLite group commit's batches and writes so far and the CPU seconds of
each of its threads, the event loop's (``main``) apart from the others (SQLite's COMMIT thread). Other
processes load it and do nothing. ``python -m bench.hub_probe.summary FILE`` reads one file back.

    PYTHONPATH=$PWD/bench/hub_probe python -m bench sync --configs synchub-sqlite --rates 1000

A measuring aid: it counts ``SqliteDatabase._commit_batch`` calls by wrapping the method."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from typing import Any


def _install() -> None:
    with open("/proc/self/cmdline", "rb") as f:
        if b"hub.cli" not in f.read():
            return
    import storage.sqlite as sqlite

    counts = {"batches": 0, "writes": 0}
    commit_batch = sqlite.SqliteDatabase._commit_batch

    async def counted(self: Any, batch: list[Any]) -> Any:
        counts["batches"] += 1
        counts["writes"] += len(batch)
        return await commit_batch(self, batch)

    sqlite.SqliteDatabase._commit_batch = counted  # type: ignore[method-assign]
    path = os.path.join(os.environ.get("HUB_PROBE_DIR", tempfile.gettempdir()), f"{os.getpid()}.txt")
    tick = os.sysconf("SC_CLK_TCK")

    def sample() -> None:
        while True:
            time.sleep(0.5)
            cpu = {"main": 0.0, "other": 0.0}
            for tid in os.listdir("/proc/self/task"):
                try:
                    with open(f"/proc/self/task/{tid}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                thread = "main" if int(tid) == os.getpid() else "other"
                cpu[thread] += (int(fields[11]) + int(fields[12])) / tick
            with open(path, "a") as out:
                out.write(f"{counts['batches']} {counts['writes']} {cpu['main']} {cpu['other']}\n")

    threading.Thread(target=sample, name="hub-probe", daemon=True).start()


_install()
