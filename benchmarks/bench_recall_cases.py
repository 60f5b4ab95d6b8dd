"""Recall cases the paper's pipeline failed (issue: recall on real questions), on the essays
haystack (~32K tokens), through ``LongContextMemory`` in recall mode with the default model.

Cases (each a needle written here, at depths 10..90%, asked with its own question):
- reworded: the SF needle asked with answer prefixes that share none of its opening words;
- shared_openings: four needles "The pass key for the {colour} door is N." asked per door;
- long_needle: a 50+-word sentence whose answer is at its end;
- chinese / korean: needles in those scripts inside the English essays;
- unpunctuated: the essays with . ! ? removed, SF needle and a passkey inside;
- absent: questions whose answer is not in the context (should come back "not found").
A trial scores 1 when the expected string is in the answer (absent: when ``found`` is False).

    python benchmarks/bench_recall_cases.py --haystack-dir ../shared/data/paul_graham_essays \
        --out benchmarks/results/recall_cases.json
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np

SF = ("The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a "
      "sunny day.")
REWORDED = [("What should a visitor do in San Francisco?", "In San Francisco, the best thing to do is"),
            ("What is the top activity in San Francisco?", "The top activity in San Francisco is"),
            ("What do you recommend doing in San Francisco?", "I recommend that you")]
COLOURS = ["red", "blue", "green", "yellow", "purple"]
LONG = ("After the long meeting about the budget, the delays in the spring schedule, the new "
        "office on the third floor, the broken coffee machine, the parking rules that nobody "
        "reads and the plans for the summer party in the garden behind the old library, the "
        "committee finally agreed that the name of the new project would be {value}.")
CHINESE = ("北京最好的事情是在颐和园划船。", "北京最好的事情是什么？", "北京最好的事情是", "颐和园划船")
KOREAN = ("서울에서 가장 좋은 일은 한강 공원에서 치킨을 먹는 것입니다.", "서울에서 가장 좋은 일은 무엇입니까?",
          "서울에서 가장 좋은 일은", "치킨")
ABSENT = [("What is the pass key for the orange door?", "The pass key for the orange door is"),
          ("What is the best thing to do in Lisbon?", "The best thing to do in Lisbon is"),
          ("What is the special magic number for quiet-harbor mentioned in the provided text?",
           "The special magic number for quiet-harbor mentioned in the provided text is")]


def haystack(directory: str, tokens: int, tokenizer) -> list[str]:
    from larimar_ext.longcontext import tasks
    sents, _ = tasks.Haystack(directory, tokenizer).take(tokens)
    return list(sents)


def insert(sents: list[str], needles: list[str], rng) -> str:
    out = list(sents)
    for n in needles:
        out.insert(int(rng.integers(len(out) // 10, 9 * len(out) // 10)), n)
    return " ".join(out)


def run(args) -> dict:
    import torch
    from larimar_ext.longcontext.memory import EncodingCache, LongContextMemory
    from larimar_ext.model import LarimarModel
    if args.threads:
        torch.set_num_threads(args.threads)
    model = LarimarModel.from_pretrained()
    tok = model.tokenizer
    base = haystack(args.haystack_dir, args.tokens, tok)
    bare = [re.sub(r"[.!?]", "", s) for s in base]
    cache = EncodingCache(keep_values=True)
    rng = np.random.default_rng(args.seed)
    results: dict = {}

    def trial(case, text, qa_list):
        mem = LongContextMemory(model, cache=cache)
        t0 = time.perf_counter()
        st = mem.ingest(text)
        ingest_s = time.perf_counter() - t0
        for question, prefix, want in qa_list:
            a = mem.ask_trace(prefix, question, max_new_tokens=40)
            ok = (not a.found) if want is None else (want.lower() in a.answer.lower())
            results.setdefault(case, []).append(
                {"question": question, "answer_prefix": prefix, "expected": want,
                 "answer": a.answer, "guess": a.guess, "confidence": a.confidence,
                 "found": a.found, "correct": bool(ok), "ingest_s": ingest_s,
                 "tokens": st.tokens, "passages": a.passages[:3]})
            print(f"{case:16s} {int(ok)} conf={a.confidence:.2f} {a.guess[:70]!r}", flush=True)

    for t in range(args.trials):
        key = str(rng.integers(10_000, 100_000))
        trial("reworded", insert(base, [SF], rng),
              [(q, p, "sandwich") for q, p in REWORDED])
        keys = {c: str(rng.integers(10_000, 100_000)) for c in COLOURS}
        trial("shared_openings", insert(base, [f"The pass key for the {c} door is {k}." for c, k
                                               in keys.items()], rng),
              [(f"What is the pass key for the {c} door?", f"The pass key for the {c} door is", k)
               for c, k in keys.items()])
        name = f"Project {rng.choice(['Falcon', 'Juniper', 'Granite', 'Meridian'])}-{key}"
        trial("long_needle", insert(base, [LONG.format(value=name)], rng),
              [("What would the new project be named?", "The name of the new project would be",
                key)])
        trial("chinese", insert(base, [CHINESE[0]], rng), [(CHINESE[1], CHINESE[2], CHINESE[3])])
        trial("korean", insert(base, [KOREAN[0]], rng), [(KOREAN[1], KOREAN[2], KOREAN[3])])
        trial("unpunctuated", insert(bare, [re.sub(r"[.!?]", "", SF),
                                            f"The pass key is {key} remember it"], rng),
              [("What is the best thing to do in San Francisco?",
                "The best thing to do in San Francisco is", "sandwich"),
               ("What is the pass key?", "The pass key is", key)])
        trial("absent", insert(base, [f"The pass key for the red door is {key}."], rng),
              [(q, p, None) for q, p in ABSENT])
    summary = {c: {"n": len(v), "accuracy": float(np.mean([r["correct"] for r in v]))}
               for c, v in results.items()}
    return {"config": vars(args), "summary": summary, "trials": results}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--haystack-dir", required=True)
    p.add_argument("--tokens", type=int, default=32_000)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="benchmarks/results/recall_cases.json")
    args = p.parse_args()
    res = run(args)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res["summary"], indent=1))


if __name__ == "__main__":
    main()
