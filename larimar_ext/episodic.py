"""Larimar's episodic memory with least-squares writes and sequential write/forget."""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from . import _core, _persist
from ._profiling import profiled
from ._arrays import ArrayLike, Boundary, integer, scalar

_KIND = "larimar_ext.EpisodicMemory"


class EpisodicMemory:
    """A K x C memory M written from episodes of latents (docs/DESIGN.md section 2.5).

    M = argmin_M |W M - Z|^2 + ridge |M - prior|^2 over the rows currently stored (prior
    zero when none). With a small ridge this is Larimar's least-squares write M = W^+ Z;
    the ridge keeps the sequential state defined before K rows are stored. The state
    (M, C = W^T W + ridge I, B = W^T Z + ridge prior, P = C^-1) is kept in float64; arrays
    in and out use ``dtype``.

    Args:
        memory_size: K, the number of slots.
        code_size: C, the latent size.
        prior: optional (K, C) prior memory M0; addresses default to W = Z M0^+.
        ridge: > 0, the weight pulling M towards the prior.
        dtype: float32 or float64 (default: the prior's dtype, else float32).
    """

    def __init__(self, memory_size: int, code_size: int, prior: Optional[ArrayLike] = None,
                 ridge: float = 1e-6, dtype: Any = None) -> None:
        memory_size = integer(memory_size, "memory_size")
        code_size = integer(code_size, "code_size")
        ridge = scalar(ridge, "ridge")
        boundary = Boundary(dtype, "dtype") if dtype is not None else Boundary()
        p = None if prior is None else boundary.floats(prior, "prior")
        dt = boundary.dtype or np.dtype(np.float32)
        if dt not in (np.float32, np.float64):
            raise TypeError(f"dtype: expected float32 or float64, got {dt}")
        self.dtype = np.dtype(dt)
        core = _core.SequentialMemoryF32 if self.dtype == np.float32 else _core.SequentialMemoryF64
        self._core = core(memory_size, code_size, p, ridge)

    def _boundary(self) -> Boundary:
        return Boundary(self.dtype, "the memory's dtype")

    @property
    def memory_size(self) -> int:
        return self._core.memory_size

    @property
    def code_size(self) -> int:
        return self._core.code_size

    @property
    def ridge(self) -> float:
        return self._core.ridge

    @property
    def memory(self) -> np.ndarray:
        """A copy of M, (K, C) in the memory's dtype."""
        return self._core.memory()

    @property
    def prior(self) -> Optional[np.ndarray]:
        state = self._core.state()
        return state["prior"].astype(self.dtype) if "prior" in state else None

    @profiled
    def write(self, Z: ArrayLike, W: Optional[ArrayLike] = None) -> None:
        """Replace the stored rows by one episode: Z (N, C), W (N, K) (default Z prior^+)."""
        b = self._boundary()
        z = b.floats(Z, "Z")
        w = None if W is None else b.floats(W, "W")
        self._core.write(w, z)

    @profiled
    def update(self, Z: ArrayLike, W: ArrayLike, alpha: float = 1.0) -> None:
        """Sequential write (alpha > 0) or forget (alpha = -1) of rows Z (N, C) at W (N, K)."""
        b = self._boundary()
        z = b.floats(Z, "Z")
        w = b.floats(W, "W")
        self._core.update(w, z, scalar(alpha, "alpha"))

    @profiled
    def address(self, Z: ArrayLike) -> ArrayLike:
        """W = Z M^+ (N, K), with M^+ computed once per memory state."""
        b = self._boundary()
        return b.wrap(self._core.address(b.floats(Z, "Z")))

    @profiled
    def read(self, Zq: ArrayLike) -> ArrayLike:
        """Readout z = (Zq M^+) M, (N, C)."""
        b = self._boundary()
        return b.wrap(self._core.read(b.floats(Zq, "Zq")))

    def save(self, path: str | os.PathLike) -> None:
        state = self._core.state()
        config = {"memory_size": self.memory_size, "code_size": self.code_size,
                  "ridge": self.ridge, "dtype": self.dtype.name, "has_prior": "prior" in state}
        _persist.save(path, _KIND, config, state)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EpisodicMemory":
        config, arrays = _persist.load(path, _KIND)
        k = _persist.config_value(config, "memory_size", int, path)
        c = _persist.config_value(config, "code_size", int, path)
        ridge = _persist.config_value(config, "ridge", float, path)
        dtype = _persist.config_value(config, "dtype", str, path)
        has_prior = _persist.config_value(config, "has_prior", bool, path)
        if dtype not in ("float32", "float64") or k <= 0 or c <= 0:
            raise ValueError(f"path: {os.fspath(path)!r} has an invalid config {config}")
        names = {"memory", "gram", "rhs", "precision"} | ({"prior"} if has_prior else set())
        if set(arrays) != names:
            raise ValueError(f"path: {os.fspath(path)!r} holds arrays {sorted(arrays)}, "
                             f"expected {sorted(names)}")
        f64 = np.float64
        memory = _persist.expect(arrays, "memory", (k, c), f64, path)
        gram = _persist.expect(arrays, "gram", (k, k), f64, path)
        rhs = _persist.expect(arrays, "rhs", (k, c), f64, path)
        precision = _persist.expect(arrays, "precision", (k, k), f64, path)
        prior = _persist.expect(arrays, "prior", (k, c), f64, path) if has_prior else None
        def construct() -> "EpisodicMemory":
            mem = cls(k, c, None if prior is None else prior.astype(dtype), ridge, dtype)
            if prior is not None and not np.array_equal(mem._core.state()["prior"], prior):
                raise ValueError(f"the prior does not round-trip through {dtype}")
            mem._core.set_state(memory, gram, rhs, precision)
            return mem

        return _persist.build(path, construct)

    def __repr__(self) -> str:
        return (f"EpisodicMemory(memory_size={self.memory_size}, code_size={self.code_size}, "
                f"ridge={self.ridge:g}, dtype={self.dtype.name})")
