"""Input validation: every bad argument raises ValueError/TypeError naming the argument, and
memory objects are left exactly as they were (api spec: "Memory objects are unchanged after
any failed call")."""
import numpy as np
import pytest

import larimar_ext as lx
from conftest import (assert_rel, assert_same_snapshot, names_arg, raises_arg, snapshot_episodic,
                      snapshot_kv, to_numpy, well_conditioned)

_R = np.random.default_rng(20240601)
VE, TE = ValueError, TypeError
EITHER = (ValueError, TypeError)


def a64(*shape):
    return _R.standard_normal(shape)


def a32(*shape):
    return a64(*shape).astype(np.float32)


def poke(a, val=np.nan, where=-1):
    """Copy of ``a`` with one element (the last by default) replaced by ``val``."""
    b = np.array(a, copy=True)
    b.flat[where] = val
    return b


W, Z = well_conditioned(_R, 6, 4), a64(6, 3)  # N=6, K=4, C=3
R = well_conditioned(_R, 4, 3)  # K=4 keys of size C=3
M = a64(4, 3)
IDX, WTS = np.array([[0, 1], [2, 3], [1, 1], [3, 0], [2, 0], [0, 3]], np.int64), _R.random((6, 2))
Q, KEYS = a64(2, 3), a64(5, 3)
W3, Z3 = np.stack([W, W]), np.stack([Z, Z])
BAD_DTYPES = [np.int32, np.float16, np.int64, np.bool_, np.complex128]

CASES = []


def case(cid, fn, exc, *names):
    CASES.append(pytest.param(fn, exc, names, id=cid))


# ---------------------------------------------------------------- lstsq_write(W, Z, ridge, rcond)
case("lstsq-W-1d", lambda: lx.lstsq_write(W[:, 0], Z), VE, "W")
case("lstsq-W-4d", lambda: lx.lstsq_write(W[None, None], Z[None, None]), VE, "W", "Z")
case("lstsq-Z-1d", lambda: lx.lstsq_write(W, Z[:, 0]), VE, "Z")
case("lstsq-N-mismatch", lambda: lx.lstsq_write(W, Z[:5]), VE, "W", "Z")
case("lstsq-rank-mix", lambda: lx.lstsq_write(W3, Z), VE, "W", "Z")
case("lstsq-B-mismatch", lambda: lx.lstsq_write(W3, np.stack([Z, Z, Z])), VE, "W", "Z")
case("lstsq-W-nan", lambda: lx.lstsq_write(poke(W), Z), VE, "W")
case("lstsq-W-inf", lambda: lx.lstsq_write(poke(W, np.inf, 0), Z), VE, "W")
case("lstsq-Z-inf", lambda: lx.lstsq_write(W, poke(Z, -np.inf)), VE, "Z")
case("lstsq-W3-nan", lambda: lx.lstsq_write(poke(W3), Z3), VE, "W")
case("lstsq-empty-N", lambda: lx.lstsq_write(W[:0], Z[:0]), VE, "W", "Z")
case("lstsq-empty-K", lambda: lx.lstsq_write(W[:, :0], Z), VE, "W")
case("lstsq-empty-C", lambda: lx.lstsq_write(W, Z[:, :0]), VE, "Z")
case("lstsq-empty-B", lambda: lx.lstsq_write(W3[:0], Z3[:0]), VE, "W", "Z")
for v in (-1e-3, np.nan, np.inf, -np.inf):
    case(f"lstsq-ridge-{v}", lambda v=v: lx.lstsq_write(W, Z, ridge=v), VE, "ridge")
for v in (-1.0, np.nan):
    case(f"lstsq-rcond-{v}", lambda v=v: lx.lstsq_write(W, Z, rcond=v), VE, "rcond")
for dt in BAD_DTYPES:
    n = np.dtype(dt).name
    case(f"lstsq-W-{n}", lambda dt=dt: lx.lstsq_write(W.astype(dt), Z), TE, "W")
    case(f"lstsq-both-{n}", lambda dt=dt: lx.lstsq_write(W.astype(dt), Z.astype(dt)), TE, "W", "Z")
    case(f"lstsq-Z-{n}", lambda dt=dt: lx.lstsq_write(W, Z.astype(dt)), TE, "Z")
