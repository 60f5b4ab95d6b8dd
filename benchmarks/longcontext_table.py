"""Markdown tables of the long-context runs (benchmarks/run_longcontext.sh) for RESULTS.md.

Usage: python benchmarks/longcontext_table.py [benchmarks/results/longcontext]
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

PAPER = [("Larimar 1.3B (paper)", "137K", "0.95", "0.64", "-", "1.0"),
         ("Larimar, keys without prefix (paper)", "137K", "0.88", "0.14", "-", "0.0"),
         ("Mistral 7B v0.2 (paper)", "24K", "0.66", "0.62", "-", "0.80"),
         ("Phi-3-mini-128K (paper)", "100K", "0.27", "0.26", "-", "0.37")]


def _load(root: Path, run: str) -> list[dict]:
    files = sorted((root / run).glob("*.json"))
    return [t for f in files for t in json.loads(f.read_text())["trials"]]


def _size(n: int) -> str:
    return f"{n // 1000}K" if n < 1_000_000 else f"{n / 1e6:g}M"


def _mean(rows: list[dict], key: str) -> float:
    return sum(float(r[key]) for r in rows) / len(rows)


def main(root: str = "benchmarks/results/longcontext") -> None:
    root = Path(root)
    runs = {name: _load(root, name) for name in
            ("passkey", "passkey_no_prefix", "needle", "needle_no_prefix", "passkey_short",
             "passkey_in_context", "passkey_recall", "needle_recall", "passkey_paper",
             "needle_paper") if (root / name).is_dir()}

    print("| system | context | 3 digits | 4 digits | 5 digits | SF needle |")
    print("|---|---|---|---|---|---|")
    for row in PAPER:
        print("| " + " | ".join(row) + " |")
    for label, pk, nd in (("larimar-ext (prefix keys)", "passkey", "needle"),
                          ("larimar-ext, keys without prefix", "passkey_no_prefix",
                           "needle_no_prefix"),
                          ("larimar-ext, recall mode (default)", "passkey_recall",
                           "needle_recall"),
                          ("larimar-ext, paper mode, rerun", "passkey_paper", "needle_paper")):
        contexts = sorted({t["context"] for t in runs.get(pk, []) + runs.get(nd, [])})
        for c in contexts:
            cells = []
            for d in (3, 4, 5):
                rows = [t for t in runs.get(pk, []) if t["context"] == c and t["digits"] == d]
                cells.append(f"{_mean(rows, 'correct'):.2f} (n={len(rows)})" if rows else "-")
            rows = [t for t in runs.get(nd, []) if t["context"] == c]
            cells.append(f"{_mean(rows, 'correct'):.2f} (n={len(rows)})" if rows else "-")
            print(f"| {label} | {_size(c)} | " + " | ".join(cells) + " |")

    print("\nScores split (mean over all trials of a run and context):\n")
    print("| run | context | trials | retrieval@1 | decoding given the segment | end to end "
          "| ask latency median (s) | ingest tokens/s (first, cold) | rows | host MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in ("passkey", "passkey_no_prefix", "needle", "needle_no_prefix", "passkey_short",
                 "passkey_recall", "needle_recall", "passkey_paper", "needle_paper"):
        by = defaultdict(list)
        for t in runs.get(name, []):
            by[t["context"]].append(t)
        for c, rows in sorted(by.items()):
            first = rows[0]["ingest"]
            print(f"| {name} | {_size(c)} | {len(rows)} | {_mean(rows, 'retrieval_at_1'):.3f} "
                  f"| {_mean(rows, 'decoding_given_segment'):.3f} | {_mean(rows, 'correct'):.3f} "
                  f"| {statistics.median(r['ask_seconds'] for r in rows):.2f} "
                  f"| {first['tokens_per_s']:,.0f} | {rows[-1]['memory']['rows']:,} "
                  f"| {rows[-1]['memory']['host_bytes'] / 2**20:,.0f} |")

    ic = runs.get("passkey_in_context", [])
    mem = runs.get("passkey_short", [])
    if ic:
        print("\nIn-context baseline (SmolLM2-135M-Instruct, whole context in the prompt) vs "
              "the memory path, same 5-digit trials:\n")
        print("| context | in-context accuracy | in-context s/question | memory accuracy "
              "| memory s/question (ingest + ask) |")
        print("|---|---|---|---|---|")
        for c in sorted({t["context"] for t in ic}):
            a = [t for t in ic if t["context"] == c]
            b = [t for t in mem if t["context"] == c]
            mem_cells = (f"{_mean(b, 'correct'):.2f} | "
                         f"{statistics.median(t['seconds'] for t in b):.2f}"
                         if b else "- | -")
            print(f"| {_size(c)} | {_mean(a, 'correct'):.2f} | "
                  f"{statistics.median(t['seconds'] for t in a):.1f} | {mem_cells} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
