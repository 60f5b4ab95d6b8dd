"""What each retrieval view gains on RULER's needle tasks: dense only, lexical only, fused.

For every sample (``--data``, RULER's layout), the context is ingested once and the fused
candidates (dense top 64 and lexical top 64, ``LongContextMemory._ranked``) are ranked three
ways: by the dense cosine, by the lexical coverage, by their mean (the default). A ranking
scores the fraction of the sample's reference strings found in the sentence passages of its
top ``--top`` rows (retrieval only, no decoding). Ingest cost of each view is in the
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
    p.add_argument("--top", type=int, default=4)
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
    rows = []
    for s in samples:
        mem = LongContextMemory(model, cache=cache)
        mem.ingest(s.context)
        t0 = time.perf_counter()
        ranked = mem._ranked(s.answer_prefix, s.question)
        search_s = time.perf_counter() - t0
        rec = {"length": s.length, "task": s.task, "index": s.index, "search_s": search_s}
        for name, key in views.items():
            top = sorted(ranked, key=lambda x: (-key(x), x.row))[:args.top]
            text = " ".join(mem._stitch(g) for g in mem._passages(top))
            rec[name] = ruler.string_match_all(text, s.outputs)
        rows.append(rec)
        print(json.dumps(rec), flush=True)
    tasks = sorted({r["task"] for r in rows})
    summary = {t: {v: float(np.mean([r[v] for r in rows if r["task"] == t])) for v in views}
               for t in tasks}
    summary["mean"] = {v: float(np.mean([summary[t][v] for t in tasks])) for v in views}
    Path(args.out).write_text(json.dumps({"config": vars(args), "summary": summary,
                                          "rows": rows}, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
