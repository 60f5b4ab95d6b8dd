"""``larimar-ext bench``: write, address, read, search and sequential-update throughput on the
shapes a user passes, beside the plain numpy equivalent and this machine's own ceilings, all
measured in the same run (the machine may be shared and noisy: ratios, not absolute times).

For each op: the median and spread (min, max) of ``repeats`` timed calls after ``warmup``
calls; the rate (GFLOP/s for the GEMM-shaped ops, GB/s of keys scanned for a one-query
search); its share of the ceiling this command measured (numpy float32 GEMM GFLOP/s, and the
memory read bandwidth of a threaded numpy max; data that fits in cache can pass it); and the
numpy way of computing the same result, timed the same way. The defaults are the README's
rows: an episode of B=32, N=16, K=512, C=768; exact top-1 over 1M x 384 keys for 1 and 256
queries; 1,000 single-row writes, K=1000, C=768. Nothing here needs torch.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from . import EpisodicMemory, KeyValueMemory, get_num_threads, lstsq_write, pinv_address, read

__all__ = ["Timing", "time_calls", "ceilings", "run", "format_table"]


@dataclass
class Timing:
    """Seconds of ``repeats`` calls after warm-up: median, min, max."""
    median: float
    min: float
    max: float
    repeats: int


def time_calls(fn: Callable[[], Any], warmup: int = 1, repeats: int = 5) -> Timing:
    """Times ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return Timing(statistics.median(ts), min(ts), max(ts), repeats)


def ceilings(dtype: np.dtype = np.dtype(np.float32), repeats: int = 3) -> Dict[str, float]:
    """This machine's GEMM rate (numpy, 2048^3, GFLOP/s) and memory read bandwidth (GB/s:
    ``np.max`` over 512 MiB in parts, on as many threads as the kernel runs; max is the
    cheapest reduction per byte, and numpy releases the GIL inside it), in the run's dtype,
    as the ceilings the ops are measured against."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2048, 2048)).astype(dtype)
    gemm = time_calls(lambda: a @ a, 1, repeats).median
    big = np.ones(2**29 // dtype.itemsize, dtype)
    threads = get_num_threads()
    parts = np.array_split(big, 4 * threads)
    with ThreadPoolExecutor(threads) as pool:
        sweep = time_calls(lambda: list(pool.map(np.max, parts)), 1, repeats).median
    return {"gemm_gflops": 2 * 2048**3 / gemm / 1e9, "bandwidth_gbs": big.nbytes / sweep / 1e9}


def _row(op: str, shape: str, t: Timing, work: float, unit: str, ceiling: float,
         base_name: str, base: Optional[Timing]) -> Dict[str, Any]:
    rate = work / t.median / 1e9
    return {"op": op, "shape": shape, **{f"seconds_{k}": v for k, v in asdict(t).items()},
            "rate": rate, "unit": unit, "share_of_ceiling": rate / ceiling,
            "baseline": base_name, "baseline_seconds": base.median if base else None,
            "speedup": base.median / t.median if base else None}


def bench_episode(B: int, N: int, K: int, C: int, dtype: np.dtype, ceil: Dict[str, float],
                  warmup: int, repeats: int) -> List[Dict[str, Any]]:
    """Write (``lstsq_write``), address (``pinv_address``) and read (``read``) of B episodes;
    baselines: numpy's pinv-based least squares and pseudo-inverse, and its matmul."""
    rng = np.random.default_rng(1)
    Z = rng.standard_normal((B, N, C)).astype(dtype)
    W = (rng.standard_normal((B, N, K)) / np.sqrt(K)).astype(dtype)
    M = lstsq_write(W, Z)
    w = pinv_address(Z, M)
    g = ceil["gemm_gflops"]
    shape = f"B={B} N={N} K={K} C={C}"
    # flop counts of the products the kernel runs, what the GFLOP/s figures count. Write:
    # the Gram of the smaller side, its Cholesky, the products with C columns. Address of a
    # memory of rank r: r pivot passes and the coordinates (~4 r K C), then W = (Z Q) U^-1
    # (2 N r (C + K)). Read: one product.
    m = min(N, K)
    r = min(N, K, C)
    write_flops = B * (2 * m * m * max(N, K) + m**3 / 3 + 2 * m * N * C + 2 * N * K * C)
    address_flops = B * (4 * r * K * C + 2 * N * r * (C + K))
    read_flops = B * 2 * N * K * C
    return [
        _row("write", shape, time_calls(lambda: lstsq_write(W, Z), warmup, repeats),
             write_flops, "GFLOP/s", g, "np.linalg.pinv(W) @ Z",
             time_calls(lambda: np.linalg.pinv(W) @ Z, warmup, repeats)),
        _row("address", shape, time_calls(lambda: pinv_address(Z, M), warmup, repeats),
             address_flops, "GFLOP/s", g, "Z @ np.linalg.pinv(M)",
             time_calls(lambda: Z @ np.linalg.pinv(M), warmup, repeats)),
        _row("read", shape, time_calls(lambda: read(w, M), warmup, repeats),
             read_flops, "GFLOP/s", g, "w @ M", time_calls(lambda: w @ M, warmup, repeats)),
    ]


