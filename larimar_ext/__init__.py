"""larimar-ext: Larimar's episodic memory as a native library.

Least-squares writes, pseudo-inverse and Gaussian addressing, sequential write/forget and
exact key search, in a C++/OpenMP/BLAS kernel, called with numpy arrays or torch tensors.
"""

from typing import TYPE_CHECKING

import scipy_openblas32 as _openblas  # noqa: F401  loads libscipy_openblas before _core

from . import _core, ops
from ._version import __version__
from .episodic import EpisodicMemory
from .kv_memory import KeyValueMemory
from .mapped_memory import MappedKeyValueMemory
from .ops import *  # noqa: F403  the functional ops: ops.__all__ is their one list
from .prepared_pinv import PreparedPinv
from .results import SearchAndReconstructResult, SearchResult

if TYPE_CHECKING:  # at run time __getattr__ imports it on first use (it needs torch)
    from .longcontext.memory import LongContextMemory

__all__ = ["EpisodicMemory", "KeyValueMemory", "LongContextMemory", "MappedKeyValueMemory",
           "PreparedPinv",
           "get_memory_limit",
           "get_num_threads", "info", "set_memory_limit", "set_num_threads",
           "SearchAndReconstructResult", "SearchResult", "__version__"]
__all__ += ops.__all__


def info() -> dict:
    """Version, BLAS vendor and threads, kernel (OpenMP) threads and SIMD in use."""
    native = _core.info()
    vendor = native["blas_vendor"]  # "OpenBLAS 0.3.x DYNAMIC_ARCH ... core=..."
    words = vendor.split()
    return {"version": __version__, "native_version": _core.__version__,
            "blas_vendor": vendor, "blas_version": words[1] if len(words) > 1 else "unknown",
            "blas_threads": native["blas_threads"],
            "openmp_threads": native["openmp_threads"],
            "simd": f"{native['simd']} (kernel loops, chosen at load time; the BLAS picks "
                    f"its own kernels: {vendor.split('core=')[-1]})",
            "threading": "kernel loops and large products split over OpenMP threads; "
                         "each BLAS call single-threaded"}


def set_num_threads(n: int) -> None:
    """Threads used by the kernel (OpenMP loops and split BLAS products)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n: expected an integer, got {type(n).__name__}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    return _core.get_num_threads()


def set_memory_limit(limit: int) -> None:
    """Largest allocation one call may make, in bytes (default: the machine's physical
    memory). A request that would need more (a huge ``k``, a giant episode, a memory too big
    for the machine) raises MemoryError before anything is allocated."""
    if isinstance(limit, bool) or not isinstance(limit, (int, float)):
        raise TypeError(f"limit: expected a number of bytes, got {type(limit).__name__}")
    _core.set_memory_limit(float(limit))


def get_memory_limit() -> int:
    return int(_core.get_memory_limit())


def __getattr__(name: str):
    # LongContextMemory drives a LarimarModel (torch): imported on first use, so
    # ``import larimar_ext`` stays free of the model stack
    if name == "LongContextMemory":
        from .longcontext.memory import LongContextMemory
        return LongContextMemory
    raise AttributeError(f"module 'larimar_ext' has no attribute {name!r}")
