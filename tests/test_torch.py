"""PyTorch interop: torch in -> torch out (CPU), dtype preserved, inputs untouched."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import larimar_ext as lx  # noqa: E402
from references import (assert_rel, names_arg, raises_arg, randn, ref_gaussian,  # noqa: E402
                        ref_lstsq, ref_pinv_address, ref_read, ref_topk, to_numpy, tol,
                        well_conditioned)

TDTYPES = [(torch.float32, np.float32), (torch.float64, np.float64)]
TIDS = ["f32", "f64"]


def T(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def assert_torch(out, tdtype, shape, what="result"):
    assert isinstance(out, torch.Tensor), f"{what}: expected torch.Tensor, got {type(out)}"
    assert out.dtype == tdtype, f"{what}: {out.dtype} != {tdtype}"
    assert out.device.type == "cpu"
    assert tuple(out.shape) == tuple(shape), f"{what}: {tuple(out.shape)} != {shape}"
    # torch.from_numpy of the result: the numpy view shares the tensor's storage
    assert out.numpy().__array_interface__["data"][0] == out.data_ptr()


def unchanged(*pairs):
    for t, keep in pairs:
        assert torch.equal(t, keep), "input tensor was modified"


@pytest.mark.parametrize("tdtype,ndtype", TDTYPES, ids=TIDS)
@pytest.mark.parametrize("ridge", [0.0, 0.5])
def test_lstsq_write_torch(rng, tdtype, ndtype, ridge):
    Wn = well_conditioned(rng, 9, 5, dtype=ndtype)
    Zn = randn(rng, 9, 3, dtype=ndtype)
    W, Z = T(Wn), T(Zn)
    keep = (W.clone(), Z.clone())
    M = lx.lstsq_write(W, Z, ridge=ridge)
    assert_torch(M, tdtype, (5, 3))
    assert M.data_ptr() not in (W.data_ptr(), Z.data_ptr())
    unchanged((W, keep[0]), (Z, keep[1]))
    assert_rel(M, ref_lstsq(Wn, Zn, ridge=ridge, dtype=ndtype), tol(ndtype))
    # the same kernel as the numpy path
    assert_rel(M, lx.lstsq_write(Wn, Zn, ridge=ridge), tol(ndtype, 1e-6, 1e-14))


@pytest.mark.parametrize("tdtype,ndtype", TDTYPES, ids=TIDS)
def test_lstsq_write_torch_batched_and_non_contiguous(rng, tdtype, ndtype):
    Wn = np.stack([well_conditioned(rng, 6, 4, dtype=ndtype) for _ in range(3)])
    Zn = randn(rng, 3, 6, 2, dtype=ndtype)
    # a transposed view (non-contiguous) holding the same values
    W = T(np.ascontiguousarray(Wn.transpose(0, 2, 1))).transpose(1, 2)
    assert not W.is_contiguous()
    keep = W.clone()
    M = lx.lstsq_write(W, T(Zn))
    assert_torch(M, tdtype, (3, 4, 2))
    assert_rel(M, ref_lstsq(Wn, Zn, dtype=ndtype), tol(ndtype))
    unchanged((W, keep))


@pytest.mark.parametrize("tdtype,ndtype", TDTYPES, ids=TIDS)
def test_addressing_torch(rng, tdtype, ndtype):
    Zn, Rn = randn(rng, 4, 6, dtype=ndtype), well_conditioned(rng, 5, 6, dtype=ndtype)
    Z, R = T(Zn), T(Rn)
    keep = (Z.clone(), R.clone())
    W = lx.pinv_address(Z, R)
    assert_torch(W, tdtype, (4, 5), "pinv_address")
    assert_rel(W, ref_pinv_address(Zn, Rn, dtype=ndtype), tol(ndtype))
    G = lx.gaussian_address(Z, R, 0.5)
    assert_torch(G, tdtype, (4, 5), "gaussian dense")
    assert_rel(G, ref_gaussian(Zn, Rn, 0.5), tol(ndtype))
    idx, w = lx.gaussian_address(Z, R, 0.5, top_k=2)
    assert_torch(idx, torch.int64, (4, 2), "gaussian indices")
    assert_torch(w, tdtype, (4, 2), "gaussian weights")
    i1, w1 = lx.onehot_address(Z, R)
    assert_torch(i1, torch.int64, (4, 1), "onehot indices")
    assert_torch(w1, tdtype, (4, 1), "onehot weights")
    assert torch.equal(i1[:, 0], idx[:, 0])
    unchanged((Z, keep[0]), (R, keep[1]))


@pytest.mark.parametrize("tdtype,ndtype", TDTYPES, ids=TIDS)
def test_read_torch(rng, tdtype, ndtype):
    Wn, Mn = randn(rng, 4, 6, dtype=ndtype), randn(rng, 6, 3, dtype=ndtype)
    W, M = T(Wn), T(Mn)
    keep = (W.clone(), M.clone())
    out = lx.read(W, M)
    assert_torch(out, tdtype, (4, 3))
    assert_rel(out, ref_read(Wn, Mn), tol(ndtype, 1e-5, 1e-12))
    idx = torch.tensor([[0, 5], [2, 2], [1, 3], [4, 0]], dtype=torch.int64)
    w = torch.rand(4, 2, dtype=tdtype)
    out2 = lx.read((idx, w), M)
    assert_torch(out2, tdtype, (4, 3), "sparse read")
    assert_rel(out2, ref_read((idx.numpy(), w.numpy()), Mn), tol(ndtype, 1e-5, 1e-12))
    Wb, Mb = torch.randn(2, 3, 6, dtype=tdtype), torch.randn(2, 6, 3, dtype=tdtype)
    assert_torch(lx.read(Wb, Mb), tdtype, (2, 3, 3), "batched read")
    unchanged((W, keep[0]), (M, keep[1]))


@pytest.mark.parametrize("tdtype,ndtype", TDTYPES, ids=TIDS)
@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_topk_torch(rng, tdtype, ndtype, metric):
    Qn, Kn = randn(rng, 3, 5, dtype=ndtype), randn(rng, 20, 5, dtype=ndtype)
    Q, K = T(Qn), T(Kn)
    idx, sc = lx.topk(Q, K, 4, metric=metric)
    assert_torch(idx, torch.int64, (3, 4), "indices")
    assert_torch(sc, tdtype, (3, 4), "scores")
    ridx, rsc = ref_topk(Qn, Kn, 4, metric)
    assert np.array_equal(idx.numpy(), ridx)
    np.testing.assert_allclose(sc.numpy(), rsc, rtol=tol(ndtype, 1e-5, 1e-12),
                               atol=tol(ndtype, 1e-5, 1e-12))


@pytest.mark.parametrize("tdtype,ndtype", TDTYPES, ids=TIDS)
def test_sparse_lstsq_torch(rng, tdtype, ndtype):
    idx = torch.tensor([[0], [3], [3], [1]], dtype=torch.int64)
    w = torch.ones(4, 1, dtype=tdtype)
    Zn = randn(rng, 4, 2, dtype=ndtype)
    M = lx.sparse_lstsq_write(idx, w, T(Zn), 5)
    assert_torch(M, tdtype, (5, 2))
    expect = np.zeros((5, 2))
    expect[0], expect[1], expect[3] = Zn[0], Zn[3], (Zn[1].astype(np.float64) + Zn[2]) / 2
    assert_rel(M, expect, tol(ndtype, 1e-6, 1e-14))


@pytest.mark.parametrize("tdtype,ndtype", TDTYPES, ids=TIDS)
def test_episodic_memory_torch(rng, tdtype, ndtype):
    name = np.dtype(ndtype).name
    mem = lx.EpisodicMemory(4, 3, dtype=name)
    Wn, Zn = well_conditioned(rng, 8, 4, dtype=ndtype), randn(rng, 8, 3, dtype=ndtype)
    W, Z = T(Wn), T(Zn)
    keep = (W.clone(), Z.clone())
    mem.write(Z, W)
    unchanged((W, keep[0]), (Z, keep[1]))
    Zq = T(randn(rng, 2, 3, dtype=ndtype))
    out = mem.read(Zq)
    assert_torch(out, tdtype, (2, 3), "read")
    assert_rel(out, Zq, tol(ndtype, 2e-4, 1e-9))  # K >= C, full-rank M: read is the identity
    addr = mem.address(Zq)
    assert_torch(addr, tdtype, (2, 4), "address")
    # the torch path and the numpy path run the same kernel
    np_mem = lx.EpisodicMemory(4, 3, dtype=name)
    np_mem.write(Zn, Wn)
    assert_rel(np_mem.read(Zq.numpy()), out, tol(ndtype, 1e-6, 1e-13))
    z1, w1 = randn(rng, 1, 3, dtype=ndtype), randn(rng, 1, 4, dtype=ndtype)
    mem.update(T(z1), T(w1), alpha=1.0)
    np_mem.update(z1, w1, alpha=1.0)
    assert_rel(to_numpy(mem.memory), to_numpy(np_mem.memory), tol(ndtype, 1e-6, 1e-13))


@pytest.mark.parametrize("tdtype,ndtype", TDTYPES, ids=TIDS)
def test_kv_memory_torch(rng, tdtype, ndtype):
    kv = lx.KeyValueMemory(4, 2, metric="cosine", dtype=np.dtype(ndtype).name)
    keys = torch.randn(6, 4, dtype=tdtype)
    vals = torch.randn(6, 2, dtype=tdtype)
    keep = (keys.clone(), vals.clone())
    ids = kv.add(keys, vals)
    assert_torch(ids, torch.int64, (6,), "ids")
    assert torch.equal(ids, torch.arange(6))
    unchanged((keys, keep[0]), (vals, keep[1]))
    out = kv.read(keys[[4, 1]])
    assert_torch(out, tdtype, (2, 2), "read")
    assert torch.equal(out, vals[[4, 1]])
    idx, sc = kv.search(keys[:2], 3)
    assert_torch(idx, torch.int64, (2, 3), "search indices")
    assert_torch(sc, tdtype, (2, 3), "search scores")
    assert idx[0, 0].item() == 0 and idx[1, 0].item() == 1


@pytest.mark.parametrize("bad", [torch.float16, torch.int32, torch.bfloat16])
def test_torch_unsupported_dtype(bad):
    W = torch.ones(4, 3, dtype=bad)
    Z = torch.ones(4, 2, dtype=bad)
    with raises_arg(TypeError, "W", "Z"):
        lx.lstsq_write(W, Z)


def test_torch_requires_grad_input_not_modified(rng):
    """A tensor that requires grad is only read (values used, graph untouched)."""
    W = torch.tensor(well_conditioned(rng, 6, 3), requires_grad=True)
    Z = torch.randn(6, 2, dtype=torch.float64)
    try:
        M = lx.lstsq_write(W, Z)
    except (TypeError, ValueError, RuntimeError) as e:  # refusing is acceptable if it says why
        assert names_arg(str(e), "W", "grad", "requires_grad"), str(e)
        return
    assert isinstance(M, torch.Tensor)
    assert W.grad is None
    assert_rel(M, ref_lstsq(W.detach().numpy(), Z.numpy()), 1e-9)


def test_cpu_tensor_inputs_are_viewed_not_copied(rng):
    """The boundary hands the kernel the tensor's own memory (no copy) for C-contiguous
    float32/float64 CPU tensors, and a copy only for non-contiguous ones."""
    from larimar_ext._arrays import Boundary

    t = torch.from_numpy(rng.standard_normal((6, 5)).astype(np.float32))
    viewed = Boundary().floats(t, "W")
    assert viewed.__array_interface__["data"][0] == t.data_ptr()
    strided = t.t()
    copied = Boundary().floats(strided, "W")
    assert copied.flags["C_CONTIGUOUS"]
    assert copied.__array_interface__["data"][0] != strided.data_ptr()
    np.testing.assert_array_equal(copied, strided.numpy())
