"""A saved KeyValueMemory opened read-only in place: its file is memory-mapped, not read in,
so a memory larger than RAM can be searched."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from . import _core, _persist, ops
from ._arrays import ArrayLike, integer, optional_scalar
from ._profiling import profiled
from .kv_memory import _KIND, _KeyedCore, saved_config
from .results import SearchAndReconstructResult, SearchResult


class MappedKeyValueMemory(_KeyedCore):
    """The memory ``KeyValueMemory.save`` wrote, opened read-only without reading it into the
    process (``KeyValueMemory.open(path)``).

    Keys and values stay in the file, as numpy memory maps that the operating system pages in
    as a search reads them and drops under memory pressure. The process holds only the keys'
    squared norms (4 or 8 bytes a row) and, with ``key_codes="int8"``, their int8 codes (a
    quarter of the float32 key bytes plus 20 a row). The search then scans the codes in RAM
    and reads from the file only the shortlisted keys it re-scores, so a file larger than RAM
    is searched at the speed of its codes, not of the disk (benchmarks/RESULTS.md section
    11). Results are those of the loaded memory, ids and score bits alike.

    Opening reads the file once through to check every array's SHA-256 (``verify=False``
    skips that, for a file this process or a trusted one just wrote) and once to check the
    keys are finite and build the norms and codes. There is no add, write or save: use
    ``KeyValueMemory.load`` for a memory to change.

    Args:
        path: a file ``KeyValueMemory.save`` wrote, with at least one row.
        key_codes: None (default) scans the mapped float keys; "int8" builds codes to scan.
        verify: check the arrays' digests before anything is used (default True).
    """

    def __init__(self, path: str | os.PathLike, key_codes: Optional[str] = None,
                 verify: bool = True) -> None:
        if key_codes not in (None, "int8"):
            raise ValueError(f"key_codes: expected None or \"int8\", got {key_codes!r}")
        if not isinstance(verify, (bool, np.bool_)):
            raise TypeError(f"verify: expected True or False, got {verify!r}")
        with _persist.RowFile(path, _KIND, to_memory=False) as f:
            c = saved_config(f, path)
            if c.key_codes == "int8-only":
                raise ValueError(f"path: {os.fspath(path)!r} holds int8-only keys (codes, not "
                                 "float keys to map): open it with KeyValueMemory.load")
            if c.size == 0:
                raise ValueError(f"path: {os.fspath(path)!r} holds no rows: nothing to map")
            if verify:
                f.verify()
            self._keys, self._values = f.mapped("keys"), f.mapped("values")
        self.path = os.fspath(path)
        self.dtype = np.dtype(c.dtype)
        self.merge_identical = c.merge_identical
        self.value_dim = c.value_dim
        view = _core.KeyViewF32 if self.dtype == np.float32 else _core.KeyViewF64
        self._core = _persist.build(path, lambda: view(self._keys, c.metric,
                                                        key_codes or "none"))

    @property
    def keys(self) -> np.ndarray:
        """The keys (n, key_dim), a read-only map of the file."""
        return self._keys

    @property
    def values(self) -> np.ndarray:
        """The values (n, value_dim), a read-only map of the file."""
        return self._values

    @property
    def nbytes(self) -> int:
        """Bytes the process holds for the memory: the keys' norms and codes (the file's
        bytes are ``mapped_nbytes``; the OS caches of them what memory allows)."""
        return self._core.nbytes

    @property
    def mapped_nbytes(self) -> int:
        return int(self._keys.nbytes + self._values.nbytes)

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        n = len(self)
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= n):
            bad = ids[(ids < 0) | (ids >= n)][0]
            raise ValueError(f"ids: expected row ids in [0, {n}), got {int(bad)}")
        return np.asarray(self._values[ids])  # a copy: the map stays read-only

    def _hits(self, q: np.ndarray, k: int):
        """ids (nq, k), scores (nq, k) and the hits' values (nq, k, value_dim)."""
        ids, scores = self._core.search(q, integer(k, "k"))
        return ids, scores, self._rows(ids.reshape(-1)).reshape(ids.shape + (self.value_dim,))

    @profiled
    def search(self, Q: ArrayLike, k: int) -> SearchResult:
        """``SearchResult(ids int64 (nq, k), scores (nq, k))``, as ``KeyValueMemory.search``."""
        b = self._boundary()
        return SearchResult(*b.wrap(self._core.search(b.floats(Q, "Q"), integer(k, "k"))))

    @profiled
    def reconstruct(self, ids: ArrayLike) -> ArrayLike:
        """The values (n, value_dim) of row ids (n,), in the order given, read from the file."""
        b = self._boundary()
        return b.wrap(self._rows(b.row_ids(ids, "ids")))

    @profiled
    def key_sq_norms(self, ids: ArrayLike) -> ArrayLike:
        """Squared norms |key|^2 (n,) of row ids (n,), as ``KeyValueMemory.key_sq_norms``."""
        b = self._boundary()
        return b.wrap(self._core.key_sq_norms(b.row_ids(ids, "ids")))

    @profiled
    def search_and_reconstruct(self, Q: ArrayLike, k: int) -> SearchAndReconstructResult:
        """``search`` and the values (nq, k, value_dim) of its hits."""
        b = self._boundary()
        return SearchAndReconstructResult(*b.wrap(self._hits(b.floats(Q, "Q"), k)))

    @profiled
    def read(self, Q: ArrayLike, k: int = 1, alpha: Optional[float] = None) -> ArrayLike:
        """Readouts (nq, value_dim), as ``KeyValueMemory.read``: the best key's value (k = 1)
        or with ``alpha`` the Gaussian-weighted values of the top k (``ops.gaussian_read_
        scored``, the formula the store's read uses)."""
        b = self._boundary()
        q = b.floats(Q, "Q")
        alpha = _core.check_alpha(optional_scalar(alpha, "alpha"), integer(k, "k"))
        ids, scores, values = self._hits(q, k)
        if alpha is None:
            return b.wrap(values[:, 0])
        ip = self.metric == "ip"
        key_sq = self._core.key_sq_norms(ids.reshape(-1)).reshape(ids.shape) if ip else None
        return b.wrap(ops.gaussian_read_scored(scores, values, self.metric, alpha,
                                               q if ip else None, key_sq))

    def __repr__(self) -> str:
        codes = "" if self.key_codes is None else f", key_codes={self.key_codes!r}"
        return (f"MappedKeyValueMemory({self.path!r}, key_dim={self.key_dim}, "
                f"value_dim={self.value_dim}, metric={self.metric!r}, size={len(self)}, "
                f"dtype={self.dtype.name}{codes})")
