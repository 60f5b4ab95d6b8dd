"""Segmenting cost on text without sentence punctuation (issue: recall on real questions).

Times ``Segmenter(SmolLM2 tokenizer, 32)`` over the essays with . ! ? removed (5K, 10K, 20K
words, and 1M characters), 1M characters of Chinese with and without 。, and the essays as
they are; beside it, in the same run, the segmenter as it was before (``--before REV``, read
from git: quadratic without punctuation) on the small sizes.

    python benchmarks/bench_segment.py --haystack-dir ../shared/data/paul_graham_essays \
        --out benchmarks/results/segment.json
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def old_segmenter(rev: str):
    src = subprocess.run(["git", "show", f"{rev}:larimar_ext/longcontext/segment.py"],
                         check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "segment_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("segment_before", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.Segmenter


def timed(make, text: str) -> dict:
    seg = make()
    t0 = time.perf_counter()
    n = sum(1 for _ in seg.segments([text]))
    return {"chars": len(text), "segments": n, "seconds": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--haystack-dir", required=True)
    p.add_argument("--before", default="77a83bd", help="git revision of the old segmenter")
    p.add_argument("--out", default="benchmarks/results/segment.json")
    args = p.parse_args()
    from larimar_ext.longcontext.segment import Segmenter
    from larimar_ext.model.offline import load_smollm2
    tok, _ = load_smollm2()
    essays = " ".join(Path(f).read_text() for f in sorted(glob.glob(f"{args.haystack_dir}/*.txt")))
    bare_words = re.sub(r"[.!?]", "", essays).split()
    bare = " ".join(bare_words)
    while len(bare) < 1_000_000:
        bare = bare + " " + bare
    zh = "北京最好的事情是在颐和园散步，然后去故宫看看。" * 50_000
    cases = {f"unpunctuated {n // 1000}K words": " ".join(bare_words[:n])
             for n in (5000, 10000, 20000)}
    cases.update({"unpunctuated 1M chars": bare[:1_000_000], "Chinese 1M chars": zh[:1_000_000],
                  "Chinese without 。 1M chars": zh.replace("。", "")[:1_000_000],
                  "essays as they are": essays})
    new = lambda: Segmenter(tok, 32)   # noqa: E731
    Before = old_segmenter(args.before)
    rows = []
    for name, text in cases.items():
        row = {"case": name, "now": timed(new, text)}
        if "K words" in name:
            row["before"] = timed(lambda: Before(tok, 32), text)
            row["speedup"] = row["before"]["seconds"] / row["now"]["seconds"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps({"before": args.before, "rows": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
