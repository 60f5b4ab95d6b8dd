"""Types of the compiled kernel module (python/bindings.cpp), for type checkers and editors.

Private: the public API is ``larimar_ext`` (ops.py, kv_memory.py, episodic.py), which checks
every argument's dtype and rank (``_arrays.Boundary``) before calling here. Every array
argument must be a C-contiguous numpy array of exactly the overload's dtype: the binding
refuses anything else without converting it. Shapes use docs/DESIGN.md section 2.1 (B
episodes, N rows, K slots or keys, C code size, k kept per query). Functions taking either
float dtype are typed with ``_F``: every float array of one call shares it, and so do the
results. ``tests/test_stub.py`` checks this file against the module.
"""

from typing import Dict, Final, Generic, List, Optional, Tuple, TypeVar, Union, overload

import numpy as np
from numpy.typing import NDArray

_F = TypeVar("_F", np.float32, np.float64)
_Ids = NDArray[np.int64]

__version__: str

# ---------------------------------------------------------------------------- runtime
def info() -> Dict[str, Union[str, int]]:
    """blas_vendor, blas_threads, openmp_threads, openmp_version, simd and int8_isa (the
    int8 key scan's path) of the kernel."""
def int8_isas() -> List[str]:
    """The int8 scan paths this CPU runs, best first ("avx512-vnni", "avx2", "scalar")."""
def set_int8_isa(isa: str) -> None:
    """Runs the int8 key scan on one path of int8_isas() ("auto": the best); for tests."""
def set_num_threads(n: int) -> None:
    """Threads of the kernel's OpenMP loops (n > 0)."""
def get_num_threads() -> int:
    """Threads of the kernel's OpenMP loops."""
def set_memory_limit(limit: float) -> None:
    """Largest allocation one call may make, in bytes (> 0)."""
def get_memory_limit() -> float:
    """Largest allocation one call may make, in bytes."""
def check_alpha(alpha: Optional[float], k: int = 1) -> Optional[float]:
    """alpha itself when it is a valid Gaussian temperature (finite, > 0), or None for a
    hard read over k = 1 keys, else ValueError naming alpha: the kernel's one check."""

# ------------------------------------------------------------------------ functional ops
def lstsq_write(W: NDArray[_F], Z: NDArray[_F], ridge: float,
                rcond: Optional[float]) -> NDArray[_F]:
    """M = W^+ Z: W (N, K), Z (N, C) -> (K, C), or batched (B, N, K), (B, N, C) -> (B, K, C).
    ridge > 0 gives the Tikhonov solution; rcond None is the default cutoff."""
def pinv_address(Z: NDArray[_F], R: NDArray[_F], rcond: Optional[float]) -> NDArray[_F]:
    """W = Z R^+: Z (N, C), R (K, C) -> (N, K), or batched (B, N, C), (B, K, C) -> (B, N, K)."""
def pinv_read(Zq: NDArray[_F], M: NDArray[_F], rcond: Optional[float]) -> NDArray[_F]:
    """z = (Zq M^+) M: Zq (N, C), M (K, C) -> (N, C),
    or batched (B, N, C), (B, K, C) -> (B, N, C)."""
@overload
def gaussian_address(Z: NDArray[_F], R: NDArray[_F], alpha: float, top_k: None) -> NDArray[_F]:
    """Dense Gaussian soft keys: Z (N, C), R (K, C) -> W (N, K), rows summing to 1."""
@overload
def gaussian_address(Z: NDArray[_F], R: NDArray[_F], alpha: float,
                     top_k: int) -> Tuple[_Ids, NDArray[_F]]:
    """Sparse Gaussian soft keys over the top_k nearest keys: (indices, weights), (N, top_k)."""
def onehot_address(Z: NDArray[_F], R: NDArray[_F]) -> Tuple[_Ids, NDArray[_F]]:
    """Nearest key by L2 distance: (indices (N, 1), weights (N, 1), all 1)."""
def read_dense(W: NDArray[_F], M: NDArray[_F]) -> NDArray[_F]:
    """z = W M: W (N, K), M (K, C) -> (N, C), or batched (B, N, K), (B, K, C) -> (B, N, C)."""
def read_sparse(indices: _Ids, weights: NDArray[_F], M: NDArray[_F]) -> NDArray[_F]:
    """z = sum_j weights[:, j] M[indices[:, j]]: indices, weights (N, k), M (K, C) -> (N, C)."""
