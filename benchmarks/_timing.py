"""Timing for the benchmarks: every measured callable is run ``warmup`` times untimed, then
``repeats`` times timed with ``time.perf_counter``; the reported figure is the median (min
and all raw times are kept). Methods compared with each other run in interleaved rounds
(``timeit_interleaved``), rounds disturbed by other processes (``_load.ForeignLoad``)
thrown away. Also how times and ratios are printed.
"""
from __future__ import annotations

import math
import statistics
import sys
import time

from _load import ForeignLoad


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
