"""Int8-only keys: a store with key_codes="int8-only" keeps each key as its 7-bit codes and a
scale, the key becoming their decoding. Everything it returns is what a float store holding
those decoded keys returns (same ids, same score bits, same order), on every scan path this
CPU has and on data made to trip the bounded shortlist; its files keep the codes bit for bit;
bad codes are refused without touching the store."""
import numpy as np
import pytest
from hypothesis import given, settings

import larimar_ext as lx
from larimar_ext import _core
from references import DTYPE_IDS, DTYPES, METRICS
from test_int8_keys import (STORE_CASES, adversarial_keys, assert_same_reads_and_writes,  # noqa: F401
                            assert_same_search, fill, isa)

LEVELS = 63


def coded_and_decoded(keys, metric, dtype, merge=False, rows_per_add=None):
    """An int8-only store of keys, and a float store of its decoded keys."""
    coded = lx.KeyValueMemory(keys.shape[1], 1, metric, dtype, merge_identical=merge,
                              key_codes="int8-only")
    fill((coded,), keys, rows_per_add)
    plain = lx.KeyValueMemory(keys.shape[1], 1, metric, dtype, merge_identical=merge)
    fill((plain,), coded.keys)
    return coded, plain


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("metric", METRICS)
def test_search_equals_float_search_of_the_decoded_keys(rng, isa, metric, dtype):  # noqa: F811
    n, d = 1500, 37  # d not a multiple of 4; rows end inside a tile
    keys, direction = adversarial_keys(rng, n, d, dtype)
    coded, plain = coded_and_decoded(keys, metric, dtype, rows_per_add=257)
    queries = rng.standard_normal((300, d)).astype(dtype)
    queries[:20] = direction
    queries[20:40] *= 1e3
    queries[40:60] *= 1e-3
    queries[60] = coded.keys[50]
    for nq in (1, 5, 9, 300):
        for k in (1, 7, 60):
            assert_same_search(plain, coded, queries[:nq], k)
    assert_same_search(plain, coded, queries[:1], n)


@settings(max_examples=40, deadline=None)
@given(**STORE_CASES)
def test_search_equals_float_search_property(seed, n, d, nq, metric, scale, repeats):
    rng = np.random.default_rng(seed)
    keys = (rng.standard_normal((n, d)) * scale).astype(np.float32)
    if repeats:
        keys[rng.integers(0, n, repeats)] = keys[0]
    coded, plain = coded_and_decoded(keys, metric, np.float32)
    Q = (rng.integers(-3, 4, (nq, d)) * scale).astype(np.float32)
    assert_same_search(plain, coded, Q, int(rng.integers(1, n + 1)))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_a_key_is_its_codes_decoding_within_half_a_step(rng, dtype):
    keys = rng.standard_normal((200, 24)) * np.exp(rng.uniform(-7, 7, (200, 1)))
    keys = keys.astype(dtype)
    store = lx.KeyValueMemory(24, 1, dtype=dtype, merge_identical=False, key_codes="int8-only")
    fill((store,), keys)
    codes, scales = store.codes
    assert codes.dtype == np.int8 and np.abs(codes).max() == LEVELS
    np.testing.assert_allclose(scales, np.abs(keys).max(1) / LEVELS, rtol=4 * np.finfo(dtype).eps)
    np.testing.assert_array_equal(store.keys, scales[:, None] * codes.astype(dtype))
    step = scales[:, None]
    assert np.all(np.abs(keys - store.keys) <= step * (0.5 + 1e-5))


@pytest.mark.parametrize("metric", METRICS)
def test_queries_the_codes_cannot_bound_are_scored_from_the_decoded_keys(rng, metric):
    # a cosine query of (near) zero norm and a search of 300 queries with both fall back to
    # scoring every key: the result is still the float store's over the decoded keys
    keys = rng.standard_normal((700, 16)).astype(np.float32)
    coded, plain = coded_and_decoded(keys, metric, np.float32)
    Q = rng.standard_normal((300, 16)).astype(np.float32)
    Q[3] *= 1e-30
    for nq in (4, 300):
        assert_same_search(plain, coded, Q[:nq], 5)


def test_overflowing_scores_are_refused_as_the_float_store_refuses_them(rng):
    keys = rng.standard_normal((50, 8)).astype(np.float32)
    keys[7] = 3e38
    coded, plain = coded_and_decoded(keys, "ip", np.float32)
    for store in (plain, coded):
        with pytest.raises(ValueError, match="overflow"):
            store.search(np.full((1, 8), 3e38, np.float32), 1)


