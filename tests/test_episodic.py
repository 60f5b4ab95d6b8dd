"""EpisodicMemory: batch write, sequential write/forget (Woodbury), address/read, save/load.

Invariant (docs/DESIGN.md section 2.5): after any sequence of writes and forgets, M equals the batch
ridge solution  argmin ||W M - Z||^2 + ridge ||M - prior||^2  over the rows still stored.
Bounds for the sequential path: 1e-4 (float64) and 1e-3 (float32, with at least 2K+2 rows
kept stored so that P = (W^T W + ridge I)^-1 stays well conditioned; forgetting down to a
rank-deficient state with ridge 1e-6 is inherently unstable in float32).
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import larimar_ext as lx
from references import (DTYPE_IDS, DTYPES, assert_ndarray, assert_rel, default_rcond, dtypes, f64,
                        randn, rel_err as rel_err_, ref_episodic, ref_pinv, ref_ridge, seeds,
                        to_numpy, tol, well_conditioned)


def new_mem(K, C, dtype, **kw):
    return lx.EpisodicMemory(K, C, dtype=np.dtype(dtype).name, **kw)


SEQ_TOL = {np.dtype(np.float32): 1e-3, np.dtype(np.float64): 1e-4}

WRITE_SHAPES = [(3, 7, 2), (6, 6, 3), (12, 5, 4), (9, 1, 3), (7, 4, 1), (1, 3, 2)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("with_prior", [False, True], ids=["zero-prior", "prior"])
def test_fresh_memory_is_prior(rng, dtype, with_prior):
    prior = randn(rng, 5, 3, dtype=dtype) if with_prior else None
    mem = new_mem(5, 3, dtype, prior=prior)
    m = to_numpy(mem.memory)
    assert_ndarray(m, dtype, (5, 3), "memory")
    expect = prior if with_prior else np.zeros((5, 3), dtype)
    assert np.array_equal(m, expect)
    if with_prior:
        assert np.array_equal(to_numpy(mem.prior), prior)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("with_prior", [False, True], ids=["zero-prior", "prior"])
@pytest.mark.parametrize("ridge", [1e-6, 0.3])
@pytest.mark.parametrize("N,K,C", WRITE_SHAPES, ids=[f"N{n}K{k}C{c}" for n, k, c in WRITE_SHAPES])
def test_write_is_ridge_solve(rng, N, K, C, ridge, with_prior, dtype):
    prior = randn(rng, K, C, dtype=dtype) if with_prior else None
    mem = new_mem(K, C, dtype, prior=prior, ridge=ridge)
    W = well_conditioned(rng, N, K, dtype=dtype)
    Z = randn(rng, N, C, dtype=dtype)
    W0, Z0 = W.copy(), Z.copy()
    mem.write(Z, W)
    assert_ndarray(to_numpy(mem.memory), dtype, (K, C), "memory")
    assert_rel(mem.memory, ref_ridge(W, Z, ridge, prior), tol(dtype))
    assert np.array_equal(W, W0) and np.array_equal(Z, Z0)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_write_replaces_previous_episode(rng, dtype):
    K, C = 5, 4
    mem = new_mem(K, C, dtype, ridge=1e-3)
    W1, Z1 = well_conditioned(rng, 9, K, dtype=dtype), randn(rng, 9, C, dtype=dtype)
    W2, Z2 = well_conditioned(rng, 7, K, dtype=dtype), randn(rng, 7, C, dtype=dtype)
    mem.write(Z1, W1)
    mem.write(Z2, W2)
    assert_rel(mem.memory, ref_ridge(W2, Z2, 1e-3), tol(dtype))
    # and the sequential state was reset too: one more row goes on top of episode 2 only
    w3, z3 = randn(rng, 1, K, dtype=dtype), randn(rng, 1, C, dtype=dtype)
    mem.update(z3, w3, alpha=1.0)
    assert_rel(mem.memory, ref_episodic([W2, w3], [Z2, z3], 1e-3, None, K, C),
               SEQ_TOL[np.dtype(dtype)])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("K,C", [(4, 6), (6, 6), (8, 5)])
def test_write_default_address_uses_prior(rng, K, C, dtype):
    """write(Z) addresses with W = Z pinv(prior) (Larimar model-editing mode, no noise)."""
    prior = well_conditioned(rng, K, C, dtype=dtype)
    Z = randn(rng, 10, C, dtype=dtype)
    mem = new_mem(K, C, dtype, prior=prior, ridge=1e-3)
    mem.write(Z)
    W = f64(Z) @ ref_pinv(prior, default_rcond(K, C, dtype))
    assert_rel(mem.memory, ref_ridge(W, Z, 1e-3, prior), tol(dtype, 2e-4, 1e-9))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_forgetting_rows_addressed_by_pinv_address(rng, dtype):
    """The README's quickstart: write(Z) addresses with the prior's cached pseudo-inverse,
    which is pinv_address's to the bit (a prior of full row rank, K >= 64: the Gram route,
    its factor kept by both), so rows forgotten with pinv_address's W are the rows stored
    and the rest stays written. A forget of rows that differ from the stored ones in the
    last bits fails the downdate's check; PreparedPinv, which forms R^+ for fast calls,
    agrees to rounding only."""
    K, C = 96, 144
    prior = well_conditioned(rng, K, C, dtype=dtype)
    Z = randn(rng, 6, C, dtype=dtype)
    W = lx.pinv_address(Z, prior)
    mem = new_mem(K, C, dtype, prior=prior, ridge=1e-3)
    mem.write(Z)
    given_w = new_mem(K, C, dtype, prior=prior, ridge=1e-3)
    given_w.write(Z, W)
    np.testing.assert_array_equal(mem.memory, given_w.memory)
    mem.update(Z[:2], W[:2], alpha=-1.0)
    rest = new_mem(K, C, dtype, prior=prior, ridge=1e-3)
    rest.write(Z[2:], W[2:])
    assert_rel(mem.memory, rest.memory, tol(dtype, 1e-3, 1e-8))
    assert_rel(lx.PreparedPinv(prior).address(Z), W, tol(dtype, 1e-5, 1e-10))


SEQ_OP = st.tuples(st.sampled_from(["write", "forget"]), st.integers(1, 4), seeds)


@given(K=st.integers(1, 6), C=st.integers(1, 5), dtype=dtypes,
       ridge=st.sampled_from([1e-6, 1e-2, 1.0]), with_prior=st.booleans(),
       ops=st.lists(SEQ_OP, min_size=1, max_size=8), seed=seeds)
def test_sequential_invariant(K, C, dtype, ridge, with_prior, ops, seed):
    """Random write/forget sequences == batch ridge solve over the rows still stored."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    # Any number of stored rows, the underdetermined regime (fewer rows than slots, where
    # forgets pin the memory near the ridge floor) included.
    min_rows = 1
    prior = randn(rng, K, C, dtype=dtype) if with_prior else None
    mem = new_mem(K, C, dtype, prior=prior, ridge=ridge)
    n0 = min_rows + int(rng.integers(0, 4))
    Ws = list(randn(rng, n0, K, dtype=dtype))
    Zs = list(randn(rng, n0, C, dtype=dtype))
    mem.write(np.array(Zs), np.array(Ws))
    assert_rel(mem.memory, ref_episodic([np.array(Ws)], [np.array(Zs)], ridge, prior, K, C),
               tol(dtype), "after batch write")
    for step, (kind, b, s) in enumerate(ops):
        r = np.random.default_rng(s)
        if kind == "forget" and len(Ws) - b >= min_rows:
            sel = np.sort(r.choice(len(Ws), size=b, replace=False))
            mem.update(np.array([Zs[i] for i in sel]), np.array([Ws[i] for i in sel]), alpha=-1.0)
            keep = [i for i in range(len(Ws)) if i not in set(sel.tolist())]
            Ws, Zs = [Ws[i] for i in keep], [Zs[i] for i in keep]
        else:
            kind = "write"
            w, z = randn(r, b, K, dtype=dtype), randn(r, b, C, dtype=dtype)
            mem.update(z, w, alpha=1.0)
            Ws += list(w)
            Zs += list(z)
        ref = ref_episodic([np.array(Ws)], [np.array(Zs)], ridge, prior, K, C)
        got = to_numpy(mem.memory)
        assert got.dtype == dt
        assert_rel(got, ref, SEQ_TOL[dt], f"step {step} ({kind} {b}), {len(Ws)} rows stored")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_forget_in_underdetermined_regime(dtype):
    """Larimar's usual regime: fewer stored rows than slots (N < K), default ridge 1e-6.

    Write 4 rows into K = 5 slots, forget one: M must be the batch solve over the 3 rows
    left, within the sequential-path bound (1e-4 float64, 1e-3 float32).  A backward-stable
    solve of this system (cond(W^T W + 1e-6 I) ~ 1e7) is accurate to ~1e-9."""
    K, C, N, ridge = 5, 2, 4, 1e-6
    errs = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        prior = randn(rng, K, C, dtype=dtype)
        W, Z = randn(rng, N, K, dtype=dtype), randn(rng, N, C, dtype=dtype)
        mem = new_mem(K, C, dtype, prior=prior, ridge=ridge)
        mem.write(Z, W)
        j = int(rng.integers(N))
        mem.update(Z[j:j + 1], W[j:j + 1], alpha=-1.0)
        keep = [i for i in range(N) if i != j]
        errs.append(rel_err_(mem.memory, ref_ridge(W[keep], Z[keep], ridge, prior)))
    worst = int(np.argmax(errs))
    assert max(errs) <= SEQ_TOL[np.dtype(dtype)], \
        f"worst seed {worst}: rel err {max(errs):.2e}; all: {np.round(errs, 8).tolist()}"


