"""Hypothesis profiles for the CRDT tests, picked with ``HYPOTHESIS_PROFILE``:

* ``ci`` (the default): every CRDT property and state-machine test in well under a minute on 2 cores;
* ``deep``: many more and longer runs, for a night or before a release
  (``HYPOTHESIS_PROFILE=deep pytest tests/test_crdt_convergence.py``).

Importing this module registers both and loads the chosen one. A profile name this module does not
know (one registered elsewhere) is left to whoever registered it.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=200,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "deep",
    max_examples=1_000,
    stateful_step_count=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if PROFILE in ("ci", "deep"):
    settings.load_profile(PROFILE)
