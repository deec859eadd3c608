"""``synchub serve --workers N``: a supervisor and N worker processes sharing one port (SO_REUSEPORT).

Real processes on a real port, real PostgreSQL and Redis. Which worker a connection lands on is the
kernel's choice, so the tests find out instead of guessing: ``/healthz`` names the worker's node, and
``/healthz`` then ``/metrics`` on one keep-alive connection tell how many WebSockets that worker holds.
Worker processes are found as the supervisor's children in /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from hub import cli, cli_flags
from tests.cluster_helpers import free_port, start_node
from tests.conftest import JWT_SECRET, redis_url, token

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]
ROOT = Path(__file__).resolve().parent.parent
ADMIN = {"Authorization": f"Bearer {token('root', 'admin')}"}
NODE = "wk"  # --node-id of the supervised hubs: workers are wk-w0, wk-w1


# -- processes -------------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def children(pid: int) -> set[int]:
    """Live (not zombie) child processes of ``pid``."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[1] == pid and stat[0] != "Z":
                found.add(int(entry))
    return found


def worker_index(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode().split("\0")
    except OSError:
        return None
    return int(argv[argv.index("--worker-index") + 1]) if "--worker-index" in argv else None


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool], within: float, what: str
) -> None:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.05)


def hub_env() -> dict[str, str]:
    # Nothing of the caller's SYNCHUB_* settings (say a SYNCHUB_REDIS_URL) leaks into the hubs under test.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("SYNCHUB_") or k.startswith("SYNCHUB_TEST_")
    }
    return {**env, "SYNCHUB_JWT_SECRET": JWT_SECRET, "PYTHONPATH": str(ROOT)}


@dataclass
class Supervised:
    """A ``synchub serve --workers N`` process, its output in files."""

    proc: asyncio.subprocess.Process
    port: int
    out: Path
    err: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def workers(self) -> set[int]:
        return children(self.proc.pid)

    def output(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def launch(tmp_path: Path, *args: str, port: int | None = None) -> Supervised:
    port = port or free_port()
    workdir = tmp_path / "cwd"
    workdir.mkdir(exist_ok=True)
    out, err = tmp_path / f"out-{port}.log", tmp_path / f"err-{port}.log"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hub.cli",
            "serve",
            "--port",
            str(port),
            *args,
            env=hub_env(),
            cwd=workdir,
            stdout=stdout,
            stderr=stderr,
        )
    return Supervised(proc, port, out, err)


async def start_workers(
    tmp_path: Path, database_url: str, prefix: str, workers: int = 2, port: int | None = None
) -> Supervised:
    """``serve --workers N`` on Redis and PostgreSQL, once the supervisor says every worker is ready."""
    hub = await launch(
        tmp_path,
        "--workers",
        str(workers),
        "--database-url",
        database_url,
        "--redis-url",
        redis_url(),
        "--redis-prefix",
        prefix,
        "--region",
        "eu",
        "--node-id",
        NODE,
        port=port,
    )
    try:
        deadline = time.monotonic() + 20
        while f"all {workers} workers ready" not in hub.out.read_text(errors="replace"):
            if hub.proc.returncode is not None:
                raise AssertionError(f"the supervisor exited with {hub.proc.returncode}:\n{hub.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the workers did not become ready:\n{hub.output()}")
            await asyncio.sleep(0.05)
    except BaseException:
        await hub.stop()
        raise
    return hub


@contextlib.asynccontextmanager
async def supervised(tmp_path: Path, database_url: str, prefix: str) -> AsyncIterator[Supervised]:
    hub = await start_workers(tmp_path, database_url, prefix)
    pids = hub.workers()
    try:
        yield hub
    finally:
        await hub.stop()
        for pid in pids | hub.workers():  # never leave a worker behind, even when a test failed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- what the workers answer -----------------------------------------------------------------------


async def node_ids(base: str, connections: int = 40) -> set[str]:
    """The node ids /healthz names over fresh connections (each one is the kernel's pick of a worker)."""
    seen = set()
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=5)) as session:
        for _ in range(connections):
            async with session.get(base + "/healthz") as response:
                assert response.status == 200
                seen.add((await response.json())["node_id"])
    return seen


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> bytes:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    assert length is not None, head
    return await reader.readexactly(int(length.group(1)))


