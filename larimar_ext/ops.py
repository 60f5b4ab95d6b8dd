"""Functional memory ops (docs/DESIGN.md section 2). Shapes: N rows, K slots/keys, C code size,
B episodes. Every op accepts numpy arrays or torch tensors (see ``_arrays``)."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

from . import _core
from ._profiling import profiled
from ._arrays import ArrayLike, Boundary, integer, optional_scalar, scalar
from .results import SearchResult

# A sparse address: (indices int (N, k), weights (N, k)), as gaussian_address(top_k=k) returns it.
SparseAddress = Tuple[ArrayLike, ArrayLike]

__all__ = ["lstsq_write", "pinv_address", "pinv_read", "gaussian_address", "onehot_address",
           "read", "topk", "sparse_lstsq_write", "gaussian_read_scored"]


@profiled
def lstsq_write(W: ArrayLike, Z: ArrayLike, ridge: float = 0.0,
                rcond: Optional[float] = None) -> ArrayLike:
    """Least-squares memory write M = W^+ Z.

    W (N, K) and Z (N, C) give M (K, C); batched W (B, N, K), Z (B, N, C) give (B, K, C).
    ``ridge`` > 0 solves (W^T W + ridge I) M = W^T Z. ``rcond`` is the relative singular
    value cutoff of the pseudo-inverse (default max(N, K) * eps of the dtype).
    """
    b = Boundary(op="lstsq_write")
    w = b.floats(W, "W", (2, 3))
    z = b.floats(Z, "Z", (2, 3))
    return b.wrap(_core.lstsq_write(w, z, scalar(ridge, "ridge"), optional_scalar(rcond, "rcond")))


@profiled
def pinv_address(Z: ArrayLike, R: ArrayLike, rcond: Optional[float] = None) -> ArrayLike:
    """Pseudo-inverse addresses W = Z R^+: (N, C), (K, C) -> (N, K), or batched
    (B, N, C), (B, K, C) -> (B, N, K). R^+ comes from a rank-revealing factorisation, so
    a memory of rank r < K costs O(r K C)."""
    b = Boundary(op="pinv_address")
    z = b.floats(Z, "Z", (2, 3))
    r = b.floats(R, "R", (2, 3))
    return b.wrap(_core.pinv_address(z, r, optional_scalar(rcond, "rcond")))


@profiled
def pinv_read(Zq: ArrayLike, M: ArrayLike, rcond: Optional[float] = None) -> ArrayLike:
    """Larimar's read z = (Zq M^+) M in one op: (N, C), (K, C) -> (N, C), or batched
    (B, N, C), (B, K, C) -> (B, N, C).

    M^+ M is the projection on M's row space, so this is Zq Q Q^T with Q an orthonormal
    basis of that space: the same answer as ``read(pinv_address(Zq, M), M)`` (to the rank
    cutoff ``rcond``) without forming the (N, K) addresses or a second pass over M.
    """
    b = Boundary(op="pinv_read")
    z = b.floats(Zq, "Zq", (2, 3))
    m = b.floats(M, "M", (2, 3))
    return b.wrap(_core.pinv_read(z, m, optional_scalar(rcond, "rcond")))


@profiled
def gaussian_address(Z: ArrayLike, R: ArrayLike, alpha: float,
                     top_k: Optional[int] = None) -> Union[ArrayLike, SparseAddress]:
    """Gaussian soft keys: w_k ∝ exp(-|z - R_k|^2 / (2 alpha s^2)), s = min_k |z - R_k|.

    Z (N, C), R (K, C). Returns dense W (N, K) with rows summing to 1, or with ``top_k``
    the sparse address (indices int64 (N, top_k), weights (N, top_k)) over the nearest keys.
    """
    b = Boundary(op="gaussian_address")
    z = b.floats(Z, "Z")
    r = b.floats(R, "R")
    k = None if top_k is None else integer(top_k, "top_k")
    return b.wrap(_core.gaussian_address(z, r, scalar(alpha, "alpha"), k))


@profiled
def onehot_address(Z: ArrayLike, R: ArrayLike) -> SparseAddress:
    """Nearest key by L2 distance as a sparse address: (indices (N, 1), weights (N, 1) = 1)."""
    b = Boundary(op="onehot_address")
    z = b.floats(Z, "Z")
    r = b.floats(R, "R")
    return b.wrap(_core.onehot_address(z, r))


@profiled
def read(W: Union[ArrayLike, SparseAddress], M: ArrayLike) -> ArrayLike:
    """Readout z = W M. Dense W (N, K) with M (K, C), batched (B, N, K) with (B, K, C), or
    a sparse address (indices (N, k), weights (N, k)) with M (K, C)."""
    b = Boundary(op="read")
    if isinstance(W, tuple):
        if len(W) != 2:
            raise ValueError("W: expected a dense array or an (indices, weights) pair")
        ids = b.indices(W[0], "W")
        weights = b.floats(W[1], "W")
        return b.wrap(_core.read_sparse(ids, weights, b.floats(M, "M")))
    w = b.floats(W, "W", (2, 3))
    return b.wrap(_core.read_dense(w, b.floats(M, "M", (2, 3))))


@profiled
def gaussian_read_scored(scores: ArrayLike, values: ArrayLike, metric: str, alpha: float,
                         Q: Optional[ArrayLike] = None,
                         key_sq: Optional[ArrayLike] = None) -> ArrayLike:
    """The soft read of ``KeyValueMemory.read(Q, k, alpha)`` over given candidates (e.g. the
    top-k hits of several stores, merged): scores (nq, k) by ``metric``, best first as
    ``topk`` returns them, and their values (nq, k, C) give readouts (nq, C).

    The scores become squared distances (l2: -s; cosine, of unit vectors: 2 - 2s; ip:
    |q|^2 + |key|^2 - 2s, which needs the queries Q (nq, d) and the candidates' squared key
    norms key_sq (nq, k), e.g. ``KeyValueMemory.key_sq_norms``), then Gaussian weights
    exp(-(d^2 - s^2) / (2 alpha s^2)) over each row, s^2 its smallest, summing to 1.
    """
    b = Boundary(op="gaussian_read_scored")
    s = b.floats(scores, "scores")
    v = b.floats(values, "values", (3,))
    if not isinstance(metric, str):
        raise TypeError(f"metric: expected a string, got {type(metric).__name__}")
    if metric != "ip":  # a stray Q would be silently ignored: say so instead
        for name, given in (("Q", Q), ("key_sq", key_sq)):
            if given is not None:
                raise ValueError(f"{name}: only the 'ip' metric uses it (the {metric!r} "
                                 f"scores give the distances); pass None")
    q = None if Q is None else b.floats(Q, "Q")
    ksq = None if key_sq is None else b.floats(key_sq, "key_sq")
    return b.wrap(_core.gaussian_read_scored(s, v, metric, scalar(alpha, "alpha"), q, ksq))


@profiled
def topk(Q: ArrayLike, keys: ArrayLike, k: int, metric: str = "ip") -> SearchResult:
    """Exact top-k search: ``SearchResult(ids int64 (nq, k), scores (nq, k))``, best first,
    equal scores in ascending index order. metric: "ip" (q.k), "cosine", or "l2"
    (score -|q - k|^2)."""
    b = Boundary(op="topk")
    q = b.floats(Q, "Q")
    kk = b.floats(keys, "keys")
    if not isinstance(metric, str):
        raise TypeError(f"metric: expected a string, got {type(metric).__name__}")
    return SearchResult(*b.wrap(_core.topk(q, kk, integer(k, "k"), metric)))


@profiled
def sparse_lstsq_write(indices: ArrayLike, weights: ArrayLike, Z: ArrayLike, memory_size: int,
                       ridge: float = 0.0, prior: Optional[ArrayLike] = None, tol: float = 1e-10,
                       max_iter: Optional[int] = None, return_info: bool = False
                       ) -> Union[ArrayLike, Tuple[ArrayLike, Dict[str, Any]]]:
    """Least-squares write through sparse addresses.

    M (memory_size, C) = argmin |W M - Z|^2 + ridge |M - prior|^2 with row i of W given by
    ``indices[i]`` (int, (N, k)) and ``weights[i]`` ((N, k)); Z (N, C). Slots no row touches
    keep ``prior`` (zero without one). One address per row is solved in closed form (the
    mean of the values per slot); otherwise conjugate gradients on the normal equations
    over the touched slots. ``return_info`` adds a dict (touched, iterations, residual).
    """
    b = Boundary(op="sparse_lstsq_write")
    ids = b.indices(indices, "indices")
    w = b.floats(weights, "weights")
    z = b.floats(Z, "Z")
    p = None if prior is None else b.floats(prior, "prior")
    iters = -1 if max_iter is None else integer(max_iter, "max_iter")
    m, info = _core.sparse_lstsq_write(ids, w, z, integer(memory_size, "memory_size"),
                                       scalar(ridge, "ridge"), p, scalar(tol, "tol"), iters)
    m = b.wrap(m)
    return (m, info) if return_info else m
