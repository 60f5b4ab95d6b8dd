"""Reliability: concurrent readers and writers, memory limits, numerical edge cases.

Concurrency tests run many Python threads against one memory (the kernel releases the GIL)
for a bounded number of operations, and check that every read saw a whole state (before
or after a write, never a torn one), that nothing deadlocks, and that the final state
equals the sequential result.
"""

import threading

import numpy as np
import pytest

import larimar_ext as lx

JOIN_TIMEOUT_S = 60


def run_threads(targets):
    """Starts one thread per callable, joins them with a bound, re-raises the first error."""
    errors = []

    def guard(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
        return run

    threads = [threading.Thread(target=guard(fn), daemon=True) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT_S)
    assert not any(t.is_alive() for t in threads), "deadlock: a thread did not finish"
    if errors:
        raise errors[0]


def unit_rows(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_key_value_memory_readers_see_whole_states_while_one_thread_adds():
    rng = np.random.default_rng(0)
    n, d, v, batch = 4096, 32, 8, 256
    keys, values = unit_rows(rng, n, d), rng.standard_normal((n, v)).astype(np.float32)
    mem = lx.KeyValueMemory(d, v, metric="cosine")
    mem.add(keys[:batch], values[:batch])
    stats = {"reads": 0}

    def writer():
        for start in range(batch, n, batch):
            ids = mem.add(keys[start:start + batch], values[start:start + batch])
            np.testing.assert_array_equal(ids, np.arange(start, start + batch))

    def reader(seed):
        r = np.random.default_rng(seed)
        for _ in range(150):
            probe = r.integers(0, n, 16)
            size_before = len(mem)
            ids, scores = mem.search(keys[probe], 1)
            got = mem.read(keys[probe])
            size_after = len(mem)
            assert size_before <= size_after <= n
            # Ids exist in the state the search saw; a stored key finds itself.
            assert ids.max() < size_after
            stored = probe < size_before
            np.testing.assert_array_equal(ids[stored, 0], probe[stored])
            # A one-hot read returns a whole stored value row, never a mix.
            match = (got[:, None, :] == values[None, :size_after, :]).all(-1).any(-1)
            assert match.all()
            stats["reads"] += 1

    run_threads([writer] + [lambda s=s: reader(s) for s in range(4)])
    assert stats["reads"] == 4 * 150
    assert len(mem) == n
    np.testing.assert_array_equal(mem.keys, keys)
    np.testing.assert_array_equal(mem.values, values)


def test_episodic_memory_readers_see_whole_states_while_one_thread_writes():
    rng = np.random.default_rng(1)
    K, C, N = 64, 48, 12
    # Rank-N memories (no prior): each episode's read projects on a different row space.
    episodes = [(rng.standard_normal((N, C)).astype(np.float32),
                 rng.standard_normal((N, K)).astype(np.float32)) for _ in range(3)]
    Zq = rng.standard_normal((5, C)).astype(np.float32)
    # What a reader may see: the read of each written state, computed alone.
    expected = []
    for z, w in episodes:
        solo = lx.EpisodicMemory(K, C)
        solo.write(z, w)
        expected.append(solo.read(Zq))
    assert min(np.abs(a - b).max() for a in expected for b in expected if a is not b) > 1e-3

    mem = lx.EpisodicMemory(K, C)
    mem.write(*episodes[0])
    rounds = 60

    def writer():
        for i in range(rounds):
            mem.write(*episodes[(i + 1) % len(episodes)])

    seen = []

    def reader():
        for _ in range(rounds):
            got = mem.read(Zq)
            close = [np.abs(got - e).max() <= 1e-5 * (1 + np.abs(e).max()) for e in expected]
            assert any(close), "a read saw no whole memory state"
            seen.append(close.index(True))

    run_threads([writer] + [reader] * 3)
    assert len(seen) == 3 * rounds
    final = lx.EpisodicMemory(K, C)
    final.write(*episodes[rounds % len(episodes)])
    np.testing.assert_array_equal(mem.memory, final.memory)


def test_sequential_updates_from_threads_equal_one_thread():
    """Writers serialise: rows added from several threads give the batch solve of all rows."""
    rng = np.random.default_rng(2)
    K, C, rows = 40, 16, 96
    W = rng.standard_normal((rows, K))
    Z = rng.standard_normal((rows, C))
    mem = lx.EpisodicMemory(K, C, ridge=1e-3, dtype=np.float64)

    def writer(part):
        for i in range(part, rows, 4):
            mem.update(Z[i:i + 1], W[i:i + 1])

    run_threads([lambda p=p: writer(p) for p in range(4)])
    ref = np.linalg.solve(W.T @ W + 1e-3 * np.eye(K), W.T @ Z)
    assert np.linalg.norm(mem.memory - ref) / np.linalg.norm(ref) < 1e-8


# ------------------------------------------------------------------ memory limits


@pytest.fixture
def small_limit():
    old = lx.get_memory_limit()
    lx.set_memory_limit(64 * 2**20)
    yield
    lx.set_memory_limit(old)


def test_huge_k_is_refused_before_allocating(small_limit):
    keys = np.ones((10, 4), np.float32)
    mem = lx.KeyValueMemory(4, 2)
    mem.add(np.eye(4, dtype=np.float32), np.ones((4, 2), np.float32))
    with pytest.raises(ValueError, match="k"):  # more than stored: a plain bad argument
        mem.search(keys, 10**12)
    with pytest.raises(MemoryError, match="k"):
        lx.topk(np.ones((200_000, 4), np.float32), np.ones((200_000, 4), np.float32), 200_000)


def test_giant_memory_and_episode_are_refused(small_limit):
    with pytest.raises(MemoryError, match="memory_size"):
        lx.EpisodicMemory(100_000, 768)
    before = lx.get_memory_limit()
    with pytest.raises(MemoryError, match="W"):
        lx.lstsq_write(np.ones((4000, 3000), np.float32), np.ones((4000, 8), np.float32))
    assert lx.get_memory_limit() == before


def test_memory_limit_argument_is_checked():
    with pytest.raises(ValueError, match="limit"):
        lx.set_memory_limit(-1)
    with pytest.raises(TypeError, match="limit"):
        lx.set_memory_limit("lots")


# ------------------------------------------------------------------ numerical edge cases


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_vectors_under_cosine_score_zero(dtype):
    keys = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=dtype)
    ids, scores = lx.topk(np.array([[0, 0, 0], [1, 0, 0]], dtype=dtype), keys, 3, metric="cosine")
    assert np.isfinite(scores).all()
    np.testing.assert_array_equal(ids[0], [0, 1, 2])  # all scores 0: index order
    np.testing.assert_array_equal(scores[0], [0, 0, 0])
    np.testing.assert_array_equal(ids[1], [1, 0, 2])  # cos 1, then 0 (zero key), 0


def test_duplicated_keys_share_a_slot_and_tie_by_index():
    mem = lx.KeyValueMemory(3, 1, metric="ip")
    k = np.array([[1, 2, 3], [1, 2, 3], [3, 2, 1]], np.float32)
    ids = mem.add(k, np.array([[1], [3], [7]], np.float32))
    np.testing.assert_array_equal(ids, [0, 0, 1])
    np.testing.assert_array_equal(mem.values, [[2], [7]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_denormal_inputs_give_finite_results(dtype):
    tiny = np.finfo(dtype).smallest_subnormal
    rng = np.random.default_rng(3)
    W = rng.standard_normal((20, 8)).astype(dtype)
    Z = (rng.standard_normal((20, 4)) * tiny * 1e3).astype(dtype)
    M = lx.lstsq_write(W, Z)
    assert np.isfinite(M).all()
    ref = np.linalg.pinv(W.astype(np.float64)) @ Z.astype(np.float64)
    assert np.abs(M - ref).max() <= 1e-3 * np.abs(ref).max() + 16 * tiny
    R = rng.standard_normal((8, 4)).astype(dtype)
    assert np.isfinite(lx.pinv_address(Z, R)).all()
    assert np.isfinite(lx.read(W, M)).all()


def test_values_near_float32_limits_are_solved_or_refused():
    rng = np.random.default_rng(4)
    big = np.float32(1e30)
    W = (rng.standard_normal((16, 8)) * big).astype(np.float32)
    Z = rng.standard_normal((16, 4)).astype(np.float32)
    M = lx.lstsq_write(W, Z)  # Gram in float64: W^T W ~ 1e60 is no problem
    ref = np.linalg.pinv(W.astype(np.float64)) @ Z.astype(np.float64)
    assert np.isfinite(M).all()
    assert np.linalg.norm(M - ref) / np.linalg.norm(ref) < 1e-4
    # A result beyond float32's range is refused, not returned as Inf.
    with pytest.raises(ValueError, match="overflows"):
        lx.lstsq_write((W / big / big).astype(np.float32), (Z * big).astype(np.float32))
    with pytest.raises(ValueError, match="overflows"):
        lx.read(np.full((2, 3), 3e38, np.float32), np.full((3, 2), 3e38, np.float32))
    with pytest.raises(ValueError, match="keys: scores overflow"):
        lx.topk(np.full((1, 4), 1e30, np.float32), np.full((5, 4), 1e30, np.float32), 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ill_conditioned_and_rank_deficient_addresses(dtype):
    rng = np.random.default_rng(5)
    U, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    V, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    s = np.logspace(0, -12, 20)
    s[15:] = 0  # rank 15, and the rest spread down to 1e-12
    W = ((U[:, :20] * s) @ V.T).astype(dtype)
    Z = rng.standard_normal((30, 6)).astype(dtype)
    M = lx.lstsq_write(W, Z)
    cutoff = 30 * np.finfo(dtype).eps
    ref = np.linalg.pinv(W.astype(np.float64), rcond=cutoff) @ Z.astype(np.float64)
    assert np.isfinite(M).all()
    # The cutoff falls inside the spectrum; directions near it are ill-determined, so
    # compare what the cutoff keeps well: the projection of the fit, W M.
    fit, ref_fit = W.astype(np.float64) @ M, W.astype(np.float64) @ ref
    assert (np.linalg.norm(fit - ref_fit) / np.linalg.norm(ref_fit)
            < (1e-3 if dtype == np.float32 else 1e-8))
