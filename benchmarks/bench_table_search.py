"""Exact top-k over the decoder's embedding table, the slot snap's search: int8 codes against
the float32 scan on anisotropic keys, by k.

Keys: SmolLM2's 49,152 x 576 input embedding table (cosine), the table every live slot of an
ingest is snapped to. Its rows share a common direction, so scores near the top are crowded
and the int8 screen's bound keeps more keys than on isotropic data. Queries:

  slots      the soft tokens of the live slots of one essay's segments, as the ingest
             snaps them (captured from ``SlotPrefix.nearest_ids``; --quick: a few segments)
  gaussian   standard normal queries of the table's width

Methods, all through ``_core.KeyViewF32`` (the snap's view of the table) and timed in
interleaved rounds in one process: ``key_codes="int8"``, the same with the snap's hints (its
aligned decoder tokens; slots at k = 1, the snap's own call), with hints but without the
projected screen's neighbourhoods (``neighbourhoods=False``), without its coarse first stage
either (``coarse_screen=False`` too) or without the projected screen
(``projected_screen=False``), and the plain float32 search. Every
int8 result is checked equal to the float32 one (ids and score bits). The figure is the
int8 search's speed as a multiple of the float32 search's in the same run; k = 1 is the
snap, k > 1 shows where near-ties widen the shortlist.

    python benchmarks/bench_table_search.py [--quick] [--no-save] [--no-wait] [--queries 1024]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402
import numpy as np  # noqa: E402

KS = (1, 2, 8, 65)


def extra(p) -> None:
    p.add_argument("--queries", type=int, default=1024, help="queries per set (slots: at most)")


def slot_queries(model, text: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The soft tokens (n, H) the ingest of text snaps, in the order it snaps them, and the
    hints (n, 1) it snaps them with (each slot's aligned decoder token)."""
    from larimar_ext.longcontext import LongContextMemory
    prefix = model.prefix
    seen: list[np.ndarray] = []
    hints: list[np.ndarray] = []
    snap = prefix.nearest_ids

    def capture(soft, embeddings, guess=None):
        seen.append(soft.detach().reshape(-1, soft.shape[-1]).float().numpy().copy())
        hints.append(guess.reshape(-1, 1).numpy().astype(np.int64))
        return snap(soft, embeddings, guess)

    prefix.nearest_ids = capture
    try:
        LongContextMemory(model).ingest(text)
    finally:
        del prefix.nearest_ids   # the class's method again
    return (np.ascontiguousarray(np.concatenate(seen)[:limit]),
            np.ascontiguousarray(np.concatenate(hints)[:limit]))


