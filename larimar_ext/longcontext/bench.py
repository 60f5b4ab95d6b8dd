"""The long-context benchmark runner shared by ``larimar-ext passkey|needle`` and
benchmarks/bench_longcontext.py.

One run = a grid of context lengths x needle depths (x passkey digits) x trials, every trial
a fresh context (seeded), answered by one of three systems in the same harness:

- "memory": ``LongContextMemory`` in its default recall mode (dense + lexical keys, fused,
  several readouts);
- "memory-paper": the paper's configuration (prefix keys, one row, one readout);
- "memory-noprefix": paper mode with keys from whole segments (the paper's ablation row);
- "in-context": the decoder alone with the context in its prompt (``InContextBaseline``,
  SmolLM2-135M-Instruct by default; truncated beyond its window).

Each trial records three scores, so a failure can be traced to its stage:
- ``retrieval_at_1``: the top-1 memory row holds a needle segment that contains the answer;
- ``decoding_given_segment``: the answer decoded from that needle segment's stored value
  (what the decoder does when retrieval is right), scored like the end-to-end answer;
- ``correct``: end to end (passkey: the answer's first digits are the key; needle: the
  answer span appears exactly), plus ``recall`` of the span's content words for the needle.
The in-context baseline has only the end-to-end scores.

Memory trials share one ``EncodingCache`` (keep_values=True): the encoder runs once per
distinct text over the whole run, so a grid over one haystack encodes it once. Every trial
still segments its own context and writes its own memory. The first trial's ``ingest`` is the
cold one (``encoded_values`` > 0); read throughput from it.

Output (``out`` folder): ``<name>.json`` with the configuration, every trial and the summary,
and ``<name>[-<d>digits].png``: a heatmap of accuracy (end to end), context length (y) by
depth (x), one cell per (context, depth), annotated.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .._result_files import write_json
from . import tasks
from .segment import TokenCounter

__all__ = ["run_passkey", "run_needle", "summarize", "plot_heatmap", "format_size",
           "load_larimar", "SYSTEMS"]

SYSTEMS = ("memory", "memory-paper", "memory-noprefix", "in-context")


def format_size(n: int) -> str:
    """128000 -> "128k", 1000000 -> "1m", 4096 -> "4096"."""
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    if n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


def load_larimar(path: Optional[str] = None) -> Any:
    """``LarimarModel.from_pretrained(path)``, or the default trained model for None."""
    from ..model import LarimarModel

    loader = getattr(LarimarModel, "from_pretrained", None)
    if loader is None:
        raise RuntimeError("model: LarimarModel.from_pretrained is not available in this "
                           "version (the trained default model is not released yet); pass a "
                           "model to the Python API instead")
    return loader(path) if path is not None else loader()


def _max_new_tokens(ctx: tasks.Context) -> int:
    # digits are one token each in SmolLM2 (and most BPEs), plus a space and a full stop;
    # the SF span is 14 words
    if ctx.task == "passkey":
        return len(ctx.answer) + 4
    return 24


def _score(ctx: tasks.Context, answer: str) -> Dict[str, Any]:
    if ctx.task == "passkey":
        return {"correct": tasks.score_passkey(answer, ctx.answer), "recall": None}
    s = tasks.score_needle(answer, ctx.answer)
    return {"correct": s["exact"], "recall": s["recall"]}


class _MemorySystem:
    def __init__(self, model: Any, mode: str, prefix_keys: bool, prefix_words: int,
                 max_tokens: Optional[int], k: Optional[int], progress: bool,
                 int8_values: bool = False) -> None:
        from .memory import EncodingCache, LongContextMemory
        self.model, self.k = model, k
        self.cache = EncodingCache(keep_values=True)
        self.make = lambda: LongContextMemory(model, mode=mode, int8_values=int8_values,
                                              prefix_words=prefix_words,
                                              prefix_keys=prefix_keys, max_tokens=max_tokens,
                                              cache=self.cache)
        self.progress = progress

    def run(self, ctx: tasks.Context) -> Dict[str, Any]:
        mem = self.make()
        # a bar of its own only for contexts that take a while to ingest
        st = mem.ingest(ctx.text, progress=self.progress and ctx.tokens >= 100_000, leave=False)
        mnt = _max_new_tokens(ctx)
        t0 = time.perf_counter()
        trace = mem.ask_trace(ctx.answer_prefix, ctx.question, k=self.k, max_new_tokens=mnt)
        ask_s = time.perf_counter() - t0
        needle_segs = mem.segmenter.split(ctx.needle)
        targets = [s for s in needle_segs if ctx.answer in s] or needle_segs
        hit = bool(set(trace.segments) & set(targets))
        pure = hit and len(trace.segments) == 1
        # decoding given the right segment: the needle segment's stored value; the same
        # readout as end to end when retrieval read exactly that row (one-hot, k = 1)
        target = targets[0]
        if pure and mem.mode == "paper" and (self.k or 1) == 1 and target in trace.segments:
            given = trace.answer
        else:
            given = mem.decode(ctx.answer_prefix, mem.readout_of(target), mnt, ctx.question)
        out = {"answer": trace.answer, **_score(ctx, trace.answer),
               "retrieval_at_1": hit, "retrieved_row_shared": hit and not pure,
               "top_score": trace.scores[0], "top_segments": trace.segments[:3],
               "needle_segment": target,
               "decoding_given_segment": _score(ctx, given)["correct"],
               "answer_given_segment": given, "truncated": False,
               "confidence": trace.confidence, "found": trace.found, "guess": trace.guess,
               "ingest": st.as_dict(), "memory": mem.stats, "ask_seconds": ask_s}
        return out


class _InContextSystem:
    def __init__(self, baseline: Any) -> None:
        self.baseline = baseline

    def run(self, ctx: tasks.Context) -> Dict[str, Any]:
        r = self.baseline.ask(ctx.text, ctx.question, ctx.answer_prefix, _max_new_tokens(ctx),
                              needle_span=(ctx.needle_char, ctx.needle_char + len(ctx.needle)))
        return {"answer": r["answer"], **_score(ctx, r["answer"]), "retrieval_at_1": None,
                "decoding_given_segment": None, "truncated": r["truncated"],
                "needle_in_window": r["needle_in_window"], "prompt_tokens": r["prompt_tokens"],
                "ask_seconds": r["seconds"]}


def _system(system: str, model: Any, baseline: Any, prefix_words: int, max_tokens: Optional[int],
            k: Optional[int], progress: bool, int8_values: bool = False):
    if system not in SYSTEMS:
        raise ValueError(f"system: expected one of {SYSTEMS}, got {system!r}")
    if system == "in-context":
        if baseline is None:
            from .baseline import InContextBaseline
            baseline = InContextBaseline()
        return _InContextSystem(baseline)
    if model is None:
        raise ValueError("model: the memory systems need a LarimarModel")
    mode = "recall" if system == "memory" else "paper"
    return _MemorySystem(model, mode, system != "memory-noprefix", prefix_words, max_tokens, k,
                         progress, int8_values)


def _model_choices(model: Any) -> Dict[str, Any]:
    """The model-wide answer precision and the model's device, for a run's config record."""
    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return {"bf16_answers": bool(getattr(model, "answers_in_bf16", False)),
            "int8_answers": bool(getattr(model, "answers_in_int8", False)),
            "device": None if first is None else str(first.device)}


def _tokenizer_for(sysobj: Any, tokenizer: Any) -> Any:
    if tokenizer is not None:
        return tokenizer
    if isinstance(sysobj, _InContextSystem):
        return sysobj.baseline.tokenizer
    return getattr(sysobj.model, "tokenizer", None)


def summarize(trials: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Means per (context, digits, depth): n, accuracy, retrieval@1, decoding given the
    segment, recall, truncated (None where a system has no such score)."""
    groups: Dict[Tuple, List[Dict[str, Any]]] = {}
    for t in trials:
        groups.setdefault((t["context"], t.get("digits"), t["depth"]), []).append(t)

    def mean(rows: List[Dict[str, Any]], key: str) -> Optional[float]:
        vals = [float(r[key]) for r in rows if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    out = []
    for (c, d, depth), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0,
                                                                        kv[0][2])):
        out.append({"context": c, "digits": d, "depth": depth, "n": len(rows),
                    "accuracy": mean(rows, "correct"),
                    "retrieval_at_1": mean(rows, "retrieval_at_1"),
                    "decoding_given_segment": mean(rows, "decoding_given_segment"),
                    "recall": mean(rows, "recall"), "truncated": mean(rows, "truncated"),
                    "context_tokens": mean(rows, "context_tokens")})
    return out


