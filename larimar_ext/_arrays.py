"""Array conversion at the API boundary: numpy arrays and torch tensors in, the same kind out.

Rules (the documented copies):
- float32 and float64 pass through untouched when C-contiguous (zero-copy; CPU torch
  tensors are viewed through ``Tensor.numpy()``). Non-contiguous inputs are copied to
  C order. CUDA (or other device) tensors are copied to host, and results copied back.
- All floating arrays of one call must share one dtype; any other dtype is a TypeError.
- Index arrays of any integer dtype are converted to int64 (a copy unless already int64).
- Results are numpy arrays, or torch tensors (sharing the result's memory, on the device of
  the first tensor argument) when any argument was a tensor.

This is the one layer that checks an array argument's dtype and rank (``floats``,
``indices``, ``row_ids``), so its errors can name the argument and the one it took its
dtype from; the binding (python/bindings.cpp) then only checks how the shapes fit together.
"""

from __future__ import annotations

import numbers
import sys
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

from . import _core

if TYPE_CHECKING:  # for the annotations only: importing torch costs seconds
    import torch

# An array argument of the public API: a numpy array or a torch tensor (any device). Nested
# sequences of numbers are converted too, but typed code should pass arrays.
ArrayLike = Union[np.ndarray, "torch.Tensor"]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# functional ops with a differentiable twin in larimar_ext.torch_ops
DIFFERENTIABLE = ("lstsq_write", "pinv_address", "read")


def is_tensor(x: Any) -> bool:
    # torch is optional and never imported here (it costs seconds): a tensor can only
    # exist once its caller has imported torch
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


class Boundary:
    """Converts the arguments of one call and wraps its results the same way."""

    def __init__(self, dtype: Optional[np.dtype] = None, dtype_source: str = "",
                 op: Optional[str] = None) -> None:
        self.dtype = np.dtype(dtype) if dtype is not None else None
        self.dtype_source = dtype_source
        self.op = op            # a functional op: its tensors must not silently lose grad
        self.device = None  # torch device of the first tensor argument

    def _to_numpy(self, x: Any, name: str) -> np.ndarray:
        if is_tensor(x):
            if x.device.type == "meta":
                raise TypeError(f"{name}: expected a tensor with data, "
                                f"got one on the 'meta' device")
            if self.op is not None and x.requires_grad and sys.modules["torch"].is_grad_enabled():
                twin = (f"larimar_ext.torch_ops.{self.op}" if self.op in DIFFERENTIABLE
                        else f"larimar_ext.torch_ops ({', '.join(DIFFERENTIABLE)})")
                raise ValueError(f"{name}: requires grad, and larimar_ext.{self.op} returns a "
                                 f"result without one: use {twin} for gradients, or pass "
                                 f"{name}.detach()")
            if self.device is None:
                self.device = x.device
            # Lazy negation/conjugation bits have no numpy view: materialise them.
            x = x.detach().resolve_conj().resolve_neg()
            if x.device.type != "cpu":
                x = x.cpu()
            try:
                return x.numpy()
            except TypeError as exc:  # bfloat16 and other dtypes numpy lacks
                raise TypeError(f"{name}: expected float32 or float64, got {x.dtype}") from exc
        if isinstance(x, np.ndarray):
            return x
        if isinstance(x, (list, tuple)) or isinstance(x, numbers.Number):
            return np.asarray(x)
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")

    def floats(self, x: Any, name: str, ndim: tuple[int, ...] = (2,)) -> np.ndarray:
        """A C-contiguous float32/float64 array of one of the allowed ranks."""
        a = self._to_numpy(x, name)
        if a.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name}: expected float32 or float64, got {a.dtype}")
        if self.dtype is None:
            self.dtype, self.dtype_source = a.dtype, name
        elif a.dtype != self.dtype:
            raise TypeError(
                f"{name}: expected {self.dtype} like {self.dtype_source}, got {a.dtype}")
        if a.ndim not in ndim:
            want = " or ".join(f"{d}-D" for d in ndim)
            raise ValueError(f"{name}: expected a {want} array, "
                             f"got {a.ndim}-D with shape {a.shape}")
        return np.ascontiguousarray(a)

    def indices(self, x: Any, name: str) -> np.ndarray:
        a = self._to_numpy(x, name)
        if not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"{name}: expected integer indices, got {a.dtype}")
        if a.ndim != 2:
            raise ValueError(f"{name}: expected a 2-D array, got {a.ndim}-D with shape {a.shape}")
        return np.ascontiguousarray(a, dtype=np.int64)

    def row_ids(self, x: Any, name: str) -> np.ndarray:
        """A 1-D int64 array of row ids (an empty array of any dtype is no ids)."""
        a = self._to_numpy(x, name)
        if a.ndim != 1 or not (a.size == 0 or np.issubdtype(a.dtype, np.integer)):
            raise ValueError(f"{name}: expected a 1-D array of integer row ids, got "
                             f"{a.ndim}-D {a.dtype}")
        return np.ascontiguousarray(a, dtype=np.int64)

    def wrap(self, result: Any) -> Any:
        """numpy results as given, or tensors on the first tensor argument's device."""
        if self.device is None:
            return result
        if isinstance(result, tuple):
            return tuple(self.wrap(r) for r in result)
        if isinstance(result, np.ndarray):
            t = sys.modules["torch"].from_numpy(result)     # a tensor came in: torch is loaded
            return t if self.device.type == "cpu" else t.to(self.device)
        return result


def scalar(value: Any, name: str) -> float:
    """A real number argument, or a TypeError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if is_tensor(value) and value.numel() == 1:
            return float(value.item())
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    return float(value)


def integer(value: Any, name: str) -> int:
    """An integer argument that fits the kernel's int64, or an error naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    value = int(value)
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"{name}: {value} does not fit in a 64-bit integer")
    return value


def optional_flag(value: Any, name: str) -> Optional[bool]:
    """True, False or None (a choice left to a default), or a ValueError naming it."""
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{name}: expected True, False or None, got {value!r}")
    return value


def optional_scalar(value: Any, name: str) -> Optional[float]:
    return None if value is None else scalar(value, name)


def gaussian_alpha(value: Any, k: int = 1) -> Optional[float]:
    """A Gaussian temperature ``alpha``, checked up front by the kernel's own rules (finite,
    > 0, ``alpha: expected a finite number > 0, got ...``; None, a hard read, only with
    k = 1), for callers that must refuse it before any work (a collective call, a decode).
    Ops that hand alpha to the kernel need not call this: the kernel checks it there."""
    return _core.check_alpha(optional_scalar(value, "alpha"), k)

