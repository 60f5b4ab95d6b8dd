"""Exact top-k over 1M x 384 keys on a CUDA device beside the host stores (issue: memory at
scale, GPU item): the same keys and queries as bench_compact_topk.py, in one process.

    python benchmarks/gpu_search.py --out OUT_DIR [--quick]

Methods (metric "ip", top-1 and top-10, batch 1 = 16 single queries, each call timed, median;
batch 256 = one block per call; interleaved rounds)
  float32 store   KeyValueMemory(384, 1, "ip") on the host, all of its cores
  int8 store      KeyValueMemory(..., key_codes="int8") on the host: the exact compact scan
  cuda float32    keys resident on the device (float32, TF32 off), q @ K.T + torch.topk; the
                  query goes up and the ids and scores come back in every call (what a
                  host caller pays)
  cuda bf16       the same with bf16 keys and queries: approximate, shown with recall@k

Every method's ids are compared with the float32 store's; a device float32 result may differ
only on float near-ties (another summation order), and each difference is counted and its
score gap recorded. Writes OUT_DIR/gpu_search.json. Needs a CUDA device; without one it
says so and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

import _common as cm
import bench_topk as keyset

KS = (1, 10)
NQ_BIG = 256


def recall(ids, exact) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids, exact)]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true", help="100,000 keys")
    p.add_argument("--device", default="cuda", help="'cpu' only for a dry run of the script")
    args = p.parse_args()
    import torch
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing run", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False      # float32 products stay float32
    lx = cm.import_larimar(("KeyValueMemory",))
    cm.set_all_threads(torch=torch, lx=lx)
    info = cm.machine_info(lx=lx, torch=torch)
    info["cuda_device"] = torch.cuda.get_device_name(0) if dev.type == "cuda" else str(dev)
    cm.print_machine(info)
    n = 100_000 if args.quick else 1_000_000

    keys = np.empty((n, keyset.DIM), np.float32)
    for i in range(keyset.n_chunks(n)):
        keys[i * keyset.CHUNK:(i + 1) * keyset.CHUNK] = keyset.gen_chunk(i, n)
    plain = lx.KeyValueMemory(keyset.DIM, 1, "ip")
    coded = lx.KeyValueMemory(keyset.DIM, 1, "ip", key_codes="int8")
    zeros = np.zeros((n, 1), np.float32)
    plain.add(keys, zeros)
    coded.add(keys, zeros)
    dev32 = torch.from_numpy(keys).to(dev)
    dev16 = dev32.to(torch.bfloat16)
    q1 = keyset.gen_queries(16, 7)
    Qb = keyset.gen_queries(NQ_BIG, 8)

    def on_device(K_dev, k):
        def search(q):
            qd = torch.from_numpy(q).to(dev, K_dev.dtype)
            s, i = torch.topk(qd @ K_dev.T, k, dim=1)
            return i.cpu().numpy(), s.float().cpu().numpy()
        return search

    result = {"machine": info, "n_keys": n, "dim": keyset.DIM, "metric": "ip",
              "device_key_bytes": {"cuda float32": dev32.nbytes, "cuda bf16": dev16.nbytes},
              "host_store_bytes": {"float32 store": plain.nbytes, "int8 store": coded.nbytes},
              "by_k": {}}
    for k in KS:
        methods = {"float32 store": lambda q, k=k: plain.search(q, k),
                   "int8 store": lambda q, k=k: coded.search(q, k),
                   "cuda float32": on_device(dev32, k), "cuda bf16": on_device(dev16, k)}
        checks = {}
        for name, fn in methods.items():
            ids1 = np.concatenate([fn(q1[j:j + 1])[0] for j in range(len(q1))])
            idsb = fn(Qb)[0]
            ref1 = np.concatenate([plain.search(q1[j:j + 1], k)[0] for j in range(len(q1))])
            refb = plain.search(Qb, k)[0]
            got, ref = np.concatenate([ids1, idsb]), np.concatenate([ref1, refb])
            Q = np.concatenate([q1, Qb])
            diff = np.argwhere(got != ref)
            # the float64 score gap of each differing pair: a near-tie is ~1e-7
            gaps = [abs(float(keys[got[r, c]].astype(np.float64) @ Q[r])
                        - float(keys[ref[r, c]].astype(np.float64) @ Q[r])) for r, c in diff]
            checks[name] = {"differing_ids": len(diff), "max_score_gap": max(gaps, default=0.0),
                            "recall_batch1": recall(ids1, ref1),
                            f"recall_batch{NQ_BIG}": recall(idsb, refb)}
        t1 = cm.timeit_interleaved({m: keyset.cycling(f, q1) for m, f in methods.items()},
                                   rounds=4, inner=len(q1), warm=2, first_warmup=2, settle=0.3)
        tb = cm.timeit_interleaved({m: (lambda f=f: f(Qb)) for m, f in methods.items()},
                                   rounds=3, inner=3, warm=1, first_warmup=1, settle=0.3)
        base1, baseb = t1["float32 store"]["median"], tb["float32 store"]["median"]
        rows = [[m, cm.fmt_time(t1[m]["median"]), cm.fmt_ratio(base1 / t1[m]["median"]),
                 cm.fmt_time(tb[m]["median"]), cm.fmt_ratio(baseb / tb[m]["median"]),
                 str(checks[m]["differing_ids"]), f"{checks[m]['recall_batch1']:.3f}"]
                for m in methods]
        print(f"\n### Top-{k}: {n:,} keys, host threads {cm.NUM_THREADS}, {info['cuda_device']}\n")
        print(cm.md_table(["method", "batch 1", "float32 store / this", f"batch {NQ_BIG}",
                           "float32 store / this", "ids differing", f"recall@{k}"], rows))
        result["by_k"][k] = {"batch1": t1, f"batch{NQ_BIG}": tb, "checks": checks}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_search.json").write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
