"""Int8 key codes: a store with key_codes="int8" returns exactly what the float store returns
(same ids, same score bits, same order), on every scan path this CPU has, on data made to
trip a bounded shortlist: near-ties, duplicates, norms spread over 1e-3..1e3, zero keys."""
import os
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import larimar_ext as lx
from larimar_ext import _core
from references import DTYPE_IDS, DTYPES, METRICS

ISAS = _core.int8_isas()


@pytest.fixture(params=ISAS)
def isa(request):
    _core.set_int8_isa(request.param)
    yield request.param
    _core.set_int8_isa("auto")


def pair(d, metric, dtype, merge=True):
    """The same store twice: float search, and int8 codes."""
    return (lx.KeyValueMemory(d, 1, metric, dtype, merge_identical=merge),
            lx.KeyValueMemory(d, 1, metric, dtype, merge_identical=merge, key_codes="int8"))


def fill(stores, keys, rows_per_add=None):
    values = np.arange(len(keys), dtype=keys.dtype)[:, None]
    step = rows_per_add or len(keys)
    for lo in range(0, len(keys), step):
        for s in stores:
            s.add(keys[lo:lo + step], values[lo:lo + step])


def assert_same_search(plain, coded, Q, k):
    ids_f, scores_f = plain.search(Q, k)
    ids_c, scores_c = coded.search(Q, k)
    np.testing.assert_array_equal(ids_c, ids_f)
    # bitwise: the int8 store re-scores with the float store's own arithmetic
    width = np.int32 if scores_f.dtype == np.float32 else np.int64
    np.testing.assert_array_equal(scores_c.view(width), scores_f.view(width))


