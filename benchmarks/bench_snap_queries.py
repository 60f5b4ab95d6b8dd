"""The slot snap's queries of a cold ingest: what each kind costs, and where the answers lie
from the slots' hints (issue: memory at scale, the essays' ingest target).

The snap (``SlotPrefix.nearest_ids``) is an exact top-1 over the decoder's 49,152 x 576
embedding table for every live slot, hinted with the slot's aligned decoder token: the
hint's cosine with the query (its floor) starts the kernel's screen. Two parts:

- classes: an essay ingest's snap queries (the default model, ``int8_values``) searched
  again through a fresh view of the table (``KeyViewF32``, int8 codes), grouped by floor:
  how many fall in each group and the microseconds a query of each takes, in the ingest's
  batch size, after one pass over all of them (which finds the anchors' neighbourhoods as
  the ingest does). A floor of at least 0.922 lets a query be answered from its hint's
  neighbourhood (2 floor^2 - 1 >= 0.7, int8_keys.hpp); a lower one is screened over the
  whole table.
- neighbours: on the essays, a RULER haystack (every sentence new) and Debian's
  documentation, for every slot whose snapped token is not its hint, the rank of the
  snapped token among the tokens nearest the hint (cosine of their embeddings): how many
  lie beyond the hint's 32, 64 and 128 nearest. A snap searched among those alone would
  store another token for exactly those slots.

    python benchmarks/bench_snap_queries.py [--context 40k] [--docs-chars 400000]
        [--quick] [--no-save] [--no-wait]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402
from bench_bytes_per_token import doc_files, read_text  # noqa: E402

# floor groups: [lo, hi) of the query's cosine with its hint's embedding
GROUPS = {">= 0.922": (0.922, 2.0), "0.8 - 0.922": (0.8, 0.922), "0.7 - 0.8": (0.7, 0.8),
          "< 0.7": (-2.0, 0.7)}
BATCH = 1700      # about the live slots of one ingest batch (2,048 padded encoder tokens)
RANKS = (32, 64, 128)


def extra(p) -> None:
    p.add_argument("--context", default="40k", help="essay tokens of the classes' ingest")
    p.add_argument("--docs-chars", type=int, default=400_000,
                   help="characters of Debian documentation for the neighbours part")


def captured(model, texts, separator=""):
    """(soft (n, H), hints (n,), ids (n,)) of every live slot a cold int8 ingest snaps."""
    from larimar_ext.longcontext import LongContextMemory
    with cm.snaps_of(model.prefix, soft=True) as calls:
        LongContextMemory(model, int8_values=True).ingest(texts, separator=separator)
    return tuple(np.concatenate([c[k] for c in calls]) for k in ("soft", "hints", "ids"))


def unit_rows(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)


def classes(table, soft, hints, floors) -> tuple[list[dict], dict]:
    """Each floor group's share of the queries and its search time per query; how the first
    pass answered: from neighbourhoods, from the projected screen's survivors, by the full
    int8 scan."""
    from larimar_ext import _core
    view = _core.KeyViewF32(table, "cosine", "int8")

    def search(mask) -> float:
        q, h = soft[mask], hints[mask].astype(np.int64)[:, None]
        t = time.perf_counter()
        for i in range(0, len(q), BATCH):
            view.search(q[i:i + BATCH], 1, h[i:i + BATCH])
        return time.perf_counter() - t

    everything = np.ones(len(soft), dtype=bool)
    out = [{"group": "all (first pass)", "queries": len(soft), "seconds": search(everything)}]
    screened = view.projected_answers - view.projected_neighbour_answers
    paths = {"neighbourhoods": int(view.projected_neighbour_answers),
             "projected screen": int(screened),
             "full int8 scan": int(len(soft) - view.projected_answers)}
    for name, (lo, hi) in GROUPS.items():
        mask = (floors >= lo) & (floors < hi)
        out.append({"group": name, "queries": int(mask.sum()),
                    "seconds": search(mask) if mask.any() else 0.0})
    return out, paths


def neighbour_ranks(table_unit, hints, ids) -> np.ndarray:
    """For each slot whose id is not its hint: how many tokens are nearer the hint (cosine
    of the embeddings) than the snapped one (0: the hint's nearest other token)."""
    differ = np.flatnonzero(ids != hints)
    ranks = np.empty(len(differ), dtype=np.int64)
    for i in range(0, len(differ), 256):
        rows = differ[i:i + 256]
        cos = table_unit[hints[rows]] @ table_unit.T
        mine = cos[np.arange(len(rows)), ids[rows]]
        ranks[i:i + len(rows)] = (cos > mine[:, None]).sum(1)
    return ranks


def main() -> int:
    args = cm.parse_args(__doc__.splitlines()[0], extra)
    import torch

    from larimar_ext.longcontext import LongContextMemory, tasks
    from larimar_ext.longcontext.ruler import load_samples
    from larimar_ext.model import LarimarModel
    cm.set_all_threads(torch=torch, lx=cm.import_larimar())
    model = LarimarModel.from_pretrained()
    LongContextMemory(model, int8_values=True).ingest("A warm-up sentence. And one more.")
    table = model.decoder.get_input_embeddings().weight.detach().float().numpy()
    table_unit = unit_rows(table)
    context = tasks.parse_context_size("10k" if args.quick else args.context)
    essays = tasks.needle_context(tasks.Haystack(cm.ESSAYS_DIR, model.tokenizer), context,
                                  50).text
    soft, hints, ids = captured(model, essays)
    floors = np.einsum("ij,ij->i", unit_rows(soft), table_unit[hints])
    groups, paths = classes(table, soft, hints, floors)

    length = 4096 if args.quick else 32768
    ruler = load_samples(cm.RULER_DIR, lengths=[length], tasks=["niah_multikey_2"],
                         limit=1)[0].context
    docs, chars = [], 0
    for f in doc_files():
        text = read_text(f)
        if not text or not text.strip():
            continue
        docs.append(text)
        chars += len(text)
        if chars >= (args.docs_chars // 10 if args.quick else args.docs_chars):
            break
    corpora = {f"essays ({context:,} tokens)": (hints, ids),
               f"RULER niah_multikey_2 ({length:,})": captured(model, ruler)[1:],
               f"Debian documentation ({chars:,} characters)": captured(model, docs, "\n\n")[1:]}
    neighbours = {}
    for name, (h, i) in corpora.items():
        ranks = neighbour_ranks(table_unit, h, i)
        neighbours[name] = {"slots": int(len(h)), "not_the_hint": int(len(ranks)),
                            "max_rank": int(ranks.max()) if len(ranks) else None,
                            **{f"beyond_{r}": int((ranks >= r).sum()) for r in RANKS}}

    print(f"## The snap's queries of a cold essay ingest ({len(soft):,} live slots, "
          f"{cm.NUM_THREADS} threads)\n")
    print(cm.md_table(["floor (query . hint)", "queries", "share", "us / query"], [
        [g["group"], f"{g['queries']:,}", f"{g['queries'] / len(soft):.0%}",
         f"{g['seconds'] / g['queries'] * 1e6:.1f}" if g["queries"] else ""] for g in groups]))
    print("\nThe first pass answered " + ", ".join(
        f"{n:,} ({n / len(soft):.0%}) by {path}" for path, n in paths.items()) + ".")
    print("\n## Where the snapped token lies from the hint (tokens nearer the hint)\n")
    print(cm.md_table(["text", "live slots", "snap is not the hint",
                       *[f"beyond the hint's {r}" for r in RANKS], "farthest"], [
        [name, f"{n['slots']:,}", f"{n['not_the_hint']:,}",
         *[f"{n[f'beyond_{r}']:,}" for r in RANKS], n["max_rank"]]
        for name, n in neighbours.items()]))
    result = {"config": {"context": context, "docs_chars": chars, "batch": BATCH},
              "classes": groups, "first_pass_answers": paths, "neighbours": neighbours,
              "environment": cm.machine_info(torch=torch)}
    cm.report_foreign_load(result, args)
    return cm.keep_result("snap_queries", result, [], args)


if __name__ == "__main__":
    sys.exit(main())
