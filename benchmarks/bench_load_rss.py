"""Peak memory of loading a saved KeyValueMemory in a fresh process, as a multiple of the
memory's own bytes (``nbytes``): the streamed load (``KeyValueMemory.load``, blocks of 1 MiB of rows
straight into the store) beside the whole-file read it replaced (``_persist.load``, then
``assign``), each in its own process, on the same file. Rows are the default model's
long-context rows with latent values (384-float keys, 7,168-float values), and the same keys
in an int8-only store with slot-id values (32 floats, what a recall-mode row keeps now).
With ``--context``, also a LongContextMemory ingested from the essays haystack (the default
model), saved and loaded the same way, its peak taken over the process's RSS once the model
is loaded. Its memory is the store's ``nbytes`` plus its Python side (texts, segment table,
lexical index: what ``tracemalloc`` holds after a load in another process, since tracing
inflates the RSS it would be compared with). Target (issue: memory at scale): <= 1.2x.

    python benchmarks/bench_load_rss.py [--rows 33000] [--context 128k] [--no-save] [--quick]
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402

SLOT_IDS = 32   # a recall-mode row's value: one decoder token id per slot

# Runs in a fresh interpreter: argv = path, way. Prints JSON: the peak over the baseline
# after the imports, and the loaded memory's nbytes.
CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[3])
import numpy as np, larimar_ext as lx
from larimar_ext import _persist
import _rss
path, way = sys.argv[1], sys.argv[2]
base = _rss.rss_bytes(); _rss.reset_peak_rss()
if way.startswith("streamed"):
    mem = lx.KeyValueMemory.load(path)
else:  # the whole-file read: every array in memory, then copied into the store
    config, arrays = _persist.load(path, "larimar_ext.KeyValueMemory")
    mem = lx.KeyValueMemory(config["key_dim"], config["value_dim"], config["metric"])
    mem._core.assign(arrays["keys"], arrays["values"], arrays["counts"])
print(json.dumps({"peak_over_base": _rss.peak_rss_bytes() - base, "nbytes": mem.nbytes,
                  "rows": len(mem)}))
"""

# The same for a LongContextMemory folder: argv = folder, bench dir.
LONG_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[2])
import tracemalloc
import _rss
from larimar_ext.longcontext import LongContextMemory
from larimar_ext.model import LarimarModel
model = LarimarModel.from_pretrained()
traced = sys.argv[3] == "python-bytes"
if traced:
    tracemalloc.start()
base = _rss.rss_bytes(); _rss.reset_peak_rss()
mem = LongContextMemory.load(sys.argv[1], model)
out = {"nbytes": mem.store.nbytes, "rows": len(mem.store)}
if traced:
    out["python_bytes"] = tracemalloc.get_traced_memory()[0]
else:
    out["peak_over_base"] = _rss.peak_rss_bytes() - base
print(json.dumps(out))
"""


def extra(p):
    p.add_argument("--rows", type=int, default=33_000)
    p.add_argument("--context", default=None,
                   help="also a LongContextMemory of this many tokens (e.g. 128k)")


def long_context(context: str) -> dict:
    """A LongContextMemory of ``context`` tokens of essays, saved, then loaded in fresh
    processes: their peaks over the RSS after the model's load."""
    from larimar_ext.longcontext import LongContextMemory, tasks
    from larimar_ext.model import LarimarModel
    model = LarimarModel.from_pretrained()
    ctx = tasks.needle_context(tasks.Haystack(str(cm.ESSAYS_DIR), model.tokenizer),
                               tasks.parse_context_size(context), 50)
    mem = LongContextMemory(model)
    st = mem.ingest(ctx.text)
    with tempfile.TemporaryDirectory() as tmp:
        mem.save(tmp)
        folder_bytes = sum(f.stat().st_size for f in Path(tmp).iterdir())
        runs = [json.loads(subprocess.run([sys.executable, "-c", LONG_CHILD, tmp,
                                           str(cm.BENCH_DIR), kind], check=True,
                                          capture_output=True, text=True).stdout)
                for kind in ("rss", "rss", "python-bytes")]
    python_bytes = runs.pop()["python_bytes"]
    for r in runs:
        r["memory_bytes"] = r["nbytes"] + python_bytes
    return {"tokens": st.tokens, "folder_bytes": folder_bytes, "python_bytes": python_bytes,
            "loads": runs}


