"""Long-context pipeline: ingest throughput and the prefix-words sweep (accuracy runs:
``larimar-ext passkey|needle``, which share larimar_ext/longcontext/bench.py).

Parts (``--part``, default both):

ingest  ``LongContextMemory.ingest`` end to end (segmenting with the decoder tokenizer,
        encoding keys and values, host writes) in decoder tokens per second, on
        - essays: the Paul Graham essays cut to each size of ``--contexts`` (repeated beyond
          their ~154K tokens, as for 1M: the repeats are encoded once);
        - passkey: the built-in filler with a needle (five distinct sentences).
        The model is ``--model`` (a saved LarimarModel, "default" for the trained one) or,
        by default, a stand-in with the real encoder: all-MiniLM-L6-v2 and the SmolLM2
        tokenizer, with a tiny random decoder (ingest never runs the decoder).
        Target (full size): >= 4,000 tokens/s on the 137K essays context.

modes   The cost of the recall pipeline against the paper's (``mode="paper"``: prefix keys, one
        readout) on one essays context with the SF needle (``--contexts``, default 128k):
        cold ingest (a fresh encoding cache each time) in decoder tokens/s and the latency
        of the SF question, both modes interleaved over ``--rounds`` rounds in one run, with
        the trained model (``--model``, default "default"). Target: recall ingest >= half
        the paper mode's.

prefix  Retrieval@1 on the essays by the number of prefix words that make a key
        (3, 4, 5, 6, 8, 10, whole sentence) and the number of words the question's answer
        prefix has (4, 6, 8, 10): every distinct essay sentence is keyed by its first p words
        (as ``LongContextMemory`` does; identical key texts share one row), queries are the
        first q words of 400 sampled sentences of >= 12 words, cut to p words the same way.
        "hit" = the top-1 row holds the sentence; "pure" = and no other sentence.
        Only keys are encoded (``model.encode_keys``), so it runs in minutes.

    python benchmarks/bench_longcontext.py [--quick] [--part ingest|modes|prefix] [--no-save]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402


def extra(p):
    p.add_argument("--part", choices=("ingest", "modes", "prefix", "all"), default="all")
    p.add_argument("--rounds", type=int, default=2, help="modes part: rounds per mode")
    p.add_argument("--questions", type=int, default=5, help="modes part: asks per round")
    p.add_argument("--contexts", default=None,
                   help="essay context sizes for the ingest part (default 137k,1m; quick 10k)")
    p.add_argument("--int8-values", action="store_true",
                   help="encode values with the int8 encoder (LongContextMemory(int8_values=True))")
    p.add_argument("--model", default=None,
                   help="a saved LarimarModel folder, or 'default' (default: MiniLM stand-in)")
    p.add_argument("--haystack-dir", default=str(cm.ESSAYS_DIR))
    p.add_argument("--queries", type=int, default=None, help="prefix sweep queries (400)")


def stand_in_model():
    """all-MiniLM-L6-v2 encoder + SmolLM2 tokenizer + a tiny random Llama decoder."""
    import torch
    import transformers
    from larimar_ext.model import LarimarModel
    from larimar_ext.model.offline import load_minilm, load_smollm2

    smol_tok, smol = load_smollm2()
    del smol
    enc_tok, enc = load_minilm()
    torch.manual_seed(0)
    dec = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(smol_tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256))
    return LarimarModel(enc, dec, 16, 384, tokenizer=smol_tok, encoder_tokenizer=enc_tok)


def load_model(spec):
    if spec is None:
        return stand_in_model(), "stand-in: all-MiniLM-L6-v2 + SmolLM2 tokenizer"
    from larimar_ext.longcontext.bench import load_larimar
    return load_larimar(None if spec == "default" else spec), f"LarimarModel {spec}"


def part_ingest(args, model, result):
    from larimar_ext.longcontext import LongContextMemory, tasks

    sizes = args.contexts or ("10k" if args.quick else "137k,1m")
    sizes = [tasks.parse_context_size(s) for s in sizes.split(",")]
    hay = tasks.Haystack(args.haystack_dir, model.tokenizer)
    rows, runs = [], []
    workloads = [("essays", n) for n in sizes] + [("passkey", max(sizes))]
    for kind, n in workloads:
        if kind == "essays":
            ctx = tasks.needle_context(hay, n, 50)
        else:
            ctx = tasks.passkey_context(n, 50, seed=0, tokenizer=model.tokenizer)
        mem = LongContextMemory(model, progress=True, int8_values=args.int8_values)
        st = mem.ingest(ctx.text)
        runs.append({"workload": kind, "context": n, **st.as_dict(),
                     "rows_shared": mem.stats["rows_shared"]})
        rows.append([kind, f"{st.tokens:,}", f"{st.new_segments:,}", f"{st.rows:,}",
                     f"{st.seconds:.1f} s", f"{st.tokens_per_s:,.0f}",
                     cm.fmt_bytes(st.host_bytes)])
    print("\n## Ingest (decoder tokens per second, end to end)\n")
    print(cm.md_table(["workload", "tokens", "distinct segments", "rows", "time", "tokens/s",
                       "host memory"], rows))
    result["ingest"] = runs
    essays137 = [r for r in runs if r["workload"] == "essays" and r["context"] == 137_000]
    return [{"name": "ingest tokens/s, essays 137k", "op": ">=", "threshold": 4000.0,
             "value": essays137[0]["tokens_per_s"] if essays137 else None,
             "fmt": lambda x: f"{x:,.0f}"}]


def part_modes(args, model, result):
    import statistics

    from larimar_ext.longcontext import EncodingCache, LongContextMemory, tasks

    size = tasks.parse_context_size(args.contexts or ("10k" if args.quick else "128k"))
    ctx = tasks.needle_context(tasks.Haystack(args.haystack_dir, model.tokenizer), size, 50)
    runs = {"paper": [], "recall": []}
    for rnd in range(args.rounds):
        for mode in runs:
            mem = LongContextMemory(model, mode=mode, cache=EncodingCache())
            st = mem.ingest(ctx.text)
            asks, right = [], 0
            for _ in range(args.questions):
                t0 = time.perf_counter()
                a = mem.ask_trace(ctx.answer_prefix, ctx.question, max_new_tokens=24)
                asks.append(time.perf_counter() - t0)
                right += tasks.score_needle(a.answer, ctx.answer)["exact"]
            runs[mode].append({"round": rnd, **st.as_dict(), "ask_seconds": asks,
                               "correct": right / args.questions})
            print(f"{mode:6s} round {rnd}: {st.tokens_per_s:,.0f} tokens/s, "
                  f"ask {statistics.median(asks):.2f} s", flush=True)
    med = {m: {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
               "ask_seconds": statistics.median(x for r in rs for x in r["ask_seconds"]),
               "correct": statistics.mean(r["correct"] for r in rs)} for m, rs in runs.items()}
    ratio = med["recall"]["tokens_per_s"] / med["paper"]["tokens_per_s"]
    print(f"\n## Recall vs paper mode, {ctx.tokens:,} tokens (medians of {args.rounds} rounds)\n")
    print(cm.md_table(["mode", "ingest tokens/s", "ask (median)", "SF answered"], [
        [m, f"{v['tokens_per_s']:,.0f}", f"{v['ask_seconds']:.2f} s", f"{v['correct']:.2f}"]
        for m, v in med.items()]))
    print(f"\nrecall / paper ingest: {ratio:.2f}x, ask: "
          f"{med['recall']['ask_seconds'] / med['paper']['ask_seconds']:.2f}x")
    result["modes"] = {"tokens": ctx.tokens, "runs": runs, "medians": med,
                       "ingest_ratio": ratio}
    return [{"name": "recall / paper ingest tokens/s", "op": ">=", "threshold": 0.5,
             "value": ratio, "fmt": lambda x: f"{x:.2f}x"}]


def part_prefix(args, model, result):
    import numpy as np
    import torch
    from larimar_ext import KeyValueMemory
    from larimar_ext.longcontext import tasks
    from larimar_ext.longcontext.segment import prefix_text

    hay = tasks.Haystack(args.haystack_dir, model.tokenizer)
    sentences = list(dict.fromkeys(hay.sentences + [tasks.SF_NEEDLE]))
    if args.quick:
        sentences = sentences[:1500] + [tasks.SF_NEEDLE]
    rng = np.random.default_rng(0)
    pool = [s for s in sentences if len(s.split()) >= 12]
    nq = args.queries or (100 if args.quick else 400)
    queries = [pool[i] for i in rng.choice(len(pool), size=min(nq, len(pool)), replace=False)]

    def keys(texts):
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), 0), np.float32)
        with torch.no_grad():
            for i in range(0, len(order), 256):
                idx = order[i:i + 256]
                k = model.encode_keys([texts[j] for j in idx], batch_size=256)
                k = k.detach().to("cpu", torch.float32).numpy()
                if out.shape[1] == 0:
                    out = np.zeros((len(texts), k.shape[1]), np.float32)
                out[idx] = k
        return out

    rows, sweep = [], []
    for p in (3, 4, 5, 6, 8, 10, None):
        t0 = time.perf_counter()
        key_texts = [prefix_text(s, p) for s in sentences]
        distinct = list(dict.fromkeys(key_texts))
        K = keys(distinct)
        store = KeyValueMemory(K.shape[1], 1, metric="cosine")
        # the row of each key text: texts that differ only in case or spacing give the
        # very same key (the encoder is uncased), which the store keeps once
        rows_of = store.add(K, np.zeros((len(K), 1), np.float32)).tolist()
        members = {}
        slot = dict(zip(distinct, rows_of))
        for s, kt in zip(sentences, key_texts):
            members.setdefault(slot[kt], []).append(s)
        rec = {"prefix_words": p, "rows": len(store),
               "rows_shared": sum(len(v) > 1 for v in members.values()), "by_query_words": {}}
        cells = [str(p or "all"), f"{rec['rows_shared']}/{len(store)}"]
        for q in (4, 6, 8, 10):
            Q = keys([prefix_text(prefix_text(s, q), p) for s in queries])
            top = store.search(Q, 1)[0][:, 0]
            hit = float(np.mean([s in members[int(r)] for s, r in zip(queries, top)]))
            pure = float(np.mean([members[int(r)] == [s] for s, r in zip(queries, top)]))
            rec["by_query_words"][q] = {"hit": hit, "pure": pure}
            cells.append(f"{hit:.3f} / {pure:.3f}")
        for name, prefix, target in (("sf_needle", tasks.SF_PREFIX, tasks.SF_NEEDLE),):
            top = int(store.search(keys([prefix_text(prefix, p)]), 1)[0][0, 0])
            rec[name] = members[top] == [target]
            cells.append("yes" if rec[name] else "no")
        # the passkey: the answer prefix against the needle's two sentences that hold the key
        pk = keys([prefix_text(t, p) for t in ("The pass key is 48213.", "48213 is the pass key.",
                                              tasks.PASSKEY_PREFIX)])
        rec["passkey_cosines"] = [float(pk[2] @ pk[0]), float(pk[2] @ pk[1])]
        cells.append(f"{pk[2] @ pk[0]:.2f} / {pk[2] @ pk[1]:.2f}")
        rec["seconds"] = time.perf_counter() - t0
        sweep.append(rec)
        rows.append(cells)
        print(f"[bench] prefix words {p}: {rec['seconds']:.0f} s", file=sys.stderr, flush=True)
    print(f"\n## Retrieval@1 by prefix words ({len(sentences):,} distinct sentences, "
          f"{len(queries)} queries; hit / pure)\n")
    print(cm.md_table(["prefix words", "rows shared", "q=4", "q=6", "q=8", "q=10",
                       "SF needle alone", "passkey cos: needle / 'K is the pass key.'"], rows))
    result["prefix_sweep"] = sweep
    return []


def run(args):
    import torch

    lx = cm.import_larimar(("KeyValueMemory",))
    cm.set_all_threads(torch=torch, lx=lx)
    info = cm.machine_info(lx=lx, torch=torch)
    info["load_before_start"] = args.load
    cm.print_machine(info)
    model, desc = load_model(args.model or ("default" if args.part == "modes" else None))
    result = {"machine": info, "model": desc, "int8_values": bool(args.int8_values)}
    targets = []
    if args.part in ("ingest", "all"):
        targets += part_ingest(args, model, result)
    if args.part == "modes":
        targets += part_modes(args, model, result)
    if args.part in ("prefix", "all"):
        targets += part_prefix(args, model, result)
    cm.report_foreign_load(result, args)
    return cm.keep_result("longcontext" if args.part == "all" else f"longcontext_{args.part}",
                          result, targets, args)


if __name__ == "__main__":
    sys.exit(run(cm.parse_args(__doc__.splitlines()[0], extra)))
