"""Differentiable ops: gradcheck in float64 in both regimes, CPU kernel vs the torch
reference math, and torch.compile on CPU."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from larimar_ext import torch_ops  # noqa: E402


def full_rank(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("N,K", [(7, 4), (4, 7), (5, 5)], ids=["N>K", "N<K", "N=K"])
@pytest.mark.parametrize("ridge", [0.0, 0.3])
def test_lstsq_write_gradcheck(N, K, ridge):
    W = full_rank(N, K, seed=1).requires_grad_()
    Z = full_rank(N, 3, seed=2).requires_grad_()
    assert torch.autograd.gradcheck(lambda w, z: torch_ops.lstsq_write(w, z, ridge), (W, Z))


@pytest.mark.parametrize("K,C", [(4, 7), (7, 4)], ids=["K<C", "K>C"])
def test_pinv_address_gradcheck(K, C):
    Z = full_rank(3, C, seed=3).requires_grad_()
    R = full_rank(K, C, seed=4).requires_grad_()
    assert torch.autograd.gradcheck(torch_ops.pinv_address, (Z, R))


def test_read_gradcheck_batched():
    W = full_rank(2, 3, 5, seed=5).requires_grad_()
    M = full_rank(2, 5, 4, seed=6).requires_grad_()
    assert torch.autograd.gradcheck(torch_ops.read, (W, M))


def test_batched_episode_gradcheck():
    """Larimar's write then read, batched, end to end through all three ops."""
    Z = full_rank(2, 4, 6, seed=7).requires_grad_()
    M0 = full_rank(2, 5, 6, seed=8).requires_grad_()

    def episode(z, m0):
        w = torch_ops.pinv_address(z, m0)
        m = torch_ops.lstsq_write(w, z)
        return torch_ops.read(torch_ops.pinv_address(z, m + 0.1 * m0), m)

    assert torch.autograd.gradcheck(episode, (Z, M0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_kernel_matches_torch_math(dtype):
    """The CPU path (native kernel) and the torch path (used on CUDA) agree."""
    W, Z = full_rank(3, 6, 9, seed=9).to(dtype), full_rank(3, 6, 5, seed=10).to(dtype)
    R = full_rank(3, 9, 5, seed=11).to(dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(torch_ops.lstsq_write(W, Z), torch.linalg.pinv(W) @ Z,
                               rtol=tol, atol=tol)
    torch.testing.assert_close(torch_ops.lstsq_write(W, Z, 0.5),
                               torch.linalg.solve(W.mT @ W + 0.5 * torch.eye(9, dtype=dtype),
                                                  W.mT @ Z), rtol=tol, atol=tol)
    torch.testing.assert_close(torch_ops.pinv_address(Z, R), Z @ torch.linalg.pinv(R),
                               rtol=tol, atol=tol)
    torch.testing.assert_close(torch_ops.read(W, W.mT @ Z), W @ (W.mT @ Z), rtol=tol, atol=tol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_runs_on_device_and_matches_cpu():
    W, Z = full_rank(6, 4, seed=12), full_rank(6, 3, seed=13)
    out = torch_ops.lstsq_write(W.cuda(), Z.cuda())
    assert out.is_cuda
    torch.testing.assert_close(out.cpu(), torch_ops.lstsq_write(W, Z))


def test_torch_compile_cpu():
    """The ops are single custom ops to the compiler: a compiled episode runs and matches."""
    def episode(z, m0):
        m = torch_ops.lstsq_write(torch_ops.pinv_address(z, m0), z)
        return torch_ops.read(torch_ops.pinv_address(z, m), m)

    Z, M0 = full_rank(2, 4, 6, seed=14).float(), full_rank(2, 5, 6, seed=15).float()
    compiled = torch.compile(episode, fullgraph=True)
    np.testing.assert_allclose(compiled(Z, M0).numpy(), episode(Z, M0).numpy(),
                               rtol=1e-5, atol=1e-5)