def gaussian_read_scored(scores: NDArray[_F], values: NDArray[_F], metric: str, alpha: float,
                         Q: Optional[NDArray[_F]], key_sq: Optional[NDArray[_F]]) -> NDArray[_F]:
    """The soft read of scored candidates: scores (nq, k), values (nq, k, C) -> (nq, C); the
    'ip' metric also needs Q (nq, d) and key_sq (nq, k), the others neither."""
def topk(Q: NDArray[_F], keys: NDArray[_F], k: int, metric: str) -> Tuple[_Ids, NDArray[_F]]:
    """Exact top-k: Q (nq, d), keys (K, d) -> (ids (nq, k), scores (nq, k)), best first."""
def sparse_lstsq_write(indices: _Ids, weights: NDArray[_F], Z: NDArray[_F], memory_size: int,
                       ridge: float, prior: Optional[NDArray[_F]], tol: float,
                       max_iter: int) -> Tuple[NDArray[_F], Dict[str, Union[int, float]]]:
    """M (memory_size, C) through sparse addresses (indices, weights (N, k)), Z (N, C); and
    the report (touched, iterations, residual). max_iter < 0 is the default."""

# ------------------------------------------------------------------------ memory objects
# The F32/F64 classes of each kind share one generic base here; at run time they are two
# unrelated pybind11 classes, so the bases exist for the type checker only.
class _PreparedPinv(Generic[_F]):
    """R^+ of a fixed R (K, C), factored once (docs/DESIGN.md section 2.3). Read-only: rank
    (singular values kept), rows K and cols C."""
    rank: Final[int]
    rows: Final[int]
    cols: Final[int]
    def __init__(self, R: NDArray[_F], rcond: Optional[float]) -> None:
        """Factors R; rcond None: the default cutoff max(K, C) * eps."""
    def address(self, Z: NDArray[_F]) -> NDArray[_F]:
        """W = Z R^+: (N, C) -> (N, K)."""
    def project(self, Z: NDArray[_F]) -> NDArray[_F]:
        """(Z R^+) R: (N, C) -> (N, C)."""
    def matrix(self) -> NDArray[_F]:
        """R^+ (C, K)."""

class PreparedPinvF32(_PreparedPinv[np.float32]):
    """_PreparedPinv with float32 arrays in and out."""
class PreparedPinvF64(_PreparedPinv[np.float64]):
    """_PreparedPinv with float64 arrays in and out."""

class _SequentialMemory(Generic[_F]):
    """Sequential write/forget memory (docs/DESIGN.md section 2.5), state in float64. Read-only:
    memory_size K, code_size C and the ridge of the constructor."""
    memory_size: Final[int]
    code_size: Final[int]
    ridge: Final[float]
    def __init__(self, memory_size: int, code_size: int, prior: Optional[NDArray[_F]],
                 ridge: float) -> None:
        """K slots, code size C, an optional prior M0 (K, C) and ridge > 0."""
    def write(self, W: Optional[NDArray[_F]], Z: NDArray[_F]) -> None:
        """Replace the stored rows: Z (N, C) at W (N, K) (None: W = Z M0^+)."""
    def update(self, W: NDArray[_F], Z: NDArray[_F], alpha: float) -> None:
        """Add (alpha > 0) or forget (alpha < 0) rows Z (N, C) at W (N, K)."""
    def address(self, Z: NDArray[_F]) -> NDArray[_F]:
        """W = Z M^+: Z (N, C) -> (N, K)."""
    def read(self, Zq: NDArray[_F]) -> NDArray[_F]:
        """z = (Zq M^+) M: Zq (N, C) -> (N, C)."""
    def memory(self) -> NDArray[_F]:
        """A copy of M (K, C)."""
    def state(self) -> Dict[str, NDArray[np.float64]]:
        """memory (K, C), gram (K, K), rhs (K, C), precision (K, K) and prior (K, C) if any."""
    def set_state(self, memory: NDArray[np.float64], gram: NDArray[np.float64],
                  rhs: NDArray[np.float64], precision: NDArray[np.float64]) -> None:
        """Restore a state() (the prior is the constructor's)."""

class SequentialMemoryF32(_SequentialMemory[np.float32]):
    """_SequentialMemory with float32 arrays in and out."""
