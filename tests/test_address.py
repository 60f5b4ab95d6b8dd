"""Addressing: pinv_address (W = Z pinv(R)), gaussian_address (dense and top_k), onehot_address.

The reference and property cases are table-driven (tests/op_cases.py, tests/test_ops.py);
these are the op-specific ones."""
import numpy as np
import pytest

import larimar_ext as lx
from references import (DTYPES, DTYPE_IDS, assert_ndarray, assert_rel, default_rcond,
                        distinct_rows, f64, orthonormal, randint, randn, rank_deficient,
                        ref_gaussian, ref_onehot, ref_pinv_address, rel_err, to_numpy, tol,
                        well_conditioned)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_pinv_address_recovers_addresses(rng, dtype):
    """K <= C, R of full row rank: R pinv(R) = I, so Z = W0 R is addressed back to W0."""
    W0 = randn(rng, 7, 4)
    R = well_conditioned(rng, 4, 9)
    Z = (W0 @ R).astype(dtype)
    W = lx.pinv_address(Z, R.astype(dtype))
    assert_rel(W, W0, tol(dtype, 1e-4, 1e-9))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("K,C,r", [(6, 4, 2), (3, 7, 2), (5, 5, 1)])
def test_pinv_address_rank_deficient_rcond(rng, K, C, r, dtype):
    rcond = 1e-4 if dtype == np.float32 else 1e-8
    Z = randn(rng, 4, C, dtype=dtype)
    R = rank_deficient(rng, K, C, r, dtype=dtype)
    W = lx.pinv_address(Z, R, rcond=rcond)
    assert_rel(W, ref_pinv_address(Z, R, rcond=rcond), tol(dtype, 1e-4, 1e-8))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gaussian_dense_k1_is_all_ones(rng, dtype):
    Z = randn(rng, 5, 3, dtype=dtype)
    R = randn(rng, 1, 3, dtype=dtype)
    W = lx.gaussian_address(Z, R, 0.5)
    assert_ndarray(W, dtype, (5, 1))
    np.testing.assert_allclose(f64(W), 1.0, atol=tol(dtype, 1e-6, 1e-14))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gaussian_small_alpha_is_one_hot(rng, dtype):
    """alpha -> 0 gives a one-hot nearest-neighbour key (Larimar used alpha = 1e-3)."""
    R = distinct_rows(rng, 8, 4, min_gap=1.0)
    Z = (R[[3, 0, 7, 3]] + 0.05 * rng.standard_normal((4, 4))).astype(dtype)
    W = to_numpy(lx.gaussian_address(Z, R.astype(dtype), 1e-3))
    expect = np.zeros((4, 8))
    expect[np.arange(4), [3, 0, 7, 3]] = 1.0
    assert_rel(W, expect, tol(dtype, 1e-4, 1e-9))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gaussian_query_equal_to_key(rng, dtype):
    """s = min distance = 0 (query is a stored key).  The spec's formula is the alpha -> 0
    limit here; at least the result must be finite, normalised and peaked on that key."""
    R = distinct_rows(rng, 6, 3, dtype=dtype, min_gap=1.0)
    Z = R[[2, 5]].copy()
    W = to_numpy(lx.gaussian_address(Z, R, 1.0))
    assert np.all(np.isfinite(W)), W
    np.testing.assert_allclose(W.sum(axis=1, dtype=np.float64), 1.0, atol=1e-5)
    assert list(W.argmax(axis=1)) == [2, 5]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gaussian_top_k_equals_K_matches_dense(rng, dtype):
    Z = randn(rng, 4, 5, dtype=dtype)
    R = distinct_rows(rng, 7, 5, dtype=dtype)
    dense = to_numpy(lx.gaussian_address(Z, R, 0.7))
    idx, w = lx.gaussian_address(Z, R, 0.7, top_k=7)
    idx, w = to_numpy(idx), to_numpy(w)
    assert sorted(idx[0].tolist()) == list(range(7))
    assert_rel(w, np.take_along_axis(dense, idx, axis=1), tol(dtype, 1e-5, 1e-12))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gaussian_top_k_ties_lower_index_first(rng, dtype):
    """Integer keys (exact distances) with duplicated and equidistant keys."""
    R = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [3, 1, 0, 2], [0, 1, 0, 0], [2, 2, -1, 0],
                  [-2, 3, 1, 1], [3, 1, 0, 2], [0, -3, 2, 2], [3, 1, 0, 2], [2, 2, -1, 0]],
                 dtype=dtype)
    Z = np.concatenate([np.zeros((1, 4)), R[[2, 4]] + 0.5,
                        randint(rng, 3, 4) + 0.5]).astype(dtype)
    idx, w = lx.gaussian_address(Z, R, 0.5, top_k=6)
    ref_idx, ref_w = ref_gaussian(Z, R, 0.5, top_k=6)
    # origin: distances 1,1,1 (keys 0,1,3), 9,9 (keys 4,9), 14 (keys 2,6,8 -> 2 wins)
    assert list(ref_idx[0]) == [0, 1, 3, 4, 9, 2]
    assert np.array_equal(to_numpy(idx), ref_idx), (to_numpy(idx), ref_idx)
    assert_rel(w, ref_w, tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_onehot_ties_lower_index(rng, dtype):
    """Integer data: exact distances; duplicated keys and equidistant keys -> lowest index."""
    R = randint(rng, 12, 3, dtype=dtype)
    R[7] = R[3]
    R[11] = R[3]
    R[0], R[5] = [9, 9, 9], [-9, -9, -9]  # equidistant from the origin
    R[9] = [9, 9, 9]
    Z = np.concatenate([R[[7, 11, 3, 9]], np.zeros((1, 3)), randint(rng, 5, 3)]).astype(dtype)
    R = R.astype(dtype)
    idx, w = lx.onehot_address(Z, R)
    expect = ref_onehot(Z, R)
    assert np.array_equal(to_numpy(idx), expect), (to_numpy(idx).ravel(), expect.ravel())
    got = to_numpy(idx)[:, 0]
    assert got[0] == got[1] == got[2] <= 3  # three copies of one key: the first copy wins
    assert got[3] == 0  # keys 0 and 9 are both [9, 9, 9]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_onehot_matches_gaussian_top1(rng, dtype):
    Z = randn(rng, 6, 4, dtype=dtype)
    R = distinct_rows(rng, 9, 4, dtype=dtype)
    idx1, w1 = lx.onehot_address(Z, R)
    idx2, w2 = lx.gaussian_address(Z, R, 0.3, top_k=1)
    assert np.array_equal(to_numpy(idx1), to_numpy(idx2))
    np.testing.assert_allclose(f64(w2), 1.0, atol=tol(dtype, 1e-6, 1e-14))


def test_onehot_single_key(rng):
    Z = randn(rng, 3, 2)
    idx, w = lx.onehot_address(Z, randn(rng, 1, 2))
    assert np.array_equal(to_numpy(idx), np.zeros((3, 1), np.int64))
    assert np.array_equal(to_numpy(w), np.ones((3, 1)))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_onehot_and_top_k_many_keys_ties(rng, dtype):
    """Large K with exact (integer) distance ties spread over far-apart key blocks."""
    K = 5000
    R = randint(rng, K, 3, lo=-2, hi=2, dtype=dtype)
    R[4000:4200] = R[:200]
    Z = (randint(rng, 6, 3, lo=-2, hi=2) + 0.5).astype(dtype)  # never equal to a key
    idx, _ = lx.onehot_address(Z, R)
    assert np.array_equal(to_numpy(idx), ref_onehot(Z, R))
    idx, w = lx.gaussian_address(Z, R, 1.0, top_k=300)
    ref_idx, ref_w = ref_gaussian(Z, R, 1.0, top_k=300)
    assert np.array_equal(to_numpy(idx), ref_idx)
    assert_rel(w, ref_w, tol(dtype))


def spread_spectrum(rng, K, C, lo, hi, dtype):
    """R (K, C) with singular values log-spaced from 10**hi down to 10**lo."""
    U = orthonormal(rng, K, K)
    V = orthonormal(rng, C, K)
    return ((U * np.logspace(hi, lo, K)) @ V.T).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rcond", [None, 1e-6, 1e-4, 1e-2, 0.5])
def test_pinv_rcond_is_numpy_singular_value_cutoff(rng, dtype, rcond):
    """rcond drops singular values below rcond * s_max, exactly as np.linalg.pinv, for any
    cutoff inside a continuous spectrum (cond 1e5)."""
    K, C = 48, 80
    R = spread_spectrum(rng, K, C, -3, 2, dtype)
    cutoff = rcond if rcond is not None else default_rcond(K, C, dtype)
    ref = np.linalg.pinv(f64(R), rcond=cutoff)
    got = lx.pinv_address(np.eye(C, dtype=dtype), R, rcond=rcond)
    assert_rel(got, ref, tol(dtype, 1e-5, 1e-9))


# K >= 64 and K <= C: past K / 4 pivots the kernel tries a Cholesky of R R^T instead
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("lo,hi", [(0, 1), (-1.5, 1), (-3, 2), (-7, 0)])
@pytest.mark.parametrize("rcond", [None, 1e-4, 1e-2, 0.5])
def test_pinv_of_a_full_row_rank_matrix_keeps_numpys_cutoff(rng, dtype, lo, hi, rcond):
    """Well-conditioned (the Gram route) or not (the rank-revealing one), the pseudo-inverse
    and the projection are np.linalg.pinv's for the cutoff asked (K = 90: no singular value
    of the log-spaced spectra sits on a cutoff)."""
    K, C = 90, 128
    R = spread_spectrum(rng, K, C, lo, hi, dtype)
    cutoff = rcond if rcond is not None else default_rcond(K, C, dtype)
    ref = np.linalg.pinv(f64(R), rcond=cutoff)
    # float32 output of a pseudo-inverse whose kept singular values span 1e4 or more: its
    # rounding alone is eps32 times that condition
    f32_tol = 1e-5 if lo >= -3 else 1e-3
    assert_rel(lx.pinv_address(np.eye(C, dtype=dtype), R, rcond=rcond), ref,
               tol(dtype, f32_tol, 1e-9))
    Zq = randn(rng, 5, C, dtype=dtype)
    assert_rel(lx.pinv_read(Zq, R, rcond=rcond), f64(Zq) @ ref @ f64(R), tol(dtype, 1e-5, 1e-9))


@pytest.fixture
def two_threads(restore_threads):
    lx.set_num_threads(2)


@pytest.mark.parametrize("log_cond", [0.5, 1, 1.5, 2.5, 4])
def test_float32_gram_route_error_follows_the_condition(rng, two_threads, log_cond):
    """A well-conditioned float32 R of full row rank takes the triangular solves in float32:
    R^+ errs by about cond(R) eps32 there, at most 1e-5 by the kernel's bound, and a worse
    condition takes the float64 solves (a float32 rounding's error). Both threads split the
    Gram, the blocked Cholesky (K >= 384) and the solves."""
    K, C = 400, 600
    R = spread_spectrum(rng, K, C, -log_cond, 0, np.float32)
    ref = np.linalg.pinv(f64(R), rcond=1e-7)
    got = lx.pinv_address(np.eye(C, dtype=np.float32), R, rcond=1e-7)
    cond = 10.0 ** log_cond
    err = rel_err(got, ref)
    assert err <= min(1e-5, max(1e-6, 4 * cond * np.finfo(np.float32).eps)), err
    if cond >= 300:  # float64 solves: the float32 output's rounding only
        assert err <= 1e-6, err


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("log_cond", [1, 2.5])
@pytest.mark.parametrize("n", [1, 3, 200])
def test_a_single_address_on_the_gram_route_is_the_prepared_one(rng, two_threads, dtype,
                                                                 log_cond, n):
    """pinv_address applies each R^+ once, so on the full-row-rank route it solves
    (Z R^T) G^-1 with the Gram's factor (float32 solves for a float32 R at cond 10, float64
    ones for float64), where PreparedPinv forms G^-1 R for many calls: the same addresses,
    numpy's to the route's accuracy, for one query, a few and more than a thread's block
    of them. A flat spectrum with a short tail, so that the probe's 8 pivots predict full
    rank and the Gram route is the one taken (a float32 R at cond 316 takes the
    rank-revealing path here)."""
    K, C = 160, 240
    spectrum = np.ones(K)
    spectrum[-8:] = 10.0 ** -log_cond
    R = ((orthonormal(rng, K, K) * spectrum) @ orthonormal(rng, C, K).T).astype(dtype)
    Z = randn(rng, n, C, dtype=dtype)
    want = f64(Z) @ np.linalg.pinv(f64(R), rcond=default_rcond(K, C, dtype))
    f32_tol = 1e-5 if log_cond == 1 else 2e-4   # float32: about cond(R) eps32
    got = lx.pinv_address(Z, R)
    assert got.dtype == dtype and got.shape == (n, K)
    assert_rel(got, want, tol(dtype, f32_tol, 1e-9))
    assert_rel(got, lx.PreparedPinv(R).address(Z), tol(dtype, f32_tol, 1e-9))


@pytest.mark.parametrize("rank", [380, 399, 400])
def test_blocked_cholesky_in_float64(rng, two_threads, rank):
    """K = 400 (blocks of the Cholesky on both threads). Full rank: the Gram route, to
    float64 accuracy. A rank the probe takes for full: the blocked Cholesky fails (or its
    condition does), and the rank-revealing path gives numpy's pseudo-inverse."""
    K, C = 400, 600
    if rank == K:
        R = spread_spectrum(rng, K, C, -1, 0, np.float64)
    else:
        R = rank_deficient(rng, K, C, rank)
    got = lx.pinv_address(np.eye(C), R)
    assert_rel(got, np.linalg.pinv(R, rcond=default_rcond(K, C, np.float64)), 1e-9)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("below", [True, False])
def test_a_singular_value_at_the_cutoff_decides_like_numpy(rng, dtype, below):
    """All singular values but the last within a factor 2; the last just below (dropped)
    or just above (kept) the cutoff: the Gram route must not keep what numpy drops."""
    K, C, rcond = 80, 100, 1e-2
    s = np.linspace(1.0, 0.5, K)
    s[-1] = rcond * (0.9 if below else 1.1)
    R = ((orthonormal(rng, K, K) * s) @ orthonormal(rng, C, K).T).astype(dtype)
    ref = np.linalg.pinv(f64(R), rcond=rcond)
    got = lx.pinv_address(np.eye(C, dtype=dtype), R, rcond=rcond)
    assert_rel(got, ref, tol(dtype, 1e-4, 1e-9))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rank", [30, 70, 95])
def test_pinv_of_a_rank_past_a_quarter_of_k(rng, dtype, rank):
    """Rank above K / 4 but below K: the Cholesky fails and the rank-revealing path runs."""
    K, C = 96, 128
    R = rank_deficient(rng, K, C, rank, dtype=dtype)
    ref = np.linalg.pinv(f64(R), rcond=default_rcond(K, C, dtype))
    assert_rel(lx.pinv_address(np.eye(C, dtype=dtype), R), ref, tol(dtype, 1e-4, 1e-8))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rank", [1, 5, 16])
def test_pinv_read_equals_address_then_read(rng, dtype, rank):
    """pinv_read(Zq, M) == read(pinv_address(Zq, M), M) == (Zq M^+) M, batched."""
    B, N, K, C = 3, 7, 40, 30
    M = np.stack([rank_deficient(rng, K, C, rank, dtype=dtype) for _ in range(B)])
    Zq = randn(rng, B, N, C, dtype=dtype)
    ref = np.stack([f64(Zq[b]) @ np.linalg.pinv(f64(M[b]), rcond=default_rcond(K, C, dtype))
                    @ f64(M[b]) for b in range(B)])
    fused = lx.pinv_read(Zq, M)
    assert fused.dtype == dtype and fused.shape == (B, N, C)
    assert_rel(fused, ref, tol(dtype))
    assert_rel(fused, lx.read(lx.pinv_address(Zq, M), M), tol(dtype))
    assert_rel(lx.pinv_read(Zq[0], M[0]), ref[0], tol(dtype))
