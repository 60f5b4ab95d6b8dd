"""Ingest tokens/s on text where every sentence is new: a RULER needle haystack whose filler is
itself distinct sentences (niah_multikey_2, 128K tokens: "One of the special magic numbers for
<words> is: <number>." over and over, each with other words and numbers), ingested cold in
recall mode by the default model with the float32 encoder, with its int8 copy
(``int8_values``: the kernel's ``Int8Linear`` layers) and with the int8 copy it had before
(torch.ao's deprecated ``quantize_dynamic``), in interleaved rounds in one process, a fresh
memory each time. For each int8 encoder: how many stored slot ids differ from the float32
encoder's (the first round's).

Target (issue: memory at scale): >= 5,000 tokens/s on such text, with the configuration the
project ships for it (the int8 encoder; the float32 one beside it).

    python benchmarks/bench_ingest_distinct.py [--data ../shared/data/ruler_niah]
        [--length 131072] [--task niah_multikey_2] [--rounds 2] [--quick] [--no-save] [--no-wait]
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402


def extra(p) -> None:
    p.add_argument("--data", default=str(cm.RULER_DIR))
    p.add_argument("--length", type=int, default=131072)
    p.add_argument("--task", default="niah_multikey_2")
    p.add_argument("--rounds", type=int, default=2)


def main() -> int:
    args = cm.parse_args(__doc__.splitlines()[0], extra)
    import copy

    import numpy as np
    import torch

    from larimar_ext.longcontext import LongContextMemory
    from larimar_ext.longcontext.ruler import load_samples
    from larimar_ext.model import LarimarModel
    cm.set_all_threads(torch=torch, lx=cm.import_larimar())
    length = 4096 if args.quick else args.length
    # the context the RULER pipeline ingests (the sample without its header and question)
    text = load_samples(args.data, lengths=[length], tasks=[args.task], limit=1)[0].context
    model = LarimarModel.from_pretrained()
    shipped = model._int8_copy()
    before = torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(model.encoder).float().eval(), {torch.nn.Linear}, dtype=torch.qint8)
    # name: (int8_values, the model's int8 copy: used by the int8 variants only)
    variants = {"float32 encoder": (False, shipped),
                "int8 encoder (int8_values)": (True, shipped),
                "int8, torch.ao quantize_dynamic (before)": (True, before)}
    runs: dict = {name: [] for name in variants}
    ids: dict = {}     # each variant's stored slot ids, first round
    try:
        for name, (int8, encoder) in variants.items():   # lazy imports, outside the timing
            model.__dict__["_int8_encoder"] = encoder
            LongContextMemory(model, int8_values=int8).ingest("A warm-up sentence. And one more.")
        for _ in range(1 if args.quick else args.rounds):
            for name, (int8, encoder) in variants.items():
                model.__dict__["_int8_encoder"] = encoder
                mem = LongContextMemory(model, int8_values=int8)
                with cm.slot_ids_of(model.prefix) as got:
                    t = time.perf_counter()
                    st = mem.ingest(text)
                    seconds = time.perf_counter() - t
                ids.setdefault(name, np.concatenate(got))
                runs[name].append({"tokens": st.tokens, "new_segments": st.new_segments,
                                   "rows": len(mem), "seconds": seconds,
                                   "tokens_per_s": st.tokens / seconds})
    finally:
        model.__dict__["_int8_encoder"] = shipped
    reference = ids["float32 encoder"]
    differ = {name: int((got != reference).sum()) for name, got in ids.items()}
    rows, medians = [], {}
    base = statistics.median(r["tokens_per_s"] for r in runs["int8, torch.ao quantize_dynamic "
                                                                "(before)"])
    for name, rs in runs.items():
        medians[name] = statistics.median(r["tokens_per_s"] for r in rs)
        rows.append([name, f"{rs[0]['tokens']:,}", f"{rs[0]['new_segments']:,}",
                     " / ".join(f"{r['seconds']:.1f} s" for r in rs), f"{medians[name]:,.0f}",
                     cm.fmt_ratio(medians[name] / base),
                     f"{differ[name]:,} / {reference.size:,}"])
    print(f"## Ingest of RULER {args.task} at {length:,} (every sentence new), "
          f"{cm.NUM_THREADS} threads\n")
    print(cm.md_table(["encoder", "tokens", "new segments", "rounds", "tokens/s (median)",
                       "/ torch.ao int8", "slot ids unlike float32's"], rows))
    result = {"config": {"task": args.task, "length": length, "rounds": args.rounds},
              "runs": runs, "median_tokens_per_s": medians, "slot_ids_unlike_float32": differ,
              "slots": int(reference.size),
              "environment": cm.machine_info(torch=torch)}
    cm.report_foreign_load(result, args)
    targets = [{"name": f"ingest tokens/s, every sentence new ({args.task}, int8 encoder)",
                "op": ">=", "threshold": 5000,
                "value": medians["int8 encoder (int8_values)"]}]
    return cm.keep_result("ingest_distinct", result, targets, args)


if __name__ == "__main__":
    sys.exit(main())
