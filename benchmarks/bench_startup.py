"""Start-up cost: ``import larimar_ext`` and ``larimar-ext --help`` in fresh processes, beside
``import numpy`` (the floor: the package needs it) and ``import torch`` measured in the same
run. Targets (issue: conventions): import < 0.3 s, --help < 0.5 s, and neither loads torch
(tests/test_conventions.py asserts that part).

    python benchmarks/bench_startup.py [--repeats 7] [--no-save]
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402

CASES = {
    "import numpy": [sys.executable, "-c", "import numpy"],
    "import larimar_ext": [sys.executable, "-c", "import larimar_ext"],
    "larimar-ext --help": [sys.executable, "-m", "larimar_ext", "--help"],
    "import torch": [sys.executable, "-c", "import torch"],
}


def extra(p):
    p.add_argument("--repeats", type=int, default=7)


def run(args) -> int:
    repeats = 3 if args.quick else args.repeats
    times = {name: [] for name in CASES}
    with tempfile.TemporaryDirectory() as cwd:     # outside the checkout's source folder
        for _ in range(repeats):                   # interleaved: load drifts hit all alike
            for name, cmd in CASES.items():
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, cwd=cwd, capture_output=True)
                times[name].append(time.perf_counter() - t0)
    med = {n: statistics.median(t) for n, t in times.items()}
    floor = med["import numpy"]
    print(cm.md_table(["process", "median", "min", "over import numpy"], [
        [n, f"{med[n]:.3f} s", f"{min(times[n]):.3f} s", f"{med[n] - floor:+.3f} s"]
        for n in CASES]))
    result = {"repeats": repeats, "seconds": times, "median": med}
    cm.report_foreign_load(result, args)
    targets = [{"name": "import larimar_ext (median)", "op": "<=", "threshold": 0.3,
                "value": med["import larimar_ext"], "fmt": lambda x: f"{x:.3f} s"},
               {"name": "larimar-ext --help (median)", "op": "<=", "threshold": 0.5,
                "value": med["larimar-ext --help"], "fmt": lambda x: f"{x:.3f} s"}]
    return cm.keep_result("startup", result, targets, args)


if __name__ == "__main__":
    sys.exit(run(cm.parse_args(__doc__.splitlines()[0], extra)))
