"""The TypeScript SDK (clients/js) for the tests that run it: installed from its lockfile when
node_modules is missing, compiled once per session. Node and npm are required (never skipped)."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

JS = Path(__file__).resolve().parent.parent / "clients" / "js"
BUILD = JS / "build"


def node() -> str:
    path = shutil.which("node")
    assert path, "node (Node.js 20) is required by the TypeScript SDK's tests: apt-get install nodejs npm"
    return path


@functools.cache
def js_build() -> Path:
    """clients/js installed (npm ci, from package-lock.json) and compiled (tsc): its build directory."""
    node()
    npm = shutil.which("npm")
    assert npm, "npm is required by the TypeScript SDK's tests: apt-get install npm"
    if not (JS / "node_modules" / "typescript").is_dir():
        run = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=JS, capture_output=True, text=True, timeout=600
        )
        assert run.returncode == 0, f"npm ci failed:\n{run.stdout}\n{run.stderr}"
    tsc = JS / "node_modules" / "typescript" / "bin" / "tsc"
    run = subprocess.run(
        [node(), str(tsc), "-p", "tsconfig.json"], cwd=JS, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, f"tsc failed:\n{run.stdout}\n{run.stderr}"
    return BUILD
