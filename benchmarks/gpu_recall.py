"""The recall pipeline with the decoder on CUDA and the memory on the host (issue: recall on
real questions, GPU item): RULER at 32K, and the decoder device's peak memory at 4K, 128K
and 1M tokens, which must stay flat (only readouts cross to the device).

    python benchmarks/gpu_recall.py --data ../shared/data/ruler_niah --out OUT_DIR

Writes OUT_DIR/gpu_recall.json (the device, each context's torch.cuda.max_memory_allocated,
host store bytes, ingest and ask times, the answer) and OUT_DIR/ruler32k/ (``larimar-ext
ruler``'s records.jsonl, ruler.json, ruler.md). Without --data the RULER part is skipped.
Needs a CUDA device; on a machine without one it says so and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="RULER folder (<length>/<task>/validation.jsonl)")
    p.add_argument("--out", required=True)
    p.add_argument("--contexts", default="4k,128k,1m")
    args = p.parse_args()
    import torch
    if not torch.cuda.is_available():
        print("no CUDA device: nothing run", file=sys.stderr)
        return 2
    from larimar_ext.longcontext import LongContextMemory, tasks
    from larimar_ext.longcontext.ruler import MemorySystem, load_samples, run_ruler
    from larimar_ext.model import LarimarModel

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = LarimarModel.from_pretrained(device="cuda")
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "contexts": []}
    for size in args.contexts.split(","):
        n = tasks.parse_context_size(size)
        ctx = tasks.passkey_context(n, 50, seed=0, tokenizer=model.tokenizer)
        mem = LongContextMemory(model)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        st = mem.ingest(ctx.text)
        t0 = time.perf_counter()
        a = mem.ask_trace(ctx.answer_prefix, ctx.question, max_new_tokens=12)
        torch.cuda.synchronize()
        row = {"context": n, "tokens": st.tokens, "rows": st.rows,
               "host_store_bytes": mem.store.nbytes, "ingest_seconds": st.seconds,
               "ask_seconds": time.perf_counter() - t0,
               "cuda_max_memory_allocated": torch.cuda.max_memory_allocated(),
               "answer": a.answer, "correct": tasks.score_passkey(a.answer, ctx.answer)}
        result["contexts"].append(row)
        print(json.dumps(row), flush=True)
    if args.data:
        samples = load_samples(args.data, [32768])
        result["ruler32k"] = run_ruler(samples, MemorySystem(model), "memory-recall-cuda",
                                       out / "ruler32k", progress=False)["summary"]
    (out / "gpu_recall.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({k: v for k, v in result.items() if k != "contexts"}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
