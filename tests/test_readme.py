"""The README's walkthrough, run as written against a real hub: its shell blocks, in order, in one bash.

How a block is run is said by an HTML comment on the line before it (invisible on GitHub):

- ``<!-- readme-test: hub -->``: how to start the hub. Its ``bash scripts/serve ARGS`` is started as
  ``synchub serve ARGS --port <free port>`` (what scripts/serve runs once .venv is set up), in a
  directory of its own (its ``./var``), with ``XDG_STATE_HOME`` in the test's directory (the JWT secret
  that ``synchub token`` in the blocks shares with it).
- ``<!-- readme-test: follow -->``: what a reader runs in another shell (``curl -N`` on SSE): run in the
  background, its output kept; the next block runs once it printed ``event: ready``.
- ``<!-- readme-test: skip -->``: not run (the setup commands, many-node examples).
- no comment: run.

Every ``localhost:8080`` in the blocks becomes the hub's address. The blocks run from the checkout's
root (they call ``.venv/bin/synchub``), under ``set -euo pipefail``: a failing command fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"(?:<!-- readme-test: (?P<kind>[a-z]+) -->\n)?```sh\n(?P<body>.*?)```", re.DOTALL)
KINDS = {"hub", "follow", "skip", "run"}
START_SECONDS = 60.0  # a loaded 2-core machine starts a hub in a few seconds; generous
EVENT_SECONDS = 30.0


@dataclass(frozen=True)
class Block:
    kind: str
    body: str


def readme_blocks() -> list[Block]:
    blocks = [Block(m["kind"] or "run", m["body"]) for m in BLOCK.finditer(README.read_text())]
    unknown = {b.kind for b in blocks} - KINDS
    assert not unknown, f"README.md: unknown readme-test kinds {unknown}"
    return blocks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hub_command(block: Block, port: int) -> list[str]:
    """The hub block's ``bash scripts/serve ARGS  # comment`` as the command scripts/serve execs."""
    lines = [line for line in block.body.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(lines) == 1, f"the readme-test hub block must be one command, not {lines}"
    words = shlex.split(lines[0], comments=True)
    assert words[:2] == ["bash", "scripts/serve"], f"the hub block must run bash scripts/serve, not {words}"
    return [sys.executable, "-m", "hub.cli", "serve", *words[2:], "--port", str(port)]


@contextmanager
def started_hub(command: list[str], cwd: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    cwd.mkdir()
    proc = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        # The start-up line comes once the hub listens (hub/cli.py): nothing to poll before it.
        for line in proc.stdout:
            lines.append(line)
            if " serving region " in line:
                break
        else:
            raise AssertionError("the hub did not start:\n" + "".join(lines))
        # Read on while it runs (its access log): a full pipe would stop it.
        drain = threading.Thread(target=lines.extend, args=(proc.stdout,), daemon=True)
        drain.start()
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def script(blocks: list[Block], address: str, out: Path) -> tuple[str, list[Path]]:
    """One bash script of the runnable blocks, the follow ones in the background; and their outputs."""
    parts = ["set -euo pipefail"]
    follows: list[Path] = []
    for block in blocks:
        body = block.body.replace("localhost:8080", address)
        if block.kind == "run":
            parts.append(body)
        elif block.kind == "follow":
            path = out / f"follow-{len(follows)}.out"
            follows.append(path)
            quoted = shlex.quote(str(path))
            err = shlex.quote(f"{path}.err")
            parts.append(f"( {body.strip()}\n) >{quoted} 2>{err} &")
            # As a reader waits to see the stream open before going on in another shell.
            parts.append(
                f"follower=$!\nfor _ in $(seq 600); do grep -q '^event: ready' {quoted} && break;"
                " kill -0 $follower 2>/dev/null || break; sleep 0.1; done\n"
                f"grep -q '^event: ready' {quoted} || {{ echo 'follow block {len(follows)} did not open:';"
                f" cat {quoted} {err}; exit 1; }}"
            )
    return "\n".join(parts) + "\n", follows


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each complete SSE message in ``text``."""
    events = []
    for message in text.split("\n\n")[:-1]:
        fields = dict(line.split(": ", 1) for line in message.splitlines() if ": " in line)
        if "event" in fields and "data" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


def wait_for(path: Path, found: Any, what: str) -> list[tuple[str, dict[str, Any]]]:
    deadline = time.monotonic() + EVENT_SECONDS
    while True:
        events = sse_events(path.read_text())
        if found(events):
            return events
        assert time.monotonic() < deadline, f"{what} never arrived; {path.name} holds:\n{path.read_text()}"
        time.sleep(0.1)


def test_the_readme_blocks_are_all_marked_or_runnable() -> None:
    blocks = readme_blocks()
    kinds = [b.kind for b in blocks]
    assert kinds.count("hub") == 1 and kinds.count("follow") >= 1 and kinds.count("run") >= 3, kinds


def test_the_readme_walkthrough_shows_its_changes_live(tmp_path: Path) -> None:
    blocks = readme_blocks()
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    env = {k: v for k, v in env.items() if not k.startswith("SYNCHUB_") or k.startswith("SYNCHUB_TEST")}
    [hub_block] = [b for b in blocks if b.kind == "hub"]
    text, follows = script(blocks, address, tmp_path)
    (tmp_path / "walkthrough.sh").write_text(text)

    with started_hub(hub_command(hub_block, port), tmp_path / "hub", env):
        shell = subprocess.Popen(
            ["bash", str(tmp_path / "walkthrough.sh")],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its background curls too: one group to stop
        )
        try:
            output, _ = shell.communicate(timeout=120)
            assert shell.returncode == 0, f"the README's commands failed:\n{output}"

            # The region's SSE stream: the stock set to 50, then 2 of it reserved.
            def stock(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
                return [
                    e["data"]
                    for name, e in events
                    if name == "inventory" and e["data"]["warehouse_id"] == "par-1"
                ]

            events = wait_for(
                follows[0], lambda ev: any(d["reserved"] == 2 for d in stock(ev)), "the reservation"
            )
            changes = [(d["on_hand"], d["reserved"]) for d in stock(events)]
            assert changes[:2] == [(50, 0), (50, 2)], changes
            assert all(d["region"] == "eu" and d["sku"] == "LIP-001" for d in stock(events))
            # The long-poll block printed the change to 60 it made after taking its cursor.
            polled = _last_poll(output)
            assert [(e["data"]["on_hand"], e["data"]["reserved"]) for e in polled["events"]] == [(60, 2)], (
                polled
            )
            # The cart's SSE stream: the item added, then the cart closed by its checkout.
            if len(follows) > 1:
                cart = wait_for(
                    follows[1],
                    lambda ev: any(name == "cart" and e["data"]["type"] == "cart.closed" for name, e in ev),
                    "the cart's checkout",
                )
                assert [e["data"]["type"] for name, e in cart if name == "cart"] == [
                    "cart.delta",
                    "cart.closed",
                ]
        finally:
            with suppress(ProcessLookupError):
                os.killpg(shell.pid, signal.SIGTERM)
            shell.wait(15)


def _last_poll(output: str) -> dict[str, Any]:
    """The last long-poll reply the blocks printed (a JSON object with ``events`` and ``cursor``)."""
    start = output.rfind('{"events"')
    assert start >= 0, f"no long-poll reply in the README's output:\n{output}"
    reply: dict[str, Any] = json.JSONDecoder().raw_decode(output, start)[0]  # curl -s adds no newline
    return reply