def run(args) -> int:
    lx = cm.import_larimar(("KeyValueMemory",))
    rows = 2_000 if args.quick else args.rows
    d, v = 384, 7168
    rng = np.random.default_rng(0)
    mem = lx.KeyValueMemory(d, v, "cosine")
    compact = lx.KeyValueMemory(d, SLOT_IDS, "cosine", merge_identical=False,
                                key_codes="int8-only")
    for s in range(0, rows, 2_000):  # built in blocks: the benchmark's own peak stays low
        n = min(2_000, rows - s)
        keys = rng.standard_normal((n, d), dtype=np.float32)
        mem.add(keys, rng.standard_normal((n, v), dtype=np.float32))
        compact.add(keys, rng.integers(-1, 49_152, (n, SLOT_IDS)).astype(np.float32))
    with tempfile.TemporaryDirectory() as tmp:
        path, compact_path = Path(tmp) / "kv.safetensors", Path(tmp) / "compact.safetensors"
        mem.save(path)
        compact.save(compact_path)
        file_bytes = path.stat().st_size
        del mem, compact
        out = {}
        for way, file in (("streamed", path), ("whole file", path), ("streamed", path),
                          ("streamed, int8-only keys + slot ids", compact_path),
                          ("streamed, int8-only keys + slot ids", compact_path)):
            r = subprocess.run([sys.executable, "-c", CHILD, str(file), way,
                                str(cm.BENCH_DIR)], check=True, capture_output=True, text=True)
            out.setdefault(way, []).append(json.loads(r.stdout))
    rows_out = []
    for way, runs in out.items():
        ratios = [x["peak_over_base"] / x["nbytes"] for x in runs]
        rows_out.append([way, cm.fmt_bytes(runs[0]["nbytes"]),
                         cm.fmt_bytes(max(x["peak_over_base"] for x in runs)),
                         f"{max(ratios):.2f}x"])
    print(f"## Loading a saved KeyValueMemory of {rows:,} rows of {d} + {v} float32 "
          f"(file {cm.fmt_bytes(file_bytes)}), each load in a fresh process\n")
    print(cm.md_table(["load", "memory (nbytes)", "peak RSS over the baseline",
                       "peak / memory"], rows_out))
    streamed = max(x["peak_over_base"] / x["nbytes"] for x in out["streamed"])
    compact_ratio = max(x["peak_over_base"] / x["nbytes"]
                        for x in out["streamed, int8-only keys + slot ids"])
    result = {"rows": rows, "key_dim": d, "value_dim": v, "file_bytes": file_bytes,
              "loads": out}
    targets = [{"name": "streamed load peak / memory", "op": "<=", "threshold": 1.2,
                "value": streamed, "fmt": lambda x: f"{x:.2f}x"},
               {"name": "streamed load peak / memory, int8-only keys + slot ids", "op": "<=",
                "threshold": 1.2, "value": compact_ratio, "fmt": lambda x: f"{x:.2f}x"}]
    if args.context:
        lc = long_context(args.context)
        ratio = max(x["peak_over_base"] / x["memory_bytes"] for x in lc["loads"])
        print(f"\nLongContextMemory of {lc['tokens']:,} tokens ({lc['loads'][0]['rows']:,} "
              f"rows, folder {cm.fmt_bytes(lc['folder_bytes'])}): memory "
              f"{cm.fmt_bytes(lc['loads'][0]['memory_bytes'])} (store "
              f"{cm.fmt_bytes(lc['loads'][0]['nbytes'])}, Python side "
              f"{cm.fmt_bytes(lc['python_bytes'])}), load peak over the model's RSS "
              f"{cm.fmt_bytes(max(x['peak_over_base'] for x in lc['loads']))} = {ratio:.2f}x")
        result["long_context"] = lc
        targets.append({"name": "LongContextMemory load peak / memory", "op": "<=",
                        "threshold": 1.2, "value": ratio, "fmt": lambda x: f"{x:.2f}x"})
    cm.report_foreign_load(result, args)
    return cm.keep_result("load_rss", result, targets, args)


if __name__ == "__main__":
    sys.exit(run(cm.parse_args(__doc__.splitlines()[0], extra)))
