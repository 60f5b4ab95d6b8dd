"""read(W, M): dense (N,K)@(K,C), batched (B,N,K)@(B,K,C), sparse (indices, weights); the soft
read of scored candidates, gaussian_read_scored.

The reference and property cases are table-driven (tests/op_cases.py, tests/test_ops.py);
these are the op-specific ones."""
import numpy as np
import pytest

import larimar_ext as lx
from references import (DTYPES, DTYPE_IDS, assert_ndarray, assert_rel, randint, randn, ref_read,
                        to_numpy, tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_read_dense_integer_data_exact(rng, dtype):
    """Small integers: every product and sum is exact, so the result must be too."""
    W = randint(rng, 7, 5, dtype=dtype)
    M = randint(rng, 5, 4, dtype=dtype)
    assert np.array_equal(lx.read(W, M), (W.astype(np.float64) @ M).astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_read_sparse_one_hot_is_exact_row_copy(rng, dtype):
    M = randn(rng, 8, 5, dtype=dtype)
    idx = np.array([[3], [0], [7], [3]], np.int64)
    out = lx.read((idx, np.ones((4, 1), dtype)), M)
    assert np.array_equal(out, M[idx[:, 0]])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_read_sparse_repeated_index_sums(rng, dtype):
    """sum_j weights[n, j] * M[indices[n, j]]: a repeated index contributes twice."""
    M = randn(rng, 5, 3, dtype=dtype)
    idx = np.array([[2, 2], [1, 4]], np.int64)
    w = np.array([[0.25, 0.5], [1.0, -2.0]], dtype)
    out = lx.read((idx, w), M)
    assert_rel(out, ref_read((idx, w), M), tol(dtype, 1e-6, 1e-14))
    assert_rel(out[0], 0.75 * M[2].astype(np.float64), tol(dtype, 1e-6, 1e-14))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_read_of_gaussian_address(rng, dtype):
    """The tuple returned by gaussian_address(top_k=k) is directly readable."""
    R = randn(rng, 10, 4, dtype=dtype)
    M = randn(rng, 10, 6, dtype=dtype)
    Z = randn(rng, 3, 4, dtype=dtype)
    addr = lx.gaussian_address(Z, R, 0.5, top_k=4)
    out = lx.read(addr, M)
    assert_ndarray(out, dtype, (3, 6))
    assert_rel(out, ref_read((to_numpy(addr[0]), to_numpy(addr[1])), M), tol(dtype, 1e-5, 1e-12))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_read_non_contiguous(rng, dtype):
    W = randn(rng, 6, 8, dtype=dtype)[:, ::2]
    M = np.asfortranarray(randn(rng, 4, 5, dtype=dtype))
    assert_rel(lx.read(W, M), ref_read(W, M), tol(dtype, 1e-5, 1e-12))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_gaussian_read_scored_is_the_store_soft_read(rng, metric, dtype):
    """Fed a store's own hits, the op returns bitwise what KeyValueMemory.read returns: both
    run the kernel's one routine (weights and weighted sum)."""
    kv = lx.KeyValueMemory(6, 3, metric, dtype)
    keys = randn(rng, 40, 6, dtype=dtype)
    kv.add(keys, randn(rng, 40, 3, dtype=dtype))
    Q = randn(rng, 9, 6, dtype=dtype)
    Q[0] = keys[5]
    ip = metric == "ip"
    for k, alpha in ((1, 0.5), (4, 0.05), (12, 1.0)):
        ids, scores, values = kv.search_and_reconstruct(Q, k)
        ksq = kv.key_sq_norms(ids.ravel()).reshape(ids.shape)
        out = lx.gaussian_read_scored(scores, values, metric, alpha, Q if ip else None,
                                      ksq if ip else None)
        assert np.array_equal(out, kv.read(Q, k, alpha=alpha)), (metric, k, alpha)