def _numpy_top1(keys: np.ndarray, Q: np.ndarray, block: int = 65536) -> np.ndarray:
    """Blocked GEMM + argmax over the keys: numpy's exact top-1 (inner product)."""
    best = np.full(len(Q), -np.inf, Q.dtype)
    arg = np.zeros(len(Q), np.int64)
    for s in range(0, len(keys), block):
        sc = Q @ keys[s:s + block].T
        j = sc.argmax(1)
        v = sc[np.arange(len(Q)), j]
        better = v > best
        best[better], arg[better] = v[better], j[better] + s
    return arg


def bench_search(n_keys: int, dim: int, batches: List[int], k: int, dtype: np.dtype,
                 ceil: Dict[str, float], warmup: int, repeats: int) -> List[Dict[str, Any]]:
    """Exact top-k of ``KeyValueMemory.search`` ("ip") for each query batch; baseline:
    numpy blocked GEMM + argmax (top-1)."""
    rng = np.random.default_rng(2)
    keys = rng.standard_normal((n_keys, dim)).astype(dtype)
    mem = KeyValueMemory(dim, 1, metric="ip", dtype=dtype)
    mem.add(keys, np.zeros((n_keys, 1), dtype))
    out = []
    for nq in batches:
        Q = rng.standard_normal((nq, dim)).astype(dtype)
        t = time_calls(lambda: mem.search(Q, k), warmup, repeats)
        base = time_calls(lambda: _numpy_top1(keys, Q), warmup, repeats) if k == 1 else None
        shape = f"{n_keys:,} keys x {dim}, {nq} queries, k={k}"
        if nq == 1:      # a scan: bound by memory bandwidth
            out.append(_row("search", shape, t, keys.nbytes, "GB/s", ceil["bandwidth_gbs"],
                            "numpy GEMM + argmax", base))
        else:            # a GEMM: bound by the GEMM rate
            out.append(_row("search", shape, t, 2.0 * n_keys * dim * nq, "GFLOP/s",
                            ceil["gemm_gflops"], "numpy GEMM + argmax", base))
    return out