case("lstsq-mixed-dtypes", lambda: lx.lstsq_write(W.astype(np.float32), Z), EITHER, "W", "Z")

# ------------------------------------------------------------------ pinv_address(Z, R, rcond)
case("pinv-Z-1d", lambda: lx.pinv_address(Z[0], R), VE, "Z")
case("pinv-R-1d", lambda: lx.pinv_address(Z, R[0]), VE, "R")
case("pinv-C-mismatch", lambda: lx.pinv_address(Z, R[:, :2]), VE, "Z", "R")
case("pinv-rank-mix", lambda: lx.pinv_address(Z3, R), VE, "Z", "R")
case("pinv-R-nan", lambda: lx.pinv_address(Z, poke(R)), VE, "R")
case("pinv-Z-inf", lambda: lx.pinv_address(poke(Z, np.inf), R), VE, "Z")
case("pinv-R-empty", lambda: lx.pinv_address(Z, R[:0]), VE, "R")
case("pinv-Z-empty", lambda: lx.pinv_address(Z[:0], R), VE, "Z")
case("pinv-rcond-nan", lambda: lx.pinv_address(Z, R, rcond=np.nan), VE, "rcond")
case("pinv-R-int32", lambda: lx.pinv_address(Z, R.astype(np.int32)), TE, "R")
case("pinv-Z-float16", lambda: lx.pinv_address(Z.astype(np.float16), R.astype(np.float16)), TE, "Z", "R")
case("pinv-mixed-dtypes", lambda: lx.pinv_address(Z, R.astype(np.float32)), EITHER, "Z", "R")

# --------------------------------------------------------- gaussian_address(Z, R, alpha, top_k)
for v in (0.0, -0.5, np.nan, np.inf):
    case(f"gauss-alpha-{v}", lambda v=v: lx.gaussian_address(Z, R, v), VE, "alpha")
for v in (0, -1, 5):  # K = 4
    case(f"gauss-top_k-{v}", lambda v=v: lx.gaussian_address(Z, R, 1.0, top_k=v), VE, "top_k")
case("gauss-top_k-float", lambda: lx.gaussian_address(Z, R, 1.0, top_k=1.5), EITHER, "top_k")
case("gauss-C-mismatch", lambda: lx.gaussian_address(Z[:, :2], R, 1.0), VE, "Z", "R")
case("gauss-Z-nan", lambda: lx.gaussian_address(poke(Z), R, 1.0), VE, "Z")
case("gauss-R-inf", lambda: lx.gaussian_address(Z, poke(R, np.inf), 1.0, top_k=2), VE, "R")
case("gauss-R-empty", lambda: lx.gaussian_address(Z, R[:0], 1.0), VE, "R")
case("gauss-Z-1d", lambda: lx.gaussian_address(Z[0], R, 1.0), VE, "Z")
case("gauss-R-int32", lambda: lx.gaussian_address(Z, R.astype(np.int32), 1.0), TE, "R")
case("gauss-mixed", lambda: lx.gaussian_address(Z.astype(np.float32), R, 1.0), EITHER, "Z", "R")

# ------------------------------------------------------------------------ onehot_address(Z, R)
case("onehot-C-mismatch", lambda: lx.onehot_address(Z, R[:, :2]), VE, "Z", "R")
case("onehot-R-nan", lambda: lx.onehot_address(Z, poke(R)), VE, "R")
case("onehot-Z-inf", lambda: lx.onehot_address(poke(Z, np.inf), R), VE, "Z")
case("onehot-R-empty", lambda: lx.onehot_address(Z, R[:0]), VE, "R")
case("onehot-Z-empty", lambda: lx.onehot_address(Z[:0], R), VE, "Z")
case("onehot-Z-float16", lambda: lx.onehot_address(Z.astype(np.float16), R), TE, "Z")

