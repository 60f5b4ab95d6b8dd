"""Where the time of a long-context ingest and question goes, from the library's own stats
and torch.profiler: one 128K-token ingest (essays, SF needle at 50%, cold encoding cache)
with its segmenting / encoding / writing seconds, then one question with its stage seconds
(``Answer.seconds``) and the torch.profiler tables: the larimar_ext rows alone (the ask,
its stages and the kernel ops they call, by name), then the top rows of all.

    python benchmarks/bench_stages.py [--context 128k] [--out benchmarks/results/stages.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import ESSAYS_DIR, md_table  # noqa: E402



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--context", default="128k")
    p.add_argument("--haystack-dir", default=str(ESSAYS_DIR))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="benchmarks/results/stages.json")
    args = p.parse_args()
    import torch
    from larimar_ext.longcontext import LongContextMemory, tasks
    from larimar_ext.model import LarimarModel
    if args.threads:
        torch.set_num_threads(args.threads)
    model = LarimarModel.from_pretrained()
    ctx = tasks.needle_context(tasks.Haystack(args.haystack_dir, model.tokenizer),
                               tasks.parse_context_size(args.context), 50)
    mem = LongContextMemory(model)
    st = mem.ingest(ctx.text)
    mem.ask_trace(ctx.answer_prefix, ctx.question, max_new_tokens=24)      # warm-up
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        a = mem.ask_trace(ctx.answer_prefix, ctx.question, max_new_tokens=24)
    averages = prof.key_averages()
    ours = [e for e in averages if e.key.startswith("larimar_ext")]
    # the library's own rows (the ask, its stages, the kernel ops inside), then the whole
    # table's top rows (torch's ops inside them)
    rows = [[e.key, e.count, f"{e.cpu_time_total / 1e3:.1f} ms",
             f"{e.self_cpu_time_total / 1e3:.1f} ms"]
            for e in sorted(ours, key=lambda e: -e.cpu_time_total)]
    table = (md_table(["range or op", "calls", "CPU total", "self CPU"], rows) + "\n\n"
             + averages.table(sort_by="cpu_time_total", row_limit=25))
    print(f"ingest: {st.tokens:,} tokens in {st.seconds:.1f} s: segmenting "
          f"{st.segment_seconds:.1f} s, encoding {st.encode_seconds:.1f} s, writing (writer "
          f"thread, overlapping) {st.write_seconds:.1f} s")
    print("ask: " + ", ".join(f"{k} {v:.3f} s" for k, v in a.seconds.items())
          + f"; answer {a.answer!r}")
    print(table)
    Path(args.out).write_text(json.dumps({
        "context_tokens": st.tokens, "ingest": st.as_dict(), "ask_seconds": a.seconds,
        "answer": a.answer, "profiler": [{"name": e.key, "count": e.count,
                                          "cpu_time_total_us": e.cpu_time_total}
                                         for e in ours]}, indent=1))
    Path(args.out).with_suffix(".txt").write_text(table + "\n")


if __name__ == "__main__":
    main()
