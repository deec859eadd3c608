"""A throwaway Redis Cluster on loopback: 3 masters and 3 replicas of Debian's redis-server, for the
tests (a session fixture in tests/conftest.py) and the bench (``python -m bench brokers``).

Ports: six consecutive ones from a base drawn in 17000-19999 whose ports and cluster-bus ports (+10000)
are all free; data (nodes.conf, no persistence) in a temporary directory removed at the end. Nothing is
shared with the Redis at 6379, and two test runs side by side draw different bases.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
NODES = 6  # 3 masters, each with one replica


class ClusterUnavailable(RuntimeError):
    """The cluster could not be started (redis-server missing, no free ports, did not converge)."""


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _pick_base() -> int:
    for _ in range(50):
        base = random.randrange(17000, 20000 - NODES)
        ports = range(base, base + NODES)
        if all(_free(p) and _free(p + 10000) for p in ports):
            return base
    raise ClusterUnavailable("no six free consecutive ports (and bus ports) in 17000-19999")


@dataclass
class LocalCluster:
    """The running cluster: its node processes by port."""

    directory: Path
    ports: list[int]
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """What ``--redis-url`` takes for it (any one node; the client discovers the rest)."""
        return f"redis+cluster://{HOST}:{self.ports[0]}/0"

    def cli(self, port: int, *args: str, check: bool = True) -> str:
        try:
            done = subprocess.run(
                ["redis-cli", "-h", HOST, "-p", str(port), *args],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterUnavailable(f"redis-cli -p {port} {' '.join(args)}: no answer in 30 s") from exc
        if check and (done.returncode != 0 or done.stdout.startswith("ERR")):
            raise ClusterUnavailable(f"redis-cli -p {port} {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout.strip()

    def start_node(self, port: int) -> None:
        node_dir = self.directory / str(port)
        node_dir.mkdir(exist_ok=True)
        self.processes[port] = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                HOST,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
                "--cluster-replica-validity-factor",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(node_dir),
                "--logfile",
                str(node_dir / "redis.log"),
                "--enable-debug-command",
                "local",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill_node(self, port: int) -> None:
        process = self.processes.pop(port)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def masters(self) -> dict[int, str]:
        """Port -> node id of every master that is not failed, as a live node sees it."""
        result: dict[int, str] = {}
        for port in self.processes:
            try:
                nodes = self.cli(port, "cluster", "nodes")
            except ClusterUnavailable:
                continue
            for line in nodes.splitlines():
                node_id, address, flags = line.split()[:3]
                if "master" in flags and "fail" not in flags:
                    result[int(address.split(":")[1].split("@")[0])] = node_id
            return result
        return result

    def replica_of(self, master_port: int) -> int:
        master_id = self.masters()[master_port]
        for line in self.cli(master_port, "cluster", "nodes").splitlines():
            parts = line.split()
            if "slave" in parts[2] and parts[3] == master_id:
                return int(parts[1].split(":")[1].split("@")[0])
        raise ClusterUnavailable(f"the master at {master_port} has no replica")

    def node_ids(self) -> dict[int, str]:
        """Port -> node id of every node a live node knows."""
        for port in self.processes:
            try:
                lines = self.cli(port, "cluster", "nodes").splitlines()
            except ClusterUnavailable:
                continue
            return {int(line.split()[1].split(":")[1].split("@")[0]): line.split()[0] for line in lines}
        raise ClusterUnavailable("no live node")

    def master_of_slot(self, slot: int) -> int:
        """The port of the master that serves ``slot``."""
        for port in self.processes:
            try:
                lines = self.cli(port, "cluster", "nodes").splitlines()
            except ClusterUnavailable:
                continue
            for line in lines:
                fields = line.split()
                if "master" not in fields[2] or "fail" in fields[2]:
                    continue
                for served in fields[8:]:
                    if served.startswith("["):
                        continue  # a slot being migrated or imported
                    low, _, high = served.partition("-")
                    if int(low) <= slot <= int(high or low):
                        return int(fields[1].split(":")[1].split("@")[0])
            break
        raise ClusterUnavailable(f"no master serves slot {slot}")

    def pause(self, port: int) -> None:
        self.processes[port].send_signal(signal.SIGSTOP)

    def resume(self, port: int) -> None:
        self.processes[port].send_signal(signal.SIGCONT)

    def mend(self) -> None:
        """Start again every node that was killed (it rejoins, as a replica where its master was
        replaced) and wait until the cluster is healthy: 3 masters, each with a replica in sync."""
        for port in self.ports:
            if port not in self.processes:
                self.start_node(port)
        for process in self.processes.values():
            process.send_signal(signal.SIGCONT)
        self.wait_until("healthy again", self.healthy, seconds=90)

    def wait_until(self, what: str, check: object, seconds: float = 60.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(ClusterUnavailable, ValueError, IndexError, KeyError):
                if callable(check) and check():
                    return
            time.sleep(0.1)
        raise ClusterUnavailable(f"the cluster did not get {what} within {seconds:.0f} s")

    def healthy(self) -> bool:
        """Every live node says the cluster is ok, with 3 masters that each have a replica in sync."""
        for port in self.processes:
            info = self.cli(port, "cluster", "info")
            if "cluster_state:ok" not in info or "cluster_slots_ok:16384" not in info:
                return False
        masters = self.masters()
        if len(masters) != 3:
            return False
        for port in masters:
            replication = self.cli(port, "info", "replication")
            if "connected_slaves:1" not in replication or "state=online" not in replication:
                return False
        return True

    def stop(self) -> None:
        for port in list(self.processes):
            self.kill_node(port)
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def local_cluster() -> Iterator[LocalCluster]:
    """Start the cluster, wait until it is healthy, yield it; kill it and remove its data at the end."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        raise ClusterUnavailable("redis-server and redis-cli are needed (Debian: redis-server, redis-tools)")
    base = _pick_base()
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="synchub-cluster-")), list(range(base, base + NODES)))
    try:
        for port in cluster.ports:
            cluster.start_node(port)
        cluster.wait_until(
            "its nodes answering", lambda: all(cluster.cli(p, "ping") == "PONG" for p in cluster.ports)
        )
        cluster.cli(
            cluster.ports[0],
            "--cluster",
            "create",
            *[f"{HOST}:{p}" for p in cluster.ports],
            "--cluster-replicas",
            "1",
            "--cluster-yes",
        )
        cluster.wait_until("healthy", cluster.healthy)
        yield cluster
    finally:
        cluster.stop()


@contextlib.contextmanager
def local_redis() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """One private redis-server (no persistence) on a free loopback port: (its URL, its process)."""
    if shutil.which("redis-server") is None:
        raise ClusterUnavailable("redis-server is needed (Debian: redis-server)")
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = int(sock.getsockname()[1])
    directory = tempfile.mkdtemp(prefix="synchub-redis-")
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            directory,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        node = LocalCluster(Path(directory), [port], {port: process})
        node.wait_until("answering", lambda: node.cli(port, "ping") == "PONG", seconds=30)
        yield f"redis://{HOST}:{port}/0", process
    finally:
        process.kill()
        process.wait(timeout=30)
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:  # pragma: no cover - a manual aid: python -m bench.redis_cluster
    with local_cluster() as cluster:
        print(cluster.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
