"""The synchub command line."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import jwt

from hub.cli import GC_YOUNG_THRESHOLD, collect_young_less_often
from storage.factory import open_store
from storage.models import ProductQuery


def run(*args: str, cwd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_token_prints_a_signed_token_with_the_roles_asked_for(tmp_path) -> None:
    secret = "s" * 40
    result = run(
        "token",
        "--sub",
        "alice",
        "--role",
        "admin",
        "--role",
        "service",
        "--jwt-secret",
        secret,
        cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), secret, algorithms=["HS256"])
    assert (
        claims["sub"] == "alice" and claims["roles"] == ["admin", "service"] and claims["exp"] > claims["iat"]
    )


def test_token_and_serve_share_a_generated_secret_by_default(tmp_path) -> None:
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    env.pop("SYNCHUB_JWT_SECRET", None)
    first = run("token", "--sub", "a", cwd=str(tmp_path), env=env)
    second = run("token", "--sub", "b", cwd=str(tmp_path), env=env)
    secret = (tmp_path / "state" / "synchub" / "jwt-secret").read_text().strip()
    assert len(secret) >= 32
    for result in (first, second):
        assert jwt.decode(result.stdout.strip(), secret, algorithms=["HS256"])["roles"] == ["customer"]


def test_an_unknown_role_is_refused(tmp_path) -> None:
    result = run("token", "--sub", "a", "--role", "root", cwd=str(tmp_path))
    assert result.returncode == 2 and "invalid choice" in result.stderr


async def test_migrate_creates_the_schema_once(database_url: str, tmp_path) -> None:
    first = run("migrate", "--database-url", database_url, cwd=str(tmp_path))
    second = run("migrate", "--database-url", database_url, cwd=str(tmp_path))
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "schema is up to date" in second.stdout
    store = open_store(database_url)
    await store.open()
    try:
        assert await store.migrate() == []
        assert (await store.list_products(ProductQuery())).items == []
    finally:
        await store.close()


def test_a_short_jwt_secret_is_refused(tmp_path) -> None:
    result = run("token", "--sub", "a", "--jwt-secret", "short", cwd=str(tmp_path))
    assert result.returncode == 1 and "at least 32 bytes" in result.stderr


def test_bench_hands_the_rest_of_the_command_line_to_python_m_bench(tmp_path) -> None:
    listed = run("--help", cwd=str(tmp_path))
    assert listed.returncode == 0 and "bench" in listed.stdout
    usage = run("bench", cwd=str(tmp_path))
    assert usage.returncode == 2
    assert (
        "usage: synchub bench {reservations,fanout,fanpath,crdt,suite,sync,reviews,ratelimit,auth,parts,webhooks,events,client,brokers}"
        in usage.stderr
    )
    suite_help = run("bench", "suite", "--help", cwd=str(tmp_path))
    assert suite_help.returncode == 0, suite_help.stderr
    assert "--sections" in suite_help.stdout and "--storm-clients" in suite_help.stdout
    refused = run("bench", "suite", "--sections", "nope", cwd=str(tmp_path))
    assert refused.returncode == 2 and "unknown sections: nope" in refused.stderr


def test_a_served_hub_lets_more_young_objects_accumulate_before_a_collection() -> None:
    """(hub/cli.py: at the default of 700 the collector took ~8% of a loaded hub's CPU.) The older generations'
    thresholds stay as they were."""
    before = gc.get_threshold()
    try:
        collect_young_less_often()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
        assert before[0] < GC_YOUNG_THRESHOLD
    finally:
        gc.set_threshold(*before)
