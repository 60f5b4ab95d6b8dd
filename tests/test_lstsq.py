"""lstsq_write(W, Z, ridge=0.0, rcond=None) -> M = pinv(W) @ Z  (docs/DESIGN.md section 2.2)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import larimar_ext as lx
from conftest import (DTYPE_IDS, DTYPES, assert_ndarray, assert_rel, dtypes, randn, rank_deficient,
                      ref_lstsq, seeds, tol, well_conditioned)

# (N, K, C): N<K, N=K, N>K, and the degenerate K=1, C=1, N=1 cases.
SHAPES = [
    (3, 7, 2),    # N < K  (minimum-norm solution)
    (6, 6, 3),    # N = K
    (12, 5, 4),   # N > K
    (1, 1, 1),
    (1, 5, 3),    # a single row
    (9, 1, 3),    # K = 1
    (7, 4, 1),    # C = 1
    (40, 16, 8),  # bigger than one SIMD block
]
SHAPE_IDS = [f"N{n}K{k}C{c}" for n, k, c in SHAPES]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("N,K,C", SHAPES, ids=SHAPE_IDS)
def test_lstsq_matches_pinv(rng, N, K, C, dtype):
    W = well_conditioned(rng, N, K, cond=4.0, dtype=dtype)
    Z = randn(rng, N, C, dtype=dtype)
    W0, Z0 = W.copy(), Z.copy()
    M = lx.lstsq_write(W, Z)
    assert_ndarray(M, dtype, (K, C))
    assert_rel(M, ref_lstsq(W, Z, dtype=dtype), tol(dtype))
    # inputs untouched, output is a fresh array
    assert np.array_equal(W, W0) and np.array_equal(Z, Z0)
    assert not np.shares_memory(M, W) and not np.shares_memory(M, Z)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("ridge", [1e-3, 0.5, 10.0])
@pytest.mark.parametrize("N,K,C", SHAPES, ids=SHAPE_IDS)
def test_lstsq_ridge(rng, N, K, C, ridge, dtype):
    W = well_conditioned(rng, N, K, cond=4.0, dtype=dtype)
    Z = randn(rng, N, C, dtype=dtype)
    M = lx.lstsq_write(W, Z, ridge=ridge)
    assert_ndarray(M, dtype, (K, C))
    assert_rel(M, ref_lstsq(W, Z, ridge=ridge), tol(dtype))


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


@given(N=st.integers(1, 14), K=st.integers(1, 10), C=st.integers(1, 6), dtype=dtypes,
       ridge=st.sampled_from([0.0, 0.0, 1e-2, 1.0]), seed=seeds)
def test_lstsq_property(N, K, C, dtype, ridge, seed):
    rng = np.random.default_rng(seed)
    W = well_conditioned(rng, N, K, cond=5.0, dtype=dtype)
    Z = randn(rng, N, C, dtype=dtype)
    M = lx.lstsq_write(W, Z, ridge=ridge)
    assert_ndarray(M, dtype, (K, C))
    assert_rel(M, ref_lstsq(W, Z, ridge=ridge, dtype=dtype), tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("N,K,C", [(3, 7, 2), (6, 6, 3), (12, 5, 4), (5, 1, 1)],
                         ids=["N<K", "N=K", "N>K", "K1C1"])
@pytest.mark.parametrize("ridge", [0.0, 0.3])
def test_lstsq_batched(rng, B, N, K, C, dtype, ridge):
    W = np.stack([well_conditioned(rng, N, K, dtype=dtype) for _ in range(B)])
    Z = randn(rng, B, N, C, dtype=dtype)
    M = lx.lstsq_write(W, Z, ridge=ridge)
    assert_ndarray(M, dtype, (B, K, C))
    assert_rel(M, ref_lstsq(W, Z, ridge=ridge, dtype=dtype), tol(dtype))
    # every episode is solved independently: matches the unbatched call
    for b in range(B):
        assert_rel(M[b], lx.lstsq_write(W[b], Z[b], ridge=ridge), tol(dtype, 1e-5, 1e-12),
                   f"episode {b}")


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