def plot_heatmap(summary: Sequence[Dict[str, Any]], path: Union[str, Path], title: str,
                 metric: str = "accuracy") -> Path:
    """PNG heatmap: y = context length, x = needle depth (%), colour = ``metric`` (0-1),
    every cell annotated (n/a where the system has no such score)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    contexts = sorted({r["context"] for r in summary})
    depths = sorted({r["depth"] for r in summary})
    grid = np.full((len(contexts), len(depths)), np.nan)
    for r in summary:
        v = r.get(metric)
        if v is not None:
            grid[contexts.index(r["context"]), depths.index(r["depth"])] = v
    fig, ax = plt.subplots(figsize=(1.1 * len(depths) + 2.6, 0.55 * len(contexts) + 1.8))
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="RdYlGn", vmin=0.0, vmax=1.0,
                   aspect="auto", origin="lower")
    ax.set_xticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_yticks(range(len(contexts)), [format_size(c) for c in contexts])
    ax.set_xlabel("needle depth (%)")
    ax.set_ylabel("context length (tokens)")
    ax.set_title(title, fontsize=10)
    for i in range(len(contexts)):
        for j in range(len(depths)):
            v = grid[i, j]
            ax.text(j, i, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center",
                    fontsize=9, color="black")
    fig.colorbar(im, ax=ax, label=metric.replace("_", " "))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _run(task: str, builder: Callable[..., tasks.Context],
         grid: List[Tuple[int, Optional[int], float]],
         trials: int, seed: int, system: str, sysobj: Any, out: Optional[Union[str, Path]],
         progress: bool, config: Dict[str, Any], name: Optional[str]) -> Dict[str, Any]:
    records: List[Dict[str, Any]] = []
    total = len(grid) * trials
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc=f"{task} [{system}]", unit="trial", dynamic_ncols=True)
    t_run = time.perf_counter()
    try:
        for context, digits, depth in grid:
            for trial in range(trials):
                # one seed per cell and trial: a cell's keys do not depend on the grid
                rng = np.random.default_rng([seed, context, digits or 0, int(depth * 1000), trial])
                t0 = time.perf_counter()
                ctx = builder(context, depth, digits, rng)
                build_s = time.perf_counter() - t0
                res = sysobj.run(ctx)
                rec = {"task": task, "system": system, "context": context,
                       "context_tokens": ctx.tokens, "digits": digits, "depth": depth,
                       "actual_depth": ctx.actual_depth, "trial": trial,
                       "expected": ctx.answer, "answer_prefix": ctx.answer_prefix,
                       "question": ctx.question, **res, "build_seconds": build_s,
                       "seconds": time.perf_counter() - t0}
                records.append(rec)
                if bar is not None:
                    acc = np.mean([r["correct"] for r in records])
                    bar.set_postfix(acc=f"{acc:.2f}", ctx=format_size(context), depth=depth)
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    summary = summarize(records)
    result = {"task": task, "system": system, "config": config, "trials": records,
              "summary": summary, "seconds": time.perf_counter() - t_run,
              "environment": _environment()}
    if out is not None:
        result["files"] = _write(result, Path(out), name or f"{task}-{system}")
    return result


def _environment() -> Dict[str, Any]:
    env: Dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine()}
    try:
        import torch
        import transformers
        env.update(torch=torch.__version__, transformers=transformers.__version__,
                   torch_threads=torch.get_num_threads())
    except ImportError:  # pragma: no cover
        pass
    from .._version import __version__
    env["larimar_ext"] = __version__
    return env


def _write(result: Dict[str, Any], out: Path, name: str) -> List[str]:
    out.mkdir(parents=True, exist_ok=True)
    files = []
    path = out / f"{name}.json"
    write_json(path, result, indent=1)
    files.append(str(path))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        import warnings
        warnings.warn("matplotlib is not installed: no heatmap (pip install 'larimar-ext[models]')")
        return files
    by_digits: Dict[Optional[int], List[Dict[str, Any]]] = {}
    for r in result["summary"]:
        by_digits.setdefault(r["digits"], []).append(r)
    for digits, rows in by_digits.items():
        suffix = f"-{digits}digits" if digits is not None else ""
        title = f"{result['task']}{f' ({digits} digits)' if digits else ''}, " \
                f"{result['system']}: end-to-end accuracy"
        parts = []
        for key, label in (("retrieval_at_1", "retrieval@1"),
                           ("decoding_given_segment", "decoding | segment")):
            vals = [r[key] for r in rows if r.get(key) is not None]
            if vals:
                parts.append(f"{label} {np.mean(vals):.2f}")
        if parts:
            title += "\n(mean " + ", ".join(parts) + ")"
        files.append(str(plot_heatmap(rows, out / f"{name}{suffix}.png", title)))
    return files


def _common(contexts: Any, depths: Any, trials: int, seed: int, k: int,
            prefix_words: int, max_tokens: Optional[int]) -> Tuple[List[int], List[float]]:
    if isinstance(contexts, (str, int)):
        contexts = str(contexts).split(",") if isinstance(contexts, str) else [contexts]
    ctx = [tasks.parse_context_size(c, "contexts") for c in contexts]
    if not ctx:
        raise ValueError("contexts: expected at least one context size")
    dep = tasks.parse_list(depths, "depths", float, 0.0, 100.0)
    for name, v in (("trials", trials), ("k", k), ("prefix_words", prefix_words),
                    ("max_tokens", max_tokens)):
        if v is None and name in ("max_tokens", "k"):
            continue                         # the memory's defaults (LongContextMemory)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
    return ctx, dep


def run_passkey(model: Any = None, contexts: Any = "4k", digits: Any = (5,),
                depths: Any = (0, 25, 50, 75, 100), trials: int = 1, seed: int = 0, *,
                system: str = "memory", baseline: Any = None, prefix_words: int = 4,
                max_tokens: Optional[int] = None, k: Optional[int] = None,
                out: Optional[Union[str, Path]] = None,
                progress: bool = True, tokenizer: Any = None,
                name: Optional[str] = None, int8_values: bool = False) -> Dict[str, Any]:
    """Passkey retrieval over contexts x digits x depths x trials (see the module doc).

    Args:
        model: the LarimarModel (memory systems).
        contexts: sizes ("1k,128k,1m", or a list of ints / strings), 1k ... 10m tokens.
        digits: passkey lengths (comma list or list), 1 ... 18.
        depths: needle depths in percent.
        system: "memory", "memory-noprefix" or "in-context".
        baseline: an ``InContextBaseline`` (default: SmolLM2 loaded when needed).
        tokenizer: counts context tokens (default: the system's decoder tokenizer).
        out: folder for the JSON and the PNG heatmaps (None: nothing written).
    Returns the result dict (config, trials, summary, files).
    """
    ctx, dep = _common(contexts, depths, trials, seed, k, prefix_words, max_tokens)
    dig = tasks.parse_list(digits, "digits", int, 1, 18)
    sysobj = _system(system, model, baseline, prefix_words, max_tokens, k, progress, int8_values)
    counter = TokenCounter(_tokenizer_for(sysobj, tokenizer))

    def build(context: int, depth: float, d: Optional[int], rng: np.random.Generator):
        return tasks.passkey_context(context, depth, digits=d, seed=rng, tokenizer=counter)

    grid = [(c, d, x) for c in ctx for d in dig for x in dep]
    config = {"contexts": ctx, "digits": dig, "depths": dep, "trials": trials, "seed": seed,
              "system": system, "prefix_words": prefix_words, "max_tokens": max_tokens,
              "int8_values": int8_values, **_model_choices(model), "k": k}
    return _run("passkey", build, grid, trials, seed, system, sysobj, out, progress, config,
                name)


def run_needle(model: Any = None, haystack_dir: Union[str, Path, None] = None,
               contexts: Any = "4k", depths: Any = (0, 25, 50, 75, 100), trials: int = 1,
               seed: int = 0, *, system: str = "memory", baseline: Any = None,
               prefix_words: int = 4, max_tokens: Optional[int] = None, k: Optional[int] = None,
               out: Optional[Union[str, Path]] = None, progress: bool = True,
               tokenizer: Any = None, name: Optional[str] = None,
               needle: str = tasks.SF_NEEDLE, question: str = tasks.SF_QUESTION,
               answer_prefix: str = tasks.SF_PREFIX,
               answer: str = tasks.SF_ANSWER, int8_values: bool = False) -> Dict[str, Any]:
    """Needle in a haystack over contexts x depths x trials; the haystack is the .txt files
    of ``haystack_dir`` (sorted by name, repeated to reach the context). Trials of one cell
    differ only where a system is random (none is: greedy decoding), so trials=1 is the
    norm. Arguments as ``run_passkey``."""
    if haystack_dir is None:
        raise ValueError("haystack_dir: expected a folder of .txt files")
    ctx, dep = _common(contexts, depths, trials, seed, k, prefix_words, max_tokens)
    hay_path = Path(haystack_dir)
    if not hay_path.is_dir():      # before any model is loaded
        raise ValueError(f"haystack_dir: not a folder: {str(haystack_dir)!r}")
    sysobj = _system(system, model, baseline, prefix_words, max_tokens, k, progress, int8_values)
    counter = TokenCounter(_tokenizer_for(sysobj, tokenizer))
    hay = tasks.Haystack(haystack_dir, counter)

    def build(context: int, depth: float, d: Optional[int], rng: np.random.Generator):
        return tasks.needle_context(hay, context, depth, needle=needle, question=question,
                                    answer_prefix=answer_prefix, answer=answer)

    grid = [(c, None, x) for c in ctx for x in dep]
    config = {"contexts": ctx, "depths": dep, "trials": trials, "seed": seed,
              "system": system, "prefix_words": prefix_words, "max_tokens": max_tokens,
              "int8_values": int8_values, **_model_choices(model),
              "k": k, "haystack_dir": str(haystack_dir), "haystack_files": len(hay.files),
              "haystack_tokens": hay.tokens, "needle": needle, "question": question,
              "answer_prefix": answer_prefix, "answer": answer}
    return _run("needle", build, grid, trials, seed, system, sysobj, out, progress, config,
                name)
