"""Linear layers in int8 arithmetic on the CPU: ``nn.Linear``'s forward by the kernel's
integer dot products (``_core.Int8LinearF32``, docs/DESIGN.md section 2.11).

The weights are quantised once, a scale per output row; every input row is quantised as it
arrives, with a scale of its own (63 levels a side); the products are summed exactly in
integers and scaled back to float32. It replaces torch.ao's deprecated
``quantize_dynamic`` for the int8 copy of the encoder (``LarimarModel.int8_values``): on an
AVX2 host it ran the encoder's layer shapes 1.1-2.1x faster than torch.ao (a whole ingest
1.03-1.11x), and its slot ids are closer to the float32 encoder's (benchmarks/RESULTS.md
section 20).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from . import _core
from ._arrays import Boundary

__all__ = ["Int8Linear", "int8_linears"]


class Int8Linear(nn.Module):
    """y = x W^T + b with W and x scalar-quantised to int8 codes, for inference.

    Args:
        weight: (out_features, in_features) float32, finite.
        bias: (out_features,) float32, or None.

    The codes live in the kernel, outside the module's parameters and buffers (nothing to
    train or save; ``from_linear`` again after the float layer changes). Inputs are
    float32 (..., in_features) tensors or arrays on any device; the product runs on the
    host and the result goes back to the input's device. No gradients flow through it.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        b = Boundary(np.float32, "weight")
        w = b.floats(weight, "weight", (2,))
        bias_ = None if bias is None else b.floats(bias, "bias", (1,))
        self._core = _core.Int8LinearF32(w, bias_)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        """The int8 layer of a float ``nn.Linear`` (its weights as float32)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        bias = None if linear.bias is None else linear.bias.detach().float()
        return cls(linear.weight.detach().float(), bias)

    @property
    def in_features(self) -> int:
        return self._core.in_features

    @property
    def out_features(self) -> int:
        return self._core.out_features

    @property
    def nbytes(self) -> int:
        """Bytes of the codes, scales, offsets and bias."""
        return self._core.nbytes

    def weight_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """(codes (out, in) int8, scales (out,) float32): W ~ scales[:, None] * codes."""
        return self._core.weight_codes()

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in_features) float32 -> (..., out_features)."""
        if (type(x) is Tensor and x.dtype == torch.float32 and x.device.type == "cpu"
                and x.ndim >= 1 and not x.requires_grad and x.is_contiguous()
                and not x.is_neg()):
            # a decoder step calls ~200 small layers: the plain case skips the general
            # conversion (the kernel still checks the columns and the values)
            y = self._core.forward(x.view(-1, x.shape[-1]).numpy())
            return torch.from_numpy(y).view(*x.shape[:-1], self.out_features)
        b = Boundary(np.float32, "the layer's float32 weights")
        if not isinstance(x, (Tensor, np.ndarray)) or x.ndim < 1:
            raise ValueError(f"x: expected a float32 array (..., {self.in_features}), got "
                             f"{type(x).__name__}")
        if isinstance(x, Tensor) and x.requires_grad and torch.is_grad_enabled():
            raise ValueError("x: requires grad, and Int8Linear has no gradients (it is for "
                             "inference): pass x.detach() or run under torch.no_grad()")
        lead = tuple(x.shape[:-1])
        rows = x.reshape(-1, x.shape[-1]) if x.ndim != 2 else x
        y = b.wrap(self._core.forward(b.floats(rows, "x", (2,))))
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self._core.has_bias}")


def int8_linears(module: nn.Module) -> nn.Module:
    """``module`` with every ``nn.Linear`` in it replaced by its ``Int8Linear`` (in place;
    returns the module). A bare ``nn.Linear`` comes back as its ``Int8Linear``."""
    if isinstance(module, nn.Linear):
        return Int8Linear.from_linear(module)
    for name, child in list(module.named_children()):
        setattr(module, name, int8_linears(child))
    return module