async def websockets_per_worker(port: int, probes: int = 40) -> dict[str, int]:
    """Open WebSockets by worker node id: /healthz then /metrics on one keep-alive connection."""
    counts: dict[str, int] = {}
    for _ in range(probes):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            node = orjson.loads(await _get(reader, writer, "/healthz"))["node_id"]
            metrics = (await _get(reader, writer, "/metrics")).decode()
        finally:
            writer.close()
            await writer.wait_closed()
        counts[node] = sum(
            int(float(value))
            for labels, value in re.findall(r"^synchub_connections\{([^}]*)\} (\S+)$", metrics, re.M)
            if 'transport="websocket"' in labels
        )
    return counts


@dataclass
class WsClient:
    ws: aiohttp.ClientWebSocketResponse
    events: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    task: asyncio.Task[None] | None = None

    async def read(self) -> None:
        async for frame in self.ws:
            if frame.type == aiohttp.WSMsgType.TEXT:
                message = frame.json()
                if message["type"] == "event":
                    self.events.append(message["data"])
        self.close_code = self.ws.close_code


async def connect(session: aiohttp.ClientSession, port: int) -> WsClient:
    ws = await session.ws_connect(f"ws://127.0.0.1:{port}/api/v1/ws", protocols=("synchub.json",))
    await ws.send_json({"type": "subscribe", "channel": "inventory:eu"})
    subscribed = await ws.receive_json(timeout=5)
    assert subscribed["type"] == "subscribed", subscribed
    client = WsClient(ws)
    client.task = asyncio.create_task(client.read())
    return client


async def clients_on_every_worker(session: aiohttp.ClientSession, port: int, workers: int) -> list[WsClient]:
    """At least 10 subscribed WebSocket clients, and more until every worker holds some."""
    clients = [await connect(session, port) for _ in range(10)]
    while True:
        counts = await websockets_per_worker(port)
        if len(counts) == workers and all(counts.values()) and sum(counts.values()) == len(clients):
            return clients
        assert len(clients) < 60, f"the kernel put every WebSocket on one worker: {counts}"
        clients.append(await connect(session, port))