# --------------------------------------------------------------------------------- read(W, M)
case("read-K-mismatch", lambda: lx.read(W, M[:3]), VE, "W", "M")
case("read-W-1d", lambda: lx.read(W[0], M), VE, "W")
case("read-M-1d", lambda: lx.read(W, M[:, 0]), VE, "M")
case("read-rank-mix", lambda: lx.read(W3, M), VE, "W", "M")
case("read-B-mismatch", lambda: lx.read(W3, np.stack([M, M, M])), VE, "W", "M")
case("read-M-nan", lambda: lx.read(W, poke(M)), VE, "M")
case("read-W-inf", lambda: lx.read(poke(W, np.inf), M), VE, "W")
case("read-W-empty", lambda: lx.read(W[:0], M), VE, "W")
case("read-M-int32", lambda: lx.read(W, M.astype(np.int32)), TE, "M")
case("read-W-float16", lambda: lx.read(W.astype(np.float16), M.astype(np.float16)), TE, "W", "M")
case("read-mixed", lambda: lx.read(W.astype(np.float32), M), EITHER, "W", "M")
case("read-idx-too-big", lambda: lx.read((poke(IDX, 4), WTS), M), VE, "indices", "W")
case("read-idx-negative", lambda: lx.read((poke(IDX, -1, 0), WTS), M), VE, "indices", "W")
case("read-idx-float", lambda: lx.read((IDX.astype(np.float64), WTS), M), TE, "indices", "W")
case("read-weights-shape", lambda: lx.read((IDX, WTS[:, :1]), M), VE, "weights", "indices", "W")
case("read-weights-nan", lambda: lx.read((IDX, poke(WTS)), M), VE, "weights", "W")
case("read-weights-int", lambda: lx.read((IDX, IDX), M), TE, "weights", "W")
case("read-tuple-len", lambda: lx.read((IDX, WTS, WTS), M), EITHER, "W")

# ------------------------------------ gaussian_read_scored(scores, values, metric, alpha, Q, key_sq)
SC, VALS, KSQ = -_R.random((2, 5)), a64(2, 5, 3), _R.random((2, 5))  # nq=2, k=5, C=3; Q (2, 3)


def gread(scores=SC, values=VALS, metric="l2", alpha=0.5, Q=None, key_sq=None):
    return lx.gaussian_read_scored(scores, values, metric, alpha, Q, key_sq)


case("gread-metric", lambda: gread(metric="dot"), VE, "metric")
case("gread-metric-type", lambda: gread(metric=2), TE, "metric")
case("gread-scores-1d", lambda: gread(scores=SC[0]), VE, "scores")
case("gread-values-2d", lambda: gread(values=VALS[:, :, 0]), VE, "values")
case("gread-values-k", lambda: gread(values=VALS[:, :4]), VE, "values")
case("gread-values-rows", lambda: gread(values=VALS[:1]), VE, "values")
case("gread-scores-nan", lambda: gread(scores=poke(SC)), VE, "scores")
case("gread-values-inf", lambda: gread(values=poke(VALS, np.inf)), VE, "values")
case("gread-l2-positive", lambda: gread(scores=-SC), VE, "scores")
case("gread-empty", lambda: gread(scores=SC[:0], values=VALS[:0]), VE, "scores")
for v in (0.0, -1.0, np.nan, np.inf):
    case(f"gread-alpha-{v}", lambda v=v: gread(alpha=v), VE, "alpha")
case("gread-alpha-str", lambda: gread(alpha="0.5"), TE, "alpha")
case("gread-ip-no-Q", lambda: gread(metric="ip", key_sq=KSQ), VE, "Q")
case("gread-ip-no-key_sq", lambda: gread(metric="ip", Q=Q), VE, "key_sq")
case("gread-ip-Q-rows", lambda: gread(metric="ip", Q=a64(3, 3), key_sq=KSQ), VE, "Q")
case("gread-ip-Q-nan", lambda: gread(metric="ip", Q=poke(Q), key_sq=KSQ), VE, "Q")
case("gread-ip-key_sq-shape", lambda: gread(metric="ip", Q=Q, key_sq=KSQ[:, :4]), VE, "key_sq")
case("gread-ip-key_sq-negative", lambda: gread(metric="ip", Q=Q, key_sq=-KSQ), VE, "key_sq")
case("gread-cosine-Q", lambda: gread(metric="cosine", Q=Q), VE, "Q")
case("gread-l2-key_sq", lambda: gread(key_sq=KSQ), VE, "key_sq")
case("gread-scores-int32", lambda: gread(scores=SC.astype(np.int32)), TE, "scores")
case("gread-mixed", lambda: gread(values=VALS.astype(np.float32)), EITHER, "scores", "values")