def test_reads_writes_and_merges_go_through_the_decoded_keys(rng):
    keys = rng.standard_normal((400, 16)).astype(np.float32)
    values = rng.standard_normal((400, 3)).astype(np.float32)
    coded = lx.KeyValueMemory(16, 3, "l2", key_codes="int8-only")
    coded.add(keys, values)
    coded.add(keys[:10], values[:10])     # the same keys decode alike: they merge
    assert len(coded) == 400
    plain = lx.KeyValueMemory(16, 3, "l2")
    plain.add(coded.keys, values)
    plain.add(coded.keys[:10], values[:10])
    assert_same_reads_and_writes(plain, coded, rng.standard_normal((10, 16)).astype(np.float32),
                                 values[:10])
    ids = np.arange(5)
    np.testing.assert_array_equal(coded.key_sq_norms(ids), plain.key_sq_norms(ids))


def test_bytes_file_and_load_keep_the_codes_bit_for_bit(rng, tmp_path):
    n, d, v = 100, 10, 3
    keys = rng.standard_normal((n, d)).astype(np.float32)
    coded = lx.KeyValueMemory(d, v, merge_identical=False, key_codes="int8-only")
    coded.add(keys, rng.standard_normal((n, v)).astype(np.float32))
    float_store = lx.KeyValueMemory(d, v, merge_identical=False)
    float_store.add(keys, coded.values)
    padded_rows, padded_dim = 112, 12
    # the float keys' bytes are gone, the codes' and their facts' come instead
    assert (float_store.nbytes - coded.nbytes
            == n * 4 * d - (padded_rows * padded_dim + n * (4 * 4 + 4)))
    path = tmp_path / "m.safetensors"
    coded.save(path)
    loaded = lx.KeyValueMemory.load(path)
    assert loaded.key_codes == "int8-only"
    for a, b in zip(loaded.codes, coded.codes):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.keys, coded.keys)
    np.testing.assert_array_equal(loaded.values, coded.values)
    assert_same_search(coded, loaded, rng.standard_normal((3, d)).astype(np.float32), 5)
    float_store.save(tmp_path / "plain.safetensors")
    assert path.stat().st_size < (tmp_path / "plain.safetensors").stat().st_size
    with pytest.raises(ValueError, match="load"):
        lx.KeyValueMemory.open(path)


def bad_codes_cases(d):
    good = np.zeros((2, d), np.int8)
    return [
        (np.full((2, d), 64, np.int8), np.ones(2, np.float32), "codes"),
        (np.full((2, d), -128, np.int8), np.ones(2, np.float32), "codes"),
        (good, np.array([1.0, -1.0], np.float32), "scales"),
        (good, np.array([1.0, np.nan], np.float32), "scales"),
        (np.full((2, d), LEVELS, np.int8), np.array([1.0, 3e38], np.float32), "scales"),
        (np.zeros((2, d - 1), np.int8), np.ones(2, np.float32), "codes"),
        (good, np.ones(3, np.float32), "scales"),
    ]


@pytest.mark.parametrize("case", range(7))
def test_bad_codes_are_refused_and_leave_the_store_intact(rng, case):
    d = 6
    store = lx.KeyValueMemory(d, 1, key_codes="int8-only")
    store.add(rng.standard_normal((4, d)).astype(np.float32), np.ones((4, 1), np.float32))
    before = store.keys
    codes, scales, name = bad_codes_cases(d)[case]
    with pytest.raises(ValueError, match=name):
        store._core.append_codes(codes, scales, np.ones((2, 1), np.float32), np.ones(2))
    assert len(store) == 4
    np.testing.assert_array_equal(store.keys, before)


def test_codes_are_refused_where_a_store_keeps_float_keys(rng):
    plain = lx.KeyValueMemory(4, 1)
    with pytest.raises(ValueError, match="key_codes"):
        plain.codes
    with pytest.raises(ValueError, match="codes"):
        plain._core.append_codes(np.zeros((1, 4), np.int8), np.ones(1, np.float32),
                                 np.ones((1, 1), np.float32), np.ones(1))
    assert len(plain) == 0
    with pytest.raises(ValueError, match="key_codes"):
        _core.KeyViewF32(np.ones((3, 4), np.float32), "ip", "int8-only")


def test_a_load_of_many_pieces_and_chunks_keeps_every_row(rng, tmp_path):
    # 20,000 rows: codes come back 256 at a time, into more than one chunk of the store
    keys = rng.standard_normal((20_000, 8)).astype(np.float32)
    store = lx.KeyValueMemory(8, 1, merge_identical=False, key_codes="int8-only")
    fill((store,), keys, rows_per_add=3000)
    store.save(tmp_path / "m.safetensors")
    back = lx.KeyValueMemory.load(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(back.keys, store.keys)
    np.testing.assert_array_equal(back.values, store.values)
    assert_same_search(store, back, rng.standard_normal((9, 8)).astype(np.float32), 4)