async def admin(method: str, url: str, body: Any) -> Any:
    """One request on a connection of its own (so on whichever worker the kernel picks)."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector, headers=ADMIN) as session,
        session.request(method, url, json=body) as response,
    ):
        payload = await response.json()
        assert response.status < 300, payload
        return payload


async def seed(base: str) -> str:
    await admin("POST", base + "/api/v1/warehouses", {"id": "par-1", "region": "eu", "name": "Paris"})
    product = await admin("POST", base + "/api/v1/products", {"sku": "W-1", "name": "w", "price": "1"})
    return str(product["id"])


# -- the command line ------------------------------------------------------------------------------


def test_workers_default_to_one_accept_auto_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYNCHUB_WORKERS", raising=False)
    assert cli.build_parser().parse_args(["serve"]).workers == 1
    assert cli.build_parser().parse_args(["serve", "--workers", "auto"]).workers == (os.cpu_count() or 1)
    assert cli.build_parser().parse_args(["serve", "--workers", "3"]).workers == 3
    monkeypatch.setenv("SYNCHUB_WORKERS", "4")
    assert cli.build_parser().parse_args(["serve"]).workers == 4
    for bad in ("0", "-1", "many"):
        with pytest.raises(SystemExit) as exit_info:
            cli.build_parser().parse_args(["serve", "--workers", bad])
        assert exit_info.value.code == 2


def test_a_worker_gets_every_setting_of_the_supervisor_through_its_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        if name.startswith("SYNCHUB_"):
            monkeypatch.delenv(name)
    given = cli.build_parser().parse_args(
        [
            "serve",
            "--workers=3",
            "--host=127.0.0.2",
            "--port=9123",
            "--database-url=postgresql://u:secret@db:5432/shop",
            "--jwt-secret=" + "j" * 40,
            "--redis-url=redis://r:6379/2",
            "--redis-prefix=p:",
            "--region=eu",
            "--node-id=n",
            "--max-body-bytes=1234",
            "--no-relay",
            "--log-level=DEBUG",
        ]
    )
    env = cli._worker_env(given, "j" * 40, "n-w2")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    worker = cli.build_parser().parse_args(["serve", "--worker-index", "2", "--ready-fd", "7"])
    expected = {**vars(given), "workers": 1, "worker_index": 2, "ready_fd": 7, "node_id": "n-w2"}
    assert vars(worker) == expected
    # ...and no serve flag is left out of the hand-over (a new flag must be added to cli._FORWARDED).
    serve = argparse.ArgumentParser()
    cli_flags.add_serve(serve)
    flags = {action.dest for action in serve._actions} - {"help"}
    handed_over = set(cli._FORWARDED) | {"no_relay", "jwt_secret", "node_id", "workers", "hs256_tokens"}
    assert flags - handed_over == {"worker_index", "ready_fd"}


@pytest.mark.parametrize(
    ("store", "broker", "missing"),
    [
        ("sqlite", False, ["--redis-url", "PostgreSQL --database-url"]),
        ("sqlite", True, ["PostgreSQL --database-url"]),
        ("postgres", False, ["--redis-url"]),
    ],
)
async def test_workers_without_a_shared_broker_and_store_exit_at_once_with_a_clear_message(
    tmp_path: Path, postgres_url: str, store: str, broker: bool, missing: list[str]
) -> None:
    args = ["serve", "--workers", "2", "--port", str(free_port())]
    if store == "postgres":
        args += ["--database-url", postgres_url]
    if broker:
        args += ["--redis-url", redis_url()]
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hub.cli",
        *args,
        cwd=tmp_path,
        env=hub_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    stderr = err.decode()
    assert proc.returncode == 1, stderr
    assert time.monotonic() - started < 10
    assert "--workers 2 needs a broker and a store shared by every worker" in stderr
    for part in missing:
        assert part in stderr
    if len(missing) == 1:
        other = "--redis-url" if missing == ["PostgreSQL --database-url"] else "PostgreSQL --database-url"
        assert f"pass {other}" not in stderr
    assert "use --workers 1" in stderr
    assert "started worker" not in stderr


async def test_a_worker_that_cannot_start_fails_the_start_up(tmp_path: Path, pg: str) -> None:
    unreachable = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    hub = await launch(tmp_path, "--workers", "2", "--database-url", pg, "--redis-url", unreachable)
    try:
        assert await asyncio.wait_for(hub.proc.wait(), 20) == 1
    finally:
        await hub.stop()
    assert "while starting: stopping" in hub.output()
    assert "workers ready" not in hub.output()
    started = [int(pid) for pid in re.findall(r"started worker \d \(node [^,]+, pid (\d+)\)", hub.output())]
    assert started and not any(alive(pid) for pid in started)


async def test_one_worker_is_the_single_process_node_of_before(tmp_path: Path) -> None:
    node = await start_node("solo", str(tmp_path / "solo.sqlite3"), extra=("--workers", "1"))
    try:
        assert node.proc.pid is not None and children(node.proc.pid) == set()
        assert await node_ids(node.base, connections=3) == {"solo"}
    finally:
        await node.stop()


# -- many workers ----------------------------------------------------------------------------------


async def test_workers_share_the_port_and_each_one_is_a_node_of_the_region(
    tmp_path: Path, pg: str, redis_prefix: str
) -> None:
    async with supervised(tmp_path, pg, redis_prefix) as hub, aiohttp.ClientSession() as session:
        pids = hub.workers()
        assert len(pids) == 2 and {worker_index(pid) for pid in pids} == {0, 1}
        assert await node_ids(hub.base) == {f"{NODE}-w0", f"{NODE}-w1"}  # both answer on the one port
        async with session.get(hub.base + "/readyz") as response:
            assert response.status == 200

        product_id = await seed(hub.base)
        clients = await clients_on_every_worker(session, hub.port, workers=2)
        # Six writes, each on a connection of its own, so through both workers: every client, whichever
        # worker holds it, gets every change, once and in order (each worker reads the Redis stream).
        for on_hand in range(1, 7):
            await admin(
                "PUT", f"{hub.base}/api/v1/products/{product_id}/inventory/par-1", {"on_hand": on_hand}
            )
        await eventually(lambda: all(len(c.events) >= 6 for c in clients), 10, "every client got 6 events")
        for client in clients:
            assert [e["on_hand"] for e in client.events] == [1, 2, 3, 4, 5, 6]
            assert [e["version"] for e in client.events] == [1, 2, 3, 4, 5, 6]
        for client in clients:
            await client.ws.close()


async def test_sigterm_stops_every_worker_gracefully_and_the_supervisor_exits_0(
    tmp_path: Path, pg: str, redis_prefix: str
) -> None:
    async with supervised(tmp_path, pg, redis_prefix) as hub, aiohttp.ClientSession() as session:
        pids = hub.workers()
        clients = await clients_on_every_worker(session, hub.port, workers=2)
        started = time.monotonic()
        hub.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(hub.proc.wait(), 20) == 0, hub.output()
        assert time.monotonic() - started < 10
        await asyncio.wait_for(asyncio.gather(*(c.task for c in clients if c.task)), 5)
        assert [c.close_code for c in clients] == [1001] * len(clients)  # go_away on both workers
        assert not any(alive(pid) for pid in pids)
        assert "stopping 2 workers" in hub.output()
        assert "did not stop in time" not in hub.output()


async def test_a_killed_worker_is_restarted_and_the_port_keeps_serving(
    tmp_path: Path, pg: str, redis_prefix: str
) -> None:
    async with supervised(tmp_path, pg, redis_prefix) as hub:
        pids = hub.workers()
        victim = min(pids)
        index = worker_index(victim)
        os.kill(victim, signal.SIGKILL)
        await eventually(lambda: len(hub.workers() - pids) == 1, 10, "a new worker process")
        assert hub.workers() == (pids - {victim}) | (hub.workers() - pids)
        assert worker_index(next(iter(hub.workers() - pids))) == index

        async def both_answer() -> bool:
            return await node_ids(hub.base, connections=20) == {f"{NODE}-w0", f"{NODE}-w1"}

        await eventually(both_answer, 15, "both workers answering on the port again")
        assert hub.proc.returncode is None
        assert f"pid {victim}) was killed by SIGKILL; restarting it" in hub.output()


async def test_a_worker_that_keeps_dying_makes_the_supervisor_give_up_and_exit_1(
    tmp_path: Path, pg: str, redis_prefix: str
) -> None:
    async with supervised(tmp_path, pg, redis_prefix) as hub:
        pids = hub.workers()
        killed: set[int] = set()
        for _ in range(5):  # worker 0, killed 5 times within 30 s (restart delays 0.5, 1, 2, 4 s)
            await eventually(
                lambda: any(worker_index(p) == 0 for p in hub.workers() - killed), 10, "worker 0 running"
            )
            victim = next(p for p in hub.workers() - killed if worker_index(p) == 0)
            os.kill(victim, signal.SIGKILL)
            killed.add(victim)
        assert await asyncio.wait_for(hub.proc.wait(), 20) == 1
        assert "giving up" in hub.output()
        assert not any(alive(pid) for pid in pids | killed)


async def test_a_supervisor_killed_outright_takes_its_workers_with_it(
    tmp_path: Path, pg: str, redis_prefix: str
) -> None:
    async with supervised(tmp_path, pg, redis_prefix) as hub:
        pids = hub.workers()
        hub.proc.kill()  # no chance to clean up: the kernel's parent-death signal stops the workers
        await hub.proc.wait()
        await eventually(lambda: not any(alive(pid) for pid in pids), 15, "no orphan worker left")


async def test_a_port_already_served_is_refused_rather_than_shared(
    tmp_path: Path, pg: str, redis_prefix: str
) -> None:
    async with supervised(tmp_path, pg, redis_prefix) as hub:
        second = await launch(
            tmp_path,
            "--workers",
            "2",
            "--database-url",
            pg,
            "--redis-url",
            redis_url(),
            "--redis-prefix",
            redis_prefix,
            port=hub.port,
        )
        try:
            assert await asyncio.wait_for(second.proc.wait(), 10) == 1
        finally:
            await second.stop()
        assert f"cannot listen on 127.0.0.1:{hub.port}" in second.output()
        assert "started worker" not in second.output()
