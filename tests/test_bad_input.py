"""Input validation: every bad argument raises ValueError/TypeError naming the argument, and
memory objects are left exactly as they were (api spec: "Memory objects are unchanged after
any failed call")."""
import numpy as np
import pytest

import larimar_ext as lx
from larimar_ext._arrays import gaussian_alpha
from op_cases import CASES, EITHER, TE, VE, assert_layout, poke
from references import (assert_arrays_unchanged, assert_rel, assert_same_snapshot, names_arg,
                        raises_arg, snapshot_arrays, snapshot_episodic, snapshot_kv, to_numpy,
                        well_conditioned)

_R = np.random.default_rng(20240601)


def a64(*shape):
    return _R.standard_normal(shape)


W, Z = well_conditioned(_R, 6, 4), a64(6, 3)  # N=6, K=4, C=3
R = well_conditioned(_R, 4, 3)  # K=4 keys of size C=3
M = a64(4, 3)
Q, KEYS = a64(2, 3), a64(5, 3)


# ======================================================== functional ops (tests/op_cases.py)
def example(case):
    """The valid float64 call every bad case of ``case`` changes."""
    return case.build(np.random.default_rng(20240601), np.float64, **case.example)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_examples_are_valid(case):
    """Each bad case differs from a call that succeeds only by what it changes."""
    a = example(case)
    assert_layout(case.call(a), case.out(a), np.float64)


@pytest.mark.parametrize("case,bad", [pytest.param(c, b, id=b.id) for c in CASES for b in c.bad])
def test_bad_input_raises_naming_argument(case, bad):
    a = example(case)
    args = bad.args(a)
    snapshot = snapshot_arrays([a, args])  # the valid arrays and the bad ones (views of them)
    with raises_arg(bad.exc, *bad.names):
        case.call(args)
    assert_arrays_unchanged(snapshot)


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
ecase("write-Z-float16", lambda m: m.write(Z.astype(np.float16), W.astype(np.float16)), TE,
      "Z", "W")
ecase("write-mixed", lambda m: m.write(Z.astype(np.float32), W), EITHER, "Z", "W")
ecase("update-W-nan", lambda m: m.update(Z[:2], poke(W[:2]), alpha=1.0), VE, "W")
ecase("update-Z-nan-last-row", lambda m: m.update(poke(Z), W, alpha=1.0), VE, "Z")
ecase("update-Z-C", lambda m: m.update(a64(2, 5), W[:2]), VE, "Z")
ecase("update-W-K", lambda m: m.update(Z[:2], a64(2, 3)), VE, "W")
ecase("update-N-mismatch", lambda m: m.update(Z[:3], W[:2]), VE, "Z", "W")
ecase("update-empty", lambda m: m.update(Z[:0], W[:0]), VE, "Z", "W")
for v in (np.nan, np.inf):
    ecase(f"update-alpha-{v}", lambda m, v=v: m.update(Z[:2], W[:2], alpha=v), VE, "alpha")
ecase("update-int32", lambda m: m.update(Z[:2].astype(np.int32), W[:2].astype(np.int32)), TE,
      "Z", "W")
ecase("address-C", lambda m: m.address(a64(2, 5)), VE, "Z")
ecase("address-nan", lambda m: m.address(poke(a64(2, 3))), VE, "Z")
ecase("read-C", lambda m: m.read(a64(2, 5)), VE, "Zq", "Z")
ecase("read-nan", lambda m: m.read(poke(a64(2, 3))), VE, "Zq", "Z")
ecase("read-float16", lambda m: m.read(a64(2, 3).astype(np.float16)), TE, "Zq", "Z")


def refused_and_unchanged(fresh, snapshot, fn, exc, names):
    """fn(memory) raises exc naming one of names and leaves the memory as it was; returns
    the memory and an untouched twin, for the caller's probe of the hidden state."""
    mem, twin = fresh(), fresh()
    before = snapshot(mem)
    with raises_arg(exc, *names):
        fn(mem)
    assert_same_snapshot(before, snapshot(mem))
    return mem, twin


