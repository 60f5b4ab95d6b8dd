"""Shared helpers for the larimar-ext benchmarks.

Timing: every measured callable is run ``warmup`` times untimed, then ``repeats`` times
timed with ``time.perf_counter``; the reported figure is the median (min and all raw
times are kept in the JSON). Ratios are always taken between numbers measured in the
same process and the same run (the machine is shared and noisy).

Memory: VmRSS / VmHWM are read from /proc/self/status (no psutil); the peak can be
reset with ``reset_peak_rss()`` (writes "5" to /proc/self/clear_refs, Linux >= 4.0).

Results: ``save_result(name, data, quick)`` writes benchmarks/results/<name>.json
(the latest full-size run; --quick runs go to <name>.quick.json so a smoke run never
overwrites a real result) and appends the same record as one line to
benchmarks/results/history.jsonl.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO_DIR = BENCH_DIR.parent

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


def set_all_threads(torch=None, faiss=None, lx=None, n: int = NUM_THREADS) -> None:
    """Use all (both) cores in every library that is in the process."""
    if torch is not None:
        torch.set_num_threads(n)
    if faiss is not None:
        faiss.omp_set_num_threads(n)
    if lx is not None:
        lx.set_num_threads(n)


# --------------------------------------------------------------------------- machine load
def _cpu_times():
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + vals[4]  # idle + iowait
    return sum(vals[:8]), idle


def _self_jiffies():
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, all threads


class ForeignLoad:
    """Share of the machine's CPU time used by OTHER processes (or stolen by the
    hypervisor) between start() and stop(): (busy_all - busy_self) / total, 0..1.
    Resolution is one clock tick (10 ms), so use it over intervals of >~0.3 s."""

    def start(self):
        self.t0, self.i0 = _cpu_times()
        self.s0 = _self_jiffies()
        return self

    def stop(self) -> float:
        t1, i1 = _cpu_times()
        s1 = _self_jiffies()
        total = max(1, t1 - self.t0)
        busy = total - (i1 - self.i0)
        return max(0.0, min(1.0, (busy - (s1 - self.s0)) / total))


def cpu_busy_fraction(interval: float = 1.0) -> float:
    """Fraction of all CPUs busy (other processes included) over ``interval`` seconds."""
    t0, i0 = _cpu_times()
    time.sleep(interval)
    t1, i1 = _cpu_times()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_for_idle(threshold: float = 0.25, max_wait: float = 900.0) -> dict:
    """Wait (up to max_wait s) until the machine is at most ``threshold`` busy, so that a
    benchmark does not start on top of someone else's build or test run. Returns what was
    seen; the benchmark runs anyway after max_wait (and says so)."""
    start = time.perf_counter()
    busy = cpu_busy_fraction()
    while busy > threshold and time.perf_counter() - start < max_wait:
        print(f"[bench] machine {busy:.0%} busy by other work; waiting...", file=sys.stderr,
              flush=True)
        time.sleep(10.0)
        busy = cpu_busy_fraction()
    waited = time.perf_counter() - start
    if busy > threshold:
        print(f"[bench] WARNING: still {busy:.0%} busy after {waited:.0f} s; timings are noisy",
              file=sys.stderr, flush=True)
    return {"busy_at_start": busy, "waited_s": waited}


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


# --------------------------------------------------------------------------- timing
def timeit(fn, *, warmup: int = 1, repeats: int = 5, max_seconds: float | None = None,
           min_repeats: int = 3) -> dict:
    """Median of ``repeats`` timed calls after ``warmup`` untimed ones.

    If ``max_seconds`` is given, stop repeating once that much timed time has been spent
    (but never before ``min_repeats`` timed calls).
    Returns {"median", "min", "max", "times", "repeats", "warmup"} in seconds.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    spent = 0.0
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
        if max_seconds is not None and spent > max_seconds and i + 1 >= min_repeats:
            break
    return {
        "median": statistics.median(times),
        "min": min(times),
        "max": max(times),
        "times": times,
        "repeats": len(times),
        "warmup": warmup,
    }


