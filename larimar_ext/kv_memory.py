"""The fixed-key memory of Nelson et al.: keys grow with the context, one value per key."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

import numpy as np

from . import _core, _persist
from ._profiling import profiled
from ._arrays import ArrayLike, Boundary, integer, optional_scalar, scalar
from .results import SearchAndReconstructResult, SearchResult

if TYPE_CHECKING:
    from .mapped_memory import MappedKeyValueMemory

_KIND = "larimar_ext.KeyValueMemory"
# key_codes values: None, codes beside the float keys, or codes instead of them
KEY_CODES = (None, "int8", "int8-only")


class SavedConfig(NamedTuple):
    key_dim: int
    value_dim: int
    size: int
    metric: str
    dtype: str
    merge_identical: bool
    key_codes: Optional[str]


def saved_config(f: "_persist.RowFile", path: Any) -> SavedConfig:
    """The config of a file ``KeyValueMemory.save`` wrote, and its arrays' shapes, checked
    (ValueError naming the file)."""
    config, arrays = f.config, f.arrays
    d = _persist.config_value(config, "key_dim", int, path)
    v = _persist.config_value(config, "value_dim", int, path)
    n = _persist.config_value(config, "size", int, path)
    metric = _persist.config_value(config, "metric", str, path)
    dtype = _persist.config_value(config, "dtype", str, path)
    merge = config.get("merge_identical", True)   # files from before the option
    codes = config.get("key_codes", "none")        # likewise
    if not isinstance(merge, bool) or codes not in KEY_CODES[1:] + ("none",):
        raise ValueError(f"path: {os.fspath(path)!r} has an invalid config {config}")
    if dtype not in ("float32", "float64") or d <= 0 or v <= 0 or n < 0:
        raise ValueError(f"path: {os.fspath(path)!r} has an invalid config {config}")
    # an int8-only store saves its keys as they are kept: codes and scales
    key_arrays = ("key_codes", "key_scales") if codes == "int8-only" else ("keys",)
    if set(arrays) != {*key_arrays, "values", "counts"}:
        raise ValueError(f"path: {os.fspath(path)!r} holds arrays {sorted(arrays)}")
    if codes == "int8-only":
        _persist.expect(arrays, "key_codes", (n, d), np.int8, path)
        _persist.expect(arrays, "key_scales", (n,), dtype, path)
    else:
        _persist.expect(arrays, "keys", (n, d), dtype, path)
    _persist.expect(arrays, "values", (n, v), dtype, path)
    _persist.expect(arrays, "counts", (n,), np.float64, path)
    return SavedConfig(d, v, n, metric, dtype, merge, None if codes == "none" else codes)


class _KeyedCore:
    """What a key-value memory and its read-only mapped view share over their kernel object
    (``_core``) and ``dtype``."""

    _core: Any
    dtype: np.dtype

    def _boundary(self) -> Boundary:
        return Boundary(self.dtype, "the memory's dtype")

    @property
    def key_dim(self) -> int:
        return self._core.key_dim

    @property
    def metric(self) -> str:
        return self._core.metric

    @property
    def key_codes(self) -> Optional[str]:
        """None; "int8" when search scans integer codes of the float keys; "int8-only" when
        the keys are kept as those codes alone."""
        codes = self._core.key_codes
        return None if codes == "none" else codes

    def __len__(self) -> int:
        return len(self._core)


class KeyValueMemory(_KeyedCore):
    """Keys R (n, key_dim) and values M (n, value_dim) in host memory, searched exactly.

    A write addresses each new row by its nearest key: its own, so a distinct key's value is
    copied in; a key bitwise identical to one already stored is not appended again, and that
    slot holds the least-squares value of every row written to it (their mean). ``write``
    writes through soft top-k addresses by a sparse least-squares solve.

    Args:
        key_dim, value_dim: sizes of keys and values.
        metric: "cosine" (default), "ip" or "l2", for search and addressing.
        dtype: float32 (default) or float64.
        merge_identical: True (default) stores a bitwise identical key once (above); False
            gives every added row a slot of its own, for keys computed from content that two
            distinct items may share.
        key_codes: None (default) searches the keys themselves; "int8" also keeps each key
            as 7-bit integer codes with a scale of its own (a quarter of the float32 bytes
            plus 20 bytes a row) and scans those: a bound on the codes' error picks the keys
            that could be in the top k, and these are scored from the float keys, so every
            search returns the same ids and the same score bits as without codes (docs/
            DESIGN.md section 2.6). Faster where the scan is bound by memory or by multiplies.
            "int8-only" keeps the codes instead of the float keys (384 + 24 bytes a row for
            384 float32 numbers, not 1,540): a key, once added, is its codes' decoding
            ``scale * code`` (each number within half a step of the key's, a step being
            max|key| / 63), and every search, read, ``keys`` and file returns the decoded
            keys, searched exactly as above. Lossy: two keys that decode alike count as
            identical for ``merge_identical``. For memories whose bytes matter more than
            the last digits of a score (``LongContextMemory``).
    """

    def __init__(self, key_dim: int, value_dim: int, metric: str = "cosine",
                 dtype: Any = np.float32, merge_identical: bool = True,
                 key_codes: Optional[str] = None) -> None:
        key_dim = integer(key_dim, "key_dim")
        value_dim = integer(value_dim, "value_dim")
        if not isinstance(metric, str):
            raise TypeError(f"metric: expected a string, got {type(metric).__name__}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype: expected float32 or float64, got {self.dtype}")
        if not isinstance(merge_identical, (bool, np.bool_)):
            raise TypeError(f"merge_identical: expected True or False, got {merge_identical!r}")
        if key_codes is not None and not isinstance(key_codes, str):
            raise TypeError(f"key_codes: expected one of {KEY_CODES}, got {key_codes!r}")
        if key_codes not in KEY_CODES:
            raise ValueError(f"key_codes: expected one of {KEY_CODES}, got {key_codes!r}")
        codes = "none" if key_codes is None else key_codes
        core = _core.KeyValueStoreF32 if self.dtype == np.float32 else _core.KeyValueStoreF64
        self._core = core(key_dim, value_dim, metric, bool(merge_identical), codes)

    @property
    def value_dim(self) -> int:
        return self._core.value_dim

    @property
    def merge_identical(self) -> bool:
        return self._core.merge_identical

    @property
    def keys(self) -> np.ndarray:
        """A copy of the keys (n, key_dim) as stored (an int8-only store's decoded)."""
        return self._core.keys()

    @property
    def codes(self) -> tuple[np.ndarray, np.ndarray]:
        """(codes int8 (n, key_dim), scales (n,)) of a store with key codes: key i is about
        ``scales[i] * codes[i]`` (exactly so with "int8-only")."""
        return self._core.codes()

    @property
    def values(self) -> np.ndarray:
        return self._core.values()

    @property
    def nbytes(self) -> int:
        """Host bytes of what is stored: the rows' keys, values and norms, their write counts
        and the key index (as ``numpy.ndarray.nbytes``, the data, not the allocation)."""
        return self._core.nbytes

    @property
    def reserved_nbytes(self) -> int:
        """Host bytes the store holds, the row capacity allocated ahead included (rows come
        in chunks of up to 16,384 or 64 MiB): what the process pays."""
        return self._core.reserved_nbytes

    @profiled
    def add(self, keys: ArrayLike, values: ArrayLike) -> ArrayLike:
        """Append keys (n, key_dim) with values (n, value_dim); returns the slot ids (n,)."""
        b = self._boundary()
        k = b.floats(keys, "keys")
        v = b.floats(values, "values")
        return b.wrap(self._core.add(k, v))

    @profiled
    def write(self, Q: ArrayLike, values: ArrayLike, k: int, alpha: float) -> None:
        """Write values (n, value_dim) through soft addresses: each row's top ``k`` keys
        nearest to Q (n, key_dim), Gaussian weights with ``alpha``; the touched slots take
        the least-squares solution of these rows and their past writes."""
        b = self._boundary()
        q = b.floats(Q, "Q")
        v = b.floats(values, "values")
        self._core.write(q, v, integer(k, "k"), scalar(alpha, "alpha"))

    @profiled
    def search(self, Q: ArrayLike, k: int) -> SearchResult:
        """``SearchResult(ids int64 (nq, k), scores (nq, k))``: exact top-k by the memory's
        metric, best first."""
        b = self._boundary()
        return SearchResult(*b.wrap(self._core.search(b.floats(Q, "Q"), integer(k, "k"))))

    @profiled
    def reconstruct(self, ids: ArrayLike) -> ArrayLike:
        """The stored values (n, value_dim) of row ids (n,) (FAISS's reconstruct_n), in the
        order given; an id outside [0, len) is a ValueError naming ``ids``."""
        b = self._boundary()
        return b.wrap(self._core.reconstruct(b.row_ids(ids, "ids")))

    @profiled
    def key_sq_norms(self, ids: ArrayLike) -> ArrayLike:
        """Squared norms |key|^2 (n,) of row ids (n,), as the store keeps them for search:
        with ``ops.gaussian_read_scored`` they give the 'ip' soft read of hits gathered from
        several stores. An id outside [0, len) is a ValueError naming ``ids``."""
        b = self._boundary()
        return b.wrap(self._core.key_sq_norms(b.row_ids(ids, "ids")))

    @profiled
    def search_and_reconstruct(self, Q: ArrayLike, k: int) -> SearchAndReconstructResult:
        """``SearchAndReconstructResult(ids (nq, k), scores (nq, k), values (nq, k,
        value_dim))``: ``search`` and the values of its hits in one call (one lock: a
        concurrent ``add`` cannot come between)."""
        b = self._boundary()
        return SearchAndReconstructResult(*b.wrap(self._core.search_and_reconstruct(
            b.floats(Q, "Q"), integer(k, "k"))))

    @profiled
    def read(self, Q: ArrayLike, k: int = 1, alpha: Optional[float] = None) -> ArrayLike:
        """Readouts (nq, value_dim): the best key's value (k = 1), or with ``alpha`` the
        Gaussian-weighted values of the top k keys."""
        b = self._boundary()
        q = b.floats(Q, "Q")
        # None is the hard read; the kernel checks alpha (and that a hard read has k = 1)
        return b.wrap(self._core.read(q, integer(k, "k"), optional_scalar(alpha, "alpha")))

    def save(self, path: str | os.PathLike) -> None:
        config = {"key_dim": self.key_dim, "value_dim": self.value_dim, "metric": self.metric,
                  "dtype": self.dtype.name, "size": len(self),
                  "merge_identical": self.merge_identical, "key_codes": self._core.key_codes}
        if self.key_codes == "int8-only":
            codes, scales = self.codes
            arrays = {"key_codes": codes, "key_scales": scales}
        else:
            arrays = {"keys": self.keys}
        arrays.update(values=self.values, counts=self._core.counts())
        _persist.save(path, _KIND, config, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "KeyValueMemory":
        """The memory ``save`` wrote, read in blocks of rows straight into the new store:
        the load's peak memory is the store and one block, not the file as well."""
        with _persist.RowFile(path, _KIND) as f:
            c = saved_config(f, path)

            def construct() -> "KeyValueMemory":
                # codes beside float keys are not saved: they are computed again from the
                # keys, the same; an int8-only store's codes are its keys
                mem = cls(c.key_dim, c.value_dim, c.metric, c.dtype,
                          merge_identical=c.merge_identical, key_codes=c.key_codes)
                # blocks of 1 MiB: small beside a store of compact rows, too (the digests
                # are checked after the last block)
                for block in f.blocks(1 << 20):
                    if c.key_codes == "int8-only":
                        mem._core.append_codes(block["key_codes"], block["key_scales"],
                                               block["values"], block["counts"])
                    else:
                        mem._core.append_saved(block["keys"], block["values"], block["counts"])
                return mem

            return _persist.build(path, construct)

    @classmethod
    def open(cls, path: str | os.PathLike, key_codes: Optional[str] = None,
             verify: bool = True) -> "MappedKeyValueMemory":
        """The memory ``save`` wrote, opened read-only in place: see
        ``MappedKeyValueMemory`` (a memory larger than RAM can be searched)."""
        from .mapped_memory import MappedKeyValueMemory
        return MappedKeyValueMemory(path, key_codes=key_codes, verify=verify)

    def __repr__(self) -> str:
        merge = "" if self.merge_identical else ", merge_identical=False"
        codes = "" if self.key_codes is None else f", key_codes={self.key_codes!r}"
        return (f"KeyValueMemory(key_dim={self.key_dim}, value_dim={self.value_dim}, "
                f"metric={self.metric!r}, size={len(self)}, dtype={self.dtype.name}{merge}"
                f"{codes})")
