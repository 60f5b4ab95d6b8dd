"""A memory larger than RAM, opened read-only from disk and searched exactly:
KeyValueMemory.open(path, key_codes="int8") against the same file's float keys scanned from
the disk.

The file: n rows of 384 float32 unit keys (the generator of bench_topk.py) and a 1-float
value, written by _persist.save_streamed (the arrays are never held), n chosen so that the
file is larger than the machine's physical memory (--quick: 200,000 rows; --rows N to set).
Then, in this process:
  open (int8)  KeyValueMemory.open(path, key_codes="int8"): the SHA-256 pass over the file,
               then the pass that checks the keys and builds norms and codes (held in RAM)
  search int8  top-10 of single queries: scans the codes in RAM, reads the shortlisted rows
               from the file, returns exactly the float search's ids and score bits
  search float the same queries through KeyValueMemory.open(path) (no codes): every key read
               from the file per query, at the disk's speed once the file exceeds the cache
Memory: the process's anonymous RSS (what it holds: codes and norms) and its file-backed RSS
(pages of the map the OS keeps cached), against the file size and physical memory.

Targets (full size): the file is larger than physical memory; int8 results equal the float
ones; the anonymous RSS stays below 0.5x the file.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

import _common as cm
import bench_topk as keyset

K = 10


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return -1


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def write_file(path: Path, n: int) -> float:
    from larimar_ext import _persist

    def blocks():
        for i in range(keyset.n_chunks(n)):
            keys = keyset.gen_chunk(i, n)
            first = i * keyset.CHUNK
            yield {"keys": keys,
                   "values": np.arange(first, first + len(keys), dtype=np.float32)[:, None],
                   "counts": np.ones(len(keys))}

    config = {"key_dim": keyset.DIM, "value_dim": 1, "metric": "ip", "dtype": "float32",
              "size": n, "merge_identical": False, "key_codes": "none"}
    specs = {"keys": (np.float32, (n, keyset.DIM)), "values": (np.float32, (n, 1)),
             "counts": (np.float64, (n,))}
    t0 = time.perf_counter()
    _persist.save_streamed(path, "larimar_ext.KeyValueMemory", config, specs, blocks)
    return time.perf_counter() - t0


def run(args):
    lx = cm.import_larimar(("KeyValueMemory",))
    cm.set_all_threads(lx=lx)
    info = cm.machine_info(lx=lx)
    info["physical_memory"] = physical_memory()
    cm.print_machine(info)
    row_bytes = keyset.DIM * 4 + 4 + 8
    n = args.rows or (200_000 if args.quick else int(physical_memory() * 1.1 / row_bytes) + 1)
    path = Path(args.dir) / "bench_mapped.safetensors"
    print(f"\n## Memory larger than RAM: {n:,} rows of {keyset.DIM} float32 keys, "
          f"{cm.fmt_bytes(n * row_bytes)} file, {cm.fmt_bytes(physical_memory())} RAM\n")
    try:
        reuse = args.reuse and path.exists()
        write_s = None if reuse else write_file(path, n)
        file_bytes = path.stat().st_size
        print("file reused" if reuse else f"written in {write_s:.0f} s")
        t0 = time.perf_counter()
        coded = lx.KeyValueMemory.open(path, key_codes="int8")
        open_s = time.perf_counter() - t0
        anon_after_open = status_kib("RssAnon")
        plain = lx.KeyValueMemory.open(path, verify=False)  # the same file, just checked
        queries = keyset.gen_queries(args.queries, 7)
        t_int8, t_float, mismatches = [], [], 0
        for j in range(len(queries)):
            q = queries[j:j + 1]
            t0 = time.perf_counter()
            ic, sc = coded.search(q, K)
            t_int8.append(time.perf_counter() - t0)
            if j < args.float_queries:  # each reads the whole file from disk
                t0 = time.perf_counter()
                ip, sp = plain.search(q, K)
                t_float.append(time.perf_counter() - t0)
                mismatches += int(np.sum(ic != ip) + np.sum(sc.view(np.int32) != sp.view(np.int32)))
        anon = status_kib("RssAnon")
        peak = status_kib("VmHWM")
        file_rss = status_kib("RssFile")
    finally:
        if path.exists() and not args.keep:
            path.unlink()
    med_int8, med_float = float(np.median(t_int8)), float(np.median(t_float))
    print(cm.md_table(
        ["step", "time", "note"],
        [["write (save_streamed)", "reused" if write_s is None else f"{write_s:.0f} s",
          cm.fmt_bytes(file_bytes)],
         ["open, int8 codes", f"{open_s:.0f} s", "SHA-256 pass + codes pass"],
         ["search, int8 codes (median)", cm.fmt_time(med_int8), f"{len(t_int8)} queries"],
         ["search, float keys from the file (median)", cm.fmt_time(med_float),
          f"{len(t_float)} queries"],
         ["float / int8", cm.fmt_ratio(med_float / med_int8), ""]]))
    print("\n" + cm.md_table(
        ["memory", "bytes", "/ file"],
        [["file", cm.fmt_bytes(file_bytes), "1.00"],
         ["physical memory", cm.fmt_bytes(physical_memory()),
          f"{physical_memory() / file_bytes:.2f}"],
         ["held: codes + norms (nbytes)", cm.fmt_bytes(coded.nbytes + plain.nbytes),
          f"{(coded.nbytes + plain.nbytes) / file_bytes:.2f}"],
         ["anonymous RSS after open", cm.fmt_bytes(anon_after_open),
          f"{anon_after_open / file_bytes:.2f}"],
         ["anonymous RSS at the end", cm.fmt_bytes(anon), f"{anon / file_bytes:.2f}"],
         ["file-backed RSS at the end (cached map pages)", cm.fmt_bytes(file_rss),
          f"{file_rss / file_bytes:.2f}"],
         ["VmHWM (peak RSS, both kinds)", cm.fmt_bytes(peak), f"{peak / file_bytes:.2f}"]]))
    print(f"\nint8 vs float results: {mismatches} differing ids or score bits")
    targets = [
        {"name": "file bytes / physical memory", "op": ">=", "threshold": 1.0,
         "value": file_bytes / physical_memory(), "fmt": lambda x: f"{x:.2f}"},
        {"name": "int8 results differing from the float ones", "op": "<=", "threshold": 0,
         "value": mismatches, "fmt": lambda x: f"{int(x)}"},
        {"name": "anonymous RSS / file bytes", "op": "<=", "threshold": 0.5,
         "value": anon / file_bytes, "fmt": lambda x: f"{x:.2f}"},
    ]
    cm.report_foreign_load(info, args)
    result = {"machine": info, "rows": n, "file_bytes": file_bytes, "write_s": write_s,
              "open_s": open_s, "search_int8_s": t_int8, "search_float_s": t_float,
              "rss_anon_after_open": anon_after_open, "rss_anon": anon, "rss_file": file_rss,
              "vm_hwm": peak, "held_nbytes": coded.nbytes + plain.nbytes,
              "mismatches": mismatches}
    return cm.keep_result("mapped", result, targets, args)


def extra(p):
    p.add_argument("--rows", type=int, default=0, help="rows in the file (default: > RAM)")
    p.add_argument("--dir", default="/tmp", help="folder for the file (needs its size free)")
    p.add_argument("--queries", type=int, default=16, help="single queries, int8 search")
    p.add_argument("--float-queries", type=int, default=2,
                   help="of those, searched through the float keys too (each reads the file)")
    p.add_argument("--keep", action="store_true", help="keep the file")
    p.add_argument("--reuse", action="store_true",
                   help="search the file a --keep run left (same --rows) instead of writing it")


if __name__ == "__main__":
    sys.exit(run(cm.parse_args(__doc__.splitlines()[0], extra)))