@pytest.mark.parametrize("fn,exc,names", EPI_CASES)
def test_episodic_bad_input_leaves_memory_unchanged(fn, exc, names):
    mem, twin = refused_and_unchanged(fresh_episodic, snapshot_episodic, fn, exc, names)
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
    kv, twin = refused_and_unchanged(fresh_kv, snapshot_kv, fn, exc, names)
    # hidden state (per-key counts) unchanged: the same duplicate add gives the same means
    for m in (kv, twin):
        assert np.array_equal(to_numpy(m.add(KEYS[1:2], NEWV[:1])), [1])
    assert np.array_equal(to_numpy(kv.values), to_numpy(twin.values))
    assert len(kv) == len(twin) == 5


@pytest.mark.parametrize("alpha", [0.0, -1.0, np.nan, np.inf])
def test_alpha_has_one_check_and_one_message(alpha):
    """Every Gaussian temperature goes through the kernel's check_alpha: the ops, the key
    store's soft read and write, and the up-front check of the collective and long-context
    callers (``_arrays.gaussian_alpha``) all refuse it with the same message."""
    kv = fresh_kv()
    calls = {
        "gaussian_address": lambda: lx.gaussian_address(Z, R, alpha),
        "gaussian_read_scored": lambda: lx.gaussian_read_scored(
            -np.ones((1, 2)), np.ones((1, 2, 3)), "l2", alpha),
        "KeyValueMemory.read": lambda: kv.read(Q, k=2, alpha=alpha),
        "KeyValueMemory.write": lambda: kv.write(Q, NEWV[:2], 2, alpha),
        "gaussian_alpha": lambda: gaussian_alpha(alpha),
    }
    messages = {}
    for name, call in calls.items():
        with raises_arg(ValueError, "alpha") as ei:
            call()
        messages[name] = str(ei.value)
    assert len(set(messages.values())) == 1, messages
    assert messages["gaussian_alpha"].startswith("alpha: expected a finite number > 0, got ")


def test_kv_binding_reads_hard_without_alpha():
    """alpha None is the hard read in the binding (no sentinel value): the best key's value,
    which needs k = 1."""
    kv = fresh_kv()
    q = np.ascontiguousarray(KEYS[2:3])
    assert np.array_equal(kv._core.read(q, 1, None), to_numpy(kv.values)[2:3])
    with raises_arg(ValueError, "alpha"):
        kv._core.read(q, 2, None)


def test_a_hard_read_over_k_keys_has_one_check_and_one_message():
    """k > 1 without alpha: the store's read and the up-front check of the collective and
    long-context callers (``gaussian_alpha(None, k)``) refuse it with the kernel's one text;
    None with k = 1 is the hard read."""
    kv = fresh_kv()
    with raises_arg(ValueError, "alpha") as from_store:
        kv.read(Q, k=2)
    with raises_arg(ValueError, "alpha") as up_front:
        gaussian_alpha(None, 2)
    assert str(from_store.value) == str(up_front.value)
    assert "k > 1" in str(up_front.value)
    assert gaussian_alpha(None) is None and gaussian_alpha(0.5, 3) == 0.5


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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 16383, 16384, 40000, 70001])
def test_a_bad_entry_anywhere_in_a_large_input_is_caught(dtype, bad, where):
    """The finiteness check runs in vectorised blocks of 16K entries over both threads: a
    NaN or Inf in any block, at a block's edge or in the short last one, names its
    argument, and a large finite value passes."""
    rng = np.random.default_rng(0)
    M = rng.standard_normal((70002 // 6, 6)).astype(dtype)  # 70,002 entries: 5 blocks
    Zq = rng.standard_normal((2, 6)).astype(dtype)
    M.flat[70001] = np.finfo(dtype).max / 1e10  # large but finite: no error
    lx.pinv_read(Zq, M)
    M.flat[where] = bad
    with pytest.raises(ValueError, match="^M: contains NaN or Inf"):
        lx.pinv_read(Zq, M)
