"""The supervisor of ``synchub serve --workers N``: N worker processes on one port, each a full node.

Every worker is an ordinary hub node of the region — its own event loop, store pool, broker reader,
outbox relay and reservation expiry — that binds the listening port itself with ``SO_REUSEPORT``, so
the kernel spreads new connections over the workers. They share state only through PostgreSQL and the
Redis broker, exactly as separate nodes do: a change written through one worker reaches the real-time
clients of every other through Redis. (That is why ``--workers`` > 1 requires both; see ``hub.cli``.)

The outbox relay runs in every worker (unless ``--no-relay``), as it runs on every node: that is safe
by design, not by luck. A relay claims nothing — it reads the oldest outbox rows, publishes them and
deletes only what the broker accepted — so concurrent relays may publish the same rows; the Redis
broker's publish is one Lua script that appends a change only if its product × warehouse version is
greater than the last one appended (``sync/lua/publish.lua``), so each change is appended once and in
version order, whichever relay wins (``tests/test_relay.py`` races three). Keeping a relay per worker
also keeps a write's latency: the worker that committed a change wakes its own relay (the store tells
it in-process, ``outbox_changed``), where a single relaying worker would only find other workers'
changes at its next sweep. The price is N relays sweeping the outbox (every 50 ms) and, under load,
duplicate publishes that Redis drops.

The supervisor itself serves nothing and runs no event loop. It

* starts the workers and prints one line once every one of them reports ready (listening, and its store
  answering the check ``/readyz`` makes — workers share a port, so it cannot ask each one over HTTP);
* on SIGTERM or SIGINT sends SIGTERM to every worker — each does a single node's graceful shutdown
  (real-time clients closed with 1001 to resume elsewhere) — waits ``shutdown_timeout`` at most, kills
  what is left and exits 0; a second signal kills the workers at once;
* restarts a worker that dies, after a growing delay, and gives up (stops everything, exits 1) when one
  worker dies ``max_deaths`` times within ``death_window`` seconds; a worker that dies before the
  workers first became ready fails the start-up (a bad setting would only make it die again);
* never leaves a worker behind: it stops them in a ``finally``, and on Linux each worker gets
  ``PR_SET_PDEATHSIG`` = SIGTERM, so even a supervisor killed with SIGKILL takes its workers with it.

Workers are started with :mod:`subprocess` re-running ``python -m hub.cli serve`` with the hidden
``--worker-index``/``--ready-fd`` flags, rather than with :mod:`multiprocessing`: a worker is then
exactly the program a single node runs (fresh interpreter, argument parsing, uvloop, ``web.run_app``),
nothing is pickled or inherited but its environment and one pipe end, no helper processes (the
resource tracker, the spawn bootstrap) come along, the parent-death signal is set between fork and
exec, and ``ps`` shows what each process is. The resolved settings travel in the workers' SYNCHUB_*
environment, not on their command lines, so a secret given in the environment stays out of ``ps``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_TICK = 0.1  # seconds between two looks at the workers (a readiness report wakes the loop at once)


@dataclass(frozen=True)
class WorkerSlot:
    """What worker ``index`` is: its node id and its whole environment (SYNCHUB_* settings included)."""

    index: int
    node_id: str
    env: Mapping[str, str]


@dataclass
class _Worker:
    slot: WorkerSlot
    proc: subprocess.Popen[bytes] | None = None
    ready: bool = False
    restart_at: float | None = None  # monotonic time of a scheduled restart
    deaths: list[float] = field(default_factory=list)  # monotonic times, within the death window

    def describe(self) -> str:
        pid = self.proc.pid if self.proc is not None else "-"
        return f"worker {self.slot.index} (node {self.slot.node_id}, pid {pid})"


def check_port_free(host: str, port: int) -> None:
    """Raise OSError if ``host:port`` cannot be bound, e.g. because something already listens there.

    Workers bind with SO_REUSEPORT, which would let them quietly share the port with another process
    of this user that did too (say, a forgotten ``serve --workers``); a plain bind first refuses that.
    """
    seen = set()
    for family, kind, proto, _, address in socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        if (family, address) in seen:
            continue
        seen.add((family, address))
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind(address)


def _exit_with_parent(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel send the child SIGTERM when its parent dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - every Linux libc has prctl
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:  # the supervisor died before the line above: nobody to signal us
            os._exit(1)

    return preexec


def _exit_description(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    def __init__(
        self,
        command: Sequence[str],
        slots: Sequence[WorkerSlot],
        *,
        address: str,
        shutdown_timeout: float,
        max_deaths: int = 5,
        death_window: float = 30.0,
        restart_delay: tuple[float, float] = (0.5, 10.0),
    ) -> None:
        """``command`` starts one worker once ``--worker-index K --ready-fd FD`` is appended; the worker
        writes ``"K PID\\n"`` to FD once it is ready. ``address`` is for messages only."""
        self._command = list(command)
        self._workers = [_Worker(slot) for slot in slots]
        self._address = address
        self._shutdown_timeout = shutdown_timeout
        self._max_deaths = max_deaths
        self._death_window = death_window
        self._restart_delay = restart_delay
        self._signals: list[int] = []
        self._ready_r = self._ready_w = -1
        self._pending = b""

    # -- the whole life

    def run(self) -> int:
        """Run the workers until a signal (→ 0) or until they cannot be kept running (→ 1)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        self._ready_r, self._ready_w = os.pipe()
        os.set_blocking(self._ready_r, False)
        try:
            return self._supervise()
        finally:
            self._kill_all()
            os.close(self._ready_r)
            os.close(self._ready_w)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)  # acted upon by the loop, never from inside the handler

    def _supervise(self) -> int:
        for worker in self._workers:
            self._spawn(worker)
        announced = False
        while not self._signals:
            self._wait_for_reports(_TICK)
            if not announced and all(w.ready for w in self._workers):
                announced = True
                self._announce()
            now = time.monotonic()
            for worker in self._workers:
                code = worker.proc.poll() if worker.proc is not None else None
                if code is not None and not announced:
                    log.error("%s %s while starting: stopping", worker.describe(), _exit_description(code))
                    self._stop()
                    return 1
                if code is not None and not self._schedule_restart(worker, code, now):
                    self._stop()
                    return 1
                if worker.proc is None and worker.restart_at is not None and worker.restart_at <= now:
                    self._spawn(worker)
        name = signal.Signals(self._signals[0]).name
        log.info("received %s: stopping %d workers", name, len(self._workers))
        self._stop()
        return 0

    def _announce(self) -> None:
        nodes = ", ".join(f"{w.slot.node_id} (pid {w.proc.pid})" for w in self._workers if w.proc is not None)
        print(f"synchub: all {len(self._workers)} workers ready on {self._address}: {nodes}", flush=True)

    # -- workers

    def _spawn(self, worker: _Worker) -> None:
        worker.ready, worker.restart_at = False, None
        worker.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
            [*self._command, "--worker-index", str(worker.slot.index), "--ready-fd", str(self._ready_w)],
            env=dict(worker.slot.env),
            stdin=subprocess.DEVNULL,
            pass_fds=(self._ready_w,),
            # Its own process group: a Ctrl-C in the terminal reaches the supervisor only, which then
            # signals each worker once (a second signal would cut a worker's graceful shutdown short).
            process_group=0,
            preexec_fn=_exit_with_parent(os.getpid()),  # the supervisor has no threads
        )
        log.info("started %s", worker.describe())

    def _schedule_restart(self, worker: _Worker, code: int, now: float) -> bool:
        """Note the death of ``worker``; False if it died too often to be restarted again."""
        what = f"{worker.describe()} {_exit_description(code)}"
        worker.proc, worker.ready = None, False
        worker.deaths = [t for t in worker.deaths if now - t < self._death_window] + [now]
        if len(worker.deaths) >= self._max_deaths:
            log.error(
                "%s: %d deaths within %.0f s, giving up and stopping every worker",
                what,
                len(worker.deaths),
                self._death_window,
            )
            return False
        first, cap = self._restart_delay
        delay = min(first * 2 ** (len(worker.deaths) - 1), cap)
        worker.restart_at = now + delay
        log.warning("%s; restarting it in %.1f s", what, delay)
        return True

    def _wait_for_reports(self, timeout: float) -> None:
        """Wait up to ``timeout`` for readiness reports (``"index pid"`` lines) and note them."""
        readable, _, _ = select.select([self._ready_r], [], [], timeout)
        if not readable:
            return
        with contextlib.suppress(BlockingIOError):
            self._pending += os.read(self._ready_r, 4096)
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            with contextlib.suppress(ValueError, IndexError):
                index, pid = (int(part) for part in line.split())
                worker = self._workers[index]
                if worker.proc is not None and worker.proc.pid == pid and not worker.ready:
                    worker.ready = True
                    log.info("%s is ready", worker.describe())

    def _live(self) -> list[_Worker]:
        return [w for w in self._workers if w.proc is not None and w.proc.poll() is None]

    def _stop(self) -> None:
        """SIGTERM to every worker, then wait for them (bounded); kill what is left."""
        for worker in self._workers:
            worker.restart_at = None
        signals_before = len(self._signals)
        for worker in self._live():
            assert worker.proc is not None
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._shutdown_timeout
        while self._live() and time.monotonic() < deadline:
            if len(self._signals) > signals_before:
                log.warning("signalled again: killing the workers now")
                break
            time.sleep(0.05)
        for worker in self._workers:
            if worker.proc is None:
                continue
            if worker.proc.poll() is None:
                log.warning("%s did not stop in time: killing it", worker.describe())
            else:
                code = worker.proc.returncode
                if code not in (0, -signal.SIGTERM):  # -SIGTERM: signalled before it could handle it
                    log.warning("%s %s while stopping", worker.describe(), _exit_description(code))
        self._kill_all()
        log.info("every worker has stopped")

    def _kill_all(self) -> None:
        for worker in self._workers:
            if worker.proc is not None and worker.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()
        for worker in self._workers:
            if worker.proc is not None:
                worker.proc.wait()
