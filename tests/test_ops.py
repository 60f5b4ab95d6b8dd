"""Every functional op against its float64 reference, driven by the table in op_cases.py
(docs/DESIGN.md section 2): the parametrized cases and a hypothesis property test per
variant, in float32 and float64. The op-specific tests (rank cutoffs, ties, exact copies,
layouts) stay in test_lstsq.py, test_address.py, test_read.py, test_topk.py and
test_sparse_lstsq.py."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from op_cases import CASES, OpCase, assert_layout, shape_ids
from references import (DTYPE_IDS, DTYPES, array_leaves, assert_arrays_unchanged, assert_rel,
                        dtypes, seeds, snapshot_arrays, tol)


def run_case(case: OpCase, a: dict, dtype) -> None:
    """One valid call: its results' layout, its values against the reference, its inputs
    untouched and not shared with the results; for a batch, each episode as well."""
    inputs = snapshot_arrays(a)
    got = case.call(a)
    assert_layout(got, case.out(a), dtype)
    case.verify(got, a, dtype)
    assert_arrays_unchanged(inputs)
    for r in array_leaves(got):
        assert not any(np.shares_memory(r, x) for x, _ in inputs), \
            "a result shares an input's memory"
    B = a.get("_batch", 0)
    for b in range(B):
        # every episode is solved independently: the same as its reference and its own call
        ab = {k: v[b] if isinstance(v, np.ndarray) and v.ndim == 3 else v for k, v in a.items()}
        case.verify(got[b], ab, dtype)
        assert_rel(got[b], case.call(ab), tol(dtype, 1e-5, 1e-12), f"episode {b}")


def build(case: OpCase, rng, dtype, params: dict) -> dict:
    a = case.build(rng, dtype, **params)
    a["_batch"] = params.get("B", 0)
    return a


PARAMS = [pytest.param(case, p, id=f"{case.name}-{shape_ids(p)}") for case in CASES
          for p in case.params]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case,params", PARAMS)
def test_op_matches_reference(rng, case, params, dtype):
    run_case(case, build(case, rng, dtype, params), dtype)


VARIANTS = [pytest.param(case, strategy, id=f"{case.name}-{variant}" if variant else case.name)
            for case in CASES for variant, strategy in case.strategies]


@pytest.mark.parametrize("case,strategy", VARIANTS)
@given(data=st.data(), dtype=dtypes, seed=seeds)
def test_op_property(case, strategy, data, dtype, seed):
    params = data.draw(strategy(st), label="params")
    run_case(case, build(case, np.random.default_rng(seed), dtype, params), dtype)


def test_every_public_op_is_in_the_table():
    """ops.__all__ is the list of functional ops: each has its table entry, so reference,
    bad-input and fuzz coverage come with it."""
    from larimar_ext import ops
    assert sorted(c.name for c in CASES) == sorted(ops.__all__)
    for case in CASES:
        assert case.params and case.bad, case.name
