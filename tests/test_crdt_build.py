"""The CRDT tests run against the build they claim to (``tests/native_modules.py``)."""

from __future__ import annotations

import importlib.machinery
import os

import crdt._cart_state
import crdt._compact
import crdt.codec
from tests import native_modules

COMPILED = (crdt._cart_state, crdt._compact, crdt.codec)


def _is_extension(path: str | None) -> bool:
    return path is not None and path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def test_the_modules_come_from_the_build_this_run_selected() -> None:
    files = [module.__file__ for module in COMPILED]
    if native_modules.PURE:
        assert not any(_is_extension(f) for f in files), files
    if os.environ.get("SYNCHUB_EXPECT_COMPILED") == "1":  # scripts/test: the install compiled them
        assert all(_is_extension(f) for f in files), files
    assert all(f is not None and f.startswith(str(native_modules.CRDT)) for f in files), files
