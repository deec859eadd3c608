"""The Python client SDK installs on its own: ``pip install ./clients/python`` into a fresh virtual
environment (no system site-packages) gives ``synchub_client`` and the pure-Python ``crdt`` it replicates
with, and none of the server's dependencies. pip's cache and the package index are used as usual, so a
warm cache keeps this to seconds."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "python"
SERVER_ONLY = ("asyncpg", "redis", "prometheus-client", "prometheus_client", "pyjwt", "orjson", "uvloop")

pytestmark = pytest.mark.slow

PROBE = """
import importlib.util, json, sys
import synchub_client, crdt
from crdt import codec
from crdt.cart import Cart
from synchub_client import Client, Inventory, OfflineStore
cart = Cart.new()
cart.apply(cart.add("dev-1", "TEA", 2))
assert codec.from_msgpack(codec.to_msgpack(cart)) == cart
print(json.dumps({
    "client": synchub_client.__file__,
    "crdt": crdt.__file__,
    "value": cart.value(),
    "server_modules": [m for m in ("asyncpg", "redis", "prometheus_client", "hub", "sync", "storage", "uvloop")
                       if importlib.util.find_spec(m) is not None],
    "compiled": [n for n in ("crdt._cart_state", "crdt.codec") if not importlib.util.find_spec(n).origin.endswith(".py")],
}))
"""


def test_the_client_installs_into_a_clean_venv_without_the_server_dependencies(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(CLIENT)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert install.returncode == 0, install.stderr
    probe = subprocess.run(
        [str(python), "-c", PROBE], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert probe.returncode == 0, probe.stderr
    import json

    found = json.loads(probe.stdout)
    assert found["client"].startswith(str(env_dir)) and found["crdt"].startswith(str(env_dir))
    assert found["value"] == {"TEA": 2}
    assert found["server_modules"] == []
    assert found["compiled"] == []  # the pure sources: no mypyc build in the client
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, timeout=60
    )
    names = {line.split("==")[0].lower() for line in listed.stdout.splitlines()}
    assert "synchub-client" in names and "aiohttp" in names and "msgpack" in names
    assert names.isdisjoint(SERVER_ONLY)
    help_run = subprocess.run(
        [str(env_dir / "bin" / "synchub-client"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert help_run.returncode == 0 and "watch" in help_run.stdout, help_run.stderr
    assert sys.executable != str(python)
