"""Start, drive and stop the peer servers the fan-out benchmark compares synchub against.

Every peer is one server process on 127.0.0.1 speaking the same small contract:

- clients connect over WebSocket: on ``/ws`` (protocol ``"ws"``: each message is a publish body) or on
  ``/socket.io/`` (protocol ``"socketio"``: Engine.IO v4 / Socket.IO v5, each publish is event ``"m"``
  whose one argument is the body);
- ``POST /publish`` broadcasts its body, a JSON string of ~200 bytes with ``"ts"`` in microseconds since
  the epoch, verbatim to every connected client;
- ``GET /stats`` answers ``{"clients": n, "peer": name}``.

Peers: ``aiohttp`` (bare ``web.WebSocketResponse``, the floor of aiohttp), ``python-socketio``
(AsyncServer on aiohttp, one room), ``node-ws`` (a plain ``ws`` WebSocketServer), ``node-socketio``
(a socket.io Server, one room) and ``c-epoll`` (a single-threaded epoll server in C, one ``write()`` per
message per socket: the floor). ``hocuspocus`` (protocol ``"yjs"``: a Hocuspocus server with its SQLite
extension, for ``python -m bench sync``) answers ``GET /stats`` too but has no ``POST /publish``: its
clients are ``hocuspocus_client.js``, not :meth:`Peer.client`. Use::

    async with start_peer("node-ws", port) as peer:
        async with connect_clients(peer, 1000, on_message) as clients:
            await peer.publish(session, make_body(seq))
        ... cpu_seconds(peer.pid), rss_bytes(peer.pid)

What is missing is installed on first use (Node packages from ``package.json`` into
``bench/peers/node_modules``, python-socketio into the running interpreter with pip, ``c_server.c``
compiled with gcc into ``bench/peers/build/``); a peer that cannot be installed, built or started raises
:class:`PeerUnavailable` so the bench can say so and go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any, Literal

import aiohttp
import orjson

from bench._hub import cpu_seconds

__all__ = [
    "PEERS",
    "Clients",
    "Peer",
    "PeerUnavailable",
    "connect_clients",
    "cpu_seconds",
    "ensure_peer",
    "make_body",
    "nofile_limits",
    "rss_bytes",
    "socketio_client",
    "start_peer",
    "ws_client",
]

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
PYTHON_SOCKETIO = "python-socketio==5.18.1"  # installed with pip only when the interpreter lacks it
NPM_INSTALL = ("npm", "install", "--no-audit", "--no-fund", "--no-package-lock", "--prefix", str(HERE))
BUILD = HERE / "build"  # git-ignored: the compiled C peer
C_SOURCE = HERE / "c_server.c"
C_BINARY = BUILD / "c_server"
CFLAGS = ("-O2", "-Wall", "-Wextra")

Protocol = Literal["ws", "socketio", "yjs"]
Runtime = Literal["python", "node", "c"]
OnMessage = Callable[[str], None]

# name -> (protocol, runtime, server program: a script, or for "c" the source compiled on first use)
_PEERS: dict[str, tuple[Protocol, Runtime, str]] = {
    "aiohttp": ("ws", "python", "aiohttp_server.py"),
    "python-socketio": ("socketio", "python", "socketio_server.py"),
    "node-ws": ("ws", "node", "ws_server.js"),
    "node-socketio": ("socketio", "node", "socketio_server.js"),
    "c-epoll": ("ws", "c", "c_server.c"),
    "hocuspocus": ("yjs", "node", "hocuspocus_server.js"),
}
# a Node peer → the packages its version line names
_NODE_PACKAGES = {
    "node-ws": ("ws",),
    "node-socketio": ("socket.io",),
    "hocuspocus": ("@hocuspocus/server", "yjs"),
}
PEERS: tuple[str, ...] = tuple(_PEERS)

_install_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _install_lock() -> asyncio.Lock:
    """One installer at a time (per event loop: a bench may run one loop per peer)."""
    return _install_locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())


class PeerUnavailable(Exception):
    """A peer that cannot be installed or started; ``reason`` says why, for the bench's output."""

    def __init__(self, peer: str, reason: str) -> None:
        super().__init__(f"{peer}: {reason}")
        self.peer = peer
        self.reason = reason


# -- installing ----------------------------------------------------------------------------------------


async def _run(*argv: str, seconds: float, cwd: Path | None = None) -> tuple[int, str]:
    """Run a command to completion: its exit status and output (stdout + stderr); killed after ``seconds``."""
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


def _node_pins() -> dict[str, str]:
    with open(HERE / "package.json") as f:
        pins: dict[str, str] = json.load(f)["dependencies"]
    return pins


