"""A prior's pseudo-inverse computed once, for the addresses of many calls."""

from __future__ import annotations

from typing import Optional

import numpy as np

from . import _core
from ._arrays import ArrayLike, Boundary, optional_scalar
from ._profiling import profiled


class PreparedPinv:
    """R^+ of a fixed R (K, C), prepared once: an inference caller's prior M0, whose
    addresses W = Z M0^+ every episode needs (``pinv_address(Z, M0)`` factors M0 on every
    call).

    A well-conditioned R of full row rank (K <= C, a trained prior) is factored by a
    Cholesky of R R^T and R^+ formed from it, so that an address is one product; any
    other R by the rank-revealing path of ``pinv_address`` (docs/DESIGN.md section 2.3).
    The result is the same: singular values below ``rcond`` times the largest are dropped,
    as by ``numpy.linalg.pinv`` (default max(K, C) * eps of the dtype). Its addresses agree
    with ``pinv_address``'s to rounding, not to the bit: forget rows of an
    ``EpisodicMemory`` with the W they were written with (``pinv_address``'s for a
    memory's default W).

    Args:
        R: (K, C) float32 or float64, numpy or torch (any device; factored on the host).
        rcond: the relative singular-value cutoff, or None for the default.
    """

    def __init__(self, R: ArrayLike, rcond: Optional[float] = None) -> None:
        b = Boundary(op="PreparedPinv")
        r = b.floats(R, "R", (2,))
        self.dtype = r.dtype
        core = _core.PreparedPinvF32 if self.dtype == np.float32 else _core.PreparedPinvF64
        self._core = core(r, optional_scalar(rcond, "rcond"))
        self._wrap = b  # the kind (numpy or the tensor's device) of ``matrix()``

    @property
    def shape(self) -> tuple:
        """(K, C) of R."""
        return (self._core.rows, self._core.cols)

    @property
    def rank(self) -> int:
        """Singular values of R kept (K for a full-row-rank R)."""
        return self._core.rank

    def _boundary(self) -> Boundary:
        return Boundary(self.dtype, "R's dtype", op="PreparedPinv")

    @profiled
    def address(self, Z: ArrayLike) -> ArrayLike:
        """W = Z R^+: Z (N, C) -> (N, K)."""
        b = self._boundary()
        return b.wrap(self._core.address(b.floats(Z, "Z")))

    @profiled
    def project(self, Z: ArrayLike) -> ArrayLike:
        """(Z R^+) R, the projection of Z (N, C) on R's row space -> (N, C)."""
        b = self._boundary()
        return b.wrap(self._core.project(b.floats(Z, "Z")))

    @profiled
    def matrix(self) -> ArrayLike:
        """R^+ (C, K), as numpy or as a tensor on R's device, like R."""
        return self._wrap.wrap(self._core.matrix())

    def __repr__(self) -> str:
        k, c = self.shape
        return f"PreparedPinv(K={k}, C={c}, rank={self.rank}, dtype={self.dtype})"
