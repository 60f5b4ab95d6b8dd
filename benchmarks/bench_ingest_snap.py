"""Ingest tokens/s by the slot snap's screen: essays (or a RULER haystack, every sentence new:
``--text ruler``) ingested cold in recall mode by the default model, with the snap's view of
the decoder's table (``KeyViewF32``, int8 codes, hinted with each slot's aligned token) built
four ways, in interleaved rounds in one process, a fresh memory each time:

  no projected screen   ``projected_screen=False``: what every ingest got before the view
                        asked where its keys were after reading them (a fresh model's table
                        was taken for keys on disk, so the screen was never built)
  no coarse screen      ``coarse_screen=False, neighbourhoods=False``: the projected screen
                        without its first stage
  no neighbourhoods     ``neighbourhoods=False``: the screens without the anchors'
                        neighbourhoods (section 18's shipped view)
  shipped               the default view
  no search             each slot's hint (its aligned decoder token) taken as its answer and
                        the search skipped: not a mode (its ids are not the snap's), the
                        measure of what the ingest would cost if the snap cost nothing

Each with the float32 encoder and the int8 one (``int8_values``). The snapped ids of every
run but "no search" are checked equal to the first run's (the screens change the time,
never the ids).

    python benchmarks/bench_ingest_snap.py [--essays 6] [--text essays|ruler] [--rounds 2]
        [--quick] [--no-save] [--no-wait]
"""
from __future__ import annotations

import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402

VIEWS = {"no projected screen": {"projected_screen": False},
         "no coarse screen": {"coarse_screen": False, "neighbourhoods": False},
         "no neighbourhoods": {"neighbourhoods": False},
         "shipped": {}}
NO_SEARCH = "no search"


@contextlib.contextmanager
def hints_as_answers(prefix):
    """Within the block, ``prefix``'s snap answers each slot with its hint, unsearched."""
    prefix.nearest_ids = lambda soft, embeddings, hints=None: hints.reshape(soft.shape[:-1])
    try:
        yield
    finally:
        del prefix.nearest_ids


def extra(p) -> None:
    p.add_argument("--essays", type=int, default=6)
    p.add_argument("--text", choices=("essays", "ruler"), default="essays",
                   help="ruler: the context of RULER's first niah_multikey_2 sample at 32K")
    p.add_argument("--rounds", type=int, default=2)


def main() -> int:
    args = cm.parse_args(__doc__.splitlines()[0], extra)
    import numpy as np
    import torch

    from larimar_ext import _core
    from larimar_ext.longcontext import LongContextMemory
    from larimar_ext.model import LarimarModel
    cm.set_all_threads(torch=torch, lx=cm.import_larimar())
    model = LarimarModel.from_pretrained()
    if args.text == "ruler":
        from larimar_ext.longcontext.ruler import load_samples
        length = 4096 if args.quick else 32768
        text = load_samples(cm.RULER_DIR, lengths=[length], tasks=["niah_multikey_2"],
                            limit=1)[0].context
        what = f"RULER niah_multikey_2 ({length:,}) tokens"
    else:
        files = sorted(Path(cm.ESSAYS_DIR).glob("*.txt"))[:1 if args.quick else args.essays]
        text = "\n\n".join(f.read_text() for f in files)
        what = f"essay tokens ({len(files)} essays)"
    encoders = {"float32 encoder": False, "int8 encoder": True}
    for int8 in encoders.values():   # lazy imports, the int8 copy and the snap's cached view
        LongContextMemory(model, int8_values=int8).ingest("A warm-up sentence. And one more.")
    prefix = model.prefix
    key = prefix.__dict__["_table"][0]        # the cache key the prefix gave the table
    table = model.decoder.get_input_embeddings().weight.detach().numpy()
    views = {name: _core.KeyViewF32(table, "cosine", "int8", **kw) for name, kw in VIEWS.items()}
    views[NO_SEARCH] = views["shipped"]
    runs: dict = {(e, v): [] for e in encoders for v in views}
    reference: dict = {}   # each encoder's first run's ids
    same = True
    try:
        for _ in range(1 if args.quick else args.rounds):
            for enc, int8 in encoders.items():
                for name, view in views.items():
                    prefix.__dict__["_table"] = (key, view)
                    mem = LongContextMemory(model, int8_values=int8)
                    searched = name != NO_SEARCH
                    capture = cm.slot_ids_of(prefix) if searched else hints_as_answers(prefix)
                    with capture as got:
                        t = time.perf_counter()
                        st = mem.ingest(text)
                        seconds = time.perf_counter() - t
                    ids = np.concatenate(got) if searched else np.zeros(0)
                    if searched:
                        same = same and bool(np.array_equal(ids, reference.setdefault(enc, ids)))
                    runs[(enc, name)].append({"tokens": st.tokens, "seconds": seconds,
                                              "tokens_per_s": st.tokens / seconds,
                                              "slots": int(ids.size)})
    finally:
        prefix.__dict__.pop("_table", None)
    med = {k: statistics.median(r["tokens_per_s"] for r in rs) for k, rs in runs.items()}
    rows = []
    for (enc, name), rs in runs.items():
        base = med[(enc, "no projected screen")]
        rows.append([enc, name, " / ".join(f"{r['seconds']:.2f} s" for r in rs),
                     f"{med[(enc, name)]:,.0f}", cm.fmt_ratio(med[(enc, name)] / base)])
    first = next(iter(runs.values()))[0]
    print(f"## Cold recall-mode ingest of {first['tokens']:,} {what}, {first['slots']:,} "
          f"live slots, by the snap's screen, {cm.NUM_THREADS} threads\n")
    print(cm.md_table(["encoder", "snap's view", "rounds", "tokens/s (median)",
                       "/ no projected screen"], rows))
    print(f"\nsnapped ids identical in every run (per encoder): {'yes' if same else '**NO**'}")
    result = {"config": {"text": what, "rounds": args.rounds},
              "runs": {f"{e} | {v}": rs for (e, v), rs in runs.items()},
              "median_tokens_per_s": {f"{e} | {v}": m for (e, v), m in med.items()},
              "ids_identical": same, "environment": cm.machine_info(torch=torch)}
    cm.report_foreign_load(result, args)
    targets = [{"name": "snapped ids identical across the screens", "op": ">=",
                "threshold": 1, "value": float(same),
                "fmt": lambda x: "yes" if x >= 1 else "no"},
               {"name": f"cold ingest tokens/s ({args.text}, int8 encoder, shipped)",
                "op": ">=", "threshold": 8000 if args.text == "essays" else 5000,
                "value": med[("int8 encoder", "shipped")]}]
    return cm.keep_result("ingest_snap", result, targets, args)


if __name__ == "__main__":
    sys.exit(main())