def adversarial_keys(rng, n, d, dtype):
    """Rows with norms 1e-3..1e3, a block of near-ties (one direction, perturbed by a few
    ulps), exact duplicates and a zero row."""
    base = rng.standard_normal((n, d))
    base *= np.exp(rng.uniform(np.log(1e-3), np.log(1e3), (n, 1)))
    keys = base.astype(dtype)
    ties = min(n // 4, 40)
    direction = rng.standard_normal(d).astype(dtype)
    for i in range(ties):
        keys[i] = direction
        keys[i, i % d] = np.nextafter(direction[i % d], np.inf, dtype=dtype)
    keys[ties:2 * ties] = keys[2 * ties:3 * ties]   # duplicates (merge_identical=False)
    keys[-1] = 0
    return keys, direction


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("metric", METRICS)
def test_int8_search_equals_float_search_on_adversarial_keys(rng, isa, metric, dtype):
    n, d = 1500, 37  # d not a multiple of 4; rows end inside a tile
    keys, direction = adversarial_keys(rng, n, d, dtype)
    plain, coded = pair(d, metric, dtype, merge=False)
    fill((plain, coded), keys, rows_per_add=257)
    queries = rng.standard_normal((300, d)).astype(dtype)   # two query blocks of the search
    queries[:20] = direction                                 # aimed at the near-ties
    queries[20:40] *= 1e3
    queries[40:60] *= 1e-3
    queries[60] = keys[50]                                   # a stored duplicate
    for nq in (1, 5, 9, 300):       # dot-product batches and GEMM batches
        for k in (1, 7, 60):        # 60: more than the near-ties
            assert_same_search(plain, coded, queries[:nq], k)
    single = queries[:1]
    assert_same_search(plain, coded, single, n)   # k = every key


@pytest.mark.parametrize("metric", METRICS)
def test_int8_search_on_merging_store_and_many_chunks(rng, isa, metric):
    # 20,000 rows: past one chunk (16,384) of the store; keys repeat, so slots merge
    n, d = 20_000, 12
    keys = rng.standard_normal((n, d)).astype(np.float32)
    keys[n // 2:n // 2 + 500] = keys[:500]
    plain, coded = pair(d, metric, np.float32)
    fill((plain, coded), keys, rows_per_add=4096)
    assert len(plain) == len(coded) == n - 500
    queries = rng.standard_normal((40, d)).astype(np.float32)
    for nq in (1, 40):
        assert_same_search(plain, coded, queries[:nq], 5)


def test_every_scan_path_computes_the_same_result(rng):
    keys = rng.standard_normal((3000, 64)).astype(np.float32)
    coded = lx.KeyValueMemory(64, 1, "ip", key_codes="int8")
    fill((coded,), keys)
    Q = rng.standard_normal((11, 64)).astype(np.float32)
    results = []
    try:
        for name in ISAS:
            _core.set_int8_isa(name)
            results.append(coded.search(Q, 4))
    finally:
        _core.set_int8_isa("auto")
    for ids, scores in results[1:]:
        np.testing.assert_array_equal(ids, results[0][0])
        np.testing.assert_array_equal(scores, results[0][1])


# Stores of 1-300 keys of 1-70 dimensions at three scales, some rows repeated.
STORE_CASES = dict(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 300), d=st.integers(1, 70),
                   nq=st.integers(1, 12), metric=st.sampled_from(METRICS),
                   scale=st.sampled_from([1e-3, 1.0, 1e3]), repeats=st.integers(0, 5))


@settings(max_examples=40, deadline=None)
@given(**STORE_CASES)
def test_int8_search_equals_float_search_property(seed, n, d, nq, metric, scale, repeats):
    rng = np.random.default_rng(seed)
    # few distinct values: many exact ties and duplicated rows
    keys = (rng.integers(-3, 4, (n, d)) * scale).astype(np.float32)
    if repeats:
        keys[rng.integers(0, n, repeats)] = keys[0]
    plain, coded = pair(d, metric, np.float32, merge=False)
    fill((plain, coded), keys)
    Q = (rng.integers(-3, 4, (nq, d)) * scale).astype(np.float32)
    assert_same_search(plain, coded, Q, int(rng.integers(1, n + 1)))


def test_float_search_gives_the_same_bits_for_every_batch_size(rng):
    # batches of more than 8 queries are scanned by a GEMM and re-scored: the result is each
    # query's own single-query search, bit for bit
    keys = rng.standard_normal((5000, 48)).astype(np.float32)
    keys[100:140] = keys[99]   # ties that fill the GEMM path's kept band: its fallback
    store = lx.KeyValueMemory(48, 1, "ip", merge_identical=False)
    fill((store,), keys)
    Q = rng.standard_normal((20, 48)).astype(np.float32)
    Q[3] = keys[99]
    ids, scores = store.search(Q, 3)
    for i in range(len(Q)):
        one_ids, one_scores = store.search(Q[i:i + 1], 3)
        np.testing.assert_array_equal(ids[i], one_ids[0])
        np.testing.assert_array_equal(scores[i].view(np.int32), one_scores[0].view(np.int32))


@pytest.mark.parametrize("key_codes", [None, "int8"])
def test_a_gemm_batch_whose_error_band_is_nan_is_searched_exactly(key_codes):
    # |q|^2 overflows float32 and every key is zero: the GEMM band is inf * 0. The scores
    # themselves are finite (all 0), so the search answers: ids in order, every score 0.
    store = lx.KeyValueMemory(4, 1, "ip", merge_identical=False, key_codes=key_codes)
    store.add(np.zeros((5, 4), np.float32), np.zeros((5, 1), np.float32))
    ids, scores = store.search(np.full((9, 4), 1e20, np.float32), 3)
    np.testing.assert_array_equal(ids, np.tile([0, 1, 2], (9, 1)))
    np.testing.assert_array_equal(scores, np.zeros((9, 3), np.float32))


def test_reads_and_writes_go_through_the_codes(rng):
    keys = rng.standard_normal((400, 16)).astype(np.float32)
    values = rng.standard_normal((400, 3)).astype(np.float32)
    plain = lx.KeyValueMemory(16, 3, "l2")
    coded = lx.KeyValueMemory(16, 3, "l2", key_codes="int8")
    for s in (plain, coded):
        s.add(keys, values)
    assert_same_reads_and_writes(plain, coded, rng.standard_normal((10, 16)).astype(np.float32),
                                 values[:10])


def assert_same_reads_and_writes(plain, coded, Q, values):
    """Hard and soft reads at Q agree, and so do the values after the same soft write."""
    np.testing.assert_array_equal(coded.read(Q), plain.read(Q))
    np.testing.assert_array_equal(coded.read(Q, 4, alpha=0.5), plain.read(Q, 4, alpha=0.5))
    for s in (plain, coded):
        s.write(Q, values, 3, 0.5)
    np.testing.assert_array_equal(coded.values, plain.values)


def test_codes_are_counted_in_nbytes_and_survive_save_and_load(rng, tmp_path):
    n, d = 100, 10
    keys = rng.standard_normal((n, d)).astype(np.float32)
    plain, coded = pair(d, "cosine", np.float32)
    fill((plain, coded), keys)
    padded_rows, padded_dim = 112, 12       # whole tiles of 16 rows, groups of 4 dimensions
    assert coded.nbytes - plain.nbytes == padded_rows * padded_dim + n * (4 * 4 + 4)
    assert coded.key_codes == "int8" and plain.key_codes is None
    coded.save(tmp_path / "m.safetensors")
    loaded = lx.KeyValueMemory.load(tmp_path / "m.safetensors")
    assert loaded.key_codes == "int8"
    Q = rng.standard_normal((3, d)).astype(np.float32)
    assert_same_search(plain, loaded, Q, 5)


def test_overflowing_scores_are_refused_as_the_float_store_refuses_them(rng):
    keys = rng.standard_normal((50, 8)).astype(np.float32)
    keys[7] = 3e38
    plain, coded = pair(8, "ip", np.float32)
    fill((plain, coded), keys)
    Q = np.full((1, 8), 3e38, np.float32)
    for store in (plain, coded):
        with pytest.raises(ValueError, match="overflow"):
            store.search(Q, 1)


@pytest.mark.parametrize("codes,error,match", [
    ("int4", ValueError, "key_codes"), (8, TypeError, "key_codes"), ("", ValueError, "key_codes")])
def test_bad_key_codes_are_refused(codes, error, match):
    with pytest.raises(error, match=match):
        lx.KeyValueMemory(4, 1, key_codes=codes)


def test_int8_codes_refuse_keys_too_wide_for_int32_sums():
    with pytest.raises(ValueError, match="key_dim"):
        lx.KeyValueMemory(70_000, 1, key_codes="int8")


def test_an_unknown_scan_path_is_refused_and_changes_nothing():
    before = _core.info()["int8_isa"]
    with pytest.raises(ValueError, match="isa"):
        _core.set_int8_isa("avx9000")
    assert _core.info()["int8_isa"] == before == ISAS[0]


def near_copies(rng, n, d):
    """n keys that all lie within a few ulps of one direction: every bound overlaps every
    other, so each query's shortlist holds all of them (the wide-shortlist path)."""
    direction = rng.standard_normal(d).astype(np.float32)
    keys = np.repeat(direction[None], n, axis=0)
    keys *= (1 + rng.integers(-8, 9, (n, 1)) * np.finfo(np.float32).eps).astype(np.float32)
    return keys, direction


def test_a_wide_shortlist_gets_the_float_search_result(rng, isa):
    n, d = 3000, 24
    keys, direction = near_copies(rng, n, d)
    plain, coded = pair(d, "cosine", np.float32, merge=False)
    fill((plain, coded), keys)
    Q = np.concatenate([np.repeat(direction[None], 3, axis=0),
                        rng.standard_normal((5, d)).astype(np.float32)])
    for k in (1, 2, 50):
        assert_same_search(plain, coded, Q, k)


def resident_fraction(array: np.ndarray) -> float:
    """The share of array's pages in memory now (libc mincore), or -1 where it cannot say."""
    import ctypes
    import mmap
    libc = ctypes.CDLL(None, use_errno=True)
    page = mmap.PAGESIZE
    lo = array.ctypes.data // page * page
    length = array.ctypes.data + array.nbytes - lo
    vec = (ctypes.c_ubyte * ((length + page - 1) // page))()
    if libc.mincore(ctypes.c_void_p(lo), ctypes.c_size_t(length), vec) != 0:
        return -1.0
    return sum(v & 1 for v in vec) / len(vec)


def mapped_from_disk(keys: np.ndarray, path) -> np.ndarray:
    """keys saved to path and mapped back, their pages dropped from the page cache."""
    np.save(path, keys)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return np.load(path, mmap_mode="r")


@pytest.mark.parametrize("where", ["in-memory", "mapped, in the page cache", "mapped, on disk"])
def test_a_key_view_knows_keys_on_disk_and_searches_every_kind_exactly(rng, tmp_path, where):
    # The view asks where the keys are once its own pass has read them all: a mapped file
    # that fits in memory is resident by then (a model's weights fresh from their
    # checkpoint), so it is not taken for keys on disk; searches stay exact with its pages
    # dropped again.
    n, d = 3000, 24
    keys, direction = near_copies(rng, n, d)
    if where != "in-memory":
        keys = mapped_from_disk(keys, tmp_path / "keys.npy")
        if where == "mapped, in the page cache":
            keys.sum()   # read: every page resident
    if where == "mapped, on disk" and not 0 <= resident_fraction(keys) < 1:
        pytest.skip("this file system kept the pages in memory (or mincore failed)")
    view = _core.KeyViewF32(keys, "cosine", "int8")
    after = resident_fraction(keys) if where != "in-memory" else 1.0
    assert 0 <= after <= 1
    assert view.keys_may_be_mapped is (after < 1)
    if where == "mapped, on disk":
        with open(tmp_path / "keys.npy", "rb") as f:   # the pages gone again for the searches
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    plain = _core.KeyViewF32(keys, "cosine")
    Q = np.concatenate([direction[None], rng.standard_normal((3, d)).astype(np.float32)])
    for k in (1, 50):
        ids, scores = view.search(Q, k)
        want_ids, want_scores = plain.search(Q, k)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(scores.view(np.int32), want_scores.view(np.int32))


@pytest.mark.parametrize("metric", METRICS)
def test_hints_start_the_screen_and_never_change_the_result(rng, isa, metric):
    n, d = 2000, 40
    keys, direction = adversarial_keys(rng, n, d, np.float32)
    view = _core.KeyViewF32(keys, metric, "int8")
    plain = _core.KeyViewF32(keys, metric)
    Q = rng.standard_normal((50, d)).astype(np.float32)
    Q[:10] = direction                                   # near-ties: hints among equals
    Q[10:20] = keys[rng.integers(0, n, 10)] * 1.001      # near a stored key
    for k in (1, 3, 10):
        want_ids, want_scores = plain.search(Q, k)
        right = want_ids                                  # the answer itself (k hints)
        wrong = rng.integers(0, n, (len(Q), k + 2))       # anything
        repeated = np.repeat(want_ids[:, :1], k + 1, 1)   # one distinct hint, k + 1 times
        for hints in (right, wrong, repeated, np.concatenate([right, wrong], 1)):
            ids, scores = view.search(Q, k, hints)
            np.testing.assert_array_equal(ids, want_ids)
            np.testing.assert_array_equal(scores.view(np.int32), want_scores.view(np.int32))


def test_bad_hints_are_refused_naming_them(rng):
    keys = rng.standard_normal((100, 8)).astype(np.float32)
    view = _core.KeyViewF32(keys, "cosine", "int8")
    Q = rng.standard_normal((3, 8)).astype(np.float32)
    want = view.search(Q, 2)
    for hints, match in ((np.zeros((2, 1), np.int64), "one row per query"),
                         (np.zeros(3, np.int64), "one row per query"),
                         (np.zeros((3, 0), np.int64), "h >= 1"),
                         (np.full((3, 1), 100), r"\[0, 100\)"),
                         (np.full((3, 1), -1), r"\[0, 100\)")):
        with pytest.raises(ValueError, match="hints") as err:
            view.search(Q, 2, hints)
        assert re.search(match, str(err.value))
    np.testing.assert_array_equal(view.search(Q, 2)[0], want[0])


def low_rank_keys(rng, n: int, d: int, rank: int, noise: float):
    """Keys (n, d) float32 near a rank-dimensional subspace (basis (rank, d), returned too),
    with norms over six decades, rows 100-139 duplicates of row 99, rows 140-179 one-ulp
    steps from it, and a zero last row: the projected screens' adversarial table."""
    basis = rng.standard_normal((rank, d))
    keys = rng.standard_normal((n, rank)) @ basis + noise * rng.standard_normal((n, d))
    keys = keys.astype(np.float32)
    keys *= np.exp(rng.uniform(np.log(1e-3), np.log(1e3), (n, 1))).astype(np.float32)
    keys[100:140] = keys[99]                                     # duplicates
    keys[140:180] = keys[99] * (1 + np.arange(40, dtype=np.float32)[:, None] * 2 ** -23)
    keys[-1] = 0
    return keys, basis


def test_the_projected_screen_answers_hinted_searches_exactly(rng, isa):
    # A large cosine view, hinted: the screen over the keys' top principal directions answers
    # most queries from their survivors (keys in a low-dimensional subspace plus noise, rows
    # in near-ties, duplicates and a zero row); every answer is the float search's.
    n, d = 6000, 64
    keys, _ = low_rank_keys(rng, n, d, 12, 0.05)
    view = _core.KeyViewF32(keys, "cosine", "int8", neighbourhoods=False)
    plain = _core.KeyViewF32(keys, "cosine")
    Q = keys[rng.integers(0, n - 1, 200)] + 0.2 * rng.standard_normal((200, d)).astype(np.float32)
    Q[:20] = keys[99]                                             # aimed at the ties
    unbuilt = view.nbytes
    for k in (1, 3):
        want_ids, want_scores = plain.search(Q, k)
        before = view.projected_answers
        for hints in (want_ids, np.concatenate([want_ids, rng.integers(0, n, (200, 2))], 1),
                      rng.integers(0, n, (200, k))):
            ids, scores = view.search(Q, k, hints)
            np.testing.assert_array_equal(ids, want_ids)
            np.testing.assert_array_equal(scores.view(np.int32), want_scores.view(np.int32))
        assert view.projected_answers - before >= 200   # the right hints: answered there
    assert view.projected_dims == 24                       # d / 3 = 21, in whole groups of 4
    r = view.projected_dims                    # nbytes counts the screen once it is built:
    assert view.nbytes - unbuilt == (d * r * 8 + 6000 * r + n * (4 * 4 + 4 + 4)  # basis, codes
                                     + 8)                                   # the zero key's id
    off = _core.KeyViewF32(keys, "cosine", "int8", projected_screen=False)
    np.testing.assert_array_equal(off.search(Q, 1, want_ids[:, :1])[0], plain.search(Q, 1)[0])
    assert off.projected_dims == 0 and off.projected_answers == 0
    assert view.projected_coarse_dims == 0                # 24 dimensions: too few for one


def test_the_coarse_screen_answers_queries_close_to_their_hints_exactly(rng, isa):
    # Queries next to their hinted key (a slot next to its token) are answered by the first
    # 16 principal directions alone; the others (farther, wrongly hinted, at ties, duplicates,
    # norms over six decades, a zero key) go on to the full screen. Every answer is the float
    # search's, and the same without the coarse screen.
    n, d = 6000, 128
    keys, basis = low_rank_keys(rng, n, d, 24, 0.3)
    view = _core.KeyViewF32(keys, "cosine", "int8", neighbourhoods=False)
    fine_only = _core.KeyViewF32(keys, "cosine", "int8", coarse_screen=False,
                                 neighbourhoods=False)
    plain = _core.KeyViewF32(keys, "cosine")
    rows = rng.integers(0, n - 1, 300)
    unit = keys[rows] / np.linalg.norm(keys[rows], axis=1, keepdims=True)
    near = unit + 0.01 * rng.standard_normal((300, d)).astype(np.float32)
    far = unit + 0.3 * rng.standard_normal((300, d)).astype(np.float32)
    Q = np.concatenate([near, far, np.repeat(keys[99:100], 20, 0)]).astype(np.float32)
    unbuilt = view.nbytes
    for k in (1, 2):
        want_ids, want_scores = plain.search(Q, k)
        for hints in (want_ids, np.concatenate([want_ids, rng.integers(0, n, (len(Q), 2))], 1),
                      rng.integers(0, n, (len(Q), k))):
            before = view.projected_coarse_answers
            for v in (view, fine_only):
                ids, scores = v.search(Q, k, hints)
                np.testing.assert_array_equal(ids, want_ids)
                np.testing.assert_array_equal(scores.view(np.int32), want_scores.view(np.int32))
            if hints is want_ids and k == 1:
                assert view.projected_coarse_answers - before >= 250   # the near ones
    # A key b just off a, along a direction the leading ones leave out, and a query between
    # them closer to b, hinted with a: only the residual bound keeps b in the coarse screen.
    e = rng.standard_normal((40, d))
    e -= (e @ np.linalg.pinv(basis)) @ basis            # out of the keys' principal span
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    a = rng.integers(200, n - 1, 40)
    ua = keys[a] / np.linalg.norm(keys[a], axis=1, keepdims=True)
    b = np.arange(180, 220)
    keys[b] = (ua + 0.05 * e) * np.linalg.norm(keys[a], axis=1, keepdims=True)
    tight = _core.KeyViewF32(keys, "cosine", "int8", neighbourhoods=False)
    q = (ua + 0.03 * e).astype(np.float32)
    want_ids, want_scores = _core.KeyViewF32(keys, "cosine").search(q, 1)
    assert (want_ids[:, 0] == b).mean() > 0.9           # b is the answer, not the hint
    ids, scores = tight.search(q, 1, a[:, None])
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(scores.view(np.int32), want_scores.view(np.int32))
    assert tight.projected_coarse_answers >= 30
    assert view.projected_coarse_answers < view.projected_answers   # the far ones: full screen
    assert (view.projected_dims, view.projected_coarse_dims) == (44, 16)   # d / 3, in 4s
    assert fine_only.projected_coarse_dims == 0 and fine_only.projected_coarse_answers == 0
    assert fine_only.projected_answers > 0
    r, c, sampled = 44, 16, -(-n // 64)     # nbytes: basis, both screens, the routing sample
    assert view.nbytes - unbuilt == (d * r * 8 + 6000 * (r + c) + 2 * n * (4 * 4 + 4 + 4)
                                     + sampled * (c + 1) * 8 + 8)   # and the zero key's id


def test_neighbourhoods_answer_queries_close_to_their_hints_exactly(rng, isa):
    # A query whose hint scores a >= 0.93 is answered from the keys within cos 2 a^2 - 1 of
    # the hint, found once. Pairs at that bound's edge: b at twice the query's angle to its
    # hint a, less a little (b is the answer) or more (a is), along a direction the leading
    # principal ones leave out, so that only the neighbourhood's bound keeps the first kind;
    # a hint with duplicates (too many neighbours) and a zero key. Every answer is the float
    # search's, with neighbourhoods, without them and with no projected screen.
    n, d = 6000, 128
    keys, basis = low_rank_keys(rng, n, d, 24, 0.3)
    e = rng.standard_normal((80, d))
    e -= (e @ np.linalg.pinv(basis)) @ basis
    a = rng.choice(np.arange(300, n - 1), 80, replace=False)
    ua = keys[a] / np.linalg.norm(keys[a], axis=1, keepdims=True)
    e -= np.sum(e * ua, 1, keepdims=True) * ua                    # orthogonal to each hint
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    angle = np.arccos(rng.uniform(0.93, 0.999, 80))               # the query's to its hint
    off = np.where(np.arange(80) % 2 == 0, -1e-3, 1e-3) * angle   # b inside / outside 2 angle
    b = np.arange(200, 280)
    keys[b] = (np.cos(2 * angle + off)[:, None] * ua + np.sin(2 * angle + off)[:, None] * e)
    q = (np.cos(angle)[:, None] * ua + np.sin(angle)[:, None] * e).astype(np.float32)
    rows = rng.integers(0, n - 1, 300)
    unit = keys[rows] / np.linalg.norm(keys[rows], axis=1, keepdims=True)
    near = unit + 0.01 * rng.standard_normal((300, d)).astype(np.float32)
    Q = np.concatenate([q, near, np.repeat(keys[99:100], 20, 0)]).astype(np.float32)
    views = {"neighbourhoods": _core.KeyViewF32(keys, "cosine", "int8"),
             "screens only": _core.KeyViewF32(keys, "cosine", "int8", neighbourhoods=False),
             "no projected screen": _core.KeyViewF32(keys, "cosine", "int8",
                                                     projected_screen=False)}
    view = views["neighbourhoods"]
    plain = _core.KeyViewF32(keys, "cosine")
    for k in (1, 2):
        want_ids, want_scores = plain.search(Q, k)
        if k == 1:
            answer = np.where(np.arange(80) % 2 == 0, b, a)
            np.testing.assert_array_equal(want_ids[:80, 0], answer)   # the pairs as built
        for hints in (want_ids, np.concatenate([want_ids, rng.integers(0, n, (len(Q), 2))], 1),
                      rng.integers(0, n, (len(Q), k)), np.repeat(a[:1, None], len(Q), 0)):
            for name, v in views.items():
                ids, scores = v.search(Q, k, hints)
                np.testing.assert_array_equal(ids, want_ids, err_msg=name)
                np.testing.assert_array_equal(scores.view(np.int32), want_scores.view(np.int32),
                                              err_msg=name)
        if k == 1:
            built = view.nbytes
            # the pairs' queries with their exact hints, then with the other of the pair
            before = view.projected_neighbour_answers
            ids, _ = view.search(Q[:80], 1, a[:, None])
            np.testing.assert_array_equal(ids[:, 0], answer)
            assert view.projected_neighbour_answers - before == 80
    assert view.projected_neighbour_answers >= 300
    assert views["screens only"].projected_neighbour_answers == 0
    assert 0 < view.projected_neighbourhoods <= 2 * len(Q)
    assert view.nbytes >= built > views["screens only"].nbytes   # the neighbourhoods kept
