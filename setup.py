"""Build hook: compiles the CRDT hot path with mypyc when it can (as msgpack and aiohttp ship C
speedups beside a pure-Python fallback).

The compiled modules are the same source, type-checked and translated to C: they behave the same as
the pure-Python ones, and the test suite runs the CRDT tests against both (``scripts/test``). Set
``SYNCHUB_PURE_PYTHON=1`` to install without compiling; a machine without a C compiler gets the pure
modules too. Everything else lives in ``setup.cfg``.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

# The merge path of a cart (decode + join), what a hub and a device run for each edit they receive.
# Only internal modules: public classes stay pure Python, where a bool passed as a quantity is still
# refused (compiled code would coerce it to 1) and a wrong type raises the same error in both builds.
COMPILED = ["crdt/_cart_state.py", "crdt/_compact.py", "crdt/codec.py"]


def _ext_modules() -> list[object]:
    if os.environ.get("SYNCHUB_PURE_PYTHON") == "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("synchub: mypyc is not available, installing the pure-Python CRDT modules", file=sys.stderr)
        return []
    # The project's mypy settings apply (strict on crdt/); the other packages' sections go unused here.
    return list(mypycify(["--no-warn-unused-configs", *COMPILED], opt_level="3", group_name="crdt_native"))


setup(ext_modules=_ext_modules())
