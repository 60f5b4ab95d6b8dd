"""Differentiable memory ops for PyTorch models (docs/DESIGN.md section 2.10).

``lstsq_write``, ``pinv_address`` and ``read`` as ``torch.library`` custom ops with
analytic backward passes, so models train through the memory and ``torch.compile`` sees
them as single ops. CPU tensors run on the native kernel; tensors on other devices run the
same math in torch on that device (no host round trip inside a training step).

Shapes: W (..., N, K), Z (..., N, C), M (..., K, C), R (..., K, C); leading dimensions are
batch dimensions (the kernel takes one, torch any).

Backward of the pseudo-inverse (Golub and Pereyra): for P = A^+ and an upstream gradient
X = dL/dP, dL/dA = -P^T X P^T + (I - A P) X^T P P^T + P^T P X^T (I - P A), valid while
the rank of A does not change (full rank in either regime, N >= K or N < K).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import ops

__all__ = ["lstsq_write", "pinv_address", "read"]


def _t(x: Tensor) -> Tensor:
    return x.transpose(-1, -2)


def _pinv(a: Tensor) -> Tensor:
    """A^+ for a (..., m, n) tensor: the kernel's rank-revealing pseudo-inverse on CPU."""
    if a.device.type == "cpu" and a.dim() in (2, 3):
        # I_m (A^T)^+ = (A^+)^T: the identity is m x m (m = K rows, small), never n x n
        # (n = C, the code size, can be thousands)
        eye = torch.eye(a.shape[-2], dtype=a.dtype).expand(*a.shape[:-2], -1, -1).contiguous()
        return _t(ops.pinv_address(eye, _t(a).detach().contiguous()))
    return torch.linalg.pinv(a)


def _pinv_backward(a: Tensor, p: Tensor, x: Tensor) -> Tensor:
    """dL/dA for P = A^+ given X = dL/dP (Golub-Pereyra), A (m, n). Products are grouped so
    that no n x n matrix is formed (n = C can be thousands, m = K or N is small)."""
    pt = _t(p)
    eye_m = torch.eye(a.shape[-2], dtype=a.dtype, device=a.device)
    b = pt @ p @ _t(x)                                   # (m, n)
    return (-pt @ x @ pt
            + (eye_m - a @ p) @ _t(x) @ p @ pt
            + b - (b @ p) @ a)


# ----------------------------------------------------------------------------- lstsq_write


@torch.library.custom_op("larimar_ext::lstsq_write", mutates_args=())
def _lstsq_write(W: Tensor, Z: Tensor, ridge: float) -> Tensor:
    if W.device.type == "cpu" and W.dim() in (2, 3):
        return ops.lstsq_write(W.detach().contiguous(), Z.detach().contiguous(), ridge=ridge)
    if ridge > 0:
        gram = _t(W) @ W + ridge * torch.eye(W.shape[-1], dtype=W.dtype, device=W.device)
        return torch.linalg.solve(gram, _t(W) @ Z)
    return torch.linalg.pinv(W) @ Z


@_lstsq_write.register_fake
def _(W: Tensor, Z: Tensor, ridge: float) -> Tensor:
    return W.new_empty((*W.shape[:-2], W.shape[-1], Z.shape[-1]))


def _lstsq_setup(ctx, inputs, output) -> None:
    W, Z, ridge = inputs
    ctx.ridge = ridge
    ctx.save_for_backward(W, Z, output)


def _lstsq_backward(ctx, grad: Tensor):
    W, Z, M = ctx.saved_tensors
    if ctx.ridge > 0:
        # M = A^-1 W^T Z, A = W^T W + ridge I; Y = A^-1 G.
        gram = _t(W) @ W + ctx.ridge * torch.eye(W.shape[-1], dtype=W.dtype, device=W.device)
        y = torch.linalg.solve(gram, grad)
        grad_w = Z @ _t(y) - W @ (y @ _t(M) + M @ _t(y))
        return grad_w, W @ y, None
    p = _pinv(W)  # M = P Z: dL/dP = G Z^T
    return _pinv_backward(W, p, grad @ _t(Z)), _t(p) @ grad, None


_lstsq_write.register_autograd(_lstsq_backward, setup_context=_lstsq_setup)


def lstsq_write(W: Tensor, Z: Tensor, ridge: float = 0.0) -> Tensor:
    """M = W^+ Z (ridge: (W^T W + ridge I)^-1 W^T Z), differentiable in W and Z.
    W (..., N, K), Z (..., N, C) -> M (..., K, C)."""
    return _lstsq_write(W, Z, float(ridge))


# ----------------------------------------------------------------------------- pinv_address


@torch.library.custom_op("larimar_ext::pinv_address", mutates_args=())
def _pinv_address(Z: Tensor, R: Tensor) -> Tensor:
    if Z.device.type == "cpu" and Z.dim() in (2, 3):
        return ops.pinv_address(Z.detach().contiguous(), R.detach().contiguous())
    return Z @ torch.linalg.pinv(R)


@_pinv_address.register_fake
def _(Z: Tensor, R: Tensor) -> Tensor:
    return Z.new_empty((*Z.shape[:-1], R.shape[-2]))


def _address_setup(ctx, inputs, output) -> None:
    Z, R = inputs
    ctx.save_for_backward(Z, R)


def _address_backward(ctx, grad: Tensor):
    Z, R = ctx.saved_tensors
    p = _pinv(R)  # W = Z P: dL/dP = Z^T G
    return grad @ _t(p), _pinv_backward(R, p, _t(Z) @ grad)


_pinv_address.register_autograd(_address_backward, setup_context=_address_setup)


def pinv_address(Z: Tensor, R: Tensor) -> Tensor:
    """W = Z R^+, differentiable in Z and R. Z (..., N, C), R (..., K, C) -> (..., N, K)."""
    return _pinv_address(Z, R)


# ----------------------------------------------------------------------------- read


@torch.library.custom_op("larimar_ext::read", mutates_args=())
def _read(W: Tensor, M: Tensor) -> Tensor:
    if W.device.type == "cpu" and W.dim() in (2, 3):
        return ops.read(W.detach().contiguous(), M.detach().contiguous())
    return W @ M


@_read.register_fake
def _(W: Tensor, M: Tensor) -> Tensor:
    return W.new_empty((*W.shape[:-1], M.shape[-1]))


def _read_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _read_backward(ctx, grad: Tensor):
    W, M = ctx.saved_tensors
    return grad @ _t(M), _t(W) @ grad


_read.register_autograd(_read_backward, setup_context=_read_setup)


def read(W: Tensor, M: Tensor) -> Tensor:
    """z = W M, differentiable. W (..., N, K), M (..., K, C) -> (..., N, C)."""
    return _read(W, M)
