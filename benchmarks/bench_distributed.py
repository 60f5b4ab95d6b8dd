"""Scale-out of ShardedKeyValueMemory over 1, 2 and 4 processes (gloo on loopback).

Data: 200,000 keys x 384 float32 (N(0, 1) rows, metric "cosine") with values x 384
(--quick: 20,000 keys), generated in chunks of 1,000 rows from per-chunk seeds, so every
process count stores exactly the same rows in the same global order.

For each process count W, W processes are started (MASTER_ADDR=127.0.0.1, a free port) and
each builds its share:
  add          the rows arrive in collective batches of 20,000 (each rank passes its 1/W of a
               batch, as a data-parallel loader would); keys/s = all rows / wall time of all
               adds (barrier before and after, rank 0's clock). The payload goes through
               gloo's all-to-all over loopback TCP.
  search b=1   rank 0 asks one query per call, the other ranks pass None (one client, the
               shards split the scan); queries/s = 1 / median call time.
  search b=64  the same with 64 queries per call.
  all b=64     every rank asks its own 64 queries per call (W clients): aggregate
               queries/s = 64 W / median call time.
k = 10 everywhere. "plain" is one KeyValueMemory in one process without torch.distributed
(same batches, same queries), the reference for the overhead of the distributed layer.
OpenMP wait policy: the sharded runs use OMP_WAIT_POLICY=passive. With the default (active)
policy a rank's OpenMP worker keeps spinning after each search and delays gloo's thread
(measured: ~5 ms more per batch-1 search at 2 threads per rank); plain runs with both.
Threads: each rank's kernel gets max(1, cores // W) OpenMP threads (torch: 1), so W = 4 on
the 2-core machine is oversubscribed 2x (4 single-threaded processes on 2 cores); the
output says so. Correctness: the ids of rank 0's batch-64 search are compared across all
runs (they must be identical to plain's).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

import _common as cm

DIM = 384
VDIM = 384
CHUNK = 1000
BATCH = 20000
SEED = 606
K = 10
TIMEOUT_S = 300.0


def rows(lo: int, hi: int):
    """Rows [lo, hi) of the global data (keys, values), the same whatever the split."""
    ks, vs = [], []
    for c in range(lo // CHUNK, (hi + CHUNK - 1) // CHUNK):
        rng = np.random.default_rng([SEED, c])
        k = rng.standard_normal((CHUNK, DIM), dtype=np.float32)
        v = rng.standard_normal((CHUNK, VDIM), dtype=np.float32)
        a, b = max(lo, c * CHUNK) - c * CHUNK, min(hi, (c + 1) * CHUNK) - c * CHUNK
        ks.append(k[a:b])
        vs.append(v[a:b])
    return np.concatenate(ks), np.concatenate(vs)


def queries(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng([SEED, 7, seed]).standard_normal((n, DIM), dtype=np.float32)


def median_time(fn, calls: int, warmup: int = 2) -> dict:
    from larimar_ext.throughput import time_calls   # the package loads in the ranks only
    t = time_calls(fn, warmup, calls)
    return {"median": t.median, "min": t.min, "calls": calls}


# ============================================================================ worker
def worker(mode: str, rank: int, world: int, n: int, calls1: int, calls64: int, out: str):
    import larimar_ext as lx
    cores = os.cpu_count() or 1
    threads = max(1, cores // world)
    lx.set_num_threads(threads)
    batches = [(lo, min(lo + BATCH, n)) for lo in range(0, n, BATCH)]
    mine = []
    for lo, hi in batches:  # this rank's slice of every batch, generated before timing
        cut = np.linspace(lo, hi, world + 1).astype(int)
        mine.append(rows(cut[rank], cut[rank + 1]))
    q1 = [queries(1, 100 + i) for i in range(8)]
    q64 = queries(64, 1)
    q64_own = queries(64, 1000 + rank)
    res = {"mode": mode, "world": world, "threads_per_rank": threads}
    if mode == "plain":
        import torch  # noqa: F401  (imported by the sharded runs too: same process footprint)
        m = lx.KeyValueMemory(DIM, VDIM, "cosine")
        t = time.perf_counter()
        for k, v in mine:
            m.add(k, v)
        res["add_s"] = time.perf_counter() - t
        it = iter(range(10**9))
        res["search1"] = median_time(lambda: m.search(q1[next(it) % 8], K), calls1)
        res["search64"] = median_time(lambda: m.search(q64, K), calls64)
        res["ids64"] = m.search(q64, K)[0].tolist()
        res["len"] = len(m)
        res["nbytes"] = int(m.nbytes)
    else:
        import torch
        import torch.distributed as dist
        torch.set_num_threads(1)
        from larimar_ext.distributed import ShardedKeyValueMemory
        m = ShardedKeyValueMemory(DIM, VDIM, "cosine", timeout=TIMEOUT_S)
        dist.barrier(group=m.group)
        t = time.perf_counter()
        for k, v in mine:
            m.add(k, v)
        dist.barrier(group=m.group)
        res["add_s"] = time.perf_counter() - t
        it = iter(range(10**9))
        lead = rank == 0
        dist.barrier(group=m.group)
        res["search1"] = median_time(
            lambda: m.search(q1[next(it) % 8] if lead else None, K), calls1)
        dist.barrier(group=m.group)
        res["search64"] = median_time(lambda: m.search(q64 if lead else None, K), calls64)
        dist.barrier(group=m.group)
        res["all64"] = median_time(lambda: m.search(q64_own, K), calls64)
        res["ids64"] = m.search(q64 if lead else None, K)[0].tolist()
        res["len"] = len(m)
        res["local_size"] = m.local_size
        res["nbytes"] = int(m.nbytes)
        sizes = torch.tensor([m.local_size])
        got = [torch.zeros_like(sizes) for _ in range(world)]
        dist.all_gather(got, sizes, group=m.group)
        res["shard_sizes"] = [int(x) for x in got]
    if rank == 0:
        with open(out, "w") as f:
            json.dump(res, f)
    sys.stdout.flush()
    os._exit(0)


# ============================================================================ parent
def _family_jiffies() -> int:
    """CPU ticks of this process and of its children that have been waited for."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime


class FamilyForeignLoad(cm.ForeignLoad):
    """cm.ForeignLoad, but the rank processes this benchmark starts are not 'foreign'."""

    def start(self):
        self.t0, self.i0 = cm._cpu_times()
        self.s0 = _family_jiffies()
        return self

    def stop(self) -> float:
        t1, i1 = cm._cpu_times()
        total = max(1, t1 - self.t0)
        busy = total - (i1 - self.i0)
        return max(0.0, min(1.0, (busy - (_family_jiffies() - self.s0)) / total))


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def launch(mode: str, world: int, n: int, calls1: int, calls64: int, tmp: str,
           wait_policy: str = "passive") -> dict:
    out = os.path.join(tmp, f"{mode}_{world}_{wait_policy}.json")
    port = free_port()
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE=str(world),
               GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // world)))
    env.pop("OMP_WAIT_POLICY", None)
    if wait_policy != "default":
        env["OMP_WAIT_POLICY"] = wait_policy
    meter = FamilyForeignLoad().start()
    procs = []
    for r in range(world):
        args = [sys.executable, os.path.abspath(__file__), "--worker", mode, str(r), str(world),
                str(n), str(calls1), str(calls64), out]
        procs.append(subprocess.Popen(args, env=dict(env, RANK=str(r))))
    deadline = time.monotonic() + 1800
    for p in procs:
        try:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
    if not os.path.exists(out):
        raise RuntimeError(f"{mode} with {world} processes wrote no result "
                           f"(exit codes {[p.returncode for p in procs]})")
    foreign = meter.stop()
    if foreign > 0.2:
        print(f"[bench] other processes used {foreign:.0%} of the CPU during {mode} x {world}",
              file=sys.stderr, flush=True)
    with open(out) as f:
        return dict(json.load(f), omp_wait_policy=wait_policy, foreign_load=foreign)


