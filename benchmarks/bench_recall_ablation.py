"""What each retrieval view gains on RULER's needle tasks: dense only, lexical only, fused.

For every sample (``--data``, RULER's layout), the context is ingested once and the fused
candidates (dense top 64 and lexical top 64, ``LongContextMemory._ranked``) are ranked three
ways: by the dense cosine, by the lexical coverage, by their mean (the default). A ranking
scores the fraction of the sample's reference strings found in the sentence passages of its
top rows (each of ``--top``, retrieval only, no decoding); "selected" scores the rows the
pipeline reads (``_select`` on the fused ranking), with the number of rows it read and the
fraction of them that hold no reference (rows read in vain). Ingest cost of each view is in the
ingest stats (the dense key comes from the value's encoder pass; the lexical index is the
rest). Writes JSON with per-task means.

    python benchmarks/bench_recall_ablation.py --data ../shared/data/ruler_niah --lengths 4096
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--lengths", default="4096")
    p.add_argument("--top", default="1,4", help="comma list of row counts")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="benchmarks/results/recall_ablation.json")
    args = p.parse_args()
    import torch
    from larimar_ext.longcontext import ruler
    from larimar_ext.longcontext.memory import EncodingCache, LongContextMemory
    from larimar_ext.model import LarimarModel
    if args.threads:
        torch.set_num_threads(args.threads)
    model = LarimarModel.from_pretrained()
    cache = EncodingCache(keep_values=True)
    samples = ruler.load_samples(args.data, [int(x) for x in args.lengths.split(",")])
    views = {"dense": lambda s: s.dense, "lexical": lambda s: s.lexical, "fused": lambda s: s.score}
    tops = [int(x) for x in args.top.split(",")]
    cols = [f"{v}@{n}" for n in tops for v in views] + ["selected"]
    rows = []
    for s in samples:
        mem = LongContextMemory(model, cache=cache)
        mem.ingest(s.context)
        t0 = time.perf_counter()
        ranked = mem._ranked(s.answer_prefix, s.question)
        search_s = time.perf_counter() - t0
        rec = {"length": s.length, "task": s.task, "line": s.line, "search_s": search_s}

        def found(chosen):
            return ruler.string_match_all(" ".join(mem._stitch(g) for g in mem._passages(chosen)),
                                          s.outputs)

        for n in tops:
            for name, key in views.items():
                rec[f"{name}@{n}"] = found(sorted(ranked, key=lambda x: (-key(x), x.row))[:n])
        chosen, _ = mem._select(ranked, mem._query_text(s.answer_prefix, s.question),
                                mem.max_readouts)
        rec["selected"] = found(chosen)
        rec["selected_rows"] = len(chosen)
        rec["selected_in_vain"] = float(np.mean([found([c]) == 0 for c in chosen]))
        rows.append(rec)
        print(json.dumps(rec), flush=True)
    tasks = sorted({r["task"] for r in rows})
    cols += ["selected_rows", "selected_in_vain"]
    summary = {t: {v: float(np.mean([r[v] for r in rows if r["task"] == t])) for v in cols}
               for t in tasks}
    summary["mean"] = {v: float(np.mean([summary[t][v] for t in tasks])) for v in cols}
    Path(args.out).write_text(json.dumps({"config": vars(args), "summary": summary,
                                          "rows": rows}, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
