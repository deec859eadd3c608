"""What a newcomer meets first on the command line: a hub that says it serves only once it does, start-up
failures told in one line, help that shows defaults, a JWT secret found wherever the command runs, and
benchmark entry points that do something. Each runs the real ``synchub`` in a subprocess."""

from __future__ import annotations

import ast
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from bench.__main__ import NAMES as BENCHMARKS

ROOT = Path(__file__).resolve().parent.parent
PYTHON_M = [sys.executable, "-m"]


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment without the caller's SYNCHUB_* settings, the JWT secret's home in ``tmp_path``."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("SYNCHUB_") or k.startswith("SYNCHUB_TEST")
    }
    # (COLUMNS: help text unwrapped, so a long path is not split where argparse breaks lines)
    return {
        **env,
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "400",
        **extra,
    }


def synchub(
    tmp_path: Path, *args: str, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    workdir = cwd or tmp_path / "cwd"
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [*PYTHON_M, "hub.cli", *args],
        cwd=workdir,
        env=clean_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def closed_port() -> int:
    """A port nothing listens on (bound a moment, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def postgres_url_as(user: str) -> str:
    url = os.environ.get("SYNCHUB_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}@{rest.split('@', 1)[-1]}"


# -- start-up failures


LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING) ")


def assert_one_line(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    """Exit status 1 and one line saying why, beside the log's INFO records (say, the schema migrated
    before Redis was found missing): no traceback, no ERROR record."""
    lines = [line for line in result.stderr.strip().splitlines() if not LOG_RECORD.match(line)]
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("synchub: "), result.stderr
    assert all(text in lines[0] for text in expected), lines
    assert "serving" not in result.stdout, result.stdout  # no banner for a hub that never listened


def test_a_taken_port_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = synchub(tmp_path, "serve", "--port", str(port), "--jwt-secret", "s" * 40)
    assert_one_line(result, f"cannot listen on 127.0.0.1:{port}", "already in use", "--port")


@pytest.mark.postgres
def test_a_postgresql_role_that_does_not_exist_is_one_line_and_exit_1(tmp_path: Path) -> None:
    url = postgres_url_as("synchub_no_such_role")
    result = synchub(
        tmp_path, "serve", "--port", str(closed_port()), "--database-url", url, "--jwt-secret", "s" * 40
    )
    assert_one_line(result, "PostgreSQL", 'role "synchub_no_such_role" does not exist', "--database-url")


def test_postgresql_not_listening_is_one_line_and_exit_1(tmp_path: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/shop"
    result = synchub(
        tmp_path, "serve", "--port", str(closed_port()), "--database-url", url, "--jwt-secret", "s" * 40
    )
    assert_one_line(result, "PostgreSQL", "refused", "--database-url")


def test_redis_not_listening_is_one_line_and_exit_1(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    result = synchub(
        tmp_path, "serve", "--port", str(closed_port()), "--redis-url", url, "--jwt-secret", "s" * 40
    )
    assert_one_line(result, f"cannot reach Redis at {url}", "refused", "--redis-url")


def test_the_traceback_comes_with_log_level_debug_only(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    port = str(closed_port())
    result = synchub(
        tmp_path,
        "serve",
        "--port",
        port,
        "--redis-url",
        url,
        "--jwt-secret",
        "s" * 40,
        "--log-level",
        "debug",
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "BrokerUnavailable" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("synchub: cannot reach Redis"), result.stderr


def test_the_banner_comes_once_the_hub_listens(tmp_path: Path) -> None:
    port = closed_port()
    (tmp_path / "cwd").mkdir()
    proc = subprocess.Popen(
        [*PYTHON_M, "hub.cli", "serve", "--port", str(port)],
        cwd=tmp_path / "cwd",
        env=clean_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        # Connecting right after the banner, with no retry: it is printed once the socket listens.
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass
        secret_file = tmp_path / "state" / "synchub" / "jwt-secret"
        assert f"serving region 'default' on http://127.0.0.1:{port}" in banner, banner
        assert f"JWT secret in {secret_file}" in banner, banner
    finally:
        proc.terminate()
        proc.wait(20)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


# -- help and the JWT secret


def option_help(text: str, flag: str) -> str:
    """The help paragraph of ``flag`` in argparse output."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(flag))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if line.startswith("  -"):
            break
        block.append(line)
    return " ".join(" ".join(block).split())