@pytest.mark.parametrize("with_prior", [False, True], ids=["zero-prior", "prior"])
@pytest.mark.parametrize("ridge", [1e-6, 0.1])
def test_update_on_fresh_memory(rng, ridge, with_prior):
    """No write first: the empty state is M = prior, C = ridge I (float64)."""
    K, C = 4, 3
    prior = randn(rng, K, C) if with_prior else None
    mem = new_mem(K, C, np.float64, prior=prior, ridge=ridge)
    Ws, Zs = [], []
    for b in (2, 3, 5):
        w, z = randn(rng, b, K), randn(rng, b, C)
        mem.update(z, w, alpha=1.0)
        Ws.append(w)
        Zs.append(z)
        assert_rel(mem.memory, ref_episodic(Ws, Zs, ridge, prior, K, C), 1e-6,
                   f"{sum(map(len, Ws))} rows")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_write_then_forget_restores(rng, dtype):
    """update(+1) followed by update(-1) of the same rows returns to the previous memory."""
    K, C = 5, 4
    mem = new_mem(K, C, dtype, ridge=1e-4)
    mem.write(randn(rng, 15, C, dtype=dtype), well_conditioned(rng, 15, K, dtype=dtype))
    before = to_numpy(mem.memory).copy()
    w, z = randn(rng, 3, K, dtype=dtype), randn(rng, 3, C, dtype=dtype)
    mem.update(z, w, alpha=1.0)
    assert rel_change(mem.memory, before) > 1e-3  # the write did something
    mem.update(z, w, alpha=-1.0)
    assert_rel(mem.memory, before, tol(dtype, 1e-4, 1e-10))


