"""Memory of the benchmark process: VmRSS / VmHWM read from /proc/self/status (no psutil);
the peak can be reset with ``reset_peak_rss()`` (writes "5" to /proc/self/clear_refs,
Linux >= 4.0). Also how byte counts are printed.
"""
from __future__ import annotations


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
