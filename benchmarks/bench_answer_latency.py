"""Question latency of the recall memory, by stage, with slot-id values (the default) beside
latent values, beside decoding one token a pass (no prompt lookup: the baseline) and
beside answers from a bfloat16 copy of the decoder (``bf16_answers``), and the decoder's
own floor: what one prefill and one new token cost.

On RULER development samples (``--data``, one sample per task of ``--length``): each
sample is ingested into two memories, ``values="tokens"`` and ``values="latent"``, and each
question asked ``--repeats`` times in turns, the slot-id memory also with
``model.prompt_lookup_tokens = 0`` and with ``model.bf16_answers()``. Reported: the median
seconds of each stage (encode_query, search, readout, decode), the new tokens per answer,
whether the float32 variants give the same answers and passages and how many bf16 answers
equal them; and, measured apart on the same decoder, the median seconds of a
prefill of the median decoder input and of one greedy step with its KV cache (the floor
under a question: prefill + new tokens x step).

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
# variant: (the memory's values, prompt lookup on, bf16 answers)
VARIANTS = {"tokens": ("tokens", True, False),
            "tokens, one token a pass": ("tokens", False, False),
            "latent": ("latent", True, False),
            "tokens, bf16 answers": ("tokens", True, True)}
FLOAT = [k for k, (_, _, bf16) in VARIANTS.items() if not bf16]


def extra(p) -> None:
    p.add_argument("--data", default=str(cm.RULER_DIR))
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=cm.NUM_THREADS)


def decoder_floor(model, torch, width: int, repeats: int) -> dict:
    """Median seconds of a prefill of ``width`` input embeddings and of one cached step."""
    dec = model.decoder
    x = torch.randn(1, width, dec.config.hidden_size)
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
    rows, widths, same, same_bf16 = [], [], 0, 0
    for s in samples:
        mems = {k: LongContextMemory(model, values=k, cache=caches[k]) for k in KINDS}
        for m in mems.values():
            m.ingest(s.context)
        mnt = ruler._max_new_tokens(s)
        answers = {}
        for _ in range(repeats):
            for k, (kind, on, bf16) in VARIANTS.items():  # in turns: the machine is shared
                model.prompt_lookup_tokens = lookup if on else 0
                if bf16 != model.answers_in_bf16:
                    model.bf16_answers(bf16)          # (its copy is made outside the timing)
                a = mems[kind].ask_trace(s.answer_prefix, s.question, max_new_tokens=mnt)
                for name, sec in a.seconds.items():
                    stages[k].setdefault(name, []).append(sec)
                stages[k].setdefault("total", []).append(sum(a.seconds.values()))
                answers[k] = a
        model.prompt_lookup_tokens = lookup
        model.bf16_answers(False)
        t = answers["tokens"]
        same += all(answers[k].answers == t.answers and answers[k].passages == t.passages
                    for k in FLOAT)
        same_bf16 += answers["tokens, bf16 answers"].answers == t.answers
        new = [len(model.tokenizer(x, add_special_tokens=False)["input_ids"])
               for x in t.answers]
        ids = mems["tokens"].store.reconstruct([src.row for src in t.sources])
        # the decoder's input: the read rows' live slots + template, question and prefix
        widths.append(int((ids >= 0).sum()) + 40)
        rows.append([s.task, len(t.passages), max(new), repr(t.answer[:40])])
    width = int(statistics.median(widths))
    floor = decoder_floor(model, torch, width, repeats)
    med = {k: {n: statistics.median(v) for n, v in st.items()} for k, st in stages.items()}
    print(cm.md_table(["task", "passages", "new tokens", "answer"], rows))
    print(cm.md_table(["stage"] + [f"{k} (s)" for k in VARIANTS],
                      [[n] + [f"{med[k][n]:.3f}" for k in VARIANTS] for n in med["tokens"]]))
    print(f"same answers and passages (float32): {same} of {len(samples)}; bf16 answers "
          f"equal to them: {same_bf16} of {len(samples)}; decoder floor: prefill of "
          f"{width} embeddings {floor['prefill_s']:.3f} s, one greedy step "
          f"{floor['step_s'] * 1e3:.1f} ms")
    result = {"config": {"length": args.length, "samples": len(samples), "repeats": repeats,
                         "threads": args.threads, "prompt_lookup_tokens": lookup},
              "median_stage_seconds": med, "same_answers": same,
              "same_answers_bf16": same_bf16, "answers": rows,
              "decoder_floor": floor, "environment": cm.machine_info(torch=torch)}
    cm.report_foreign_load(result, args)
    targets = [{"name": "median question seconds (slot ids)", "value": med["tokens"]["total"],
                "op": "<=", "threshold": 0.3},
               {"name": "median question seconds (slot ids, bf16 answers)",
                "value": med["tokens, bf16 answers"]["total"], "op": "<=", "threshold": 0.3},
               {"name": "speed-up of prompt lookup (one token a pass / slot ids)",
                "value": med["tokens, one token a pass"]["total"] / med["tokens"]["total"],
                "op": ">=", "threshold": 1.0},
               {"name": "samples whose float32 answers differ", "value": len(samples) - same,
                "op": "<=", "threshold": 0}]
    return cm.keep_result("answer_latency", result, targets, args)


if __name__ == "__main__":
    sys.exit(main())