def _node_installed() -> dict[str, str]:
    """The versions present in node_modules of the packages package.json pins ("" when missing)."""
    found = {}
    for package in _node_pins():
        manifest = HERE / "node_modules" / package / "package.json"
        try:
            with open(manifest) as f:
                found[package] = str(json.load(f)["version"])
        except (OSError, ValueError, KeyError):
            found[package] = ""
    return found


async def _ensure_node(name: str, install: bool) -> str:
    node = shutil.which("node")
    if node is None:
        raise PeerUnavailable(name, "node is not installed (no `node` on PATH)")
    try:
        status, out = await _run(node, "--version", seconds=20)
    except (OSError, TimeoutError) as exc:
        raise PeerUnavailable(name, f"`node --version` failed: {exc!r}") from exc
    if status != 0:
        raise PeerUnavailable(name, f"`node --version` failed: {out.strip()[-500:]}")
    node_version = out.strip()
    async with _install_lock():
        pins = _node_pins()
        if _node_installed() != pins:
            if not install:
                raise PeerUnavailable(
                    name, f"Node packages missing in {HERE / 'node_modules'} (wanted {pins})"
                )
            if shutil.which("npm") is None:
                raise PeerUnavailable(name, "npm is not installed (no `npm` on PATH)")
            try:
                status, out = await _run(*NPM_INSTALL, seconds=600)
            except (OSError, TimeoutError) as exc:
                raise PeerUnavailable(name, f"npm install failed: {exc!r}") from exc
            if status != 0:
                raise PeerUnavailable(name, f"npm install failed ({status}): {out.strip()[-1500:]}")
            if _node_installed() != pins:
                raise PeerUnavailable(name, f"npm install did not install {pins}: found {_node_installed()}")
    named = ", ".join(f"{package} {pins[package]}" for package in _NODE_PACKAGES[name])
    return f"{named} (node {node_version})"


async def _python_versions(*distributions: str) -> list[str] | None:
    """These distributions' versions in this interpreter (asked of a fresh one); None if one is missing."""
    code = (
        "import importlib.metadata as m, sys\n"
        "try:\n    print(' '.join(m.version(d) for d in sys.argv[1:]))\n"
        "except m.PackageNotFoundError:\n    sys.exit(1)\n"
    )
    status, out = await _run(sys.executable, "-c", code, *distributions, seconds=60)
    return out.split() if status == 0 else None


async def _ensure_python(name: str, install: bool) -> str:
    if name == "aiohttp":
        return f"aiohttp {aiohttp.__version__} (python {sys.version.split()[0]})"
    async with _install_lock():
        versions = await _python_versions("python-socketio", "python-engineio")
        if versions is None:
            if not install:
                raise PeerUnavailable(name, f"python-socketio is not installed in {sys.prefix}")
            argv = (
                sys.executable,
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-q",
                PYTHON_SOCKETIO,
            )
            try:
                status, out = await _run(*argv, seconds=600)
            except (OSError, TimeoutError) as exc:
                raise PeerUnavailable(name, f"pip install {PYTHON_SOCKETIO} failed: {exc!r}") from exc
            if status != 0:
                raise PeerUnavailable(name, f"pip install {PYTHON_SOCKETIO} failed ({status}): {out[-1500:]}")
            versions = await _python_versions("python-socketio", "python-engineio")
            if versions is None:
                raise PeerUnavailable(name, f"python-socketio still missing after pip install: {out[-1500:]}")
    return (
        f"python-socketio {versions[0]}, python-engineio {versions[1]}, aiohttp {aiohttp.__version__}"
        f" (python {sys.version.split()[0]})"
    )


def _c_stale() -> bool:
    """Whether the C peer must be (re)built: no binary, or one older than its source."""
    try:
        return C_BINARY.stat().st_mtime_ns < C_SOURCE.stat().st_mtime_ns
    except FileNotFoundError:
        return True


