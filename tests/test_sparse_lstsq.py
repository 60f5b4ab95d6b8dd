"""sparse_lstsq_write(indices, weights, Z, memory_size, ridge=0.0, prior=None).

argmin ||W M - Z||^2 + ridge ||M - prior||^2 with W given row-wise by (indices, weights);
untouched slots keep prior (or 0).  Reference: dense numpy solve of the same problem over the
touched slots only.  The kernel may use conjugate gradients (docs/DESIGN.md section 2.8), so the
float64 bound is 1e-8 (not 1e-9); float32 keeps 1e-4 on these well-conditioned problems.

The reference and property cases are table-driven (tests/op_cases.py, tests/test_ops.py);
these are the op-specific ones.
"""
import numpy as np
import pytest

import larimar_ext as lx
from references import (DTYPES, DTYPE_IDS, assert_ndarray, assert_rel, distinct_rows, randn,
                        ref_sparse_dense, ref_sparse_lstsq, to_numpy, tol)


def sparse_tol(dtype):
    return tol(dtype, 1e-4, 1e-8)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_sparse_lstsq_one_hot_is_per_slot_mean(rng, dtype):
    """One-hot addresses (weight 1), ridge 0: each touched slot is the mean of its rows."""
    K, C = 9, 4
    slots = np.array([2, 5, 2, 2, 7, 5, 0, 2], np.int64)
    Z = randn(rng, len(slots), C, dtype=dtype)
    M = lx.sparse_lstsq_write(slots[:, None], np.ones((len(slots), 1), dtype), Z, K)
    assert_ndarray(M, dtype, (K, C))
    expect = np.zeros((K, C))
    for s in np.unique(slots):
        expect[s] = Z[slots == s].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(M, expect, rtol=tol(dtype, 1e-6, 1e-14),
                               atol=tol(dtype, 1e-6, 1e-14))
    untouched = [1, 3, 4, 6, 8]
    assert np.array_equal(M[untouched], np.zeros((5, C), dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_sparse_lstsq_one_hot_distinct_is_row_copy(rng, dtype):
    """Distinct one-hot keys: M[slot] = Z row, bit for bit (docs/DESIGN.md section 2.8)."""
    K, C = 12, 5
    slots = rng.permutation(K)[:7].astype(np.int64)
    Z = randn(rng, 7, C, dtype=dtype)
    M = lx.sparse_lstsq_write(slots[:, None], np.ones((7, 1), dtype), Z, K)
    assert np.array_equal(M[slots], Z)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_sparse_lstsq_one_hot_ridge_prior(rng, dtype):
    """One-hot, ridge r, prior P: M[s] = (sum_{n->s} z_n + r P[s]) / (count_s + r)."""
    K, C, r = 6, 3, 0.25
    slots = np.array([1, 4, 1, 1, 0], np.int64)
    Z = randn(rng, 5, C, dtype=dtype)
    P = randn(rng, K, C, dtype=dtype)
    M = lx.sparse_lstsq_write(slots[:, None], np.ones((5, 1), dtype), Z, K, ridge=r, prior=P)
    expect = P.astype(np.float64).copy()
    for s in np.unique(slots):
        zs = Z[slots == s].astype(np.float64)
        expect[s] = (zs.sum(axis=0) + r * P[s]) / (len(zs) + r)
    assert_rel(M, expect, tol(dtype, 1e-5, 1e-12))
    assert np.array_equal(M[[2, 3, 5]], P[[2, 3, 5]])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_sparse_lstsq_one_hot_weighted(rng, dtype):
    """One-hot with weights w_n: M[s] = sum w_n z_n / sum w_n^2."""
    K, C = 5, 3
    slots = np.array([3, 3, 0, 3], np.int64)
    w = np.array([[0.5], [2.0], [1.5], [1.0]], dtype)
    Z = randn(rng, 4, C, dtype=dtype)
    M = lx.sparse_lstsq_write(slots[:, None], w, Z, K)
    expect = np.zeros((K, C))
    for s in (0, 3):
        m = slots == s
        ws = w[m, 0].astype(np.float64)
        expect[s] = (ws[:, None] * Z[m]).sum(axis=0) / (ws**2).sum()
    assert_rel(M, expect, tol(dtype, 1e-5, 1e-12))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("ridge", [0.0, 0.1])
def test_sparse_lstsq_single_slot(rng, dtype, ridge):
    """memory_size 1: a scalar least-squares fit per column."""
    w = rng.uniform(0.5, 2.0, size=(6, 1)).astype(dtype)
    Z = randn(rng, 6, 2, dtype=dtype)
    M = lx.sparse_lstsq_write(np.zeros((6, 1), np.int64), w, Z, 1, ridge=ridge)
    assert_ndarray(M, dtype, (1, 2))
    assert_rel(M, ref_sparse_lstsq(np.zeros((6, 1), np.int64), w, Z, 1, ridge), sparse_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_sparse_lstsq_from_gaussian_address(rng, dtype):
    """Integration: write with the top-k Gaussian address of the keys (Nelson et al.)."""
    K, C = 8, 5
    R = distinct_rows(rng, K, 4, min_gap=1.0)
    Zk = np.repeat(R, 2, axis=0) + 0.05 * rng.standard_normal((2 * K, 4))
    idx, w = lx.gaussian_address(Zk.astype(dtype), R.astype(dtype), 0.5, top_k=2)
    idx, w = to_numpy(idx), to_numpy(w)
    Z = randn(rng, 2 * K, C, dtype=dtype)
    W = ref_sparse_dense(idx, w, K)
    touched = np.any(W != 0, axis=0)
    assert np.linalg.cond(W[:, touched]) < 50
    M = lx.sparse_lstsq_write(idx, w, Z, K)
    assert_rel(M, ref_sparse_lstsq(idx, w, Z, K), sparse_tol(dtype))


def test_sparse_lstsq_ill_conditioned_runs_to_tol():
    """Weights spread over three decades (A's condition number near 1e7): CG needs about 34 t
    iterations, far past the default 2 t + 10, and with room it reaches tol. Guards the
    null-space stop (DESIGN 2.8) against ending a slow but converging solve."""
    rng = np.random.default_rng(1)
    N, K, k, C = 300, 256, 8, 5
    ids = np.stack([rng.choice(K, k, replace=False) for _ in range(N)]).astype(np.int64)
    w = rng.standard_normal((N, k)) * np.logspace(0, 3, N)[:, None]
    Z = rng.standard_normal((N, C))
    _, short = lx.sparse_lstsq_write(ids, w, Z, K, ridge=1e-6, return_info=True)
    M, info = lx.sparse_lstsq_write(ids, w, Z, K, ridge=1e-6, max_iter=10**6,
                                    return_info=True)
    assert short["residual"] > 1e-3 and info["iterations"] > 10 * info["touched"]
    assert info["residual"] <= 1e-10
    t = np.unique(ids)
    ref = ref_sparse_lstsq(ids, w, Z, K, 1e-6, None)
    np.testing.assert_allclose(M[t], ref[t], rtol=1e-5, atol=1e-6 * np.abs(ref).max())


def test_sparse_lstsq_overflowing_curvature_is_refused():
    """float64 weights of 1e100 square past float64 inside CG (p'Ap): a clear ValueError
    naming the arguments, not a solve that runs on without progress for max_iter."""
    rng = np.random.default_rng(2)
    ids = np.stack([rng.permutation(64)[:16] for _ in range(2)]).astype(np.int64)
    w = rng.standard_normal((2, 16)) * 1e100
    with pytest.raises(ValueError, match="weights, Z"):
        lx.sparse_lstsq_write(ids, w, np.ones((2, 3)), 64, max_iter=2**40)
