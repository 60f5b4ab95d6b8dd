"""Question latency of the recall memory, by stage, with slot-id values (the default) beside
latent values, beside decoding one token a pass (no prompt lookup: the baseline) and
beside answers from a bfloat16 copy of the decoder (``bf16_answers``) and from an int8 one
(``int8_answers``), and the decoder's own floor: what one prefill and one new token cost.

On RULER development samples (``--data``, one sample per task of ``--length``): each
sample is ingested into two memories, ``values="tokens"`` and ``values="latent"``, and each
question asked ``--repeats`` times in turns, the slot-id memory also with
``model.prompt_lookup_tokens = 0`` and with the bf16 and int8 answer copies. Reported: the
median seconds of each stage (encode_query, search, readout, decode), the new tokens per
answer, whether the float32 variants give the same answers and passages and how many bf16
and int8 answers equal them; and, measured apart on the float32 decoder and on each copy,
the median seconds of a prefill of the median decoder input and of one greedy step with its
KV cache (the floor under a question: prefill + new tokens x step).

    python benchmarks/bench_answer_latency.py [--data ../shared/data/ruler_niah]
        [--length 4096] [--repeats 3] [--threads 2] [--quick]
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402

KINDS = ("tokens", "latent")
# variant: (the memory's values, prompt lookup on, the answers' decoder copy or None)
VARIANTS = {"tokens": ("tokens", True, None),
            "tokens, one token a pass": ("tokens", False, None),
            "latent": ("latent", True, None),
            "tokens, bf16 answers": ("tokens", True, "bf16"),
            "tokens, int8 answers": ("tokens", True, "int8")}
FLOAT = [k for k, (_, _, copy) in VARIANTS.items() if copy is None]


def extra(p) -> None:
    p.add_argument("--data", default=str(cm.RULER_DIR))
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=cm.NUM_THREADS)


def decoder_floor(dec, torch, width: int, repeats: int) -> dict:
    """Median seconds of a prefill of ``width`` input embeddings and of one cached step."""
    x = torch.randn(1, width, dec.config.hidden_size, dtype=dec.dtype)
    prefill, step = [], []
    with torch.no_grad():
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            out = dec(inputs_embeds=x, use_cache=True, logits_to_keep=1)
            t1 = time.perf_counter()
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            cache = out.past_key_values
            times = []
            for _ in range(8):
                t = time.perf_counter()
                out = dec(input_ids=nxt, past_key_values=cache, use_cache=True)
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                times.append(time.perf_counter() - t)
            prefill.append(t1 - t0)
            step.append(statistics.median(times))
    return {"width": width, "prefill_s": statistics.median(prefill[1:]),
            "step_s": statistics.median(step[1:])}


def main() -> int:
    args = cm.parse_args(__doc__.splitlines()[0], extra)
    import torch

    from larimar_ext.longcontext import ruler
    from larimar_ext.longcontext.memory import EncodingCache, LongContextMemory
    from larimar_ext.model import LarimarModel
    cm.set_all_threads(torch=torch, lx=cm.import_larimar(), n=args.threads)
    model = LarimarModel.from_pretrained()
    samples = ruler.load_samples(args.data, [args.length], None, 1)
    if args.quick:
        samples = samples[:2]
    repeats = 1 if args.quick else args.repeats
    caches = {k: EncodingCache(keep_values=True) for k in KINDS}
    stages: dict = {k: {} for k in VARIANTS}
    lookup = model.prompt_lookup_tokens
    rows, widths, same = [], [], 0
    same_copy = {"bf16": 0, "int8": 0}
    for copy in same_copy:                       # the copies are made outside the timing
        with model.precision(**{f"{copy}_answers": True}):
            pass
    for s in samples:
        mems = {k: LongContextMemory(model, values=k, cache=caches[k]) for k in KINDS}
        for m in mems.values():
            m.ingest(s.context)
        mnt = ruler._max_new_tokens(s)
        answers = {}
        for _ in range(repeats):
            for k, (kind, on, copy) in VARIANTS.items():  # in turns: the machine is shared
                model.prompt_lookup_tokens = lookup if on else 0
                with model.precision(bf16_answers=copy == "bf16", int8_answers=copy == "int8"):
                    a = mems[kind].ask_trace(s.answer_prefix, s.question, max_new_tokens=mnt)
                for name, sec in a.seconds.items():
                    stages[k].setdefault(name, []).append(sec)
                stages[k].setdefault("total", []).append(sum(a.seconds.values()))
                answers[k] = a
        model.prompt_lookup_tokens = lookup
        t = answers["tokens"]
        same += all(answers[k].answers == t.answers and answers[k].passages == t.passages
                    for k in FLOAT)
        for copy in same_copy:
            same_copy[copy] += answers[f"tokens, {copy} answers"].answers == t.answers
        new = [len(model.tokenizer(x, add_special_tokens=False)["input_ids"])
               for x in t.answers]
        ids = mems["tokens"].store.reconstruct([src.row for src in t.sources])
        # the decoder's input: the read rows' live slots + template, question and prefix
        widths.append(int((ids >= 0).sum()) + 40)
        rows.append([s.task, len(t.passages), max(new), repr(t.answer[:40])])
    width = int(statistics.median(widths))
    floor = {"float32": decoder_floor(model.decoder, torch, width, repeats)}
    for copy in same_copy:
        with model.precision(**{f"{copy}_answers": True}):
            floor[copy] = decoder_floor(model._answer_decoder(), torch, width, repeats)
    med = {k: {n: statistics.median(v) for n, v in st.items()} for k, st in stages.items()}
    print(cm.md_table(["task", "passages", "new tokens", "answer"], rows))
    print(cm.md_table(["stage"] + [f"{k} (s)" for k in VARIANTS],
                      [[n] + [f"{med[k][n]:.3f}" for k in VARIANTS] for n in med["tokens"]]))
    print(f"same answers and passages (float32): {same} of {len(samples)}; equal to them: "
          f"bf16 answers {same_copy['bf16']}, int8 answers {same_copy['int8']}")
    print(cm.md_table([f"decoder floor ({width} embeddings)", "prefill (s)", "one step (ms)"],
                      [[k, f"{f['prefill_s']:.3f}", f"{f['step_s'] * 1e3:.1f}"]
                       for k, f in floor.items()]))
    result = {"config": {"length": args.length, "samples": len(samples), "repeats": repeats,
                         "threads": args.threads, "prompt_lookup_tokens": lookup},
              "median_stage_seconds": med, "same_answers": same,
              "same_answers_bf16": same_copy["bf16"], "same_answers_int8": same_copy["int8"],
              "answers": rows,
              "decoder_floor": floor, "environment": cm.machine_info(torch=torch)}
    cm.report_foreign_load(result, args)
    targets = [{"name": "median question seconds (slot ids)", "value": med["tokens"]["total"],
                "op": "<=", "threshold": 0.3},
               {"name": "median question seconds (slot ids, bf16 answers)",
                "value": med["tokens, bf16 answers"]["total"], "op": "<=", "threshold": 0.3},
               {"name": "median question seconds (slot ids, int8 answers)",
                "value": med["tokens, int8 answers"]["total"], "op": "<=", "threshold": 0.3},
               {"name": "speed-up of prompt lookup (one token a pass / slot ids)",
                "value": med["tokens, one token a pass"]["total"] / med["tokens"]["total"],
                "op": ">=", "threshold": 1.0},
               {"name": "samples whose float32 answers differ", "value": len(samples) - same,
                "op": "<=", "threshold": 0}]
    return cm.keep_result("answer_latency", result, targets, args)


if __name__ == "__main__":
    sys.exit(main())
