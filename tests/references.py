"""Float64 numpy references, data generators and assertion helpers of the larimar_ext tests.

A plain module (tests/ is on pytest's ``pythonpath``, pyproject.toml): test files import it
as ``from references import ...``; the fixtures stay in conftest.py and the table of
functional ops in op_cases.py.

Notation follows docs/DESIGN.md section 2.1: episode latents Z (N x C), addresses W (N x K),
memory M (K x C), batch of episodes B, keys R (K x C).

Every reference below is computed in float64 from the (possibly float32) inputs, so the
only error measured is the kernel's own rounding.  Accuracy is checked with the Frobenius
relative error ``||got - ref||_F / ||ref||_F`` (``assert_rel``).  Default tolerances, for
direct solves on well-conditioned input (condition number <= ~10):

    float32: 1e-4        float64: 1e-9

Looser bounds are documented next to the tests that use them (iterative / sequential
algorithms, very small Gaussian temperatures).
"""
from __future__ import annotations

import contextlib
import re

import numpy as np
import pytest
from hypothesis import strategies as st

try:  # torch is optional for everything but test_torch.py
    import torch  # noqa: F401
except ImportError:  # pragma: no cover
    torch = None

DTYPES = (np.float32, np.float64)
DTYPE_IDS = ("f32", "f64")
METRICS = ("ip", "cosine", "l2")


def tol(dtype, f32=1e-4, f64=1e-9):
    """Default relative tolerance for a result computed in ``dtype``."""
    return f32 if np.dtype(dtype) == np.float32 else f64


# --------------------------------------------------------------------------------------
# hypothesis strategies (the profiles are registered in conftest.py)
# --------------------------------------------------------------------------------------
seeds = st.integers(min_value=0, max_value=2**32 - 1)
dtypes = st.sampled_from(DTYPES)


# --------------------------------------------------------------------------------------
# conversions / assertions
# --------------------------------------------------------------------------------------
def is_torch(x):
    return torch is not None and isinstance(x, torch.Tensor)


