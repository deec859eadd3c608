"""Which build of the compiled CRDT modules the tests run (see ``setup.py``).

``pip install`` compiles ``crdt/_cart_state.py``, ``crdt/_compact.py`` and ``crdt/codec.py`` with mypyc
and puts the extension modules beside the sources, where Python imports them first. Two things follow:

* an extension older than its source is stale (the source was edited after the install): the run stops
  and says so, rather than test code that is not the code on disk;
* ``SYNCHUB_PURE_PYTHON=1`` makes the tests import the pure-Python sources even where an extension is
  present, so that ``scripts/test`` runs the CRDT tests against both builds.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

CRDT = Path(__file__).resolve().parent.parent / "crdt"
PURE = os.environ.get("SYNCHUB_PURE_PYTHON") == "1"


def extensions() -> dict[str, Path]:
    """Module name → its compiled extension in the source tree."""
    out: dict[str, Path] = {}
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        for path in CRDT.glob(f"*{suffix}"):
            stem = path.name[: -len(suffix)]
            if "." not in stem:  # ".so" also matches "x.cpython-311-….so": the module is "x"
                out["crdt." + stem] = path
    return out


def stale() -> list[str]:
    return [
        name
        for name, path in extensions().items()
        if (CRDT / (name.split(".")[1] + ".py")).stat().st_mtime > path.stat().st_mtime
    ]


class _SourceFirst:
    """A meta path finder that loads the ``crdt`` modules from their ``.py`` files."""

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not name.startswith("crdt."):
            return None
        source = CRDT / (name.split(".", 1)[1] + ".py")
        if not source.is_file():
            return None
        return importlib.util.spec_from_file_location(name, source)


def select() -> str:
    """Install the finder when asked for the pure build; returns which build runs."""
    if any(name in sys.modules for name in extensions()):
        raise RuntimeError("tests.native_modules.select() must run before crdt is imported")
    if PURE:
        sys.meta_path.insert(0, _SourceFirst())
        return "pure Python"
    if not extensions():
        return "pure Python (no compiled modules installed)"
    old = stale()
    if old:
        raise SystemExit(
            f"compiled {', '.join(sorted(old))} older than the source: run `pip install -e .` again "
            "(scripts/test does), or set SYNCHUB_PURE_PYTHON=1"
        )
    return "compiled (mypyc)"