# --------------------------------------------------------------------- topk(Q, keys, k, metric)
for v in (0, -2, 6):  # 5 keys
    case(f"topk-k-{v}", lambda v=v: lx.topk(Q, KEYS, v), VE, "k")
case("topk-metric", lambda: lx.topk(Q, KEYS, 2, metric="dot"), VE, "metric")
case("topk-d-mismatch", lambda: lx.topk(Q[:, :2], KEYS, 2), VE, "Q", "keys")
case("topk-Q-nan", lambda: lx.topk(poke(Q), KEYS, 2), VE, "Q")
case("topk-keys-inf", lambda: lx.topk(Q, poke(KEYS, np.inf), 2, metric="l2"), VE, "keys")
case("topk-keys-empty", lambda: lx.topk(Q, KEYS[:0], 1), VE, "keys", "k")
case("topk-Q-empty", lambda: lx.topk(Q[:0], KEYS, 1), VE, "Q")
case("topk-Q-1d", lambda: lx.topk(Q[0], KEYS, 1), VE, "Q")
case("topk-keys-int32", lambda: lx.topk(Q, KEYS.astype(np.int32), 1), TE, "keys")
case("topk-Q-float16", lambda: lx.topk(Q.astype(np.float16), KEYS.astype(np.float16), 1), TE, "Q", "keys")
case("topk-mixed", lambda: lx.topk(Q.astype(np.float32), KEYS, 1), EITHER, "Q", "keys")

# ------------------------------------ sparse_lstsq_write(indices, weights, Z, memory_size, ...)
for v in (0, -3):
    case(f"sparse-memory_size-{v}", lambda v=v: lx.sparse_lstsq_write(IDX, WTS, Z, v), VE,
         "memory_size", "indices")
case("sparse-idx-out-of-range", lambda: lx.sparse_lstsq_write(IDX, WTS, Z, 3), VE, "indices",
     "memory_size")
case("sparse-idx-negative", lambda: lx.sparse_lstsq_write(poke(IDX, -1, 0), WTS, Z, 4), VE, "indices")
case("sparse-idx-float", lambda: lx.sparse_lstsq_write(IDX.astype(np.float64), WTS, Z, 4), TE,
     "indices")
case("sparse-weights-shape", lambda: lx.sparse_lstsq_write(IDX, WTS[:5], Z, 4), VE, "weights",
     "indices")
case("sparse-Z-rows", lambda: lx.sparse_lstsq_write(IDX, WTS, Z[:5], 4), VE, "Z")
case("sparse-weights-nan", lambda: lx.sparse_lstsq_write(IDX, poke(WTS), Z, 4), VE, "weights")
case("sparse-Z-inf", lambda: lx.sparse_lstsq_write(IDX, WTS, poke(Z, np.inf), 4), VE, "Z")
case("sparse-empty", lambda: lx.sparse_lstsq_write(IDX[:0], WTS[:0], Z[:0], 4), VE, "indices",
     "weights", "Z")
for v in (-0.1, np.nan, np.inf):
    case(f"sparse-ridge-{v}", lambda v=v: lx.sparse_lstsq_write(IDX, WTS, Z, 4, ridge=v), VE, "ridge")
case("sparse-prior-shape", lambda: lx.sparse_lstsq_write(IDX, WTS, Z, 4, prior=a64(5, 3)), VE, "prior")
case("sparse-prior-nan", lambda: lx.sparse_lstsq_write(IDX, WTS, Z, 4, prior=poke(M)), VE, "prior")
case("sparse-weights-int32", lambda: lx.sparse_lstsq_write(IDX, WTS.astype(np.int32), Z, 4), TE,
     "weights")
case("sparse-Z-float16", lambda: lx.sparse_lstsq_write(IDX, WTS.astype(np.float16),
                                                      Z.astype(np.float16), 4), TE, "weights", "Z")