def to_numpy(x):
    if is_torch(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def f64(x):
    return np.asarray(to_numpy(x), dtype=np.float64)


def rel_err(got, ref):
    g, r = f64(got), f64(ref)
    den = np.linalg.norm(r)
    num = np.linalg.norm(g - r)
    return float(num / den) if den > 0 else float(num)


def assert_rel(got, ref, tol, what="result"):
    """Frobenius relative error of ``got`` against the float64 reference ``ref``."""
    g, r = f64(got), f64(ref)
    assert g.shape == r.shape, f"{what}: shape {g.shape} != expected {r.shape}"
    assert np.all(np.isfinite(g)), f"{what}: non-finite values in result"
    err = rel_err(g, r)
    assert err <= tol, f"{what}: relative Frobenius error {err:.3e} > tol {tol:.1e}"


def assert_ndarray(x, dtype, shape, what="result"):
    assert isinstance(x, np.ndarray), f"{what}: expected numpy.ndarray, got {type(x)}"
    assert x.dtype == np.dtype(dtype), f"{what}: dtype {x.dtype} != {np.dtype(dtype)}"
    assert x.shape == tuple(shape), f"{what}: shape {x.shape} != {tuple(shape)}"


_WORD = r"(?<![A-Za-z0-9_]){}(?![A-Za-z0-9_])"


def names_arg(msg, *names):
    return any(re.search(_WORD.format(re.escape(n)), msg) for n in names)


@contextlib.contextmanager
def raises_arg(exc, *names):
    """pytest.raises(exc) whose message names (as a whole word) one of ``names``."""
    with pytest.raises(exc) as ei:
        yield ei
    msg = str(ei.value)
    assert names_arg(msg, *names), (
        f"{type(ei.value).__name__} message {msg!r} does not name any of {names}"
    )


# --------------------------------------------------------------------------------------
# data makers
# --------------------------------------------------------------------------------------
def orthonormal(rng, n, r):
    """n x r matrix with orthonormal columns (n >= r)."""
    q, _ = np.linalg.qr(rng.standard_normal((n, r)))
    return q


def well_conditioned(rng, m, n, cond=4.0, dtype=np.float64, scale=1.0):
    """m x n matrix of full rank min(m, n) with singular values in [scale, scale*cond]."""
    r = min(m, n)
    s = np.geomspace(1.0, cond, r) if r > 1 else np.ones(1)
    rng.shuffle(s)
    a = (orthonormal(rng, m, r) * (scale * s)) @ orthonormal(rng, n, r).T
    return a.astype(dtype)


def rank_deficient(rng, m, n, rank, dtype=np.float64, cond=3.0):
    """m x n matrix of exact rank ``rank`` (< min(m, n)), nonzero singular values in [1, cond]."""
    s = np.geomspace(1.0, cond, rank) if rank > 1 else np.ones(1)
    a = (orthonormal(rng, m, rank) * s) @ orthonormal(rng, n, rank).T
    return a.astype(dtype)


def randn(rng, *shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


def randint(rng, *shape, lo=-3, hi=3, dtype=np.float64):
    """Small integers stored as floats: every sum/product below 2**24 is exact in float32."""
    return rng.integers(lo, hi + 1, size=shape).astype(dtype)


def distinct_rows(rng, n, d, dtype=np.float64, min_gap=0.3):
    """n random rows, pairwise distances >= min_gap * sqrt(d) (no near ties in distance)."""
    while True:
        x = rng.standard_normal((n, d))
        if n < 2:
            return x.astype(dtype)
        d2 = ref_sqdist(x, x) + np.eye(n) * 1e9
        if d2.min() >= (min_gap**2) * d:
            return x.astype(dtype)


def soft_problem(rng, K, T, k, n_soft, C, dtype):
    """A sparse address touching T of K slots, with a well-conditioned restricted W.

    Each touched slot gets one row dominated by it (weight 1, k-1 small weights on other
    touched slots); n_soft extra rows spread random weights over k touched slots.
    Returns (indices (N, k), weights (N, k), Z (N, C), touched slots), N = T + n_soft."""
    touched = rng.choice(K, size=T, replace=False)
    idx, w = [], []
    for t in rng.permutation(touched):
        others = rng.choice(touched[touched != t], size=k - 1, replace=False)
        idx.append(np.concatenate([[t], others]))
        w.append(np.concatenate([[1.0], rng.uniform(0.05, 0.2, size=k - 1)]))
    for _ in range(n_soft):
        idx.append(rng.choice(touched, size=k, replace=False))
        w.append(rng.uniform(0.1, 1.0, size=k))
    order = rng.permutation(len(idx))
    idx = np.asarray(idx, np.int64)[order]
    w = np.asarray(w)[order].astype(dtype)
    Z = randn(rng, len(idx), C, dtype=dtype)
    WT = ref_sparse_dense(idx, w, K)[:, np.sort(touched)]
    assert np.linalg.cond(WT) < 50, "test data generator produced an ill-conditioned problem"
    return idx, w, Z, touched


def scored_candidates(rng, metric, dtype, nq=6, k=5, d=7, c=4):
    """Queries Q (nq, d), candidate keys (nq, k, d), their scores by ``metric`` (nq, k) and
    values (nq, k, c); row 0's candidate 2 is the query itself (the exact-match limit of the
    soft read's weights). Cosine candidates are unit vectors, whose 2 - 2 cos is |q - key|^2."""
    Q = rng.standard_normal((nq, d))
    keys = rng.standard_normal((nq, k, d))
    if metric == "cosine":
        Q /= np.linalg.norm(Q, axis=1, keepdims=True)
        keys /= np.linalg.norm(keys, axis=2, keepdims=True)
    keys[0, 2] = Q[0]
    Q, keys = Q.astype(dtype), keys.astype(dtype)
    if metric == "l2":
        scores = -((Q[:, None, :] - keys) ** 2).sum(-1)
    else:
        scores = np.einsum("nd,nkd->nk", Q, keys)
    return Q, keys, scores.astype(dtype), randn(rng, nq, k, c, dtype=dtype)


# --------------------------------------------------------------------------------------
# float64 references (docs/DESIGN.md section 2 / api_spec)
# --------------------------------------------------------------------------------------
def default_rcond(n, k, dtype):
    return max(n, k) * float(np.finfo(np.dtype(dtype)).eps)


def ref_pinv(a, rcond):
    """Pseudo-inverse with a relative singular-value cutoff ``rcond``."""
    return np.linalg.pinv(f64(a), rtol=rcond)


def ref_ridge(W, Z, ridge, prior=None):
    """argmin ||W M - Z||^2 + ridge ||M - prior||^2  (ridge > 0), in float64.

    Uses the K x K normal equations when N >= K and the push-through (N x N) form otherwise,
    which is the same matrix identity but better conditioned for tiny ridge.
    """
    W, Z = f64(W), f64(Z)
    N, K = W.shape
    P = np.zeros((K, Z.shape[1])) if prior is None else f64(prior)
    if N >= K:
        return np.linalg.solve(W.T @ W + ridge * np.eye(K), W.T @ Z + ridge * P)
    return P + W.T @ np.linalg.solve(W @ W.T + ridge * np.eye(N), Z - W @ P)


def ref_lstsq(W, Z, ridge=0.0, rcond=None, dtype=np.float64):
    """lstsq_write reference: pinv(W) @ Z (ridge == 0) or the ridge solution; batched on dim 0."""
    W, Z = f64(W), f64(Z)
    if W.ndim == 3:
        return np.stack([ref_lstsq(W[b], Z[b], ridge, rcond, dtype) for b in range(W.shape[0])])
    if ridge > 0:
        return ref_ridge(W, Z, ridge)
    if rcond is None:
        rcond = default_rcond(*W.shape, dtype)
    return ref_pinv(W, rcond) @ Z


def ref_pinv_address(Z, R, rcond=None, dtype=np.float64):
    Z, R = f64(Z), f64(R)
    if Z.ndim == 3:
        return np.stack([ref_pinv_address(Z[b], R[b], rcond, dtype) for b in range(Z.shape[0])])
    if rcond is None:
        rcond = default_rcond(*R.shape, dtype)
    return Z @ ref_pinv(R, rcond)


def ref_sqdist(Z, R):
    Z, R = f64(Z), f64(R)
    return ((Z[:, None, :] - R[None, :, :]) ** 2).sum(-1)


def ref_gaussian(Z, R, alpha, top_k=None):
    """Larimar appendix E soft keys: w_k ~ exp(-d_k^2 / (2 alpha s^2)), s = min_k d_k."""
    d2 = ref_sqdist(Z, R)
    s2 = d2.min(axis=1, keepdims=True)
    logits = -d2 / (2.0 * alpha * s2)
    logits -= logits.max(axis=1, keepdims=True)
    w = np.exp(logits)
    if top_k is None:
        return w / w.sum(axis=1, keepdims=True)
    idx = np.argsort(d2, axis=1, kind="stable")[:, :top_k]  # ascending, ties lower index
    wk = np.take_along_axis(w, idx, axis=1)
    return idx, wk / wk.sum(axis=1, keepdims=True)


def ref_onehot(Z, R):
    return np.argmin(ref_sqdist(Z, R), axis=1)[:, None]  # argmin: first (lowest) index on ties


def ref_sparse_dense(indices, weights, K):
    """Dense W (N x K) of a sparse address (indices, weights); repeated indices add up."""
    idx = np.asarray(to_numpy(indices))
    w = f64(weights)
    W = np.zeros((idx.shape[0], K))
    rows = np.repeat(np.arange(idx.shape[0]), idx.shape[1])
    np.add.at(W, (rows, idx.ravel()), w.ravel())
    return W


def ref_pinv_read(Zq, M, rcond=None, dtype=np.float64):
    """pinv_read reference: (Zq pinv(M)) M, batched on dim 0 (matmul broadcasts over it)."""
    return ref_pinv_address(Zq, M, rcond, dtype) @ f64(M)


def ref_read(W, M):
    if isinstance(W, tuple):
        M = f64(M)
        return ref_sparse_dense(W[0], W[1], M.shape[0]) @ M
    return f64(W) @ f64(M)  # matmul broadcasts over the batch dimension


def ref_scores(Q, keys, metric):
    Q, R = f64(Q), f64(keys)
    if metric == "ip":
        return Q @ R.T
    if metric == "cosine":
        Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
        Rn = R / np.linalg.norm(R, axis=1, keepdims=True)
        return Qn @ Rn.T
    if metric == "l2":
        return -ref_sqdist(Q, R)
    raise AssertionError(metric)


def ref_topk(Q, keys, k, metric):
    """Best first; equal scores -> lower index first (stable sort of -score)."""
    s = ref_scores(Q, keys, metric)
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(s, idx, axis=1)


def ref_sparse_lstsq(indices, weights, Z, memory_size, ridge=0.0, prior=None):
    """Dense reference of sparse_lstsq_write, solved only over the touched slots."""
    W = ref_sparse_dense(indices, weights, memory_size)
    Z = f64(Z)
    M = np.zeros((memory_size, Z.shape[1])) if prior is None else f64(prior).copy()
    touched = np.flatnonzero(np.any(W != 0, axis=0))
    WT = W[:, touched]
    if ridge > 0:
        M[touched] = ref_ridge(WT, Z, ridge, None if prior is None else M[touched])
    else:
        M[touched] = np.linalg.lstsq(WT, Z, rcond=None)[0]
    return M


def ref_gaussian_read_scored(Q, keys, values, alpha):
    """The soft read of candidates keys (nq, k, d) with values (nq, k, c) for queries Q (nq, d),
    from the geometry itself: weights exp(-(d^2 - s^2) / (2 alpha s^2)) over each row,
    d^2 = |q - key|^2, s^2 its smallest, summing to 1."""
    d2 = ((f64(Q)[:, None, :] - f64(keys)) ** 2).sum(-1)
    s2 = d2.min(axis=1, keepdims=True)
    w = np.exp(-(d2 - s2) / (2.0 * alpha * np.maximum(s2, 1e-300)))
    w /= w.sum(axis=1, keepdims=True)
    return np.einsum("nk,nkc->nc", w, f64(values))


def ref_episodic(Ws, Zs, ridge, prior, K, C):
    """Batch ridge solution over all rows currently stored (lists of row blocks)."""
    P = np.zeros((K, C)) if prior is None else f64(prior)
    if not Ws:
        return P
    return ref_ridge(np.concatenate([f64(w) for w in Ws]), np.concatenate([f64(z) for z in Zs]),
                     ridge, P)


# --------------------------------------------------------------------------------------
# top-k consistency check shared by topk / KeyValueMemory.search tests
# --------------------------------------------------------------------------------------
def assert_topk_valid(idx, scores, Q, keys, k, metric, atol):
    """Checks that (idx, scores) is a correct, correctly ordered top-k of Q against keys.

    * indices int64 in range, distinct per row; scores have Q's dtype;
    * the returned scores are sorted best first, ties in ascending index order (exact);
    * each returned score equals the float64 score of its key (within ``atol * scale``);
    * no key left out scores better than the k-th returned one (within ``atol * scale``).
    """
    idx, sc = to_numpy(idx), to_numpy(scores)
    Qn, Rn = to_numpy(Q), to_numpy(keys)
    nq, K = Qn.shape[0], Rn.shape[0]
    assert idx.dtype == np.int64, idx.dtype
    assert sc.dtype == Qn.dtype, (sc.dtype, Qn.dtype)
    assert idx.shape == (nq, k) and sc.shape == (nq, k), (idx.shape, sc.shape)
    assert np.all((idx >= 0) & (idx < K)), idx
    for row in idx:
        assert len(set(row.tolist())) == k, f"repeated index in {row}"
    if k > 1:
        a, b = sc[:, :-1], sc[:, 1:]
        ok = (a > b) | ((a == b) & (idx[:, :-1] < idx[:, 1:]))
        assert np.all(ok), f"not sorted best-first / ties not lower-index-first:\n{idx}\n{sc}"
    ref = ref_scores(Qn, Rn, metric)
    scale = max(1.0, float(np.abs(ref).max()))
    got_ref = np.take_along_axis(ref, idx, axis=1)
    assert np.abs(f64(sc) - got_ref).max() <= atol * scale, "returned scores are wrong"
    if k < K:
        mask = np.ones_like(ref, dtype=bool)
        np.put_along_axis(mask, idx, False, axis=1)
        best_left_out = np.where(mask, ref, -np.inf).max(axis=1)
        assert np.all(got_ref[:, -1] >= best_left_out - atol * scale), "missed a better key"


# --------------------------------------------------------------------------------------
# snapshots (for "inputs untouched" and "unchanged after a failed call")
# --------------------------------------------------------------------------------------
def array_leaves(x):
    """The numpy arrays in x (an array, or a dict / tuple / list holding them), in order."""
    if isinstance(x, np.ndarray):
        return [x]
    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, (tuple, list)):
        return [a for y in x for a in array_leaves(y)]
    return []


def snapshot_arrays(x):
    """(array, copy) for every numpy array in x: ``assert_arrays_unchanged`` compares them."""
    return [(a, a.copy()) for a in array_leaves(x)]


def assert_arrays_unchanged(snapshot, what="an input array"):
    for a, copy in snapshot:
        assert a.shape == copy.shape and np.array_equal(a, copy, equal_nan=True), \
            f"{what} was modified by the call"

def snapshot_episodic(mem):
    return {"memory": to_numpy(mem.memory).copy()}


def snapshot_kv(mem):
    return {"len": len(mem), "keys": to_numpy(mem.keys).copy(),
            "values": to_numpy(mem.values).copy()}


def assert_same_snapshot(before, after):
    assert before.keys() == after.keys()
    for name in before:
        a, b = before[name], after[name]
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and a.shape == b.shape, name
            assert np.array_equal(a, b, equal_nan=True), f"{name} changed by a failed call"
        else:
            assert a == b, f"{name} changed by a failed call: {a} -> {b}"
