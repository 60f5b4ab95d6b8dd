"""KeyValueMemory: fixed-key memory of Nelson et al. (keys = prefix encodings, one-hot writes)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import larimar_ext as lx
from references import (DTYPE_IDS, DTYPES, METRICS, assert_ndarray, assert_rel, assert_topk_valid,
                        dtypes, f64, randn, ref_gaussian, seeds, to_numpy, tol)


def new_kv(kd, vd, metric="cosine", dtype=np.float32):
    return lx.KeyValueMemory(kd, vd, metric=metric, dtype=np.dtype(dtype).name)


def unit_rows(rng, n, d, dtype, max_cos=0.9):
    """n unit vectors, pairwise cosine <= max_cos (no near ties between keys)."""
    while True:
        x = rng.standard_normal((n, d))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        if n == 1 or (x @ x.T - 2 * np.eye(n)).max() <= max_cos:
            return x.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("metric", METRICS)
def test_add_appends_and_copies(rng, metric, dtype):
    kv = new_kv(6, 4, metric, dtype)
    assert len(kv) == 0
    keys, vals = randn(rng, 7, 6, dtype=dtype), randn(rng, 7, 4, dtype=dtype)
    k0, v0 = keys.copy(), vals.copy()
    ids = to_numpy(kv.add(keys, vals))
    assert_ndarray(ids, np.int64, (7,), "ids")
    assert np.array_equal(ids, np.arange(7))
    assert len(kv) == 7
    assert_ndarray(to_numpy(kv.keys), dtype, (7, 6), "keys")
    assert_ndarray(to_numpy(kv.values), dtype, (7, 4), "values")
    assert np.array_equal(to_numpy(kv.keys), keys)
    assert np.array_equal(to_numpy(kv.values), vals)  # one-hot write: value copied exactly
    assert np.array_equal(keys, k0) and np.array_equal(vals, v0)
    more = to_numpy(kv.add(randn(rng, 3, 6, dtype=dtype), randn(rng, 3, 4, dtype=dtype)))
    assert np.array_equal(more, [7, 8, 9]) and len(kv) == 10
    assert np.array_equal(to_numpy(kv.values)[:7], vals)


def test_keys_and_values_are_copies(rng):
    kv = new_kv(3, 2, "l2", np.float64)
    kv.add(randn(rng, 4, 3), randn(rng, 4, 2))
    k, v = to_numpy(kv.keys), to_numpy(kv.values)
    k_keep, v_keep = k.copy(), v.copy()
    k[...] = 0.0
    v[...] = 0.0
    assert np.array_equal(to_numpy(kv.keys), k_keep)
    assert np.array_equal(to_numpy(kv.values), v_keep)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("metric", METRICS)
def test_one_hot_read_returns_stored_value_exactly(rng, metric, dtype):
    kv = new_kv(8, 5, metric, dtype)
    keys = unit_rows(rng, 20, 8, dtype)  # unit keys: every metric retrieves a key by itself
    vals = randn(rng, 20, 5, dtype=dtype)
    kv.add(keys, vals)
    sel = rng.permutation(20)[:9]
    out = kv.read(keys[sel])
    assert_ndarray(to_numpy(out), dtype, (9, 5), "read")
    assert np.array_equal(to_numpy(out), vals[sel])
    # noisy queries: exactly the value of the best key found by search
    Q = (keys[sel] + 0.2 * rng.standard_normal((9, 8))).astype(dtype)
    best = to_numpy(kv.search(Q, 1)[0])[:, 0]
    assert np.array_equal(to_numpy(kv.read(Q, k=1)), vals[best])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_duplicate_keys_mean_and_same_id(rng, dtype):
    kv = new_kv(4, 3, "cosine", dtype)
    keys, vals = randn(rng, 5, 4, dtype=dtype), randn(rng, 5, 3, dtype=dtype)
    kv.add(keys, vals)
    new_key = randn(rng, 1, 4, dtype=dtype)
    a, b, c = randn(rng, 3, 3, dtype=dtype)
    ids = to_numpy(kv.add(np.stack([keys[2], new_key[0], keys[2]]), np.stack([a, b, c])))
    assert np.array_equal(ids, [2, 5, 2]), ids
    assert len(kv) == 6
    V = to_numpy(kv.values)
    assert np.array_equal(V[5], b)
    expect = (vals[2].astype(np.float64) + a + c) / 3.0
    np.testing.assert_allclose(V[2], expect, rtol=tol(dtype, 1e-6, 1e-14),
                               atol=tol(dtype, 1e-6, 1e-14))
    assert np.array_equal(np.delete(V, [2, 5], axis=0), np.delete(vals, 2, axis=0))
    assert np.array_equal(to_numpy(kv.keys)[:5], keys)
    # the one-hot read of that key returns the mean slot exactly
    assert np.array_equal(to_numpy(kv.read(keys[2:3]))[0], V[2])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_duplicate_within_one_add_and_over_many_adds(rng, dtype):
    kv = new_kv(3, 2, "l2", dtype)
    k = randn(rng, 2, 3, dtype=dtype)
    v = randn(rng, 6, 2, dtype=dtype)
    ids = to_numpy(kv.add(np.stack([k[0], k[1], k[0]]), v[:3]))
    assert np.array_equal(ids, [0, 1, 0]) and len(kv) == 2
    for i in range(3, 6):
        assert np.array_equal(to_numpy(kv.add(k[:1], v[i:i + 1])), [0])
    assert len(kv) == 2
    expect = v[[0, 2, 3, 4, 5]].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(to_numpy(kv.values)[0], expect, rtol=tol(dtype, 1e-6, 1e-14),
                               atol=tol(dtype, 1e-6, 1e-14))
    assert np.array_equal(to_numpy(kv.values)[1], v[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_near_duplicate_key_is_appended(rng, dtype):
    """Only bitwise-identical keys merge: a key one ulp away is a new slot."""
    kv = new_kv(4, 2, "cosine", dtype)
    key = randn(rng, 1, 4, dtype=dtype)
    kv.add(key, randn(rng, 1, 2, dtype=dtype))
    near = key.copy()
    near[0, 1] = np.nextafter(near[0, 1], np.inf, dtype=dtype)
    v = randn(rng, 1, 2, dtype=dtype)
    ids = to_numpy(kv.add(near, v))
    assert np.array_equal(ids, [1]) and len(kv) == 2
    assert np.array_equal(to_numpy(kv.values)[1], v[0])


@given(n=st.integers(1, 60), nq=st.integers(1, 5), kd=st.integers(1, 8), dtype=dtypes,
       metric=st.sampled_from(METRICS), kfrac=st.floats(0.0, 1.0), seed=seeds)
def test_search_equals_topk(n, nq, kd, dtype, metric, kfrac, seed):
    rng = np.random.default_rng(seed)
    k = max(1, int(round(kfrac * n)))
    kv = new_kv(kd, 3, metric, dtype)
    keys = randn(rng, n, kd, dtype=dtype)
    kv.add(keys, randn(rng, n, 3, dtype=dtype))
    Q = randn(rng, nq, kd, dtype=dtype)
    idx, sc = kv.search(Q, k)
    assert_topk_valid(idx, sc, Q, to_numpy(kv.keys), k, metric, atol=tol(dtype, 1e-5, 1e-12))
    ridx, rsc = lx.topk(Q, to_numpy(kv.keys), k, metric=metric)
    assert np.array_equal(to_numpy(idx), to_numpy(ridx))
    np.testing.assert_allclose(to_numpy(sc), to_numpy(rsc), rtol=tol(dtype, 1e-5, 1e-12),
                               atol=tol(dtype, 1e-5, 1e-12))


@pytest.mark.parametrize("metric", METRICS)
def test_search_ties_lower_index_first(metric):
    """Equal scores (keys symmetric about the query, exact in float32) -> ascending ids."""
    kv = new_kv(3, 1, metric, np.float32)
    keys = np.array([[0, 2, 0], [2, 0, 0], [0, 0, 2], [0, -2, 0], [-2, 0, 0]], np.float32)
    kv.add(keys, np.arange(5, dtype=np.float32)[:, None])
    idx, sc = kv.search(np.array([[0, 0, 0.5]], np.float32), 5)
    assert list(to_numpy(idx)[0]) == [2, 0, 1, 3, 4]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("k", [1, 3, 12])
def test_soft_read(rng, metric, k, dtype):
    """read(Q, k, alpha): Gaussian weights on L2 distance over the top k keys.

    Unit-norm keys and queries make the top k identical for all three metrics."""
    kv = new_kv(6, 4, metric, dtype)
    keys = unit_rows(rng, 12, 6, dtype)
    vals = randn(rng, 12, 4, dtype=dtype)
    kv.add(keys, vals)
    Q = unit_rows(rng, 5, 6, dtype)
    for alpha in (0.05, 1.0):
        out = kv.read(Q, k=k, alpha=alpha)
        assert_ndarray(to_numpy(out), dtype, (5, 4), "read")
        idx, w = ref_gaussian(Q, keys, alpha, top_k=k)
        ref = np.einsum("nk,nkc->nc", w, f64(vals)[idx])
        assert_rel(out, ref, tol(dtype, 1e-4, 1e-9), f"alpha={alpha}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_nbytes_and_len(rng, dtype):
    kd, vd = 16, 8
    kv = new_kv(kd, vd, "ip", dtype)
    item = np.dtype(dtype).itemsize
    # upper bound: at most 4x the payload plus a fixed overhead (a key index, preallocation)
    assert isinstance(kv.nbytes, (int, np.integer)) and kv.nbytes >= 0
    total = 0
    for n in (10, 200, 37):
        kv.add(randn(rng, n, kd, dtype=dtype), randn(rng, n, vd, dtype=dtype))
        total += n
        assert len(kv) == total
        need = total * (kd + vd) * item
        # keys, values and norms, a float64 count, a key-index node and bucket each
        assert need <= kv.nbytes <= total * ((kd + vd + 1) * item + 8 + 64) + 1024, \
            (kv.nbytes, need)
        assert kv.reserved_nbytes >= kv.nbytes
    before = kv.nbytes
    kv.add(to_numpy(kv.keys)[:5], randn(rng, 5, vd, dtype=dtype))  # duplicates: no new slots
    assert len(kv) == total
    assert kv.nbytes == before


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("metric", METRICS)
def test_save_load_round_trip(rng, tmp_path, metric, dtype):
    kv = new_kv(5, 3, metric, dtype)
    keys, vals = randn(rng, 9, 5, dtype=dtype), randn(rng, 9, 3, dtype=dtype)
    kv.add(keys, vals)
    v2 = randn(rng, 1, 3, dtype=dtype)
    kv.add(keys[4:5], v2)  # slot 4 now holds the mean of two values
    path = tmp_path / "kv.safetensors"
    kv.save(str(path))
    loaded = lx.KeyValueMemory.load(str(path))
    assert len(loaded) == len(kv) == 9
    assert np.array_equal(to_numpy(loaded.keys), to_numpy(kv.keys))
    assert np.array_equal(to_numpy(loaded.values), to_numpy(kv.values))
    assert to_numpy(loaded.values).dtype == np.dtype(dtype)
    Q = randn(rng, 4, 5, dtype=dtype)
    for a, b in zip(kv.search(Q, 4), loaded.search(Q, 4)):  # metric survives
        assert np.array_equal(to_numpy(a), to_numpy(b))
    # the per-key counts survive: a third value under key 4 makes the mean of three
    v3 = randn(rng, 1, 3, dtype=dtype)
    for m in (kv, loaded):
        assert np.array_equal(to_numpy(m.add(keys[4:5], v3)), [4])
    expect = (vals[4].astype(np.float64) + v2[0] + v3[0]) / 3.0
    np.testing.assert_allclose(to_numpy(loaded.values)[4], expect, rtol=tol(dtype, 1e-6, 1e-14),
                               atol=tol(dtype, 1e-6, 1e-14))
    assert np.array_equal(to_numpy(loaded.values), to_numpy(kv.values))


def test_empty_memory_save_load(tmp_path):
    kv = new_kv(3, 2, "l2", np.float64)
    kv.save(str(tmp_path / "e.safetensors"))
    loaded = lx.KeyValueMemory.load(str(tmp_path / "e.safetensors"))
    assert len(loaded) == 0
    assert np.array_equal(to_numpy(loaded.add(np.ones((1, 3)), np.ones((1, 2)))), [0])


@pytest.mark.parametrize("metric", METRICS)
def test_search_and_read_follow_adds(rng, metric):
    """Cached key data (norms, index) must follow every add, including duplicate merges."""
    kv = new_kv(6, 3, metric, np.float32)
    keys = unit_rows(rng, 30, 6, np.float32)
    vals = randn(rng, 30, 3, dtype=np.float32)
    kv.add(keys[:20], vals[:20])
    assert np.array_equal(to_numpy(kv.read(keys[25:27])).shape, (2, 3))
    kv.add(keys[20:], vals[20:])
    idx, _ = kv.search(keys[25:27], 1)
    assert np.array_equal(to_numpy(idx)[:, 0], [25, 26])
    assert np.array_equal(to_numpy(kv.read(keys[25:27])), vals[25:27])
    v_new = randn(rng, 1, 3, dtype=np.float32)
    kv.add(keys[25:26], v_new)  # duplicate: slot 25 becomes a mean
    expect = (vals[25].astype(np.float64) + v_new[0]) / 2
    np.testing.assert_allclose(to_numpy(kv.read(keys[25:26]))[0], expect, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("metric", METRICS)
def test_search_many_keys(rng, metric):
    """A few thousand keys (several blocks / threads): search == topk == numpy reference."""
    kv = new_kv(16, 2, metric, np.float32)
    keys = randn(rng, 3000, 16, dtype=np.float32)
    kv.add(keys, randn(rng, 3000, 2, dtype=np.float32))
    Q = randn(rng, 5, 16, dtype=np.float32)
    idx, sc = kv.search(Q, 50)
    assert_topk_valid(idx, sc, Q, keys, 50, metric, atol=1e-5)
    ridx, _ = lx.topk(Q, keys, 50, metric=metric)
    assert np.array_equal(to_numpy(idx), to_numpy(ridx))


def test_nbytes_counts_what_is_stored_and_reserved_nbytes_the_allocation(rng):
    """A one-row store reports its row, not the 64 MiB chunk allocated for it (issue: memory
    at scale); reserved_nbytes reports the chunk."""
    kv = lx.KeyValueMemory(384, 7168, "cosine")
    kv.add(rng.standard_normal((1, 384)).astype(np.float32),
           rng.standard_normal((1, 7168)).astype(np.float32))
    row = (384 + 7168 + 1) * 4
    assert row <= kv.nbytes <= row + 8 + 64 + 1024, kv.nbytes
    assert kv.reserved_nbytes >= 32 * 2**20, kv.reserved_nbytes


def test_wide_rows_do_not_reserve_hundreds_of_mib(rng):
    """Chunks are capped at 64 MiB: a store of a few 7,552-wide rows (the default model's
    long-context key + value) reserves one capped chunk, not 16,384 rows (472 MiB)."""
    kv = lx.KeyValueMemory(384, 7168, "cosine")
    kv.add(rng.standard_normal((11, 384)).astype(np.float32),
           rng.standard_normal((11, 7168)).astype(np.float32))
    assert kv.reserved_nbytes <= 70 * 2**20, kv.reserved_nbytes
    assert kv.nbytes <= 11 * ((384 + 7168 + 1) * 4 + 8 + 64) + 1024, kv.nbytes
    # growing past one chunk keeps every row readable
    n = 64 * 2**20 // ((384 + 7168 + 1) * 4) + 5
    keys = rng.standard_normal((n, 384)).astype(np.float32)
    values = rng.standard_normal((n, 7168)).astype(np.float32)
    kv.add(keys, values)
    got = kv.read(keys[-3:], k=1)
    assert np.array_equal(got, values[-3:])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_reconstruct_returns_values_by_id(rng, dtype):
    kv = new_kv(6, 5, dtype=dtype)
    keys, vals = unit_rows(rng, 9, 6, dtype), randn(rng, 9, 5, dtype=dtype)
    kv.add(keys, vals)
    ids = np.array([8, 0, 3, 3], np.int64)
    got = to_numpy(kv.reconstruct(ids))
    assert_ndarray(got, dtype, (4, 5), "values")
    assert np.array_equal(got, vals[ids])
    assert to_numpy(kv.reconstruct(np.zeros(0, np.int64))).shape == (0, 5)
    for bad in ([9], [-1], [[0, 1]]):
        with pytest.raises(ValueError, match="ids"):
            kv.reconstruct(np.array(bad))
    with pytest.raises(ValueError, match="ids"):
        kv.reconstruct(np.array([0.5]))
    assert np.array_equal(to_numpy(kv.values), vals)      # a refused call changed nothing


@pytest.mark.parametrize("metric", METRICS)
def test_search_and_reconstruct_equals_search_then_reconstruct(rng, metric):
    kv = new_kv(8, 3, metric)
    kv.add(unit_rows(rng, 40, 8, np.float32), randn(rng, 40, 3, dtype=np.float32))
    Q = randn(rng, 5, 8, dtype=np.float32)
    ids, scores, values = (to_numpy(x) for x in kv.search_and_reconstruct(Q, 4))
    ids2, scores2 = (to_numpy(x) for x in kv.search(Q, 4))
    assert np.array_equal(ids, ids2) and np.array_equal(scores, scores2)
    assert values.shape == (5, 4, 3)
    assert np.array_equal(values, to_numpy(kv.reconstruct(ids.ravel())).reshape(5, 4, 3))
    with pytest.raises(ValueError, match="k"):
        kv.search_and_reconstruct(Q, 41)


def test_merge_identical_off_keeps_every_row(rng, tmp_path):
    kv = lx.KeyValueMemory(4, 2, merge_identical=False)
    key = unit_rows(rng, 1, 4, np.float32)
    ids = to_numpy(kv.add(np.repeat(key, 3, 0), np.arange(6, dtype=np.float32).reshape(3, 2)))
    assert np.array_equal(ids, [0, 1, 2]) and len(kv) == 3
    assert np.array_equal(to_numpy(kv.reconstruct(ids)), np.arange(6).reshape(3, 2))
    kv.save(tmp_path / "m.safetensors")
    back = lx.KeyValueMemory.load(tmp_path / "m.safetensors")
    assert not back.merge_identical and len(back) == 3
    assert np.array_equal(to_numpy(back.values), to_numpy(kv.values))
    merged = lx.KeyValueMemory(4, 2)
    assert merged.merge_identical
    merged.add(np.repeat(key, 3, 0), np.zeros((3, 2), np.float32))
    assert len(merged) == 1
    with pytest.raises(TypeError, match="merge_identical"):
        lx.KeyValueMemory(4, 2, merge_identical="no")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_key_sq_norms_by_id(rng, dtype):
    kv = new_kv(6, 2, "ip", dtype)
    keys = randn(rng, 9, 6, dtype=dtype)
    kv.add(keys, randn(rng, 9, 2, dtype=dtype))
    ids = np.array([8, 0, 3, 3], np.int64)
    got = to_numpy(kv.key_sq_norms(ids))
    assert_ndarray(got, dtype, (4,), "key_sq_norms")
    assert_rel(got, (f64(keys[ids]) ** 2).sum(1), tol(dtype, 1e-6, 1e-14))
    assert to_numpy(kv.key_sq_norms(np.zeros(0, np.int64))).shape == (0,)
    for bad in ([9], [-1], [[0, 1]]):
        with pytest.raises(ValueError, match="ids"):
            kv.key_sq_norms(np.array(bad))


def test_load_streams_blocks_into_the_store_and_checks_every_digest(rng, tmp_path, monkeypatch):
    """KeyValueMemory.load reads the file in blocks of rows (here of 3 rows), so the store
    is built without the whole file in memory; the result is the saved store, and damage
    in the last block is still refused, by name, after the first blocks were read."""
    from larimar_ext import _persist
    kv = lx.KeyValueMemory(8, 5, "l2")
    kv.add(rng.standard_normal((10, 8)).astype(np.float32),
           rng.standard_normal((10, 5)).astype(np.float32))
    kv.add(to_numpy(kv.keys)[:2], np.ones((2, 5), np.float32))  # counts of 2
    path = tmp_path / "kv.safetensors"
    kv.save(path)
    blocks = _persist.RowFile.blocks
    seen = []

    def small_blocks(self, block_bytes=0):
        for block in blocks(self, block_bytes=3 * 8 * 4):
            seen.append(len(block["keys"]))
            yield block

    monkeypatch.setattr(_persist.RowFile, "blocks", small_blocks)
    back = lx.KeyValueMemory.load(path)
    assert seen == [3, 3, 3, 1]
    assert np.array_equal(back.keys, kv.keys) and np.array_equal(back.values, kv.values)
    assert np.array_equal(back._core.counts(), kv._core.counts())
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # the last bytes of the data: counts of the last row, in the last block
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"path: .*fails its checksum"):
        lx.KeyValueMemory.load(path)