async def _ensure_c(name: str, install: bool) -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise PeerUnavailable(name, "gcc is not installed (no `gcc` on PATH)")
    try:
        status, out = await _run(gcc, "-dumpfullversion", seconds=20)
    except (OSError, TimeoutError) as exc:
        raise PeerUnavailable(name, f"`gcc -dumpfullversion` failed: {exc!r}") from exc
    if status != 0:
        raise PeerUnavailable(name, f"`gcc -dumpfullversion` failed: {out.strip()[-500:]}")
    version = f"c epoll (gcc {out.strip()})"
    async with _install_lock():
        if not _c_stale():
            return version
        if not install:
            raise PeerUnavailable(name, f"{C_BINARY} is missing or older than {C_SOURCE.name}")
        # Into a file of our own, then renamed: another process starting the peer never runs half a binary.
        partial = BUILD / f".c_server.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            BUILD.mkdir(exist_ok=True)
            status, out = await _run(gcc, *CFLAGS, "-o", str(partial), str(C_SOURCE), seconds=300, cwd=HERE)
            if status != 0:
                raise PeerUnavailable(name, f"gcc failed ({status}): {out.strip()[-1500:]}")
            os.replace(partial, C_BINARY)
        except (OSError, TimeoutError) as exc:
            raise PeerUnavailable(name, f"gcc failed: {exc!r}") from exc
        finally:
            partial.unlink(missing_ok=True)
    return version


async def ensure_peer(name: str, *, install: bool = True) -> str:
    """Make sure a peer can run, installing what it lacks if ``install``; a line naming its versions."""
    if name not in _PEERS:
        raise PeerUnavailable(name, f"unknown peer (known: {', '.join(PEERS)})")
    _protocol, runtime, _program = _PEERS[name]
    if runtime == "node":
        return await _ensure_node(name, install)
    if runtime == "c":
        return await _ensure_c(name, install)
    return await _ensure_python(name, install)


# -- running -------------------------------------------------------------------------------------------


class Peer:
    """One running peer server: where it listens, how its clients speak, and its process id."""

    def __init__(
        self, name: str, port: int, protocol: Protocol, version: str, proc: asyncio.subprocess.Process
    ):
        self.name = name
        self.port = port
        self.protocol: Protocol = protocol
        self.version = version
        self.pid = proc.pid
        self._proc = proc

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        """The URL its clients connect to (the Socket.IO one opens the websocket transport directly)."""
        if self.protocol == "socketio":
            return f"ws://{HOST}:{self.port}/socket.io/?EIO=4&transport=websocket"
        if self.protocol == "yjs":
            return f"ws://{HOST}:{self.port}"
        return f"ws://{HOST}:{self.port}/ws"

    @property
    def running(self) -> bool:
        return self._proc.returncode is None

    def client(
        self,
        session: aiohttp.ClientSession,
        on_message: OnMessage,
        on_ready: Callable[[], None] | None = None,
    ) -> Coroutine[Any, Any, None]:
        """One client of this peer (a coroutine running until the server closes it or it is cancelled)."""
        if self.protocol == "yjs":
            raise ValueError(f"{self.name} has no broadcast clients: its load client is hocuspocus_client.js")
        if self.protocol == "socketio":
            return socketio_client(session, self.ws_url, on_message, on_ready)
        return ws_client(session, self.ws_url, on_message, on_ready)

    async def publish(self, session: aiohttp.ClientSession, body: str | bytes) -> None:
        """Have the server broadcast ``body`` to every connected client (returns once it has been sent)."""
        data = body.encode() if isinstance(body, str) else body
        headers = {"content-type": "application/json"}
        async with session.post(self.base + "/publish", data=data, headers=headers) as response:
            await response.read()
            if response.status >= 300:
                raise RuntimeError(f"{self.name}: POST /publish answered {response.status}")

    async def stats(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(self.base + "/stats") as response:
            response.raise_for_status()
            stats: dict[str, Any] = orjson.loads(await response.read())
            return stats

    async def wait_clients(self, session: aiohttp.ClientSession, n: int, seconds: float = 60.0) -> None:
        """Wait until the server counts at least ``n`` clients ready to receive a broadcast."""
        deadline = time.monotonic() + seconds
        while True:
            count = (await self.stats(session))["clients"]
            if count >= n:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {count} of {n} clients registered after {seconds:.0f} s")
            await asyncio.sleep(0.05)


def _tail(stderr: IO[bytes], limit: int = 2000) -> str:
    stderr.flush()
    stderr.seek(0)
    return stderr.read().decode(errors="replace")[-limit:].strip()


async def _stop(proc: asyncio.subprocess.Process, grace: float) -> None:
    """Terminate, then kill after ``grace`` seconds (killed at once if the wait itself is cancelled)."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    except BaseException:  # cancelled while waiting: do not leave it running
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise


@asynccontextmanager
async def start_peer(
    name: str,
    port: int,
    *,
    install: bool = True,
    startup_timeout: float = 30.0,
    stop_timeout: float = 10.0,
) -> AsyncIterator[Peer]:
    """Run peer ``name`` on 127.0.0.1:``port`` for the block; stopped on the way out, error or not.

    Installs the peer first if needed (and ``install``); raises :class:`PeerUnavailable` when it cannot
    be installed, exits, or does not answer ``GET /stats`` as itself within ``startup_timeout`` seconds.
    """
    version = await ensure_peer(name, install=install)
    protocol, runtime, program = _PEERS[name]
    if runtime == "node":
        node = shutil.which("node")
        assert node is not None  # ensure_peer checked
        argv = [node, str(HERE / program), str(port)]
    elif runtime == "c":
        argv = [str(C_BINARY), str(port)]
    else:
        argv = [sys.executable, str(HERE / program), str(port)]
    with tempfile.TemporaryFile(prefix=f"peer-{name}-") as stderr:
        # stderr to a file, not a pipe: nobody reads it during the run, and a full pipe would stall it.
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=HERE,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,  # one line, "ready", once it listens; nothing after
                stderr=stderr,
            )
        except OSError as exc:
            raise PeerUnavailable(name, f"cannot start {argv[0]}: {exc}") from exc
        try:
            peer = Peer(name, port, protocol, version, proc)
            await _wait_ready(peer, proc, stderr, startup_timeout)
            yield peer
        finally:
            await _stop(proc, stop_timeout)


async def _wait_ready(
    peer: Peer, proc: asyncio.subprocess.Process, stderr: IO[bytes], seconds: float
) -> None:
    """Wait for the server's ``ready`` line (printed once it listens), then for it to answer as itself."""
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), seconds)
    except TimeoutError:
        raise PeerUnavailable(
            peer.name, f"not listening on port {peer.port} after {seconds:.0f} s: {_tail(stderr)}"
        ) from None
    if line.strip() != b"ready":  # end of file: it exited (e.g. the port is taken)
        await proc.wait()
        raise PeerUnavailable(peer.name, f"exited with status {proc.returncode}: {_tail(stderr)}")
    try:
        async with aiohttp.ClientSession() as session:
            stats = await asyncio.wait_for(peer.stats(session), 10)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise PeerUnavailable(peer.name, f"GET /stats failed: {exc!r}: {_tail(stderr)}") from exc
    if stats.get("peer") != peer.name or "clients" not in stats:
        raise PeerUnavailable(peer.name, f"GET /stats answered {stats!r}: another server on {peer.port}?")


