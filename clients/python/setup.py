"""The Python client SDK, installable on its own: ``pip install ./clients/python``.

It needs the hub's CRDT types for its offline replicas (carts and reviews merge by the hub's rules),
and takes them from the repository's ``crdt/`` package, the one source of those rules: the package is
mapped from ``../../crdt`` (``package_dir``), so the wheel holds ``synchub_client`` and ``crdt``. Only
the pure-Python sources go in (the mypyc extensions an in-place server build leaves beside them are
not package data), so nothing is compiled here and no C compiler is needed. The server's dependencies
(asyncpg, redis, prometheus-client, …) are not: the client needs aiohttp and msgpack only.

pip (21.3 and later) builds a local directory in place, where ``../../crdt`` exists. An sdist built
from here carries a copy of crdt/ (``crdt_sources/``, made by :class:`_Sdist`), which is used when the
repository's is not there.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
REPO_CRDT = HERE.parent.parent / "crdt"
BUNDLED = HERE / "crdt_sources"


def crdt_dir() -> str:
    if (REPO_CRDT / "__init__.py").is_file():
        return "../../crdt"
    if (BUNDLED / "__init__.py").is_file():
        return "crdt_sources"
    raise SystemExit("synchub-client: the crdt/ sources are neither at ../../crdt nor in crdt_sources/")


class _Sdist(sdist):  # type: ignore[misc]
    """An sdist carries its own copy of crdt/ (pure sources and py.typed)."""

    def run(self) -> None:
        if (REPO_CRDT / "__init__.py").is_file():
            shutil.rmtree(BUNDLED, ignore_errors=True)
            BUNDLED.mkdir()
            for path in [*REPO_CRDT.glob("*.py"), REPO_CRDT / "py.typed"]:
                shutil.copy2(path, BUNDLED / path.name)
        super().run()


setup(
    name="synchub-client",
    version="0.1.0",
    description="Python client SDK for synchub: live inventory, offline carts and reviews",
    python_requires=">=3.11",
    packages=["synchub_client", "crdt"],
    package_dir={"synchub_client": "synchub_client", "crdt": crdt_dir()},
    package_data={"synchub_client": ["py.typed"], "crdt": ["py.typed"]},
    install_requires=["aiohttp>=3.9,<4", "msgpack>=1.0"],
    entry_points={"console_scripts": ["synchub-client = synchub_client.cli:main"]},
    cmdclass={"sdist": _Sdist},
)