def rel_change(a, b):
    a, b = f64(a), f64(b)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_update_is_order_independent(rng, dtype):
    K, C = 4, 3
    W0, Z0 = well_conditioned(rng, 12, K, dtype=dtype), randn(rng, 12, C, dtype=dtype)
    blocks = [(randn(rng, 2, C, dtype=dtype), randn(rng, 2, K, dtype=dtype)) for _ in range(3)]
    outs = []
    for order in ([0, 1, 2], [2, 0, 1]):
        mem = new_mem(K, C, dtype, ridge=1e-3)
        mem.write(Z0, W0)
        for i in order:
            mem.update(*blocks[i], alpha=1.0)
        outs.append(to_numpy(mem.memory))
    assert_rel(outs[0], outs[1], tol(dtype, 1e-4, 1e-10))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("K,C", [(8, 4), (5, 5), (3, 6), (1, 3)])
def test_address_and_read(rng, K, C, dtype):
    """address(Z) = Z pinv(M); read(Zq) = (Zq pinv(M)) M (the projection onto M's row space)."""
    mem = new_mem(K, C, dtype)
    N = K + 6
    mem.write(well_conditioned(rng, N, C, dtype=dtype), well_conditioned(rng, N, K, dtype=dtype))
    M = to_numpy(mem.memory)
    pM = ref_pinv(M, default_rcond(K, C, dtype))
    Zq = randn(rng, 4, C, dtype=dtype)
    W = mem.address(Zq)
    assert_ndarray(to_numpy(W), dtype, (4, K), "address")
    assert_rel(W, f64(Zq) @ pM, tol(dtype, 2e-4, 1e-9), "address")
    out = mem.read(Zq)
    assert_ndarray(to_numpy(out), dtype, (4, C), "read")
    ref = (f64(Zq) @ pM) @ f64(M)
    assert_rel(out, ref, tol(dtype, 2e-4, 1e-9), "read")
    if K >= C:  # M has full column rank: the projection is the identity
        assert_rel(out, Zq, tol(dtype, 2e-4, 1e-9), "read == Zq")
    else:  # a projection is idempotent
        assert_rel(mem.read(to_numpy(out)), out, tol(dtype, 2e-4, 1e-9), "read(read)")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_read_and_address_follow_every_state_change(rng, dtype):
    """M^+ is cached per memory state: every write / update must invalidate it."""
    K, C = 3, 6  # K < C: read is a projection that depends on M
    mem = new_mem(K, C, dtype, ridge=1e-3)
    Zq = randn(rng, 4, C, dtype=dtype)

    def check(what):
        M = f64(mem.memory)
        pM = ref_pinv(M, default_rcond(K, C, dtype))
        assert_rel(mem.address(Zq), f64(Zq) @ pM, tol(dtype, 2e-4, 1e-9), f"address {what}")
        assert_rel(mem.read(Zq), f64(Zq) @ pM @ M, tol(dtype, 2e-4, 1e-9), f"read {what}")

    mem.write(well_conditioned(rng, 8, C, dtype=dtype), well_conditioned(rng, 8, K, dtype=dtype))
    check("after write 1")
    mem.write(well_conditioned(rng, 7, C, dtype=dtype), well_conditioned(rng, 7, K, dtype=dtype))
    check("after write 2")
    w, z = randn(rng, 2, K, dtype=dtype), randn(rng, 2, C, dtype=dtype)
    mem.update(z, w, alpha=1.0)
    check("after update")
    mem.update(z, w, alpha=-1.0)
    check("after forget")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_read_recovers_written_rows(rng, dtype):
    """N <= K rows written with orthonormal addresses are read back from their latents."""
    K, C, N = 8, 6, 4
    W = (np.eye(K)[:N] @ np.linalg.qr(rng.standard_normal((K, K)))[0]).astype(dtype)
    Z = well_conditioned(rng, N, C, dtype=dtype)
    mem = new_mem(K, C, dtype, ridge=1e-6)
    mem.write(Z, W)
    assert_rel(mem.read(Z), Z, tol(dtype, 1e-3, 1e-6))


