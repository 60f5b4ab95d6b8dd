"""Recall cases the paper's pipeline failed (issue: recall on real questions), on the essays
haystack (~32K tokens), through ``LongContextMemory`` in recall mode with the default model.

Cases (each a needle written here, at depths 10..90%, asked with its own question):
- reworded: the SF needle asked with answer prefixes that share none of its opening words;
- shared_openings: four needles "The pass key for the {colour} door is N." asked per door;
- long_needle: a 50+-word sentence whose answer is at its end;
- chinese / korean: needles in those scripts inside the English essays;
- chinese_haystack: a short haystack written in Chinese with a Chinese needle;
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
REWORDED = [("What should a visitor do in San Francisco?",
             "In San Francisco, the best thing to do is"),
            ("What is the top activity in San Francisco?", "The top activity in San Francisco is"),
            ("What do you recommend doing in San Francisco?", "I recommend that you")]
COLOURS = ["red", "blue", "green", "yellow", "purple"]
LONG = ("After the long meeting about the budget, the delays in the spring schedule, the new "
        "office on the third floor, the broken coffee machine, the parking rules that nobody "
        "reads and the plans for the summer party in the garden behind the old library, the "
        "committee finally agreed that the name of the new project would be {value}.")
CHINESE = ("北京最好的事情是在颐和园划船。", "北京最好的事情是什么？", "北京最好的事情是",
           "颐和园划船")
KOREAN = ("서울에서 가장 좋은 일은 한강 공원에서 치킨을 먹는 것입니다.",
          "서울에서 가장 좋은 일은 무엇입니까?", "서울에서 가장 좋은 일은", "치킨")
ABSENT = [("What is the pass key for the orange door?", "The pass key for the orange door is"),
          ("What is the best thing to do in Lisbon?", "The best thing to do in Lisbon is"),
          ("What is the best thing to do in Tokyo?", "The best thing to do in Tokyo is"),
          ("What is the special magic number for quiet-harbor mentioned in the provided text?",
           "The special magic number for quiet-harbor mentioned in the provided text is"),
          ("What is the name of the captain's dog?", "The name of the captain's dog is")]
# needles of the absent trials: each answers a question like one of ABSENT, not the same
ABSENT_NEEDLES = ["The pass key for the red door is {key}.", SF,
                  "One of the special magic numbers for faint-water is: {key}."]
# a short haystack in Chinese, written for this benchmark (no English in it)
CHINESE_HAYSTACK = [
    "早上的火车站总是很热闹。", "他每天骑自行车去上班，路上要花二十分钟。",
    "这家小店的包子很有名。",
    "图书馆周末开到晚上九点。", "她在大学里学习了四年的化学。", "冬天的时候，湖面会结一层薄冰。",
    "我们计划下个月去海边旅行。", "老师在黑板上写了一道很难的数学题。", "公园里有很多人在放风筝。",
    "这座城市的地铁有十二条线路。", "奶奶喜欢在阳台上种花。", "会议推迟到了下午三点。",
    "他的新手机是蓝色的。", "山上的空气比城里清新得多。", "孩子们在操场上踢足球。",
    "这本小说讲的是一个渔夫的故事。", "晚饭后我们一起去散步。", "博物馆里展出了很多古代的瓷器。",
    "昨天下了一整天的雨。", "超市的苹果今天打折。", "他学会了用毛笔写字。",
    "河边新开了一家咖啡馆。",
    "工程师们修好了那座旧桥。", "音乐会的门票一个小时就卖完了。",
]
CHINESE_NEEDLE = ("仓库的密码是{key}。", "仓库的密码是什么？", "仓库的密码是")


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
                 "found": a.found, "extracted": a.extracted, "swapped": a.swapped,
                 "correct": bool(ok), "ingest_s": ingest_s,
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
        trial("chinese_haystack",
              insert(list(rng.permutation(CHINESE_HAYSTACK)), [CHINESE_NEEDLE[0].format(key=key)],
                     rng), [(CHINESE_NEEDLE[1], CHINESE_NEEDLE[2], key)])
        trial("absent", insert(base, [n.format(key=key) for n in ABSENT_NEEDLES], rng),
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
