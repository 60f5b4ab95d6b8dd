"""Achieved GFLOP/s of larimar-ext's GEMM-shaped ops next to numpy (OpenBLAS) sgemm.

Every op is float32 on both cores. GFLOP/s = nominal flops / median time. The flop count
of each op is written out explicitly (one multiply-add = 2 flops; lower-order terms such
as diagonal shifts, scaling and the final top-1 selection are not counted):

  lstsq_write, N >= K  (Cholesky of the K x K Gram, docs/DESIGN.md section 2.2):
      Gram W^T W (syrk, symmetric half)        N*K^2
      W^T Z                                    2*N*K*C
      Cholesky of K x K                        K^3/3
      two triangular solves, C right-hand sides 2*K^2*C
  lstsq_write, N < K   (minimum-norm solution via the N x N Gram):
      Gram W W^T (syrk)                        K*N^2
      Cholesky of N x N                        N^3/3
      two triangular solves, C right-hand sides 2*N^2*C
      W^T Y                                    2*N*K*C
      (batched: B times the above)
  read, dense batched (B,N,K) @ (B,K,C)        2*B*N*K*C
  topk, batch nq over n keys of dim d, "ip"     2*nq*n*d   (the score GEMM; selection not counted)

Next to each op, numpy performs the op's dominant GEMM on the same shape (W^T Z for
lstsq_write N >= K, W^T Y for N < K, the batched matmul for read, Q @ keys^T in blocks of
32,768 keys for topk) and its GFLOP/s is that GEMM's 2*m*n*k over its time. A 2048^3
numpy sgemm gives the machine's practical peak. "ours / numpy" compares the op's rate to
numpy's rate on its dominant GEMM: it can exceed 1 only if the op's other parts run faster
than that GEMM, and a value far below 1 marks an op that is not BLAS-3 bound.
Each op's output is also checked against float64 numpy (relative Frobenius error).
No targets: the script exits 0 unless something fails to run.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

import _common as cm

BLOCK = 32768


def flops_lstsq(N, K, C, B=1):
    if N >= K:
        f = N * K * K + 2 * N * K * C + K ** 3 / 3 + 2 * K * K * C
    else:
        f = K * N * N + N ** 3 / 3 + 2 * N * N * C + 2 * N * K * C
    return B * f


def np_blocked_scores(Q, keys, buf):
    for lo in range(0, keys.shape[0], BLOCK):
        kb = keys[lo:lo + BLOCK]
        np.matmul(Q, kb.T, out=buf[:, :kb.shape[0]])


def run(args):
    lx = cm.import_larimar(("lstsq_write", "read", "topk"))
    info = cm.machine_info(lx=lx)
    info["load_before_start"] = args.load
    cm.print_machine(info)
    rng = np.random.default_rng(5)
    q = args.quick

    def randn(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    cases = []

    # ---------------------------------------------------------------- lstsq_write, N >= K
    N, K, C = (1024, 128, 192) if q else (4096, 512, 768)
    W, Z = randn(N, K, scale=1 / math.sqrt(K)), randn(N, C)
    Wt = np.ascontiguousarray(W.T)
    cases.append(dict(
        op="lstsq_write (N>=K)", shape=f"N={N}, K={K}, C={C}", flops=flops_lstsq(N, K, C),
        ours=(lambda W=W, Z=Z: lx.lstsq_write(W, Z)) if lx else None,
        ref=lambda W=W, Z=Z: np.linalg.lstsq(W.astype(np.float64), Z.astype(np.float64),
                                             rcond=None)[0],
        np_gemm=lambda Wt=Wt, Z=Z: Wt @ Z, np_gemm_shape=f"(K,N)@(N,C) = ({K},{N})@({N},{C})",
        np_flops=2 * N * K * C))

    # ---------------------------------------------------------------- lstsq_write, N < K
    N, K, C = (64, 512, 192) if q else (256, 2048, 768)
    W, Z = randn(N, K, scale=1 / math.sqrt(K)), randn(N, C)
    Wt = np.ascontiguousarray(W.T)
    Y = randn(N, C)
    cases.append(dict(
        op="lstsq_write (N<K)", shape=f"N={N}, K={K}, C={C}", flops=flops_lstsq(N, K, C),
        ours=(lambda W=W, Z=Z: lx.lstsq_write(W, Z)) if lx else None,
        ref=lambda W=W, Z=Z: np.linalg.pinv(W.astype(np.float64)) @ Z.astype(np.float64),
        np_gemm=lambda Wt=Wt, Y=Y: Wt @ Y, np_gemm_shape=f"(K,N)@(N,C) = ({K},{N})@({N},{C})",
        np_flops=2 * N * K * C))

    # ---------------------------------------------------------------- lstsq_write, batched episodes
    B, N, K, C = (4, 16, 128, 192) if q else (32, 16, 512, 768)
    W, Z = randn(B, N, K, scale=1 / math.sqrt(K)), randn(B, N, C)
    Wt = np.ascontiguousarray(W.transpose(0, 2, 1))
    Y = randn(B, N, C)
    cases.append(dict(
        op="lstsq_write (batched, N<K)", shape=f"B={B}, N={N}, K={K}, C={C}",
        flops=flops_lstsq(N, K, C, B),
        ours=(lambda W=W, Z=Z: lx.lstsq_write(W, Z)) if lx else None,
        ref=lambda W=W, Z=Z: np.linalg.pinv(W.astype(np.float64)) @ Z.astype(np.float64),
        np_gemm=lambda Wt=Wt, Y=Y: np.matmul(Wt, Y),
        np_gemm_shape=f"batched ({B},{K},{N})@({B},{N},{C})", np_flops=2 * B * N * K * C))

    # ---------------------------------------------------------------- read, dense batched
    for (B, N, K, C) in ([(4, 16, 128, 192), (2, 64, 128, 192)] if q
                         else [(32, 16, 512, 768), (8, 256, 512, 768)]):
        Wr, M = randn(B, N, K), randn(B, K, C)
        cases.append(dict(
            op="read (dense batched)", shape=f"B={B}, N={N}, K={K}, C={C}", flops=2 * B * N * K * C,
            ours=(lambda Wr=Wr, M=M: lx.read(Wr, M)) if lx else None,
            ref=lambda Wr=Wr, M=M: np.matmul(Wr.astype(np.float64), M.astype(np.float64)),
            np_gemm=lambda Wr=Wr, M=M: np.matmul(Wr, M),
            np_gemm_shape=f"batched ({B},{N},{K})@({B},{K},{C})", np_flops=2 * B * N * K * C))

    # ---------------------------------------------------------------- topk batch 256
    nq, n, d = (256, 20_000, 384) if q else (256, 200_000, 384)
    keys = randn(n, d)
    Qm = randn(nq, d)
    buf = np.empty((nq, BLOCK), dtype=np.float32)

    def topk_ref(Qm=Qm, keys=keys):
        s = Qm.astype(np.float64) @ keys.astype(np.float64).T
        return np.argmax(s, axis=1)

    cases.append(dict(
        op="topk (ip, k=1)", shape=f"nq={nq}, keys={n:,}, d={d}", flops=2 * nq * n * d,
        ours=(lambda: lx.topk(Qm, keys, 1, metric="ip")) if lx else None,
        ref=topk_ref, is_topk=True,
        np_gemm=lambda: np_blocked_scores(Qm, keys, buf),
        np_gemm_shape=f"({nq},{d})@({d},{BLOCK}) x {math.ceil(n / BLOCK)} blocks",
        np_flops=2 * nq * n * d))

    # ---------------------------------------------------------------- peak
    S = 1024 if q else 2048
    A, Bm = randn(S, S), randn(S, S)
    peak = cm.timeit(lambda: A @ Bm, warmup=2, repeats=7)
    peak_gflops = 2 * S ** 3 / peak["median"] / 1e9

    # ---------------------------------------------------------------- run
    rows, out = [], []
    for c in cases:
        fns = {"numpy": c["np_gemm"]}
        err = None
        if c["ours"] is not None:
            fns = {"ours": c["ours"], **fns}
            res = c["ours"]()
            ref = c["ref"]()
            if c.get("is_topk"):
                # fraction of wrong top-1
                err = float(np.mean(cm.to_numpy(res[0]).reshape(-1) != ref))
            else:
                err = cm.rel_err(res, ref)
        t = cm.timeit_interleaved(fns, rounds=3, inner=3, warm=1, first_warmup=1, settle=0.2)
        to = t["ours"]["median"] if "ours" in t else None
        tn = t["numpy"]["median"]
        go = c["flops"] / to / 1e9 if to else None
        gn = c["np_flops"] / tn / 1e9
        rec = {k: v for k, v in c.items() if not callable(v) and k != "ours"}
        rec.update(ours_time=t.get("ours"), numpy_time=t["numpy"], ours_gflops=go, numpy_gflops=gn,
                   err=err)
        out.append(rec)
        rows.append([c["op"], c["shape"], f"{c['flops'] / 1e9:.3f}",
                     cm.fmt_time(to), f"{go:.1f}" if go else "n/a",
                     c["np_gemm_shape"], cm.fmt_time(tn), f"{gn:.1f}",
                     f"{go / gn:.2f}" if go else "n/a",
                     ("n/a" if err is None else
                      (f"{err:.0%} wrong idx" if c.get("is_topk") else cm.fmt_err(err)))])

    print(f"\n## GEMM-shaped ops, float32, {cm.NUM_THREADS} threads "
          f"(numpy sgemm {S}^3: {peak_gflops:.1f} GFLOP/s)\n")
    print(cm.md_table(["op", "shape", "GFLOP (nominal)", "ours time", "ours GFLOP/s",
                       "numpy dominant GEMM", "numpy time", "numpy GFLOP/s", "ours / numpy",
                       "ours err vs f64"], rows))
    print("\nTimes: median of 3 interleaved rounds x 3 calls. Flop counts: see the module "
          "docstring (nominal, lower-order terms not counted).")
    result = {"machine": info, "numpy_sgemm_peak": {"size": S, "time": peak, "gflops": peak_gflops},
              "cases": out}
    cm.report_foreign_load(result, args)
    if not args.no_save:
        cm.save_result("gemm", result, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(run(cm.parse_args(__doc__.splitlines()[0])))
