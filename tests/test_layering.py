"""The dependency direction is one way: crdt (pure) ← sync ← hub; storage knows nothing of hub or sync;
clients use only crdt and the wire protocol. Checked on the import statements of every module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "crdt": {
        "hub",
        "sync",
        "storage",
        "clients",
        "aiohttp",
        "asyncpg",
        "redis",
        "sqlite3",
        "socket",
        "asyncio",
    },
    "sync": {"hub", "clients"},
    "storage": {"hub", "sync", "clients", "aiohttp"},
    "clients": {"hub", "sync", "storage"},
}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_nothing_above_it(package: str) -> None:
    modules = sorted((ROOT / package).rglob("*.py"))
    assert modules, f"{package}/ has no modules"
    offences = {
        str(m.relative_to(ROOT)): sorted(imported_roots(m) & FORBIDDEN[package])
        for m in modules
        if imported_roots(m) & FORBIDDEN[package]
    }
    assert offences == {}


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import aiohttp\nfrom hub.app import create_app\n")
    assert imported_roots(bad) == {"aiohttp", "hub"}
