"""Sequential single-row writes: larimar_ext.EpisodicMemory.update vs re-solving with numpy.

Workload: EpisodicMemory(K=1000, C=768, ridge=1e-6), float32, prior None (zeros), starting
empty; 1,000 rows written one at a time with .update(z, w) (z: (1, C), w: (1, K)).
W rows ~ N(0, 1)/sqrt(K), Z ~ N(0, 1). After every row the memory must equal the ridge
least-squares solution over the rows stored so far:
    M_n = argmin ||W_n M - Z_n||^2 + ridge ||M||^2 = (W_n^T W_n + ridge I)^-1 W_n^T Z_n.
(--quick: K=200, C=128, 200 rows.)

Baselines (float32, both cores, re-solving the batch problem after every row):
  (a) np.linalg.solve(G_n + ridge I, B_n) with G_n = W_n^T W_n and B_n = W_n^T Z_n. The
      fastest numpy way: G and B are accumulated with one rank-1 update per row (O(K^2 + KC)),
      so each step costs one K x K LU solve with C right-hand sides. Every row is timed.
  (b) np.linalg.lstsq(W_n, Z_n) (SVD based; the UNREGULARISED problem, so its memory differs
      from the ridge one where ridge matters). Too slow for every row: it is timed at a
      subset of row counts n and the total over n = 1..rows is extrapolated by linear
      interpolation of the measured per-row cost (printed as "extrapolated").
Accuracy: relative Frobenius error of the memory vs a float64 reference (np.linalg.lstsq on
the augmented system [W_n; sqrt(ridge) I] M = [Z_n; 0]) after 10%, 50%, 90% and 100% of the
rows. The memory snapshots are taken outside the timed region.
Targets (full size only): ours >= 20x faster than (a) over all rows; ours final rel err <= 1e-3.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

import _common as cm


def reference(W, Z, ridge):
    W = W.astype(np.float64)
    Z = Z.astype(np.float64)
    K = W.shape[1]
    A = np.vstack([W, math.sqrt(ridge) * np.eye(K)])
    Bm = np.vstack([Z, np.zeros((K, Z.shape[1]))])
    return np.linalg.lstsq(A, Bm, rcond=None)[0]


def run_ours(lx, W, Z, K, C, ridge, checkpoints):
    mem = lx.EpisodicMemory(K, C, ridge=ridge, dtype="float32")
    per_row = np.empty(W.shape[0])
    snaps = {}
    for i in range(W.shape[0]):
        z, w = Z[i:i + 1], W[i:i + 1]
        t0 = time.perf_counter()
        mem.update(z, w)
        per_row[i] = time.perf_counter() - t0
        if i + 1 in checkpoints:
            snaps[i + 1] = cm.to_numpy(mem.memory).copy()
    return per_row, snaps


def run_solve(W, Z, ridge, checkpoints):
    n, K = W.shape
    C = Z.shape[1]
    G = np.zeros((K, K), dtype=np.float32)
    B = np.zeros((K, C), dtype=np.float32)
    ridge_eye = (ridge * np.eye(K)).astype(np.float32)
    per_row = np.empty(n)
    snaps = {}
    for i in range(n):
        w, z = W[i], Z[i]
        t0 = time.perf_counter()
        G += np.outer(w, w)
        B += np.outer(w, z)
        M = np.linalg.solve(G + ridge_eye, B)
        per_row[i] = time.perf_counter() - t0
        if i + 1 in checkpoints:
            snaps[i + 1] = M.copy()
    return per_row, snaps


def run_lstsq_sampled(W, Z, samples, checkpoints):
    n = W.shape[0]
    np.linalg.lstsq(W[:2], Z[:2], rcond=None)  # warm-up
    cost = {}
    snaps = {}
    for m in samples:
        t0 = time.perf_counter()
        M = np.linalg.lstsq(W[:m], Z[:m], rcond=None)[0]
        cost[m] = time.perf_counter() - t0
        if m in checkpoints:
            snaps[m] = M
    xs = np.array(sorted(cost))
    ys = np.array([cost[x] for x in xs])
    total = float(np.sum(np.interp(np.arange(1, n + 1), xs, ys)))
    return total, cost, snaps


def run(args):
    lx = cm.import_larimar(("EpisodicMemory",))
    info = cm.machine_info(lx=lx)
    info["load_before_start"] = args.load
    cm.print_machine(info)

    if args.quick:
        K, C, n = 200, 128, 200
    else:
        K, C, n = 1000, 768, 1000
    ridge = 1e-6
    rng = np.random.default_rng(77)
    W = (rng.standard_normal((n, K)) / math.sqrt(K)).astype(np.float32)
    Z = rng.standard_normal((n, C)).astype(np.float32)
    checkpoints = sorted({max(1, n // 10), n // 2, (9 * n) // 10, n})
    print(f"\n## Sequential writes: {n} single-row updates, K={K}, C={C}, ridge={ridge:g}, "
          f"float32, {cm.NUM_THREADS} threads\n")
    refs = {m: reference(W[:m], Z[:m], ridge) for m in checkpoints}

    result = {"machine": info, "shape": {"K": K, "C": C, "rows": n, "ridge": ridge,
                                         "dtype": "float32"}, "checkpoints": checkpoints}
    methods = {}

    # ours before and after (a), so machine drift hits both
    ours_runs, ours_foreign = [], []

    def ours_once():
        meter = cm.ForeignLoad().start()
        ours_runs.append(run_ours(lx, W, Z, K, C, ridge, checkpoints))
        ours_foreign.append(meter.stop())
        time.sleep(0.3)

    if lx is not None:
        lx.set_num_threads(cm.NUM_THREADS)
        for _ in range(2):
            ours_once()
    meter = cm.ForeignLoad().start()
    per_a, snaps_a = run_solve(W, Z, ridge, checkpoints)
    foreign_a = meter.stop()
    time.sleep(0.3)
    if lx is not None:
        for _ in range(2):
            ours_once()

    samples = sorted({1, 2, *np.linspace(1, n, 11).astype(int).tolist(), *checkpoints})
    if args.quick:
        samples = list(range(1, n + 1, max(1, n // 20))) + [n]
        samples = sorted(set(samples) | set(checkpoints))
    total_b, cost_b, snaps_b = run_lstsq_sampled(W, Z, samples, checkpoints)

    if ours_runs:
        totals = [float(r[0].sum()) for r in ours_runs]
        per_o = ours_runs[int(np.argsort(totals)[len(totals) // 2])][0]
        snaps_o = ours_runs[-1][1]
        methods["ours (EpisodicMemory.update)"] = {
            "total_s": float(np.median(totals)), "totals_s": totals,
            "per_row_median_s": float(np.median(per_o)), "per_row_max_s": float(per_o.max()),
            "foreign_load_per_run": ours_foreign,
            "rel_err": {str(m): cm.rel_err(snaps_o[m], refs[m]) for m in checkpoints}}
    methods["(a) numpy solve after each row"] = {
        "total_s": float(per_a.sum()), "per_row_median_s": float(np.median(per_a)),
        "per_row_last_s": float(per_a[-1]), "foreign_load": foreign_a,
        "rel_err": {str(m): cm.rel_err(snaps_a[m], refs[m]) for m in checkpoints}}
    methods["(b) numpy lstsq after each row"] = {
        "total_s": total_b, "extrapolated": True, "sampled_row_counts": list(cost_b),
        "sampled_cost_s": list(cost_b.values()),
        "rel_err": {str(m): cm.rel_err(snaps_b[m], refs[m]) for m in checkpoints}}
    result["methods"] = methods

    ours = methods.get("ours (EpisodicMemory.update)")
    rows = []
    for name, r in methods.items():
        t = r["total_s"]
        ratio = cm.fmt_ratio(t / ours["total_s"]) if ours else "n/a"
        tshow = cm.fmt_time(t) + (" (extrapolated)" if r.get("extrapolated") else "")
        rows.append([name, tshow, cm.fmt_time(t / n), ratio]
                    + [cm.fmt_err(r["rel_err"][str(m)]) for m in checkpoints])
    print(cm.md_table(["method", f"total, {n} rows", "mean / row", "time / ours"]
                      + [f"rel err @ {m} rows" for m in checkpoints], rows))
    print("\nrel err: relative Frobenius error vs the float64 ridge solution over the stored rows "
          "((b) solves the unregularised problem). (a) accumulates W^T W and W^T Z with "
          "rank-1 updates and re-solves; (b) is timed at "
          f"{len(cost_b)} row counts and interpolated.")
    if ours:
        print(f"ours: median per-update time {cm.fmt_time(ours['per_row_median_s'])}, "
              f"max {cm.fmt_time(ours['per_row_max_s'])}; totals of the {len(ours['totals_s'])} "
              f"runs: {', '.join(cm.fmt_time(t) for t in ours['totals_s'])}")
        print("foreign load (other processes' share of the machine) during ours: "
              + ", ".join(f"{x:.0%}" for x in ours_foreign) + f"; during (a): {foreign_a:.0%}")

    ta = methods["(a) numpy solve after each row"]["total_s"]
    targets = [
        {"name": "speed-up vs (a) numpy solve", "op": ">=", "threshold": 20.0,
         "value": ta / ours["total_s"] if ours else None, "fmt": cm.fmt_ratio},
        {"name": f"ours final rel err ({n} rows)", "op": "<=", "threshold": 1e-3,
         "value": ours["rel_err"][str(n)] if ours else None, "fmt": cm.fmt_err},
    ]
    if ours:
        result["speedup"] = {"vs_a": ta / ours["total_s"],
                             "vs_b_extrapolated": total_b / ours["total_s"]}
        print(f"speed-up vs (a): {cm.fmt_ratio(result['speedup']['vs_a'])}; "
              f"vs (b) (extrapolated): {cm.fmt_ratio(result['speedup']['vs_b_extrapolated'])}")
    cm.report_foreign_load(result, args)
    return cm.keep_result("sequential", result, targets, args)


if __name__ == "__main__":
    sys.exit(run(cm.parse_args(__doc__.splitlines()[0])))