def test_memory_property_is_a_copy(rng):
    mem = new_mem(3, 2, np.float64)
    mem.write(randn(rng, 5, 2), well_conditioned(rng, 5, 3))
    m = to_numpy(mem.memory)
    keep = m.copy()
    m[...] = 123.0
    assert np.array_equal(to_numpy(mem.memory), keep)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("with_prior", [False, True], ids=["zero-prior", "prior"])
def test_save_load_round_trip(rng, tmp_path, dtype, with_prior):
    K, C = 5, 3
    prior = randn(rng, K, C, dtype=dtype) if with_prior else None
    mem = new_mem(K, C, dtype, prior=prior, ridge=1e-2)
    W0, Z0 = well_conditioned(rng, 12, K, dtype=dtype), randn(rng, 12, C, dtype=dtype)
    mem.write(Z0, W0)
    w1, z1 = randn(rng, 2, K, dtype=dtype), randn(rng, 2, C, dtype=dtype)
    mem.update(z1, w1, alpha=1.0)
    path = tmp_path / "mem.safetensors"
    mem.save(str(path))
    assert path.exists() and path.stat().st_size > 0
    loaded = lx.EpisodicMemory.load(str(path))
    got = to_numpy(loaded.memory)
    assert got.dtype == np.dtype(dtype)
    assert np.array_equal(got, to_numpy(mem.memory))
    if with_prior:
        assert np.array_equal(to_numpy(loaded.prior), prior)
    Zq = randn(rng, 3, C, dtype=dtype)
    assert np.array_equal(to_numpy(loaded.read(Zq)), to_numpy(mem.read(Zq)))
    # the sequential state (P, ridge, prior) survives: the same forget on both gives the same M
    for m in (mem, loaded):
        m.update(z1, w1, alpha=-1.0)
    assert_rel(loaded.memory, mem.memory, tol(dtype, 1e-6, 1e-13), "update after load")
    assert_rel(loaded.memory, ref_ridge(W0, Z0, 1e-2, prior), SEQ_TOL[np.dtype(dtype)])


def test_save_writes_safetensors(rng, tmp_path):
    """The file is a real safetensors file holding the memory matrix."""
    st_numpy = pytest.importorskip("safetensors.numpy")
    mem = new_mem(4, 3, np.float32)
    mem.write(randn(rng, 6, 3, dtype=np.float32), well_conditioned(rng, 6, 4, dtype=np.float32))
    path = tmp_path / "m.safetensors"
    mem.save(str(path))
    tensors = st_numpy.load_file(str(path))
    M = to_numpy(mem.memory)
    # the state may be kept in a wider dtype than the memory's (documented: float64)
    assert any(t.shape == M.shape and np.array_equal(t.astype(M.dtype), M)
               for t in tensors.values()), {k: (v.dtype, v.shape) for k, v in tensors.items()}