def test_serve_help_shows_defaults_but_no_secret_from_the_environment(tmp_path: Path) -> None:
    result = synchub(tmp_path, "serve", "--help", SYNCHUB_MEDIA_S3_SECRET_KEY="do-not-print-me-" * 3)
    assert result.returncode == 0, result.stderr
    assert "(default: 8080)" in option_help(result.stdout, "--port")
    assert "(default: 127.0.0.1)" in option_help(result.stdout, "--host")
    assert "(default: default)" in option_help(result.stdout, "--region")
    assert "(default: var/synchub.sqlite3)" in option_help(result.stdout, "--database-url")
    assert "do-not-print-me" not in result.stdout


def test_token_help_describes_the_secret_and_the_lifetime(tmp_path: Path) -> None:
    result = synchub(tmp_path, "token", "--help")
    assert result.returncode == 0, result.stderr
    secret = option_help(result.stdout, "--jwt-secret")
    assert "HS256" in secret and str(tmp_path / "state" / "synchub" / "jwt-secret") in secret
    assert "seconds until the token expires (default: 3600)" in option_help(result.stdout, "--ttl")


def test_migrate_offers_no_jwt_secret(tmp_path: Path) -> None:
    result = synchub(tmp_path, "migrate", "--help")
    assert result.returncode == 0 and "--database-url" in result.stdout
    assert "--jwt-secret" not in result.stdout
    refused = synchub(tmp_path, "migrate", "--jwt-secret", "s" * 40)
    assert refused.returncode == 2 and "unrecognized arguments: --jwt-secret" in refused.stderr


def test_tokens_made_in_any_directory_share_one_secret_that_is_said_where_it_is(tmp_path: Path) -> None:
    first = synchub(tmp_path, "token", "--sub", "alice", cwd=tmp_path / "one")
    second = synchub(tmp_path, "token", "--sub", "bob", cwd=tmp_path / "two" / "deeper")
    path = tmp_path / "state" / "synchub" / "jwt-secret"
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert first.stderr.strip() == (
        f"synchub: made a new JWT secret in {path} (synchub token and synchub serve share it;"
        " in production pass --jwt-secret)"
    )
    assert second.stderr == ""  # made once, then used
    secret = path.read_text().strip()
    assert len(secret) >= 32 and oct(path.stat().st_mode & 0o777) == "0o600"
    for result, sub in ((first, "alice"), (second, "bob")):
        assert jwt.decode(result.stdout.strip(), secret, algorithms=["HS256"])["sub"] == sub
    assert not (tmp_path / "one" / "var").exists() and not (tmp_path / "two" / "deeper" / "var").exists()


# -- benchmarks


def test_python_m_bench_module_runs_that_benchmark() -> None:
    result = subprocess.run(
        [*PYTHON_M, "bench.reservations", "--help"], capture_output=True, text=True, timeout=90, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m bench reservations"), result.stdout


def test_every_listed_benchmark_module_runs_when_run_as_a_module() -> None:
    """``python -m bench.X`` runs benchmark X (not: imports it and exits 0 saying nothing)."""
    for name, module in BENCHMARKS.items():
        tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
        guards = [
            node
            for node in tree.body
            if isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'"
        ]
        assert guards and "main(sys.argv[1:])" in ast.unparse(guards[-1]), (
            f'{module.replace(".", "/")}.py ends with no `if __name__ == "__main__": sys.exit(main(sys.argv[1:]))`:'
            f" python -m {module} would import it and exit 0 doing nothing (python -m bench {name} runs it)"
        )
