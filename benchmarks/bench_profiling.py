"""What naming the ops in torch.profiler costs while no profiler records, and the table a
profiler shows of them.

Three small ops (one 16 x 64 x 128 episode's read and write, a search of 4,096 x 384 keys
for one query) are timed through their public, ``@profiled`` functions and through the
bare functions underneath (``__wrapped__``), interleaved in the same run; the wrapper's own
cost is also timed on a function that does nothing, where no op's noise hides it. Target
(issue: profiling write/read throughput): <= 1% of a small op. Then one episode write and
read, a search and a differentiable write run under ``torch.profiler.profile()``; the
table of the library's rows goes to benchmarks/results/profiling.txt.

    python benchmarks/bench_profiling.py [--rounds 15] [--no-save] [--quick]
"""
from __future__ import annotations

import statistics
import sys
import timeit
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402

lx = cm.import_larimar()
from larimar_ext import torch_ops  # noqa: E402
from larimar_ext._profiling import profiled  # noqa: E402
import torch  # noqa: E402


def extra(p):
    p.add_argument("--rounds", type=int, default=15)


def _per_call(fn, number: int) -> float:
    return timeit.timeit(fn, number=number) / number


def _interleaved(pair: dict, rounds: int, number: int) -> dict:
    """Seconds per call of each callable: the best of ``rounds`` interleaved batches of
    ``number`` calls (the minimum: the machine's other load only ever adds time)."""
    times = {name: [] for name in pair}
    for r in range(rounds):
        for name in (pair if r % 2 else reversed(list(pair))):
            times[name].append(_per_call(pair[name], number))
    return {name: min(t) for name, t in times.items()} | {
        f"{name} (median)": statistics.median(t) for name, t in times.items()}


def _small_ops():
    rng = np.random.default_rng(0)
    W = rng.random((1, 16, 64)).astype(np.float32)
    Z = rng.random((1, 16, 128)).astype(np.float32)
    M = lx.lstsq_write(W, Z)
    kv = lx.KeyValueMemory(384, 4)
    kv.add(rng.standard_normal((4096, 384)).astype(np.float32),
           rng.standard_normal((4096, 4)).astype(np.float32))
    q = rng.standard_normal((1, 384)).astype(np.float32)
    search = type(kv).search
    return {
        "read, one 16 x 64 x 128 episode": (lambda: lx.read(W, M),
                                            lambda: lx.read.__wrapped__(W, M)),
        "lstsq_write, one 16 x 64 x 128 episode": (lambda: lx.lstsq_write(W, Z),
                                                   lambda: lx.lstsq_write.__wrapped__(W, Z)),
        "KeyValueMemory.search, 4,096 x 384 keys, 1 query": (
            lambda: kv.search(q, 1), lambda: search.__wrapped__(kv, q, 1)),
    }


def _profiler_table() -> str:
    rng = np.random.default_rng(1)
    Z = rng.standard_normal((8, 16, 128)).astype(np.float32)
    prior = rng.standard_normal((64, 128)).astype(np.float32)
    kv = lx.KeyValueMemory(384, 4)
    kv.add(rng.standard_normal((4096, 384)).astype(np.float32),
           rng.standard_normal((4096, 4)).astype(np.float32))
    q = rng.standard_normal((4, 384)).astype(np.float32)
    Zt, Wt = torch.from_numpy(Z), torch.rand(8, 16, 64, requires_grad=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        W = lx.pinv_address(Z, np.broadcast_to(prior, (8, 64, 128)).copy())
        M = lx.lstsq_write(W, Z)
        lx.pinv_read(Z, M)
        kv.search(q, 4)
        kv.read(q, k=4, alpha=1.0)
        torch_ops.read(Wt, torch_ops.lstsq_write(Wt, Zt)).sum().backward()
    return prof.key_averages().table(sort_by="cpu_time_total", row_limit=14)


def run(args) -> int:
    rounds = 5 if args.quick else args.rounds

    def nothing(W, Z, ridge=0.0, rcond=None):
        return W

    wrapped = profiled(nothing)
    wrapper = _interleaved({"profiled": lambda: wrapped(1, 2), "bare": lambda: nothing(1, 2)},
                           rounds, 100_000)
    wrapper_s = wrapper["profiled"] - wrapper["bare"]
    rows, ops, targets = [], {}, []
    for name, (public, bare) in _small_ops().items():
        number = max(200, int(0.05 / _per_call(bare, 50)))
        t = _interleaved({"public": public, "bare": bare}, rounds, number)
        ab = t["public"] / t["bare"] - 1
        share = wrapper_s / t["bare"]
        ops[name] = {"bare_s": t["bare"], "public_s": t["public"], "a_b_overhead": ab,
                     "wrapper_share": share, "calls_per_batch": number}
        rows.append([name, cm.fmt_time(t["bare"]), cm.fmt_time(t["public"]), f"{ab:+.2%}",
                     f"{share:.2%}"])
        targets.append({"name": f"profiler off: wrapper cost / {name}", "op": "<=",
                        "threshold": 0.01, "value": share, "fmt": lambda x: f"{x:.2%}"})
    print(f"wrapper cost with no profiler recording: {wrapper_s * 1e9:.0f} ns per call "
          f"(bare function {wrapper['bare'] * 1e9:.0f} ns, profiled {wrapper['profiled'] * 1e9:.0f}"
          f" ns; best of {rounds} batches of 100,000 calls)\n")
    print(cm.md_table(["op", "bare", "public (@profiled)", "A/B difference",
                       "wrapper cost / op"], rows))
    table = _profiler_table()
    print("\n" + table)
    result = {"rounds": rounds, "wrapper_seconds": wrapper_s, "wrapper_bench": wrapper,
              "ops": ops, "profiler_table": table}
    cm.report_foreign_load(result, args)
    rc = cm.record_targets(result, targets, args.quick)
    if not args.no_save:
        cm.save_result("profiling", result, args.quick)
        if not args.quick:
            (cm.RESULTS_DIR / "profiling.txt").write_text(table + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(run(cm.parse_args(__doc__.splitlines()[0], extra)))