def main() -> int:
    args = cm.parse_args(__doc__.splitlines()[0], extra)
    import torch

    from larimar_ext import _core
    from larimar_ext.model import LarimarModel
    cm.set_all_threads(torch=torch, lx=cm.import_larimar())
    model = LarimarModel.from_pretrained()
    table = model.decoder.get_input_embeddings().weight.detach().numpy()
    essay = sorted(Path(cm.ESSAYS_DIR).glob("*.txt"))[0].read_text()
    n = 64 if args.quick else args.queries
    rng = np.random.default_rng(0)
    slots, slot_hints = slot_queries(model, essay[:3000] if args.quick else essay, n)
    queries = {"slots": (slots, slot_hints),
               "gaussian": (rng.standard_normal((n, table.shape[1])).astype(np.float32), None)}
    int8, plain = _core.KeyViewF32(table, "cosine", "int8"), _core.KeyViewF32(table, "cosine")
    unprojected = _core.KeyViewF32(table, "cosine", "int8", projected_screen=False)
    screens = _core.KeyViewF32(table, "cosine", "int8", neighbourhoods=False)
    fine_only = _core.KeyViewF32(table, "cosine", "int8", coarse_screen=False,
                                 neighbourhoods=False)
    for view in (int8, screens, fine_only):   # builds the projected screens (timed apart)
        view.search(slots[:1], 1, slot_hints[:1])
    # the neighbourhoods the slots' hints need, found once (timed apart, reported)
    t = time.perf_counter()
    int8.search(slots, 1, slot_hints)
    first_call = time.perf_counter() - t
    rows, runs = [], []
    for set_name, (Q, hints) in queries.items():
        for k in KS:
            # the snap's own call (k = 1, its aligned tokens as hints) beside the plain one
            methods = {"int8": lambda: int8.search(Q, k), "float32": lambda: plain.search(Q, k)}
            if hints is not None and k == 1:
                methods["int8, hinted"] = lambda: int8.search(Q, k, hints)
                methods["int8, hinted, no neighbourhoods"] = lambda: screens.search(Q, k, hints)
                methods["int8, hinted, no neighbourhoods, no coarse screen"] = (
                    lambda: fine_only.search(Q, k, hints))
                methods["int8, hinted, no projected screen"] = (
                    lambda: unprojected.search(Q, k, hints))
            out = {}
            times = cm.timeit_interleaved(
                {name: (lambda name=name, f=f: out.__setitem__(name, f()))
                 for name, f in methods.items()}, rounds=3, inner=1 if args.quick else 2)
            idsf, scf = out["float32"]
            tf = times["float32"]["median"]
            for name in (m for m in methods if m != "float32"):
                ids8, sc8 = out[name]
                same = bool(np.array_equal(ids8, idsf)
                            and np.array_equal(sc8.view(np.int32), scf.view(np.int32)))
                t8 = times[name]["median"]
                runs.append({"queries": set_name, "method": name, "n": len(Q), "k": k,
                             "int8_s": t8, "float32_s": tf, "speedup": tf / t8,
                             "identical": same})
                rows.append([set_name, k, name, cm.fmt_time(t8 / len(Q)),
                             cm.fmt_time(tf / len(Q)), cm.fmt_ratio(tf / t8),
                             "yes" if same else "**NO**"])
    print(f"## Exact top-k over the {table.shape[0]:,} x {table.shape[1]} embedding table "
          f"(cosine), {n:,} queries a set\n")
    print(cm.md_table(["queries", "k", "method", "per query", "float32 per query",
                       "speed / float32", "identical"], rows))
    screen = {"dims": int8.projected_dims, "coarse_dims": int8.projected_coarse_dims,
              "answers": int8.projected_answers, "coarse_answers": int8.projected_coarse_answers,
              "neighbour_answers": int8.projected_neighbour_answers,
              "neighbourhoods": int8.projected_neighbourhoods,
              "first_hinted_call_s": first_call,
              "coarse_answers_without_neighbourhoods": screens.projected_coarse_answers}
    print(f"\nProjected screen ({screen['dims']} dimensions, coarse {screen['coarse_dims']}): "
          f"{screen['answers']:,} hinted queries answered from their survivors, "
          f"{screen['neighbour_answers']:,} of them from {screen['neighbourhoods']:,} "
          f"neighbourhoods, {screen['coarse_answers']:,} by the coarse screen "
          f"({screen['coarse_answers_without_neighbourhoods']:,} without neighbourhoods). "
          f"The first hinted call, which found the neighbourhoods: "
          f"{cm.fmt_time(first_call / len(slots))} a slot")
    result = {"config": {"table": list(table.shape), "queries": n, "ks": list(KS)},
              "runs": runs, "screen": screen, "environment": cm.machine_info(torch=torch)}
    cm.report_foreign_load(result, args)
    targets = [{"name": "int8 results identical to float32 (all sets and k)", "op": ">=",
                "threshold": 1, "value": float(all(r["identical"] for r in runs)),
                "fmt": lambda x: "yes" if x >= 1 else "no"}]
    return cm.keep_result("table_search", result, targets, args)


if __name__ == "__main__":
    sys.exit(main())
