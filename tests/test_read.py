"""read(W, M): dense (N,K)@(K,C), batched (B,N,K)@(B,K,C), sparse (indices, weights); the soft
read of scored candidates, gaussian_read_scored."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import larimar_ext as lx
from conftest import (DTYPE_IDS, DTYPES, assert_ndarray, assert_rel, dtypes, f64, randint, randn,
                      ref_read, seeds, to_numpy, tol)

READ_SHAPES = [(4, 7, 3), (6, 6, 6), (9, 3, 5), (1, 1, 1), (5, 1, 4), (3, 5, 1), (33, 17, 9)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("N,K,C", READ_SHAPES, ids=[f"N{n}K{k}C{c}" for n, k, c in READ_SHAPES])
def test_read_dense(rng, N, K, C, dtype):
    W = randn(rng, N, K, dtype=dtype)
    M = randn(rng, K, C, dtype=dtype)
    W0, M0 = W.copy(), M.copy()
    out = lx.read(W, M)
    assert_ndarray(out, dtype, (N, C))
    assert_rel(out, ref_read(W, M), tol(dtype, 1e-5, 1e-12))
    assert np.array_equal(W, W0) and np.array_equal(M, M0)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_read_dense_integer_data_exact(rng, dtype):
    """Small integers: every product and sum is exact, so the result must be too."""
    W = randint(rng, 7, 5, dtype=dtype)
    M = randint(rng, 5, 4, dtype=dtype)
    assert np.array_equal(lx.read(W, M), (W.astype(np.float64) @ M).astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("B", [1, 4])
@pytest.mark.parametrize("N,K,C", [(3, 6, 2), (5, 5, 5), (7, 2, 3), (2, 1, 1)])
def test_read_batched(rng, B, N, K, C, dtype):
    W = randn(rng, B, N, K, dtype=dtype)
    M = randn(rng, B, K, C, dtype=dtype)
    out = lx.read(W, M)
    assert_ndarray(out, dtype, (B, N, C))
    assert_rel(out, ref_read(W, M), tol(dtype, 1e-5, 1e-12))
    for b in range(B):
        assert_rel(out[b], ref_read(W[b], M[b]), tol(dtype, 1e-5, 1e-12), f"episode {b}")


@given(N=st.integers(1, 8), K=st.integers(1, 9), C=st.integers(1, 6), B=st.integers(0, 3),
       dtype=dtypes, seed=seeds)
def test_read_property(N, K, C, B, dtype, seed):
    rng = np.random.default_rng(seed)
    lead = (B,) if B else ()
    W = randn(rng, *lead, N, K, dtype=dtype)
    M = randn(rng, *lead, K, C, dtype=dtype)
    out = lx.read(W, M)
    assert_ndarray(out, dtype, lead + (N, C))
    assert_rel(out, ref_read(W, M), tol(dtype, 1e-5, 1e-12))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("N,K,C,k", [(5, 9, 3, 2), (4, 3, 6, 3), (1, 1, 1, 1), (6, 4, 1, 1),
                                     (3, 20, 7, 5)])
def test_read_sparse(rng, N, K, C, k, dtype):
    M = randn(rng, K, C, dtype=dtype)
    idx = np.stack([rng.choice(K, size=k, replace=False) for _ in range(N)]).astype(np.int64)
    w = rng.random((N, k)).astype(dtype)
    idx0, w0 = idx.copy(), w.copy()
    out = lx.read((idx, w), M)
    assert_ndarray(out, dtype, (N, C))
    assert_rel(out, ref_read((idx, w), M), tol(dtype, 1e-5, 1e-12))
    assert np.array_equal(idx, idx0) and np.array_equal(w, w0)
    # identical to the dense read of the densified address
    Wd = np.zeros((N, K), dtype)
    np.put_along_axis(Wd, idx, w, axis=1)
    assert_rel(out, lx.read(Wd, M), tol(dtype, 1e-6, 1e-14))


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


# ------------------------------------------------------- gaussian_read_scored(scores, values, ...)
def _scored_candidates(rng, metric, dtype, nq=6, k=5, d=7, c=4):
    """Queries, candidate keys (nq, k, d), their scores by ``metric`` and values (nq, k, c);
    row 0's candidate 2 is the query itself (the exact-match limit of the weights)."""
    Q = rng.standard_normal((nq, d))
    keys = rng.standard_normal((nq, k, d))
    if metric == "cosine":  # the soft read's 2 - 2 cos is |q - key|^2 for unit vectors
        Q /= np.linalg.norm(Q, axis=1, keepdims=True)
        keys /= np.linalg.norm(keys, axis=2, keepdims=True)
    keys[0, 2] = Q[0]
    Q, keys = Q.astype(dtype), keys.astype(dtype)
    if metric == "l2":
        scores = -((Q[:, None, :] - keys) ** 2).sum(-1)
    else:
        scores = np.einsum("nd,nkd->nk", Q, keys)
    return Q, keys, scores.astype(dtype), randn(rng, nq, k, c, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_gaussian_read_scored_matches_reference(rng, metric, dtype):
    """Weights exp(-(d^2 - s^2) / (2 alpha s^2)) over each row's candidates, d^2 = |q - key|^2
    (what each metric's score gives), s^2 the smallest; a row with d = 0 reads that value."""
    Q, keys, scores, values = _scored_candidates(rng, metric, dtype)
    ksq = (keys.astype(np.float64) ** 2).sum(-1).astype(dtype)
    ip = metric == "ip"
    d2 = ((f64(Q)[:, None, :] - f64(keys)) ** 2).sum(-1)
    for alpha in (0.05, 1.0):
        out = lx.gaussian_read_scored(scores, values, metric, alpha, Q if ip else None,
                                      ksq if ip else None)
        assert_ndarray(out, dtype, (6, 4), "readout")
        s2 = d2.min(axis=1, keepdims=True)
        w = np.exp(-(d2 - s2) / (2.0 * alpha * np.maximum(s2, 1e-300)))
        w /= w.sum(axis=1, keepdims=True)
        ref = np.einsum("nk,nkc->nc", w, f64(values))
        assert_rel(out[1:], ref[1:], tol(dtype, 1e-4, 1e-9), f"{metric} alpha={alpha}")
        # row 0 holds the query itself among its candidates: its value, up to the rounding
        # of its distance (cosine: 2 - 2 cos of a unit vector with itself is an ulp or so)
        assert_rel(out[0], values[0, 2], tol(dtype, 1e-4, 1e-9), f"{metric} exact match")


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
