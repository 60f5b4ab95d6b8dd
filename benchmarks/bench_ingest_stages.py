"""Where a cold recall-mode ingest spends its time, by stage, and the ceiling the encoder's
matrix products put on it: essays ingested by the default model with a float32 encoder and
with its int8 copy (``int8_values``), each under cProfile; the time of each stage (encoder
linears, attention, the other encoder ops, the slot snap, the aligner, tokenizers); and,
in the same run, the float32 and int8 rates of the encoder's own MLP shape, which bound
tokens/s from above (every encoder token passes 6 layers of 4 x 384^2 + 2 x 384 x 1536
multiply-adds): float32, the kernel's int8 layers (``Int8Linear``, what ``int8_values``
runs) and torch.ao's deprecated dynamic quantisation (what it ran before); with torchao
importable, torchao's int8 dynamic quantisation beside them.

    python benchmarks/bench_ingest_stages.py [--essays 2] [--threads 2] [--no-save] [--quick]
"""
from __future__ import annotations

import copy
import cProfile
import pstats
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402

# cProfile function names (patterns searched in "file:line(function)") -> stage; first match
# wins. torch's float linears, torch.ao's int8 ones and the kernel's Int8Linear (its forward
# is the only _core function of that name).
STAGES = [
    ("encoder linears", (r"_nn\.linear>", r"linear_dynamic>", r"_core\.forward>")),
    ("attention", (r"scaled_dot_product_attention>",)),
    ("slot snap (kernel top-1 over the decoder's table)", (r"_core\.search>",)),
    ("tokenizers", (r"encode_batch'",)),
    ("aligner (Python)", (r"aligned\.py:\d+\(__call__\)",)),
]
LAYERS, HIDDEN, FFN = 6, 384, 1536  # all-MiniLM-L6-v2
MACS_PER_TOKEN = LAYERS * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * FFN)


def stage_seconds(stats: pstats.Stats) -> dict:
    """Self time of the leaf calls of each stage (tottime), the rest as 'other'."""
    out = {name: 0.0 for name, _ in STAGES}
    total = 0.0
    for (file, line, func), (_, _, tottime, _, _) in stats.stats.items():
        key = f"{file}:{line}({func})"
        total += tottime
        for name, needles in STAGES:
            if any(re.search(n, key) for n in needles):
                out[name] += tottime
                break
    out["other"] = total - sum(out.values())
    return out


def mlp_rates(torch, tokens: int = 4096) -> dict:
    """Multiply-adds per second of the encoder's MLP shape: float32, the kernel's int8 layers
    (what ``int8_values`` runs), torch.ao's deprecated int8 dynamic quantisation, torchao."""
    from larimar_ext.int8_linear import int8_linears
    mlp = torch.nn.Sequential(torch.nn.Linear(HIDDEN, FFN), torch.nn.GELU(),
                              torch.nn.Linear(FFN, HIDDEN)).eval()
    x = torch.randn(tokens, HIDDEN)
    variants = {"float32": mlp,
                "kernel Int8Linear (int8_values)": int8_linears(copy.deepcopy(mlp)),
                "torch.ao quantize_dynamic int8": torch.ao.quantization.
                quantize_dynamic(copy.deepcopy(mlp), {torch.nn.Linear}, dtype=torch.qint8)}
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
        q = copy.deepcopy(mlp)
        quantize_(q, Int8DynamicActivationInt8WeightConfig())
        variants["torchao Int8DynamicActivationInt8Weight"] = q
    except ImportError:
        pass
    rates = {}
    with torch.no_grad():
        for _ in range(2):  # interleaved rounds, the second kept
            for name, m in variants.items():
                m(x)
                t = time.perf_counter()
                for _ in range(5):
                    m(x)
                rates[name] = 5 * tokens * 2 * HIDDEN * FFN / (time.perf_counter() - t)
    return rates


def extra(p) -> None:
    p.add_argument("--essays", type=int, default=2)
    p.add_argument("--threads", type=int, default=cm.NUM_THREADS)


def main() -> int:
    args = cm.parse_args(__doc__.splitlines()[0], extra)
    import torch

    from larimar_ext.longcontext import LongContextMemory
    from larimar_ext.model import LarimarModel
    cm.set_all_threads(torch=torch, lx=cm.import_larimar(), n=args.threads)
    model = LarimarModel.from_pretrained()
    files = sorted(Path(cm.ESSAYS_DIR).glob("*.txt"))[:1 if args.quick else args.essays]
    text = "\n\n".join(f.read_text() for f in files)
    runs = {}
    for label, int8 in (("float32 encoder", False), ("int8 encoder (int8_values)", True)):
        LongContextMemory(model, int8_values=int8).ingest("A warm-up sentence. And one more.")
        mem = LongContextMemory(model, int8_values=int8)
        prof = cProfile.Profile()
        t = time.perf_counter()
        prof.enable()
        st = mem.ingest(text)
        prof.disable()
        seconds = time.perf_counter() - t
        runs[label] = {"tokens": st.tokens, "segments": st.new_segments, "seconds": seconds,
                       "tokens_per_s": st.tokens / seconds,
                       "stages": stage_seconds(pstats.Stats(prof))}
    rates = mlp_rates(torch)
    ceiling = {name: rate / MACS_PER_TOKEN for name, rate in rates.items()}
    names = [name for name, _ in STAGES] + ["other"]
    rows = [[name] + [f"{r['stages'][name]:.2f} s ({r['stages'][name] / r['seconds']:.0%})"
                      for r in runs.values()] for name in names]
    rows.append(["**total** (tokens/s)"] + [f"{r['seconds']:.2f} s ({r['tokens_per_s']:,.0f})"
                                             for r in runs.values()])
    first = next(iter(runs.values()))
    print(f"## Cold recall-mode ingest: {first['tokens']:,} tokens, {first['segments']:,} "
          f"segments of {len(files)} essays, {args.threads} threads\n")
    print(cm.md_table(["stage"] + list(runs), rows))
    print("\nThe encoder's MLP shape in the same run (the linears' ceiling on tokens/s: "
          f"{MACS_PER_TOKEN / 1e6:.1f}M multiply-adds per encoder token):\n")
    print(cm.md_table(["linears", "GMAC/s", "tokens/s if the linears were all"],
                      [[n, f"{rates[n] / 1e9:.1f}", f"{ceiling[n]:,.0f}"] for n in rates]))
    result = {"config": {"threads": args.threads, "essays": len(files)}, "runs": runs,
              "mlp_macs_per_s": rates, "ceiling_tokens_per_s": ceiling,
              "environment": cm.machine_info(torch=torch)}
    cm.report_foreign_load(result, args)
    targets = [{"name": "cold ingest tokens/s (essays, float32 encoder)", "op": ">=",
                "threshold": 8000, "value": first["tokens_per_s"]}]
    return cm.keep_result("ingest_stages", result, targets, args)


if __name__ == "__main__":
    sys.exit(main())
