"""lstsq_write(W, Z, ridge=0.0, rcond=None) -> M = pinv(W) @ Z  (docs/DESIGN.md section 2.2).

The reference and property cases are table-driven (tests/op_cases.py, tests/test_ops.py);
these are the op-specific ones."""
import numpy as np
import pytest

import larimar_ext as lx
from references import (DTYPES, DTYPE_IDS, assert_ndarray, assert_rel, randn, rank_deficient,
                        ref_lstsq, tol, well_conditioned)


def test_lstsq_min_norm_when_underdetermined(rng):
    """N < K, ridge 0: W M == Z exactly solvable, and M lies in the row space of W."""
    W = well_conditioned(rng, 4, 9, dtype=np.float64)
    Z = randn(rng, 4, 3)
    M = lx.lstsq_write(W, Z)
    assert_rel(W @ M, Z, 1e-10, "W @ M")
    proj = np.linalg.pinv(W) @ W  # projector onto row space of W
    assert_rel(proj @ M, M, 1e-10, "row-space component")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_lstsq_tiny_ridge_underdetermined(rng, dtype):
    """N < K with ridge 1e-6: the K x K system is ill-conditioned (~1e7), the N x N
    push-through form (docs/DESIGN.md section 2.2: 'M = W^T (W W^T + ridge I)^-1 Z') is not."""
    W = well_conditioned(rng, 3, 9, dtype=dtype)
    Z = randn(rng, 3, 4, dtype=dtype)
    M = lx.lstsq_write(W, Z, ridge=1e-6)
    assert_rel(M, ref_lstsq(W, Z, ridge=1e-6), tol(dtype))


def test_lstsq_identity_address_copies_rows(rng):
    """W = I (N = K): M must equal Z."""
    for dtype in DTYPES:
        Z = randn(rng, 6, 5, dtype=dtype)
        M = lx.lstsq_write(np.eye(6, dtype=dtype), Z)
        assert_rel(M, Z, tol(dtype, 1e-6, 1e-14))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("N,K,r", [(8, 5, 2), (5, 8, 2), (6, 6, 3), (10, 4, 1), (4, 4, 3)])
def test_lstsq_rank_deficient_explicit_rcond(rng, N, K, r, dtype):
    """Rank-deficient W: the SVD path with an explicit cutoff must give pinv(W, rcond) @ Z."""
    rcond = 1e-4 if dtype == np.float32 else 1e-8
    W = rank_deficient(rng, N, K, r, dtype=dtype)
    Z = randn(rng, N, 3, dtype=dtype)
    M = lx.lstsq_write(W, Z, rcond=rcond)
    assert_ndarray(M, dtype, (K, 3))
    assert_rel(M, ref_lstsq(W, Z, rcond=rcond), tol(dtype, 1e-4, 1e-8))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_lstsq_duplicate_and_zero_columns_default_rcond(rng, dtype):
    """Exactly singular Gram (a duplicated and a zero column), ridge 0, default rcond.

    Cholesky of W^T W must not be trusted here: the answer is the minimum-norm solution,
    which splits the duplicated column's coefficient equally and leaves the zero column 0.
    """
    N, K = 12, 6
    W = well_conditioned(rng, N, K, dtype=np.float64)
    W[:, 4] = W[:, 1]
    W[:, 5] = 0.0
    W = W.astype(dtype)
    Z = randn(rng, N, 3, dtype=dtype)
    M = lx.lstsq_write(W, Z)
    ref = ref_lstsq(W, Z, rcond=1e-6)  # clean cutoff in float64
    assert_rel(M, ref, tol(dtype, 1e-4, 1e-8))
    # the zero column gets a zero coefficient
    assert np.abs(M[5]).max() <= tol(dtype, 1e-5, 1e-12) * np.abs(M).max()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_lstsq_rank_deficient_with_ridge(rng, dtype):
    """ridge > 0 makes the problem well posed even for rank-deficient W."""
    W = rank_deficient(rng, 9, 6, 2, dtype=dtype)
    Z = randn(rng, 9, 4, dtype=dtype)
    M = lx.lstsq_write(W, Z, ridge=0.1)
    assert_rel(M, ref_lstsq(W, Z, ridge=0.1), tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_lstsq_non_contiguous_inputs(rng, dtype):
    """Fortran-ordered and strided views are accepted and give the contiguous result."""
    W = well_conditioned(rng, 10, 6, dtype=dtype)
    Z = randn(rng, 10, 4, dtype=dtype)
    expect = lx.lstsq_write(W, Z)
    Wf = np.asfortranarray(W)
    Zs = np.zeros((10, 8), dtype)[:, ::2]
    Zs[...] = Z
    assert not Zs.flags.c_contiguous and not Wf.flags.c_contiguous
    got = lx.lstsq_write(Wf, Zs)
    assert_rel(got, expect, tol(dtype, 1e-6, 1e-13))
    # a transposed view: (W^T)^T
    got2 = lx.lstsq_write(np.ascontiguousarray(W.T).T, Z)
    assert_rel(got2, expect, tol(dtype, 1e-6, 1e-13))


def test_lstsq_scale_equivariance(rng):
    """pinv(a W) (b Z) = (b / a) pinv(W) Z, exact for powers of two."""
    W = well_conditioned(rng, 8, 5)
    Z = randn(rng, 8, 3)
    M = lx.lstsq_write(W, Z)
    M2 = lx.lstsq_write(4.0 * W, 0.5 * Z)
    assert_rel(M2, M / 8.0, 1e-12)
