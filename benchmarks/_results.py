"""Results of the benchmarks: the target table and the results files.

``save_result(name, data, quick)`` writes benchmarks/results/<name>.json (the latest
full-size run; --quick runs go to <name>.quick.json so a smoke run never overwrites a real
result) and appends the same record as one line to benchmarks/results/history.jsonl. The
JSON itself is written by the package's results writer (``larimar_ext._result_files``,
shared with the command line's runners), leniently: what JSON does not know is written as
its ``str()``; inf and nan become strings, so the files stay standard JSON.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from larimar_ext._result_files import append_json_line, write_json

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO_DIR = BENCH_DIR.parent
# the essays haystack of the long-context benchmarks (../shared beside the checkout)
ESSAYS_DIR = REPO_DIR.parent / "shared" / "data" / "paul_graham_essays"
RULER_DIR = REPO_DIR.parent / "shared" / "data" / "ruler_niah"


def md_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(lines)


def _clean(o):
    """JSON has no inf/nan: encode them as strings so the file stays standard JSON."""
    if isinstance(o, float) and not math.isfinite(o):
        return "nan" if math.isnan(o) else ("inf" if o > 0 else "-inf")
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, np.floating):
        return _clean(float(o))
    return o


def save_result(name: str, data: dict, quick: bool) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    record = _clean(dict(data, benchmark=name, quick=quick))
    path = RESULTS_DIR / (f"{name}.quick.json" if quick else f"{name}.json")
    write_json(path, record, indent=2, lenient=True, newline=True)
    append_json_line(RESULTS_DIR / "history.jsonl", record, lenient=True)
    print(f"[bench] results written to {path.relative_to(REPO_DIR)}")
    return path


def check_targets(targets: list[dict], quick: bool) -> int:
    """Print the target table and return the process exit code.

    Each target: {"name", "value", "op" ('>=' or '<='), "threshold", "fmt" (callable)}.
    A value of None (not measured, e.g. package missing) counts as missed.
    --quick: printed but never fails (exit 0).
    """
    rows, failed = [], 0
    for t in targets:
        v, thr, op = t["value"], t["threshold"], t["op"]
        fmt = t.get("fmt", lambda x: f"{x:.3g}")
        if v is None or (isinstance(v, float) and math.isnan(v)):
            ok = False
            shown = "n/a"
        else:
            ok = v >= thr if op == ">=" else v <= thr
            shown = fmt(v)
        t["passed"] = bool(ok)
        failed += not ok
        rows.append([t["name"], shown, f"{op} {fmt(thr)}", "PASS" if ok else "MISS"])
    print()
    print(md_table(["target", "measured", "required", "result"], rows))
    if quick:
        print("\n[bench] --quick: targets not enforced")
        return 0
    if failed:
        print(f"\n[bench] {failed} target(s) missed")
        return 1
    return 0


def record_targets(result: dict, targets: list[dict], quick: bool) -> int:
    """``check_targets`` (nothing printed when there are none), the targets kept in
    ``result["targets"]`` without their formatters; returns the exit code."""
    rc = check_targets(targets, quick) if targets else 0
    result["targets"] = [{k: v for k, v in t.items() if k != "fmt"} for t in targets]
    return rc


def keep_result(name: str, result: dict, targets: list[dict], args) -> int:
    """The end of a benchmark run: the targets checked and kept in ``result``, the result
    saved as results/<name>.json unless --no-save; returns the exit code."""
    rc = record_targets(result, targets, args.quick)
    if not args.no_save:
        save_result(name, result, args.quick)
    return rc
