"""The pseudo-inverse of a full-rank 512 x 768 float32 prior: the kernel's Gram + Cholesky
route beside torch.linalg.pinv, a Gram + Cholesky solve in torch and numpy's SVD pinv, in
interleaved rounds of the same run; errors against float64 numpy.

``pinv_address(z, R)`` with one query row is the pseudo-inverse's cost (its product with z
is 0.4 MFLOP); ``pinv_address(I, R)`` returns R^+ itself, one C x C x K product more.
Target (issue: memory at scale): <= 12 ms, errors <= 1e-5.

    python benchmarks/bench_pinv.py [--no-save] [--quick]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402


def run(args) -> int:
    lx = cm.import_larimar(("pinv_address",))
    import torch
    cm.set_all_threads(torch=torch, lx=lx)
    K, C = (128, 192) if args.quick else (512, 768)
    rng = np.random.default_rng(0)
    R = (rng.standard_normal((K, C)) / np.sqrt(C)).astype(np.float32)
    Rt = torch.from_numpy(R)
    z1 = rng.standard_normal((1, C)).astype(np.float32)
    eye = np.eye(C, dtype=np.float32)
    ref = np.linalg.pinv(R.astype(np.float64))

    def torch_gram_cholesky():  # R^+ = R^T (R R^T)^-1, in float32 as torch runs it
        return torch.cholesky_solve(Rt, torch.linalg.cholesky(Rt @ Rt.T)).T

    methods = {
        "ours: pinv_address(z, R), 1 query": lambda: lx.pinv_address(z1, R),
        "ours: pinv_address(I, R) = R^+": lambda: lx.pinv_address(eye, R),
        "torch.linalg.pinv(R)": lambda: torch.linalg.pinv(Rt),
        "torch Gram + Cholesky solve": torch_gram_cholesky,
        "np.linalg.pinv(R) (float32)": lambda: np.linalg.pinv(R),
    }
    errors = {
        "ours: pinv_address(I, R) = R^+": cm.rel_err(lx.pinv_address(eye, R), ref),
        "ours: pinv_address(z, R), 1 query": cm.rel_err(lx.pinv_address(z1, R), z1 @ ref),
        "torch.linalg.pinv(R)": cm.rel_err(torch.linalg.pinv(Rt), ref),
        "torch Gram + Cholesky solve": cm.rel_err(torch_gram_cholesky(), ref),
        "np.linalg.pinv(R) (float32)": cm.rel_err(np.linalg.pinv(R), ref),
    }
    t = cm.timeit_interleaved(methods, rounds=5, inner=3, warm=1, first_warmup=1, settle=0.2)
    ours = t["ours: pinv_address(z, R), 1 query"]["median"]
    rows = [[name, cm.fmt_time(t[name]["median"]), cm.fmt_ratio(t[name]["median"] / ours),
             cm.fmt_err(errors[name])] for name in methods]
    print(f"## Pseudo-inverse of a full-rank {K} x {C} float32 matrix (cond ~10), "
          f"{cm.NUM_THREADS} threads\n")
    print(cm.md_table(["method", "median", "time / ours", "rel err vs float64"], rows))
    result = {"shape": {"K": K, "C": C}, "times": t, "rel_err": errors}
    cm.report_foreign_load(result, args)
    targets = [{"name": "pinv of the prior (pinv_address, 1 query)", "op": "<=",
                "threshold": 0.012, "value": ours, "fmt": cm.fmt_time},
               {"name": "rel err of R^+", "op": "<=", "threshold": 1e-5,
                "value": errors["ours: pinv_address(I, R) = R^+"], "fmt": cm.fmt_err}]
    return cm.keep_result("pinv", result, targets, args)


if __name__ == "__main__":
    sys.exit(run(cm.parse_args(__doc__.splitlines()[0])))