def bench_sequential(K: int, C: int, rows: int, per_update: int, dtype: np.dtype,
                     ceil: Dict[str, float], repeats: int) -> List[Dict[str, Any]]:
    """``EpisodicMemory.update`` of ``rows`` rows, ``per_update`` at a time (ridge 1e-6);
    baseline: numpy re-solving the ridge normal equations after each update (timed on the
    last updates of the same stream and scaled to all of them)."""
    rng = np.random.default_rng(3)
    W = (rng.standard_normal((rows, K)) / np.sqrt(K)).astype(dtype)
    Z = rng.standard_normal((rows, C)).astype(dtype)
    steps = range(0, rows, per_update)

    def ours() -> None:
        mem = EpisodicMemory(K, C, ridge=1e-6, dtype=dtype)
        for s in steps:
            mem.update(Z[s:s + per_update], W[s:s + per_update])

    t = time_calls(ours, 0, repeats)
    # numpy: G and B accumulated, one K x K solve with C right-hand sides per update
    G = W.T.astype(np.float64) @ W
    Bm = W.T.astype(np.float64) @ Z
    eye = 1e-6 * np.eye(K)
    sample = min(10, len(steps))
    per = time_calls(lambda: np.linalg.solve((G + eye).astype(dtype), Bm.astype(dtype)),
                     1, sample)
    base = Timing(per.median * len(steps), per.min * len(steps), per.max * len(steps), sample)
    # flops per update of n rows, the Woodbury step's products: U = P W^T and the n x n
    # system (2 K^2 n + 2 n^2 K), the residual Z - W M (2 n K C), then the rank-n updates of
    # P and M (2 K^2 n + 2 K n C)
    n = per_update
    flops = len(steps) * (4.0 * K * K * n + 2.0 * n * n * K + 4.0 * K * n * C)
    return [_row("sequential update", f"{rows} rows, {per_update} per update, K={K} C={C}", t,
                 flops, "GFLOP/s", ceil["gemm_gflops"],
                 "numpy solve after each update (scaled from 10)", base)]


def run(episode: Optional[List[int]] = (32, 16, 512, 768), keys: int = 1_000_000,
        key_dim: int = 384, batches: List[int] = (1, 256), k: int = 1,
        sequential: Optional[List[int]] = (1000, 768, 1000, 1), dtype: str = "float32",
        warmup: int = 1, repeats: int = 5) -> Dict[str, Any]:
    """All workloads (``episode`` = (B, N, K, C); ``sequential`` = (K, C, rows, rows per
    update); None or keys = 0 skips one) -> {"ceilings", "rows", "config"}."""
    dt = np.dtype(dtype)
    ceil = ceilings(dt)
    rows: List[Dict[str, Any]] = []
    if episode:
        rows += bench_episode(*episode, dt, ceil, warmup, repeats)
    if keys:
        rows += bench_search(keys, key_dim, list(batches), k, dt, ceil, warmup, repeats)
    if sequential:
        rows += bench_sequential(*sequential, dt, ceil, max(1, repeats // 2))
    return {"ceilings": ceil, "rows": rows,
            "config": {"episode": episode, "keys": keys, "key_dim": key_dim,
                       "batches": list(batches), "k": k, "sequential": sequential,
                       "dtype": dtype, "warmup": warmup, "repeats": repeats}}


def format_table(result: Dict[str, Any]) -> str:
    """The result as a markdown table, the ceilings above it."""
    c = result["ceilings"]
    lines = [f"ceilings (this machine, this run): numpy GEMM {c['gemm_gflops']:.1f} GFLOP/s, "
             f"memory read {c['bandwidth_gbs']:.1f} GB/s", "",
             "| op | shape | median | min - max | rate | of ceiling | baseline | baseline "
             "median | speed-up |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        base = (f"{1e3 * r['baseline_seconds']:.2f} ms | {r['speedup']:.2f}x"
                if r["baseline_seconds"] else "- | -")
        lines.append(f"| {r['op']} | {r['shape']} | {1e3 * r['seconds_median']:.2f} ms | "
                     f"{1e3 * r['seconds_min']:.2f} - {1e3 * r['seconds_max']:.2f} ms | "
                     f"{r['rate']:.1f} {r['unit']} | {100 * r['share_of_ceiling']:.0f}% | "
                     f"{r['baseline']} | {base} |")
    return "\n".join(lines)
