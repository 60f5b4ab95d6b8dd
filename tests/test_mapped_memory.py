"""MappedKeyValueMemory: a saved KeyValueMemory opened read-only in place (memory-mapped),
searched with the loaded memory's exact results; and _persist.save_streamed, which writes
such a file without holding its arrays."""
import numpy as np
import pytest

import larimar_ext as lx
from larimar_ext import _persist
from references import DTYPE_IDS, DTYPES, METRICS


def saved(tmp_path, rng, metric="cosine", dtype=np.float32, n=300, d=24, v=5):
    keys = rng.standard_normal((n, d)).astype(dtype)
    keys[10:20] = keys[:10]       # merged slots: counts above 1
    mem = lx.KeyValueMemory(d, v, metric, dtype)
    mem.add(keys, rng.standard_normal((n, v)).astype(dtype))
    path = tmp_path / "m.safetensors"
    mem.save(path)
    return mem, path


def assert_bits_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


@pytest.mark.parametrize("key_codes", [None, "int8"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("metric", METRICS)
def test_mapped_memory_answers_as_the_loaded_memory(tmp_path, rng, metric, dtype, key_codes):
    mem, path = saved(tmp_path, rng, metric, dtype)
    mapped = lx.KeyValueMemory.open(path, key_codes=key_codes)
    assert isinstance(mapped, lx.MappedKeyValueMemory)
    assert (len(mapped), mapped.key_dim, mapped.value_dim, mapped.metric) == \
        (len(mem), mem.key_dim, mem.value_dim, mem.metric)
    assert mapped.key_codes == key_codes and mapped.dtype == mem.dtype
    Q = rng.standard_normal((12, mem.key_dim)).astype(dtype)
    for nq in (1, 12):
        for got, want in zip(mapped.search(Q[:nq], 6), mem.search(Q[:nq], 6)):
            assert_bits_equal(got, want)
    for got, want in zip(mapped.search_and_reconstruct(Q, 3), mem.search_and_reconstruct(Q, 3)):
        assert_bits_equal(got, want)
    assert_bits_equal(mapped.read(Q), mem.read(Q))
    np.testing.assert_allclose(mapped.read(Q, 4, alpha=0.7), mem.read(Q, 4, alpha=0.7),
                               rtol=1e-6 if dtype == np.float32 else 1e-13)
    ids = np.array([5, 0, len(mem) - 1, 5])
    assert_bits_equal(mapped.reconstruct(ids), mem.reconstruct(ids))
    assert_bits_equal(mapped.key_sq_norms(ids), mem.key_sq_norms(ids))
    assert_bits_equal(mapped.keys, mem.keys)
    assert_bits_equal(mapped.values, mem.values)


def test_the_process_holds_norms_and_codes_only(tmp_path, rng):
    mem, path = saved(tmp_path, rng, n=1000, d=64)
    plain = lx.KeyValueMemory.open(path)
    coded = lx.KeyValueMemory.open(path, key_codes="int8")
    n = len(mem)
    assert plain.nbytes == 4 * n
    assert coded.nbytes == 4 * n + (n + 15) // 16 * 16 * 64 + n * 20
    assert plain.mapped_nbytes == mem.keys.nbytes + mem.values.nbytes


def test_a_file_over_the_memory_limit_opens_mapped_but_does_not_load(tmp_path, rng):
    mem, path = saved(tmp_path, rng)
    before = lx.get_memory_limit()
    lx.set_memory_limit(path.stat().st_size // 2)
    try:
        with pytest.raises(MemoryError, match="memory limit"):
            lx.KeyValueMemory.load(path)
        mapped = lx.KeyValueMemory.open(path)
    finally:
        lx.set_memory_limit(before)
    q = rng.standard_normal((1, mem.key_dim)).astype(np.float32)
    assert_bits_equal(mapped.search(q, 2)[0], mem.search(q, 2)[0])


def test_the_maps_are_read_only(tmp_path, rng):
    _, path = saved(tmp_path, rng)
    mapped = lx.KeyValueMemory.open(path)
    with pytest.raises(ValueError, match="read-only"):
        mapped.values[0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        mapped.keys[0, 0] = 1.0
    copy = mapped.reconstruct(np.array([0]))
    copy[...] = 7.0  # a copy: the file is untouched
    assert not np.any(mapped.values[0] == 7.0)
    assert not hasattr(mapped, "add") and not hasattr(mapped, "write")


@pytest.mark.parametrize("bad", [-1, 300, 10**12])
def test_ids_outside_the_memory_are_refused(tmp_path, rng, bad):
    _, path = saved(tmp_path, rng)
    mapped = lx.KeyValueMemory.open(path)
    for call in (mapped.reconstruct, mapped.key_sq_norms):
        with pytest.raises(ValueError, match="ids"):
            call(np.array([0, bad]))


def test_a_corrupted_file_is_refused_unless_verify_is_off(tmp_path, rng):
    mem, path = saved(tmp_path, rng)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF                          # a byte of the last array
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        lx.KeyValueMemory.open(path)
    lx.KeyValueMemory.open(path, verify=False)   # the caller said the file is trusted


def test_empty_and_foreign_files_are_refused(tmp_path, rng):
    empty = lx.KeyValueMemory(4, 2)
    empty.save(tmp_path / "empty.safetensors")
    with pytest.raises(ValueError, match="no rows"):
        lx.KeyValueMemory.open(tmp_path / "empty.safetensors")
    lx.EpisodicMemory(4, 3).save(tmp_path / "episodic.safetensors")
    with pytest.raises(ValueError, match="path"):
        lx.KeyValueMemory.open(tmp_path / "episodic.safetensors")
    with pytest.raises(ValueError, match="path"):
        lx.KeyValueMemory.open(tmp_path / "missing.safetensors")


def test_bad_arguments_are_named(tmp_path, rng):
    _, path = saved(tmp_path, rng)
    with pytest.raises(ValueError, match="key_codes"):
        lx.KeyValueMemory.open(path, key_codes="int4")
    with pytest.raises(TypeError, match="verify"):
        lx.KeyValueMemory.open(path, verify="yes")
    mapped = lx.KeyValueMemory.open(path)
    with pytest.raises(ValueError, match="k"):
        mapped.search(np.zeros((1, 24), np.float32), 0)
    with pytest.raises(ValueError, match="alpha"):
        mapped.read(np.zeros((1, 24), np.float32), 3)


def rows_of(keys, values, counts, step):
    def blocks():
        for lo in range(0, len(keys), step):
            yield {"keys": keys[lo:lo + step], "values": values[lo:lo + step],
                   "counts": counts[lo:lo + step]}
    return blocks


def test_save_streamed_writes_what_save_writes(tmp_path, rng):
    mem, path = saved(tmp_path, rng)
    config = {"key_dim": mem.key_dim, "value_dim": mem.value_dim, "metric": mem.metric,
              "dtype": "float32", "size": len(mem), "merge_identical": True,
              "key_codes": "none"}
    keys, values, counts = mem.keys, mem.values, mem._core.counts()
    specs = {"keys": (np.float32, keys.shape), "values": (np.float32, values.shape),
             "counts": (np.float64, counts.shape)}
    streamed = tmp_path / "streamed.safetensors"
    _persist.save_streamed(streamed, "larimar_ext.KeyValueMemory", config, specs,
                           rows_of(keys, values, counts, 37))
    again = lx.KeyValueMemory.load(streamed)
    for a, b in ((again.keys, keys), (again.values, values), (again._core.counts(), counts)):
        assert_bits_equal(a, b)
    Q = rng.standard_normal((4, mem.key_dim)).astype(np.float32)
    for got, want in zip(lx.KeyValueMemory.open(streamed).search(Q, 3), mem.search(Q, 3)):
        assert_bits_equal(got, want)


def test_a_streamed_file_with_a_nan_key_is_refused_on_open(tmp_path, rng):
    keys = rng.standard_normal((20, 4)).astype(np.float32)
    keys[7, 1] = np.nan
    values, counts = np.zeros((20, 1), np.float32), np.ones(20)
    config = {"key_dim": 4, "value_dim": 1, "metric": "ip", "dtype": "float32", "size": 20,
              "merge_identical": False, "key_codes": "none"}
    path = tmp_path / "nan.safetensors"
    _persist.save_streamed(path, "larimar_ext.KeyValueMemory", config,
                           {"keys": (np.float32, (20, 4)), "values": (np.float32, (20, 1)),
                            "counts": (np.float64, (20,))}, rows_of(keys, values, counts, 8))
    with pytest.raises(ValueError, match="keys"):
        lx.KeyValueMemory.open(path)


def test_save_streamed_refuses_blocks_that_do_not_match_the_specs(tmp_path, rng):
    keys = rng.standard_normal((10, 3)).astype(np.float32)
    config = {"key_dim": 3, "value_dim": 1, "metric": "ip", "dtype": "float32", "size": 10,
              "merge_identical": False, "key_codes": "none"}
    specs = {"keys": (np.float32, (10, 3)), "values": (np.float32, (10, 1)),
             "counts": (np.float64, (10,))}
    short = rows_of(keys[:7], np.zeros((7, 1), np.float32), np.ones(7), 4)
    path = tmp_path / "bad.safetensors"
    with pytest.raises(ValueError, match="blocks"):
        _persist.save_streamed(path, "larimar_ext.KeyValueMemory", config, specs, short)
    passes = iter([keys, keys + 1])   # a generator that changes between its two passes

    def changing():
        yield {"keys": next(passes), "values": np.zeros((10, 1), np.float32),
               "counts": np.ones(10)}
    with pytest.raises(ValueError, match="second pass"):
        _persist.save_streamed(path, "larimar_ext.KeyValueMemory", config, specs, changing)
    assert not path.exists() and not list(tmp_path.glob(".larimar-*"))