class SequentialMemoryF64(_SequentialMemory[np.float64]):
    """_SequentialMemory with float64 arrays in and out."""

class _KeyValueStore(Generic[_F]):
    """Fixed-key memory (docs/DESIGN.md section 2.7): keys (n, key_dim), values (n, value_dim).
    Read-only: key_dim, value_dim, metric ("ip", "cosine" or "l2"), merge_identical (whether
    a bitwise identical key shares its slot), key_codes ("none", "int8" or "int8-only": what
    search scans, and whether the float keys are kept),
    nbytes (host bytes of what is stored) and reserved_nbytes (host bytes held, allocated row
    capacity included)."""
    key_dim: Final[int]
    value_dim: Final[int]
    metric: Final[str]
    merge_identical: Final[bool]
    key_codes: Final[str]
    nbytes: Final[int]
    reserved_nbytes: Final[int]
    def __init__(self, key_dim: int, value_dim: int, metric: str,
                 merge_identical: bool = True, key_codes: str = "none") -> None:
        """Sizes, metric ("ip", "cosine" or "l2"), whether identical keys share a slot, and
        the key codes search scans ("int8": the same exact result from a quarter of the
        bytes; "int8-only": the codes instead of the keys, each key its codes' decoding)."""
    def add(self, keys: NDArray[_F], values: NDArray[_F]) -> _Ids:
        """Append rows keys (n, key_dim), values (n, value_dim); their slot ids (n,)."""
    def write(self, Q: NDArray[_F], values: NDArray[_F], k: int, alpha: float) -> None:
        """Soft write of values (n, value_dim) at the top k keys of Q (n, key_dim)."""
    def search(self, Q: NDArray[_F], k: int) -> Tuple[_Ids, NDArray[_F]]:
        """Exact top-k: Q (nq, key_dim) -> (ids (nq, k), scores (nq, k)), best first."""
    def search_and_reconstruct(self, Q: NDArray[_F],
                               k: int) -> Tuple[_Ids, NDArray[_F], NDArray[_F]]:
        """search and the values of its hits (nq, k, value_dim), under one lock."""
    def read(self, Q: NDArray[_F], k: int, alpha: Optional[float]) -> NDArray[_F]:
        """Readouts (nq, value_dim): alpha None reads the best key's value (k must be 1);
        alpha > 0 the Gaussian-weighted values of the top k."""
    def reconstruct(self, ids: _Ids) -> NDArray[_F]:
        """The stored values (n, value_dim) of row ids (n,)."""
    def key_sq_norms(self, ids: _Ids) -> NDArray[_F]:
        """The stored |key|^2 (n,) of row ids (n,)."""
    def keys(self) -> NDArray[_F]:
        """A copy of the keys (n, key_dim)."""
    def values(self) -> NDArray[_F]:
        """A copy of the values (n, value_dim)."""
    def counts(self) -> NDArray[np.float64]:
        """Write counts per slot (n,)."""
    def assign(self, keys: NDArray[_F], values: NDArray[_F], counts: NDArray[np.float64]) -> None:
        """Replace the whole content: keys, values and counts of n rows."""
    def append_saved(self, keys: NDArray[_F], values: NDArray[_F],
                     counts: NDArray[np.float64]) -> None:
        """Append saved rows with their counts (a load in blocks, into a fresh store); every
        key must be new."""
    def codes(self) -> Tuple[NDArray[np.int8], NDArray[_F]]:
        """A copy of the key codes (n, key_dim), in [-63, 63], and scales (n,) (a store with
        codes; key i is about scales[i] * codes[i], exactly with "int8-only")."""
    def append_codes(self, codes: NDArray[np.int8], scales: NDArray[_F], values: NDArray[_F],
                     counts: NDArray[np.float64]) -> None:
        """append_saved for an int8-only store: its keys as codes (n, key_dim) and scales
        (n,), kept bit for bit."""
    def __len__(self) -> int:
        """n, the number of stored rows."""

class KeyValueStoreF32(_KeyValueStore[np.float32]):
    """_KeyValueStore with float32 keys and values."""
class KeyValueStoreF64(_KeyValueStore[np.float64]):
    """_KeyValueStore with float64 keys and values."""