def main() -> int:
    def extra(p):
        p.add_argument("--procs", default="1,2,4", help="process counts (default 1,2,4)")
    args = cm.parse_args("ShardedKeyValueMemory scale-out on loopback gloo", extra)
    args.meter = FamilyForeignLoad().start()  # the ranks are children, not foreign load
    n = 20000 if args.quick else 200000
    calls1, calls64 = (10, 5) if args.quick else (40, 12)
    procs = [int(x) for x in args.procs.split(",")]
    cores = os.cpu_count() or 1
    lx = cm.import_larimar()
    info = cm.machine_info(lx)
    cm.print_machine(info)
    print(f"\n{n:,} keys x {DIM} + values x {VDIM}, float32, metric cosine, k = {K}, adds in "
          f"batches of {BATCH:,}; {cores} cores")
    over = [w for w in procs if w > cores]
    if over:
        print(f"NOTE: {over} processes on {cores} cores is OVERSUBSCRIBED (one kernel thread "
              f"per rank, more ranks than cores): those rows measure contention, not scaling")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs["plain"] = launch("plain", 1, n, calls1, calls64, tmp, "default")
        runs["plain_passive"] = launch("plain", 1, n, calls1, calls64, tmp, "passive")
        for w in procs:
            runs[f"sharded_{w}"] = launch("sharded", w, n, calls1, calls64, tmp)
    ref_ids = runs["plain"]["ids64"]
    rows_ = []
    for name, r in runs.items():
        w = r["world"]
        same = r["ids64"] == ref_ids
        r["ids_equal_plain"] = same
        r["keys_per_s"] = n / r["add_s"]
        r["qps_batch1"] = 1.0 / r["search1"]["median"]
        r["qps_batch64"] = 64.0 / r["search64"]["median"]
        if "all64" in r:
            r["qps_all_ranks_batch64"] = 64.0 * w / r["all64"]["median"]
        label = "plain KeyValueMemory" if r["mode"] == "plain" else f"sharded, {w} proc"
        label += f", OMP_WAIT_POLICY={r['omp_wait_policy']}"
        if w > cores:
            label += " (oversubscribed)"
        rows_.append([label, r["threads_per_rank"], f"{r['keys_per_s']:,.0f}",
                      f"{r['qps_batch1']:,.1f} ({cm.fmt_time(r['search1']['median'])})",
                      f"{r['qps_batch64']:,.0f} ({cm.fmt_time(r['search64']['median'])})",
                      f"{r['qps_all_ranks_batch64']:,.0f}" if "all64" in r else "-",
                      cm.fmt_bytes(r["nbytes"]), "yes" if same else "NO",
                      f"{r['foreign_load']:.0%}"])
        for drop in ("ids64",):
            r.pop(drop, None)
    print()
    print(cm.md_table(["run", "threads/rank", "add keys/s", "search q/s, batch 1 (median)",
                       "search q/s, batch 64 (median)", "q/s, every rank batch 64",
                       "bytes on rank 0", "ids == plain", "other load"], rows_))
    if over:
        print(f"\n(oversubscribed: {over} processes on {cores} cores)")
    result = {"machine": info, "load_before_start": args.load, "n_keys": n, "key_dim": DIM,
              "value_dim": VDIM, "k": K, "add_batch": BATCH, "cores": cores,
              "oversubscribed_procs": over, "runs": runs,
              "command": "python benchmarks/bench_distributed.py"
                         + (" --quick" if args.quick else "")}
    cm.report_foreign_load(result, args)
    if not args.no_save:
        cm.save_result("distributed", result, args.quick)
    bad = [name for name, r in runs.items() if not r["ids_equal_plain"]]
    if bad:
        print(f"\n[bench] results differ from the plain store: {bad}")
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        a = sys.argv[2:]
        worker(a[0], int(a[1]), int(a[2]), int(a[3]), int(a[4]), int(a[5]), a[6])
    sys.exit(main())