case("sparse-mixed", lambda: lx.sparse_lstsq_write(IDX, WTS.astype(np.float32), Z, 4), EITHER,
     "weights", "Z")


@pytest.mark.parametrize("fn,exc,names", CASES)
def test_bad_input_raises_naming_argument(fn, exc, names):
    snapshot = [a.copy() for a in (W, Z, R, M, IDX, WTS, Q, KEYS)]
    with raises_arg(exc, *names):
        fn()
    for before, after in zip(snapshot, (W, Z, R, M, IDX, WTS, Q, KEYS)):
        assert np.array_equal(before, after)


@pytest.mark.parametrize("fn,name", [
    (lambda: lx.lstsq_write(W[:, 0], Z), "W"),   # the spec's own example
    (lambda: lx.lstsq_write(W, Z, ridge=-1.0), "ridge"),
    (lambda: lx.topk(Q, KEYS, 0), "k"),
    (lambda: lx.gaussian_address(Z, R, -1.0), "alpha"),
], ids=["W-rank", "ridge", "k", "alpha"])
def test_value_error_message_starts_with_argument_name(fn, name):
    """api spec: 'ValueError whose message starts with the argument name', e.g.
    "W: expected a 2-D or 3-D array, got 1-D"."""
    with pytest.raises(ValueError) as ei:
        fn()
    assert str(ei.value).startswith(name), str(ei.value)


def test_spec_example_message():
    with pytest.raises(ValueError) as ei:
        lx.lstsq_write(W[:, 0], Z)
    assert "1-D" in str(ei.value), str(ei.value)


# ================================================================================ EpisodicMemory
K_, C_ = 4, 3


def fresh_episodic(dtype="float64"):
    mem = lx.EpisodicMemory(K_, C_, prior=M.astype(dtype), ridge=1e-3, dtype=dtype)
    mem.write(Z.astype(dtype), W.astype(dtype))
    return mem


EPI_CASES = []


def ecase(cid, fn, exc, *names):
    EPI_CASES.append(pytest.param(fn, exc, names, id=cid))


ecase("write-Z-C", lambda m: m.write(a64(6, 2), W), VE, "Z")
ecase("write-W-K", lambda m: m.write(Z, a64(6, 5)), VE, "W")
ecase("write-N-mismatch", lambda m: m.write(Z, W[:5]), VE, "Z", "W")
ecase("write-W-nan", lambda m: m.write(Z, poke(W)), VE, "W")
ecase("write-Z-inf", lambda m: m.write(poke(Z, np.inf, 0), W), VE, "Z")
ecase("write-empty", lambda m: m.write(Z[:0], W[:0]), VE, "Z", "W")
ecase("write-Z-1d", lambda m: m.write(Z[0], W[:1]), VE, "Z")
ecase("write-W-int32", lambda m: m.write(Z, W.astype(np.int32)), TE, "W")
ecase("write-Z-float16", lambda m: m.write(Z.astype(np.float16), W.astype(np.float16)), TE, "Z", "W")
ecase("write-mixed", lambda m: m.write(Z.astype(np.float32), W), EITHER, "Z", "W")
ecase("update-W-nan", lambda m: m.update(Z[:2], poke(W[:2]), alpha=1.0), VE, "W")
ecase("update-Z-nan-last-row", lambda m: m.update(poke(Z), W, alpha=1.0), VE, "Z")
ecase("update-Z-C", lambda m: m.update(a64(2, 5), W[:2]), VE, "Z")
ecase("update-W-K", lambda m: m.update(Z[:2], a64(2, 3)), VE, "W")
ecase("update-N-mismatch", lambda m: m.update(Z[:3], W[:2]), VE, "Z", "W")
ecase("update-empty", lambda m: m.update(Z[:0], W[:0]), VE, "Z", "W")
for v in (np.nan, np.inf):
    ecase(f"update-alpha-{v}", lambda m, v=v: m.update(Z[:2], W[:2], alpha=v), VE, "alpha")