class _KeyView(Generic[_F]):
    """Exact search over keys (n, key_dim) the caller keeps alive (the view holds a
    reference), e.g. a read-only memory map: the view builds and keeps their squared norms
    and, with key_codes="int8", their codes; nbytes counts those and the projected screen
    once a search has built it, not the keys."""
    key_dim: Final[int]
    metric: Final[str]
    key_codes: Final[str]
    nbytes: Final[int]
    keys_may_be_mapped: Final[bool]
    """Whether reading the keys may wait on a disk: some lay in a file's memory map and were
    not resident once the view had read them all (false for anonymous memory and for a
    mapped file that stays in memory, a model's weights say, as the OS reports them). Then
    int8 shortlists are asked of the OS before they are read, a wide shortlist is re-scored
    rather than answered by a float scan of every key, and no projected screen is built."""
    projected_dims: Final[int]
    """Dimensions of the projected screen (0 until the first hinted search builds it)."""
    projected_coarse_dims: Final[int]
    """Dimensions of the projected screen's coarse screen (16 where the screen has >= 32;
    0 without one or until the screen is built)."""
    projected_answers: Final[int]
    """Queries the projected screen has answered from their survivors."""
    projected_coarse_answers: Final[int]
    """Of those, the queries its coarse screen answered."""
    projected_neighbour_answers: Final[int]
    """Of those, the queries answered from their anchors' neighbourhoods (no scan)."""
    projected_neighbourhoods: Final[int]
    """Anchors whose neighbourhood the screen has looked for (kept, counted in nbytes)."""
    def __init__(self, keys: NDArray[_F], metric: str, key_codes: str = "none",
                 projected_screen: bool = True, coarse_screen: bool = True,
                 neighbourhoods: bool = True) -> None:
        """Checks the keys finite (ValueError naming keys) and builds norms and codes.

        projected_screen: a hinted cosine search of an int8 view of >= 4,096 keys of >= 48
        dimensions, in memory, first bounds every key through int8 codes of its projection
        on the keys' top d/3 principal directions plus the residual norms (built on the first
        such search), and re-scores only the keys that can reach the hints' score; a query
        with too many such keys takes the full int8 scan. A query whose hints score high
        enough that none of a sample of the keys (one in 64) can reach them through the first
        16 directions alone tries those first (coarse_screen=False: never). Before both, a
        query whose floor a (the k-th best of its hints' scores) is high needs no scan once
        the keys within cos 0.7 of the hint that scored it are known (found once per hint,
        kept): every key that can reach a has a cosine of at least 2 a^2 - 1 with that hint
        (neighbourhoods=False: never).
        Same results either way."""
    def search(self, Q: NDArray[_F], k: int,
               hints: Optional[_Ids] = None) -> Tuple[_Ids, NDArray[_F]]:
        """Exact top-k (ids (nq, k), scores (nq, k)), as _KeyValueStore.search.

        hints (nq, h) row ids: keys each query's top k likely holds (a snap's aligned token).
        With int8 codes and k distinct hints, the k-th best of their exact scores starts the
        screen's bar, so that only keys able to beat them are kept; the result is the same
        with or without hints (ValueError naming hints for ids outside [0, n))."""
    def key_sq_norms(self, ids: _Ids) -> NDArray[_F]:
        """|key|^2 (n,) of row ids (n,)."""
    def __len__(self) -> int: ...
class KeyViewF32(_KeyView[np.float32]):
    """_KeyView of float32 keys."""
class KeyViewF64(_KeyView[np.float64]):
    """_KeyView of float64 keys."""

class Int8LinearF32:
    """y = x W^T + b in int8 arithmetic: W quantised once per output row, each x row as it
    comes, exact integer sums scaled back to float32 (docs/DESIGN.md section 2.11).
    Read-only: in_features, out_features, has_bias, nbytes (codes, scales, offsets, bias)."""
    in_features: Final[int]
    out_features: Final[int]
    has_bias: Final[bool]
    nbytes: Final[int]
    def __init__(self, weight: NDArray[np.float32], bias: Optional[NDArray[np.float32]]) -> None:
        """weight (out_features, in_features), bias (out_features,) or None; both finite."""
    def forward(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """(N, in_features) finite -> (N, out_features)."""
    def weight_codes(self) -> tuple[NDArray[np.int8], NDArray[np.float32]]:
        """(codes (out_features, in_features), scales (out_features,)): W ~ scales * codes."""
