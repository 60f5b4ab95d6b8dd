"""Machine load for the benchmarks: how much of the CPU time other processes take.

``ForeignLoad`` measures the share of the machine's CPU time used by other processes (or
stolen by the hypervisor) over an interval; ``wait_for_idle`` holds a benchmark back until
the machine is quiet. Read from /proc/stat and /proc/self/stat (Linux, no psutil); the
resolution is one clock tick (10 ms).
"""
from __future__ import annotations

import sys
import time


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