ecase("update-int32", lambda m: m.update(Z[:2].astype(np.int32), W[:2].astype(np.int32)), TE, "Z", "W")
ecase("address-C", lambda m: m.address(a64(2, 5)), VE, "Z")
ecase("address-nan", lambda m: m.address(poke(a64(2, 3))), VE, "Z")
ecase("read-C", lambda m: m.read(a64(2, 5)), VE, "Zq", "Z")
ecase("read-nan", lambda m: m.read(poke(a64(2, 3))), VE, "Zq", "Z")
ecase("read-float16", lambda m: m.read(a64(2, 3).astype(np.float16)), TE, "Zq", "Z")


@pytest.mark.parametrize("fn,exc,names", EPI_CASES)
def test_episodic_bad_input_leaves_memory_unchanged(fn, exc, names):
    mem, twin = fresh_episodic(), fresh_episodic()
    before = snapshot_episodic(mem)
    with raises_arg(exc, *names):
        fn(mem)
    assert_same_snapshot(before, snapshot_episodic(mem))
    # the hidden sequential state (P) is unchanged too: the same valid update on both
    # memories gives the same result
    for m in (mem, twin):
        m.update(Z[:2], W[:2], alpha=-1.0)
    assert np.array_equal(to_numpy(mem.memory), to_numpy(twin.memory))


def test_episodic_write_without_address_or_prior():
    mem = lx.EpisodicMemory(K_, C_, dtype="float64")
    before = snapshot_episodic(mem)
    with raises_arg(ValueError, "W", "prior"):
        mem.write(Z)
    assert_same_snapshot(before, snapshot_episodic(mem))


@pytest.mark.parametrize("kwargs,exc,names", [
    (dict(memory_size=0, code_size=3), VE, ("memory_size",)),
    (dict(memory_size=-2, code_size=3), VE, ("memory_size",)),
    (dict(memory_size=4, code_size=0), VE, ("code_size",)),
    (dict(memory_size=4, code_size=3, ridge=-1.0), VE, ("ridge",)),
    (dict(memory_size=4, code_size=3, ridge=np.nan), VE, ("ridge",)),
    (dict(memory_size=4, code_size=3, ridge=np.inf), VE, ("ridge",)),
    (dict(memory_size=4, code_size=3, dtype="float16"), EITHER, ("dtype",)),
    (dict(memory_size=4, code_size=3, dtype="int32"), EITHER, ("dtype",)),
    (dict(memory_size=4, code_size=3, prior=a64(3, 3), dtype="float64"), VE, ("prior",)),
    (dict(memory_size=4, code_size=3, prior=poke(M), dtype="float64"), VE, ("prior",)),
], ids=["K0", "K-neg", "C0", "ridge-neg", "ridge-nan", "ridge-inf", "dtype-f16", "dtype-i32",
        "prior-shape", "prior-nan"])
def test_episodic_constructor_bad(kwargs, exc, names):
    with raises_arg(exc, *names):
        lx.EpisodicMemory(**kwargs)


def test_episodic_failed_call_then_valid_call_is_correct():
    """After a failed update the memory keeps working and is still exact."""
    mem = fresh_episodic()
    with pytest.raises(ValueError):
        mem.update(poke(Z), W)
    w1, z1 = a64(2, K_), a64(2, C_)
    mem.update(z1, w1)
    Wall, Zall = np.concatenate([W, w1]), np.concatenate([Z, z1])
    ref = np.linalg.solve(Wall.T @ Wall + 1e-3 * np.eye(K_), Wall.T @ Zall + 1e-3 * M)
    assert_rel(mem.memory, ref, 1e-8)


# ================================================================================ KeyValueMemory
def fresh_kv(metric="cosine"):
    kv = lx.KeyValueMemory(3, 2, metric=metric, dtype="float64")
    kv.add(KEYS, a64(5, 2) * 0 + np.arange(10).reshape(5, 2))
    return kv


KV_CASES = []


def kcase(cid, fn, exc, *names):
    KV_CASES.append(pytest.param(fn, exc, names, id=cid))


