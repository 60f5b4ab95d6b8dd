"""Fixtures and hypothesis profiles of the larimar_ext tests.

The float64 references, data generators and assertion helpers are in references.py, the
table of functional ops in op_cases.py: plain modules that test files import by name
(tests/ is on pytest's ``pythonpath``, pyproject.toml), so nothing imports this file.
"""
from __future__ import annotations

import os
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Small hypothesis runs: the CI machine has 2 cores and the suite must stay well under a
# few minutes. "larimar" (the default) is deterministic; LARIMAR_HYPOTHESIS_PROFILE=explore
# gives fresh random examples.
for _name, _examples, _derandomize in (("larimar", 20, True), ("explore", 25, False)):
    settings.register_profile(
        _name,
        max_examples=_examples,
        deadline=None,
        derandomize=_derandomize,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
settings.load_profile(os.environ.get("LARIMAR_HYPOTHESIS_PROFILE", "larimar"))


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A numpy Generator seeded from the test's name (stable across runs and machines)."""
    key = f"{request.node.module.__name__}::{request.node.name}"
    return np.random.default_rng(zlib.crc32(key.encode()))


@pytest.fixture
def restore_threads():
    """The kernel's thread count before the test, set back (and checked) after it."""
    import larimar_ext as lx
    n = lx.get_num_threads()
    yield n
    lx.set_num_threads(n)
    assert lx.get_num_threads() == n