# -- clients -------------------------------------------------------------------------------------------


async def ws_client(
    session: aiohttp.ClientSession,
    url: str,
    on_message: OnMessage,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """A plain WebSocket client: ``on_message(text)`` for every message, until the server closes."""
    async with session.ws_connect(url, autoclose=True, autoping=True) as ws:
        if on_ready is not None:
            on_ready()
        async for message in ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                on_message(message.data)
            elif message.type is aiohttp.WSMsgType.BINARY:
                on_message(message.data.decode())
            elif message.type is aiohttp.WSMsgType.ERROR:
                raise ConnectionError(f"{url}: {ws.exception()!r}")


class SocketIOError(ConnectionError):
    """The Socket.IO server refused the connection or broke the protocol."""


async def socketio_client(
    session: aiohttp.ClientSession,
    url: str,
    on_message: OnMessage,
    on_ready: Callable[[], None] | None = None,
    *,
    event: str = "m",
) -> None:
    """A Socket.IO v5 client on the Engine.IO v4 websocket transport, on the default namespace.

    ``url`` is ``ws://host:port/socket.io/?EIO=4&transport=websocket``. Handles the Engine.IO open packet
    (``0{...}``) by connecting the namespace (``40``), answers the server's pings (``2`` → ``3``), calls
    ``on_ready()`` once the CONNECT is acknowledged (``40{"sid": ...}``) and ``on_message(arg)`` for every
    ``42["<event>", arg]`` (an argument that is not a string is given re-encoded as JSON). Returns when
    the server disconnects or closes.
    """
    async with session.ws_connect(url, autoclose=True, autoping=True) as ws:
        async for message in ws:
            if message.type is aiohttp.WSMsgType.ERROR:
                raise SocketIOError(f"{url}: {ws.exception()!r}")
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue  # binary attachments: not used by the peers
            data: str = message.data
            kind = data[:1]
            if kind == "4":  # Engine.IO MESSAGE carrying a Socket.IO packet
                packet = data[1:2]
                if packet == "2":  # EVENT, default namespace: 42["m", arg] (an ack id would precede the "[")
                    start = 2 if data[2:3] == "[" else data.index("[", 2)
                    args = orjson.loads(data[start:])
                    if args and args[0] == event:
                        arg = args[1] if len(args) > 1 else None
                        on_message(arg if isinstance(arg, str) else orjson.dumps(arg).decode())
                elif packet == "0":  # CONNECT acknowledged
                    if on_ready is not None:
                        on_ready()
                elif packet == "4":
                    raise SocketIOError(f"{url}: connection refused: {data[2:]}")
                elif packet == "1":  # the server disconnected this namespace
                    return
            elif kind == "2":  # ping: pong with the same payload (the server closes us after pingTimeout)
                await ws.send_str("3" + data[1:])
            elif kind == "0":  # open: {"sid", "pingInterval", "pingTimeout", "maxPayload", "upgrades"}
                await ws.send_str("40")
            elif kind == "1":  # close
                return


class Clients:
    """N clients of one peer, each one task (closed by :func:`connect_clients` on the way out)."""

    def __init__(self, tasks: list[asyncio.Task[None]]) -> None:
        self.tasks = tasks

    def failures(self) -> list[BaseException]:
        """The exceptions of the clients that have ended with one so far."""
        errors = []
        for task in self.tasks:
            if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
                errors.append(exc)
        return errors

    def ended(self) -> int:
        """How many clients have ended (closed by the server, or failed)."""
        return sum(1 for t in self.tasks if t.done())

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@asynccontextmanager
async def connect_clients(
    peer: Peer,
    n: int,
    on_message: OnMessage,
    *,
    session: aiohttp.ClientSession | None = None,
    concurrency: int = 100,
    connect_timeout: float = 120.0,
) -> AsyncIterator[Clients]:
    """Connect ``n`` clients of ``peer`` for the block; each message a client gets goes to ``on_message``.

    At most ``concurrency`` connections are opening at a time. Yields once every client is connected
    (WebSocket handshake done; for Socket.IO, CONNECT acknowledged) and the server's ``/stats`` counts all
    of them, so a publish then reaches all ``n``; raises the first client's error if one fails while
    connecting, or TimeoutError after ``connect_timeout`` seconds. The clients are closed on the way out.
    Without ``session``, one with no connection limit is opened for the block (a session given must have
    ``TCPConnector(limit=0)`` or a limit ≥ n + 1: every WebSocket holds a connection of its pool).
    """
    async with contextlib.AsyncExitStack() as stack:
        if session is None:
            connector = aiohttp.TCPConnector(limit=0)
            session = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
        elif session.connector is not None and 0 < session.connector.limit <= n:
            raise ValueError(
                f"the session's connection limit ({session.connector.limit}) is too low for {n} clients"
            )
        gate = asyncio.Semaphore(concurrency)
        all_ready = asyncio.Event()
        ready = [0]
        failed: list[BaseException] = []

        async def one() -> None:
            released = False

            def on_ready() -> None:
                nonlocal released
                if not released:
                    released = True
                    gate.release()
                    ready[0] += 1
                    if ready[0] == n:
                        all_ready.set()

            await gate.acquire()
            try:
                await peer.client(session, on_message, on_ready)
                if not released:
                    raise ConnectionError(f"{peer.name}: a client was closed before it was connected")
            except Exception as exc:
                if not released:
                    failed.append(exc)
                    all_ready.set()
                raise
            finally:
                if not released:
                    released = True
                    gate.release()

        clients = Clients([asyncio.create_task(one()) for _ in range(n)])
        stack.push_async_callback(clients.close)
        deadline = time.monotonic() + connect_timeout
        try:
            await asyncio.wait_for(all_ready.wait(), connect_timeout)
        except TimeoutError:
            raise TimeoutError(
                f"{peer.name}: {ready[0]} of {n} clients connected after {connect_timeout:.0f} s"
            ) from None
        if failed:
            raise failed[0]
        await peer.wait_clients(session, n, max(1.0, deadline - time.monotonic()))
        yield clients


# -- measuring -----------------------------------------------------------------------------------------


def make_body(seq: int, size: int = 200) -> str:
    """A publish body: a JSON object of ``size`` bytes (at least ~40) with ``ts`` (µs since the epoch)."""
    head = f'{{"ts":{time.time_ns() // 1000},"seq":{seq},"pad":"'
    return head + "x" * max(0, size - len(head) - 2) + '"}'


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS in /proc/<pid>/status), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def nofile_limits(pid: int) -> tuple[int, int]:
    """The (soft, hard) open-file limits of a process, from /proc/<pid>/limits (-1 for unlimited)."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return (-1 if soft == "unlimited" else int(soft), -1 if hard == "unlimited" else int(hard))
    raise RuntimeError(f"no open-file limit in /proc/{pid}/limits")