NEWK, NEWV = a64(3, 3), a64(3, 2)
kcase("add-keys-dim", lambda m: m.add(a64(3, 4), NEWV), VE, "keys")
kcase("add-values-dim", lambda m: m.add(NEWK, a64(3, 1)), VE, "values")
kcase("add-rows-mismatch", lambda m: m.add(NEWK, NEWV[:2]), VE, "keys", "values")
kcase("add-keys-nan-last-row", lambda m: m.add(poke(NEWK), NEWV), VE, "keys")
kcase("add-values-inf-last-row", lambda m: m.add(NEWK, poke(NEWV, np.inf)), VE, "values")
kcase("add-dup-key-then-nan", lambda m: m.add(np.stack([KEYS[1], NEWK[0]]),
                                              np.stack([NEWV[0], [np.nan, 0.0]])), VE, "values")
kcase("add-keys-1d", lambda m: m.add(NEWK[0], NEWV[0]), VE, "keys")
kcase("add-empty", lambda m: m.add(NEWK[:0], NEWV[:0]), VE, "keys", "values")
kcase("add-keys-int32", lambda m: m.add(NEWK.astype(np.int32), NEWV), TE, "keys")
kcase("add-values-float16", lambda m: m.add(NEWK, NEWV.astype(np.float16)), TE, "values")
kcase("add-mixed", lambda m: m.add(NEWK.astype(np.float32), NEWV), EITHER,
      "keys", "values", "dtype")
for v in (0, -1, 6):  # 5 stored keys
    kcase(f"search-k-{v}", lambda m, v=v: m.search(Q, v), VE, "k")
    kcase(f"read-k-{v}", lambda m, v=v: m.read(Q, k=v), VE, "k")
kcase("search-Q-dim", lambda m: m.search(a64(2, 4), 1), VE, "Q")
kcase("search-Q-nan", lambda m: m.search(poke(Q), 1), VE, "Q")
kcase("search-Q-empty", lambda m: m.search(Q[:0], 1), VE, "Q")
kcase("search-Q-int32", lambda m: m.search(Q.astype(np.int32), 1), TE, "Q")
kcase("read-Q-dim", lambda m: m.read(a64(2, 4)), VE, "Q")
kcase("read-Q-inf", lambda m: m.read(poke(Q, np.inf)), VE, "Q")
for v in (0.0, -1.0, np.nan, np.inf):
    kcase(f"read-alpha-{v}", lambda m, v=v: m.read(Q, k=2, alpha=v), VE, "alpha")


@pytest.mark.parametrize("fn,exc,names", KV_CASES)
def test_kv_bad_input_leaves_memory_unchanged(fn, exc, names):
    kv, twin = fresh_kv(), fresh_kv()
    before = snapshot_kv(kv)
    with raises_arg(exc, *names):
        fn(kv)
    assert_same_snapshot(before, snapshot_kv(kv))
    # hidden state (per-key counts) unchanged: the same duplicate add gives the same means
    for m in (kv, twin):
        assert np.array_equal(to_numpy(m.add(KEYS[1:2], NEWV[:1])), [1])
    assert np.array_equal(to_numpy(kv.values), to_numpy(twin.values))
    assert len(kv) == len(twin) == 5


def test_kv_search_on_empty_memory():
    kv = lx.KeyValueMemory(3, 2, metric="l2", dtype="float64")
    with raises_arg(ValueError, "k"):
        kv.search(Q, 1)
    assert len(kv) == 0


@pytest.mark.parametrize("kwargs,exc,names", [
    (dict(key_dim=0, value_dim=2), VE, ("key_dim",)),
    (dict(key_dim=3, value_dim=-1), VE, ("value_dim",)),
    (dict(key_dim=3, value_dim=2, metric="dot"), VE, ("metric",)),
    (dict(key_dim=3, value_dim=2, dtype="float16"), EITHER, ("dtype",)),
    (dict(key_dim=3, value_dim=2, dtype="int32"), EITHER, ("dtype",)),
], ids=["kd0", "vd-neg", "metric", "dtype-f16", "dtype-i32"])
def test_kv_constructor_bad(kwargs, exc, names):
    with raises_arg(exc, *names):
        lx.KeyValueMemory(**kwargs)


def test_names_arg_helper():
    """The helper itself: whole-word match only."""
    assert names_arg("W: expected a 2-D array", "W")
    assert not names_arg("Wrong shape", "W")
    assert names_arg("argument 'top_k' must be > 0", "top_k")
    assert not names_arg("top_k must be > 0", "k")
