"""The recall pipeline with the encoder and decoder on CUDA and the memory on the host, beside
the host path in the same run (issues: recall on real questions, memory at scale; GPU item).

    python benchmarks/gpu_recall.py --data ../shared/data/ruler_niah --out OUT_DIR

For each passkey context (default 4K, 128K, 1M, 10M tokens): ingest with the model on the
device, ask three times (the first ask apart: it builds the device's kernels and caches),
record torch.cuda.max_memory_allocated, which must stay flat (only readouts cross to the
device); then save the memory, load it with a CPU copy of the same model and ask it three
times there (the host path, all of the host's cores). Then RULER at 32K with the model on the
device (``larimar-ext ruler``'s records.jsonl, ruler.json, ruler.md under OUT_DIR/ruler32k).

Writes OUT_DIR/gpu_recall.json after every step, so a run cut short by --deadline (seconds;
no step starts after it) keeps what it measured. Needs a CUDA device; without one it says so
and exits with status 2 (``--device cpu`` is a dry run of the script itself).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path


def _asks(mem, ctx, tasks, sync, repeats: int = 3) -> dict:
    """Ask ``ctx``'s question ``repeats`` times: first-ask seconds, the later ones' median."""
    seconds, answers = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a = mem.ask_trace(ctx.answer_prefix, ctx.question, max_new_tokens=12)
        sync()
        seconds.append(time.perf_counter() - t0)
        answers.append(a.answer)
    return {"first_ask_seconds": seconds[0], "ask_seconds": statistics.median(seconds[1:]),
            "answer": answers[-1], "correct": all(tasks.score_passkey(x, ctx.answer)
                                                  for x in answers)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="RULER folder (<length>/<task>/validation.jsonl)")
    p.add_argument("--out", required=True)
    p.add_argument("--contexts", default="4k,128k,1m,10m")
    p.add_argument("--ruler-lengths", default="32768")
    p.add_argument("--deadline", type=float, default=None,
                   help="seconds from the start after which no further step starts")
    p.add_argument("--device", default="cuda", help="'cpu' only for a dry run of the script")
    args = p.parse_args()
    start = time.perf_counter()
    import torch
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing run", file=sys.stderr)
        return 2
    from larimar_ext.longcontext import LongContextMemory, tasks
    from larimar_ext.longcontext.ruler import MemorySystem, load_samples, run_ruler
    from larimar_ext.model import LarimarModel

    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = LarimarModel.from_pretrained(device=args.device)
    host_model = LarimarModel.from_pretrained(device="cpu")
    result = {"device": torch.cuda.get_device_name(0) if cuda else args.device,
              "torch": torch.__version__, "host_threads": torch.get_num_threads(),
              "contexts": [], "skipped": []}

    def save() -> None:
        (out / "gpu_recall.json").write_text(json.dumps(result, indent=1, default=str))

    def time_left() -> bool:
        return args.deadline is None or time.perf_counter() - start < args.deadline

    def passkey_row(size: str) -> dict:
        n = tasks.parse_context_size(size)
        ctx = tasks.passkey_context(n, 50, seed=0, tokenizer=model.tokenizer)
        mem = LongContextMemory(model)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        st = mem.ingest(ctx.text)
        sync()
        row = {"context": n, "tokens": st.tokens, "rows": st.rows,
               "host_store_bytes": mem.store.nbytes, "ingest_seconds": st.seconds,
               "device": _asks(mem, ctx, tasks, sync)}
        if cuda:
            row["cuda_max_memory_allocated"] = torch.cuda.max_memory_allocated()
        with tempfile.TemporaryDirectory() as folder:
            mem.save(folder)
            row["host"] = _asks(LongContextMemory.load(folder, host_model), ctx, tasks,
                                lambda: None)
        row["host_over_device_ask"] = row["host"]["ask_seconds"] / row["device"]["ask_seconds"]
        print(json.dumps(row), flush=True)
        return row

    def ruler() -> dict:
        samples = load_samples(args.data, [int(x) for x in args.ruler_lengths.split(",")])
        records = run_ruler(samples, MemorySystem(model), f"memory-recall-{args.device}",
                            out / "ruler32k", progress=False)
        asks = [r["ask_seconds"] for r in records["records"] if "ask_seconds" in r]
        return {"summary": records["summary"],
                "median_ask_seconds": statistics.median(asks) if asks else None}

    steps = [(f"passkey {size}", lambda size=size: result["contexts"].append(passkey_row(size)))
             for size in args.contexts.split(",")]
    if args.data:
        steps.append(("RULER", lambda: result.__setitem__("ruler", ruler())))
    for name, step in steps:
        if not time_left():
            result["skipped"].append(f"{name}: past the deadline")
            continue
        try:                    # one failing step must not cost the device run the others
            step()
            print(f"{name}: done", flush=True)
        except Exception:
            result.setdefault("errors", {})[name] = traceback.format_exc()
            print(result["errors"][name], file=sys.stderr, flush=True)
        save()
    result["seconds"] = time.perf_counter() - start
    save()
    print(json.dumps({k: v for k, v in result.items() if k != "contexts"}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
