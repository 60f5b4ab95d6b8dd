"""The library's ops by name in torch.profiler (issue: profiling write/read throughput).
Their cost with no profiler recording is benchmarks/bench_profiling.py's, not a timed test."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

import larimar_ext as lx
from larimar_ext import _profiling, ops

torch = pytest.importorskip("torch")

rng = np.random.default_rng(0)
KEYS = rng.standard_normal((32, 8)).astype(np.float32)
VALUES = rng.standard_normal((32, 3)).astype(np.float32)
Q = rng.standard_normal((2, 8)).astype(np.float32)
W = rng.random((1, 6, 8)).astype(np.float32)
Z = rng.random((1, 6, 5)).astype(np.float32)

# the public methods that run a kernel op (properties, save and load aside)
KV_OPS = ["add", "write", "search", "reconstruct", "key_sq_norms", "search_and_reconstruct",
          "read"]
EPISODIC_OPS = ["write", "update", "address", "read"]


def _kv() -> lx.KeyValueMemory:
    kv = lx.KeyValueMemory(8, 3)
    kv.add(KEYS, VALUES)
    return kv


def _names(prof) -> set:
    return {e.key for e in prof.key_averages()}


def test_every_op_is_wrapped_with_its_signature_and_docs():
    for name in ops.__all__:
        fn = getattr(ops, name)
        assert hasattr(fn, "__wrapped__"), name
        assert inspect.signature(fn) == inspect.signature(fn.__wrapped__), name
        assert fn.__doc__ == fn.__wrapped__.__doc__ and fn.__name__ == name
    for cls, names in ((lx.KeyValueMemory, KV_OPS), (lx.EpisodicMemory, EPISODIC_OPS)):
        for name in names:
            assert hasattr(getattr(cls, name), "__wrapped__"), f"{cls.__name__}.{name}"


def test_ops_appear_under_their_own_names_in_a_profiler_table():
    kv = _kv()
    em = lx.EpisodicMemory(8, 5)
    address = lx.gaussian_address(Z[0], W[0].T @ Z[0], 1.0, top_k=2)
    calls = {
        "lstsq_write": lambda: lx.lstsq_write(W, Z),
        "pinv_address": lambda: lx.pinv_address(Z, lx.lstsq_write(W, Z)),
        "pinv_read": lambda: lx.pinv_read(Z, lx.lstsq_write(W, Z)),
        "gaussian_address": lambda: lx.gaussian_address(Z[0], W[0].T @ Z[0], 1.0),
        "onehot_address": lambda: lx.onehot_address(Z[0], W[0].T @ Z[0]),
        "read": lambda: lx.read(W, lx.lstsq_write(W, Z)),
        "gaussian_read_scored": lambda: lx.gaussian_read_scored(
            -np.ones((1, 2)), np.ones((1, 2, 3)), "l2", 1.0),
        "topk": lambda: lx.topk(Q, KEYS, 2),
        "sparse_lstsq_write": lambda: lx.sparse_lstsq_write(address[0], address[1], Z[0], 8),
        "KeyValueMemory.add": lambda: kv.add(KEYS[:1] + 9, VALUES[:1]),
        "KeyValueMemory.write": lambda: kv.write(Q, VALUES[:2], 2, 1.0),
        "KeyValueMemory.search": lambda: kv.search(Q, 2),
        "KeyValueMemory.reconstruct": lambda: kv.reconstruct(np.array([0, 1])),
        "KeyValueMemory.key_sq_norms": lambda: kv.key_sq_norms(np.array([0])),
        "KeyValueMemory.search_and_reconstruct": lambda: kv.search_and_reconstruct(Q, 2),
        "KeyValueMemory.read": lambda: kv.read(Q, k=2, alpha=1.0),
        "EpisodicMemory.write": lambda: em.write(Z[0], W[0]),
        "EpisodicMemory.update": lambda: em.update(Z[0], W[0], alpha=0.5),
        "EpisodicMemory.address": lambda: em.address(Z[0]),
        "EpisodicMemory.read": lambda: em.read(Z[0]),
    }
    assert set(ops.__all__) <= set(calls)  # a new op joins this table
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for call in calls.values():
            call()
    missing = {f"larimar_ext.{n}" for n in calls} - _names(prof)
    assert not missing, missing


def test_a_tensor_op_nests_its_kernel_range_inside_the_custom_op():
    from larimar_ext import torch_ops
    Wt = torch.from_numpy(W).requires_grad_()
    with torch.profiler.profile() as prof:
        torch_ops.lstsq_write(Wt, torch.from_numpy(Z)).sum().backward()
    names = _names(prof)
    assert {"larimar_ext::lstsq_write", "larimar_ext.lstsq_write"} <= names, names


def test_no_range_is_opened_while_no_profiler_records(monkeypatch):
    opened = []
    monkeypatch.setattr(_profiling, "_record_function",
                        lambda label: opened.append(label) or torch.profiler.record_function(label))
    lx.topk(Q, KEYS, 1)
    _kv().search(Q, 1)
    assert opened == [] and not _profiling.profiler_active()
    with torch.profiler.profile():
        assert _profiling.profiler_active()
        lx.topk(Q, KEYS, 1)
    assert opened == ["larimar_ext.topk"] and not _profiling.profiler_active()


def test_arguments_pass_through_by_position_and_name_and_errors_close_the_range():
    kv = _kv()
    by_position = kv.read(Q, 2, 0.5)
    by_name = kv.read(alpha=0.5, k=2, Q=Q)
    assert np.array_equal(by_position, by_name)
    with torch.profiler.profile() as prof:
        with pytest.raises(ValueError, match="^k: "):
            kv.search(Q, k=0)
        kv.search(Q, 1)
    searches = [e for e in prof.key_averages() if e.key == "larimar_ext.KeyValueMemory.search"]
    assert searches and searches[0].count == 2


def test_profiled_keeps_every_kind_of_parameter():
    def f(a, /, b, *rest, c=3, **extra):
        return a, b, rest, c, extra

    g = _profiling.profiled(f)
    assert inspect.signature(g) == inspect.signature(f)
    assert g(1, 2, 5, 6, c=4, d=7) == f(1, 2, 5, 6, c=4, d=7) == (1, 2, (5, 6), 4, {"d": 7})
    assert g(1, b=2) == (1, 2, (), 3, {})
    with pytest.raises(TypeError):
        g(a=1, b=2)  # positional-only stays positional-only
