"""topk(Q, keys, k, metric): exact top-k, best first, equal scores -> lower index first.

The reference and property cases are table-driven (tests/op_cases.py, tests/test_ops.py);
these are the op-specific ones."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import larimar_ext as lx
from references import (DTYPE_IDS, DTYPES, METRICS, assert_ndarray, assert_topk_valid, dtypes,
                        randint, randn, ref_topk, seeds, to_numpy, tol)


@given(nq=st.integers(1, 5), K=st.integers(1, 30), d=st.integers(1, 6), dtype=dtypes,
       metric=st.sampled_from(["ip", "l2"]), kfrac=st.floats(0.0, 1.0), seed=seeds)
def test_topk_integer_data_exact(nq, K, d, dtype, metric, kfrac, seed):
    """Small-integer data: scores are exact in any summation order, so ties are real and the
    result must equal numpy's stable argsort exactly (indices and scores)."""
    rng = np.random.default_rng(seed)
    k = max(1, int(round(kfrac * K)))
    Q = randint(rng, nq, d, lo=-2, hi=2, dtype=dtype)
    keys = randint(rng, K, d, lo=-2, hi=2, dtype=dtype)
    idx, sc = lx.topk(Q, keys, k, metric=metric)
    ref_idx, ref_sc = ref_topk(Q, keys, k, metric)
    assert_ndarray(idx, np.int64, (nq, k), "indices")
    assert_ndarray(sc, dtype, (nq, k), "scores")
    assert np.array_equal(idx, ref_idx), f"\n{idx}\n!=\n{ref_idx}"
    assert np.array_equal(sc.astype(np.float64), ref_sc)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_topk_duplicated_keys_lower_index_first(rng, metric, dtype):
    """Duplicated key rows have bit-identical scores: their order is ascending index.

    Keys have norms that are powers of two (entries in {0, +-1}, 1 or 4 nonzeros) so that
    cosine scores are exact as well."""
    d = 6
    base = np.zeros((5, d))
    base[0, 0] = 1
    base[1, [1, 2, 3, 4]] = [1, -1, 1, 1]
    base[2, 5] = -1
    base[3, [0, 2, 4, 5]] = [1, 1, -1, 1]
    base[4, 3] = 1
    order = [3, 0, 3, 1, 0, 4, 3, 2, 1, 0, 3, 4]  # keys 0, 2, 6, 10 are copies of base[3], ...
    keys = base[order].astype(dtype)
    # queries with power-of-two norms too: every cosine score is then exact
    Q = np.zeros((5, d))
    for q in Q[1:]:
        nnz = rng.choice([1, 4])
        q[rng.choice(d, size=nnz, replace=False)] = rng.choice([-1.0, 1.0], size=nnz)
        q *= rng.choice([1.0, 2.0])
    Q[0] = base[3]
    Q = Q.astype(dtype)
    K = len(order)
    idx, sc = lx.topk(Q, keys, K, metric=metric)
    ref_idx, _ = ref_topk(Q, keys, K, metric)
    assert_topk_valid(idx, sc, Q, keys, K, metric, atol=tol(dtype, 1e-5, 1e-12))
    assert np.array_equal(idx, ref_idx), f"\n{idx}\n!=\n{ref_idx}"
    assert list(idx[0, :4]) == [0, 2, 6, 10]  # query equal to the four copies of base[3]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_topk_all_keys_equal(metric, dtype):
    keys = np.tile(np.array([[1.0, -2.0, 2.0]], dtype), (7, 1))
    Q = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0]], dtype)
    for k in (1, 3, 7):
        idx, sc = lx.topk(Q, keys, k, metric=metric)
        assert np.array_equal(idx, np.tile(np.arange(k), (2, 1))), idx
        assert np.all(sc == sc[:, :1])


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_topk_equal_scores_distinct_keys(metric, dtype):
    """Different keys with the same score (symmetric around the query)."""
    keys = np.array([[0, 2, 0], [2, 0, 0], [0, 0, 2], [0, -2, 0], [2, 0, 0]], dtype)
    Q = np.array([[0, 0, 0.5]], dtype)
    # ip: key2 = 1, others 0 (tie 0,1,3,4).  cosine: same.  l2: key2 closest, others tie.
    idx, sc = lx.topk(Q, keys, 5, metric=metric)
    assert list(idx[0]) == [2, 0, 1, 3, 4]
    assert sc[0, 1] == sc[0, 2] == sc[0, 3] == sc[0, 4]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_topk_k_equals_number_of_keys(rng, metric, dtype):
    Q = randn(rng, 3, 5, dtype=dtype)
    keys = randn(rng, 9, 5, dtype=dtype)
    idx, sc = lx.topk(Q, keys, 9, metric=metric)
    assert_topk_valid(idx, sc, Q, keys, 9, metric, atol=tol(dtype, 1e-5, 1e-12))
    for row in idx:
        assert sorted(row.tolist()) == list(range(9))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_topk_metric_semantics(rng, dtype):
    """ip prefers long keys, cosine ignores length, l2 returns -squared distance."""
    keys = np.array([[1, 0], [10, 1], [0, 1]], dtype)
    Q = np.array([[1, 0]], dtype)
    assert to_numpy(lx.topk(Q, keys, 1, metric="ip")[0])[0, 0] == 1
    assert to_numpy(lx.topk(Q, keys, 1, metric="cosine")[0])[0, 0] == 0
    idx, sc = lx.topk(Q, keys, 3, metric="l2")
    assert list(idx[0]) == [0, 2, 1]
    assert np.array_equal(sc[0].astype(np.float64), [0.0, -2.0, -82.0])


def test_topk_default_metric_is_ip(rng):
    Q = randn(rng, 3, 4)
    keys = randn(rng, 8, 4)
    a = lx.topk(Q, keys, 3)
    b = lx.topk(Q, keys, 3, metric="ip")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_topk_cosine_scale_invariant(rng):
    """Scaling keys/queries by powers of two changes no cosine score."""
    Q = randn(rng, 3, 6, dtype=np.float32)
    keys = randn(rng, 10, 6, dtype=np.float32)
    scale = (2.0 ** rng.integers(-3, 4, size=(10, 1))).astype(np.float32)
    i1, s1 = lx.topk(Q, keys, 10, metric="cosine")
    i2, s2 = lx.topk(4 * Q, keys * scale, 10, metric="cosine")
    assert np.array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_topk_many_keys_ties_across_blocks(rng, metric, dtype):
    """Thousands of small-integer keys (exact scores, many ties, duplicates far apart):
    a blocked / multi-threaded search must merge blocks with the lower-index-first rule."""
    K, d = 6000, 4
    keys = randint(rng, K, d, lo=-2, hi=2, dtype=dtype)
    keys[5000:5100] = keys[:100]  # exact duplicates of early keys, in a far block
    Q = randint(rng, 3, d, lo=-2, hi=2, dtype=dtype)
    for k in (1, 64, 700):
        idx, sc = lx.topk(Q, keys, k, metric=metric)
        ref_idx, ref_sc = ref_topk(Q, keys, k, metric)
        assert np.array_equal(idx, ref_idx), f"k={k}: first mismatch at " \
            f"{np.argwhere(idx != ref_idx)[:1].tolist()}"
        assert np.array_equal(sc.astype(np.float64), ref_sc)