def timeit_interleaved(fns: dict, *, rounds: int = 3, inner=5, warm=1, first_warmup: int = 1,
                       settle: float = 0.2, max_foreign: float = 0.2, max_retries: int = 3) -> dict:
    """Time several methods in interleaved rounds so that slow drifts of a shared, noisy
    machine hit all of them alike.

    ``fns``: name -> zero-argument callable. ``inner`` / ``warm``: timed / untimed calls per
    method per round (an int, or a dict name -> int). Before each method's block the
    process sleeps ``settle`` seconds so that the worker threads of the previous library
    (OpenBLAS workers busy-wait ~0.1 s after a call; OpenMP ones spin briefly) are parked
    and do not steal cores from the next one. ``first_warmup`` untimed calls per method
    are made once before the first round.
    A round during which other processes used more than ``max_foreign`` of the machine
    (see ForeignLoad) is thrown away and rerun, at most ``max_retries`` times in all; if
    the machine never gets quiet the noisy rounds are kept and flagged.
    Returns name -> {"median", "min", "max", "times", "round_medians", "repeats", "warmup",
    "foreign_load" (per kept round), "discarded_rounds"}.
    """
    def get(spec, name):
        return spec.get(name, 1) if isinstance(spec, dict) else spec

    for name, fn in fns.items():
        for _ in range(first_warmup):
            fn()
    times = {name: [] for name in fns}
    rmed = {name: [] for name in fns}
    foreign, discarded, retries = [], 0, 0
    done = 0
    while done < rounds:
        meter = ForeignLoad().start()
        r_times = {}
        for name, fn in fns.items():
            if settle:
                time.sleep(settle)
            for _ in range(get(warm, name)):
                fn()
            ts = []
            for _ in range(max(1, get(inner, name))):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            r_times[name] = ts
        fl = meter.stop()
        if fl > max_foreign and retries < max_retries:
            retries += 1
            discarded += 1
            print(f"[bench] round discarded: other processes used {fl:.0%} of the machine",
                  file=sys.stderr, flush=True)
            time.sleep(2.0)
            continue
        done += 1
        foreign.append(fl)
        for name, ts in r_times.items():
            times[name] += ts
            rmed[name].append(statistics.median(ts))
    out = {}
    for name, ts in times.items():
        out[name] = {"median": statistics.median(ts), "min": min(ts), "max": max(ts),
                     "times": ts, "round_medians": rmed[name], "repeats": len(ts),
                     "warmup": first_warmup + rounds * get(warm, name),
                     "foreign_load": foreign, "discarded_rounds": discarded}
    if max(foreign) > max_foreign:
        print(f"[bench] WARNING: kept rounds with up to {max(foreign):.0%} foreign load; "
              f"these timings are noisy", file=sys.stderr, flush=True)
    return out


def fmt_time(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    if seconds >= 1.0:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def fmt_ratio(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.1f}x" if x >= 10 else f"{x:.2f}x"


def fmt_err(x: float | None) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:.2e}"


# --------------------------------------------------------------------------- errors
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


# --------------------------------------------------------------------------- memory
def _proc_status() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, val = line.split(":", 1)
                out[key] = int(val.split()[0]) * 1024  # kB -> bytes
    return out


def rss_bytes() -> int:
    """Current resident set size (VmRSS) in bytes."""
    return _proc_status()["VmRSS"]


def peak_rss_bytes() -> int:
    """Peak resident set size (VmHWM) in bytes since start or the last reset."""
    return _proc_status()["VmHWM"]


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS. Returns False if the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def trim_heap() -> None:
    """Ask glibc to hand freed heap pages back to the OS (best effort)."""
    import gc
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except Exception:
        pass


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


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


# --------------------------------------------------------------------------- output
def md_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(lines)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _clean(o):
    """JSON has no inf/nan: encode them as strings so the file stays standard JSON."""
    if isinstance(o, float) and not math.isfinite(o):
        return "nan" if math.isnan(o) else ("inf" if o > 0 else "-inf")
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, np.floating):
        return _clean(float(o))
    return o


def save_result(name: str, data: dict, quick: bool) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    record = _clean(dict(data, benchmark=name, quick=quick))
    path = RESULTS_DIR / (f"{name}.quick.json" if quick else f"{name}.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=2, default=_json_default)
        f.write("\n")
    with open(RESULTS_DIR / "history.jsonl", "a") as f:
        f.write(json.dumps(record, default=_json_default) + "\n")
    print(f"[bench] results written to {path.relative_to(REPO_DIR)}")
    return path


def check_targets(targets: list[dict], quick: bool) -> int:
    """Print the target table and return the process exit code.

    Each target: {"name", "value", "op" ('>=' or '<='), "threshold", "fmt" (callable)}.
    A value of None (not measured, e.g. package missing) counts as missed.
    --quick: printed but never fails (exit 0).
    """
    rows, failed = [], 0
    for t in targets:
        v, thr, op = t["value"], t["threshold"], t["op"]
        fmt = t.get("fmt", lambda x: f"{x:.3g}")
        if v is None or (isinstance(v, float) and math.isnan(v)):
            ok = False
            shown = "n/a"
        else:
            ok = v >= thr if op == ">=" else v <= thr
            shown = fmt(v)
        t["passed"] = bool(ok)
        failed += not ok
        rows.append([t["name"], shown, f"{op} {fmt(thr)}", "PASS" if ok else "MISS"])
    print()
    print(md_table(["target", "measured", "required", "result"], rows))
    if quick:
        print("\n[bench] --quick: targets not enforced")
        return 0
    if failed:
        print(f"\n[bench] {failed} target(s) missed")
        return 1
    return 0
