"""Shared helpers for the larimar-ext benchmarks: what every benchmark script imports (as
``cm``). Each idea has a module of its own, re-exported here:

- timing (``_timing.py``): warm-up calls, then the median of ``time.perf_counter`` timings;
  interleaved rounds for methods compared with each other. Ratios are always taken between
  numbers measured in the same process and the same run (the machine is shared and noisy);
- machine load (``_load.py``): the CPU share other processes take (``ForeignLoad``), and
  waiting for a quiet machine;
- memory (``_rss.py``): VmRSS / VmHWM of the process, and resetting the peak;
- results (``_results.py``): the target table and benchmarks/results/<name>.json (written
  by the package's results writer, ``larimar_ext._result_files``).

This module itself: the package import and thread counts, the command line every
benchmark takes, error measures, and the description of the machine that goes into every
JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import math
import os
import platform
import subprocess
import sys

import numpy as np

# The benchmarks run as scripts from this folder (sys.path[0], or inserted by the script),
# so the sibling modules import by their plain names. Re-exported: scripts use cm.<name>.
from _load import (ForeignLoad, _cpu_times, _self_jiffies,  # noqa: F401
                   cpu_busy_fraction, wait_for_idle)
from _results import (BENCH_DIR, ESSAYS_DIR, REPO_DIR, RESULTS_DIR, RULER_DIR,  # noqa: F401
                      check_targets, keep_result, md_table, record_targets, save_result)
from _rss import fmt_bytes, peak_rss_bytes, reset_peak_rss, rss_bytes, trim_heap  # noqa: F401
from _timing import fmt_ratio, fmt_time, timeit, timeit_interleaved  # noqa: F401

NUM_THREADS = int(os.environ.get("LARIMAR_BENCH_THREADS", os.cpu_count() or 1))


# --------------------------------------------------------------------------- package
def import_larimar(required=("set_num_threads", "info")):
    """Return the larimar_ext module, or None (with the reason printed) if it does not import
    or lacks one of the ``required`` names (package still being built)."""
    try:
        import larimar_ext  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the build state
        print(f"[bench] larimar_ext not importable ({type(exc).__name__}: {exc}); "
              f"'ours' rows are skipped", file=sys.stderr, flush=True)
        return None
    missing = [n for n in ("set_num_threads", "info", *required) if not hasattr(larimar_ext, n)]
    if missing:
        print(f"[bench] larimar_ext lacks {missing}; 'ours' rows are skipped",
              file=sys.stderr, flush=True)
        return None
    try:
        larimar_ext.set_num_threads(NUM_THREADS)
    except Exception as exc:  # pragma: no cover
        print(f"[bench] larimar_ext.set_num_threads failed: {exc}", file=sys.stderr)
    return larimar_ext


@contextlib.contextmanager
def snaps_of(prefix, soft: bool = False):
    """Within the block, every slot snap of ``prefix`` (the model's SlotPrefix) appends a
    dict of numpy arrays to the yielded list: the ids it returns and the hints it was given
    (None without), flattened to one row per slot, and with ``soft`` its soft tokens
    (n, H) as well; its own method again after."""
    snap = prefix.nearest_ids
    got: list = []

    def capture(queries, embeddings, hints=None):
        ids = snap(queries, embeddings, hints)
        call = {"ids": ids.numpy().reshape(-1).copy(),
                "hints": None if hints is None else hints.numpy().reshape(-1).copy()}
        if soft:
            call["soft"] = queries.detach().reshape(-1, queries.shape[-1]).float().numpy().copy()
        got.append(call)
        return ids

    prefix.nearest_ids = capture
    try:
        yield got
    finally:
        del prefix.nearest_ids


@contextlib.contextmanager
def slot_ids_of(prefix):
    """Within the block, every slot snap of ``prefix`` appends the ids it returns (numpy,
    as returned) to the yielded list (filled when the block ends)."""
    got: list = []
    with snaps_of(prefix) as calls:
        try:
            yield got
        finally:
            got.extend(c["ids"] for c in calls)


def set_all_threads(torch=None, faiss=None, lx=None, n: int = NUM_THREADS) -> None:
    """Use all (both) cores in every library that is in the process."""
    if torch is not None:
        torch.set_num_threads(n)
    if faiss is not None:
        faiss.omp_set_num_threads(n)
    if lx is not None:
        lx.set_num_threads(n)


# --------------------------------------------------------------------------- CLI
def parse_args(description: str, extra=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="small sizes for a smoke run; no target check")
    p.add_argument("--no-save", action="store_true", help="do not write results JSON")
    p.add_argument("--no-wait", action="store_true",
                   help="do not wait for the machine to be idle before starting")
    if extra is not None:
        extra(p)
    args = p.parse_args()
    args.load = None
    if not args.quick and not args.no_wait:
        args.load = wait_for_idle()
    args.meter = ForeignLoad().start()
    return args


def report_foreign_load(result: dict, args) -> None:
    """Record and print how much of the machine other processes used during the run."""
    fl = args.meter.stop()
    result["foreign_load_whole_run"] = fl
    print(f"\nother processes used {fl:.0%} of the machine's CPU time during this run"
          + (" (timings are unreliable)" if fl > 0.2 else ""))


# --------------------------------------------------------------------------- errors
def fmt_err(x: float | None) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:.2e}"


def to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def rel_err(x, ref) -> float:
    """Relative Frobenius error ||x - ref|| / ||ref|| computed in float64.

    Non-finite entries in ``x`` give inf (or nan if the difference itself is nan), so a
    diverged method is reported honestly rather than crashing.
    """
    x = to_numpy(x).astype(np.float64, copy=False)
    ref = np.asarray(ref, dtype=np.float64)
    if x.shape != ref.shape:
        raise ValueError(f"shape mismatch {x.shape} vs {ref.shape}")
    if not np.all(np.isfinite(x)):
        return float("nan") if np.isnan(x).any() else float("inf")
    with np.errstate(over="ignore", invalid="ignore"):
        num = np.linalg.norm(x - ref)
        den = np.linalg.norm(ref)
    return float(num / den) if den > 0 else float(num)


# --------------------------------------------------------------------------- machine
def machine_info(lx=None, torch=None, faiss=None) -> dict:
    info: dict = {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "bench_threads": NUM_THREADS,
        "numpy": np.__version__,
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_bytes"] = int(f.readline().split()[1]) * 1024
    except OSError:
        pass
    try:
        info["loadavg"] = os.getloadavg()
    except OSError:
        pass
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        info["numpy_blas"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        pass
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    if faiss is not None:
        info["faiss"] = faiss.__version__
        info["faiss_threads"] = faiss.omp_get_max_threads()
    if lx is not None:
        info["larimar_ext"] = getattr(lx, "__version__", None)
        try:
            info["larimar_ext_info"] = dict(lx.info())
        except Exception as exc:
            info["larimar_ext_info"] = f"error: {exc}"
    try:
        info["git_head"] = subprocess.run(
            ["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5).stdout.strip() or None
    except Exception:
        pass
    return info


def print_machine(info: dict) -> None:
    keys = ("cpu", "cpu_count", "bench_threads", "numpy", "numpy_blas", "torch", "faiss",
            "larimar_ext", "larimar_ext_info", "loadavg")
    parts = [f"{k}={info[k]}" for k in keys if k in info]
    print("machine: " + "; ".join(parts))
