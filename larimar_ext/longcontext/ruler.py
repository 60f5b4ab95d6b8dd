"""RULER's needle-in-a-haystack suite through the long-context memory (or a baseline).

Reads RULER's own output layout, ``<data>/<max_seq_length>/<task>/validation.jsonl``, any
task folder RULER generates (niah_single_1/2/3, niah_multikey_1/2/3, niah_multivalue,
niah_multiquery, ...). A sample's ``input`` is ``<header line>\\n<context>\\n<question>``
(RULER's base template): the context is ingested, the header (the task's instruction) is
not, and the memory is asked with the sample's question and its ``answer_prefix``. Scoring
is RULER's ``string_match_all``: the fraction of the reference ``outputs`` found in the
prediction, case-insensitive; a task's score is its samples' mean.

Every sample's record is appended to ``<out>/records.jsonl`` as soon as it is scored, so an
interrupted run resumes where it stopped (records of the same system, length, task and
line of its file are not run again: RULER's own ``index`` repeats within a task). At the
end ``<out>/ruler.json`` (records and the task x length table), ``<out>/ruler.md`` (the
table) and ``<out>/ruler.png`` (heatmap) are written.

Nothing here needs torch until a system runs.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .._result_files import dumps, write_json

__all__ = ["RulerSample", "load_samples", "string_match_all", "run_ruler", "summarize",
           "markdown_table", "plot_table"]


@dataclass
class RulerSample:
    """One RULER sample: where it came from, the context to ingest and what to ask."""
    length: int
    task: str
    index: int
    line: int              # 0-based line in its validation.jsonl: what identifies it
    header: str
    context: str
    question: str
    answer_prefix: str
    outputs: List[str]


def string_match_all(prediction: str, outputs: Sequence[str]) -> float:
    """RULER's metric for the NIAH tasks: the share of ``outputs`` found in ``prediction``
    (case-insensitive)."""
    if not outputs:
        raise ValueError("outputs: expected at least one reference string")
    low = prediction.lower()
    return sum(o.lower() in low for o in outputs) / len(outputs)


def _split_input(text: str, where: str) -> Tuple[str, str, str]:
    head, sep, rest = text.partition("\n")
    context, sep2, question = rest.rpartition("\n")
    if not sep or not sep2 or not question.strip():
        raise ValueError(f"data: {where}: input is not '<header>\\n<context>\\n<question>'")
    return head, context, question.strip()


def load_samples(data: Union[str, Path], lengths: Optional[Iterable[int]] = None,
                 tasks: Optional[Iterable[str]] = None,
                 limit: Optional[int] = None) -> List[RulerSample]:
    """The samples under ``data`` (``<length>/<task>/validation.jsonl``), sorted by length,
    task and line; ``lengths``/``tasks`` select, ``limit`` keeps the first samples of each
    (length, task). Raises ValueError naming ``data`` when nothing is found or a line is
    not a RULER sample."""
    root = Path(data)
    if not root.is_dir():
        raise ValueError(f"data: not a folder: {str(data)!r}")
    want_len = None if lengths is None else {int(x) for x in lengths}
    want_task = None if tasks is None else set(tasks)
    out: List[RulerSample] = []
    for length_dir in sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()),
                             key=lambda p: int(p.name)):
        if want_len is not None and int(length_dir.name) not in want_len:
            continue
        for task_dir in sorted(p for p in length_dir.iterdir() if p.is_dir()):
            if want_task is not None and task_dir.name not in want_task:
                continue
            f = task_dir / "validation.jsonl"
            if not f.is_file():
                continue
            with f.open(encoding="utf-8") as fh:
                for line_no, line in enumerate(fh):
                    if limit is not None and line_no >= limit:
                        break
                    where = f"{f}:{line_no + 1}"
                    try:
                        row = json.loads(line)
                        head, context, question = _split_input(row["input"], where)
                        outputs = [str(o) for o in row["outputs"]]
                        prefix = str(row.get("answer_prefix", "")).strip()
                    except (KeyError, TypeError, json.JSONDecodeError) as exc:
                        raise ValueError(f"data: {where}: not a RULER sample ({exc})") from exc
                    out.append(RulerSample(int(length_dir.name), task_dir.name,
                                           int(row.get("index", line_no)), line_no, head,
                                           context, question, prefix, outputs))
    if not out:
        raise ValueError(f"data: no <length>/<task>/validation.jsonl under {str(data)!r}"
                         + (" for the lengths/tasks asked" if want_len or want_task else ""))
    return out


def _max_new_tokens(sample: RulerSample) -> int:
    # a uuid is ~31 SmolLM2 tokens; four values and their separators need room
    per = 40 if "uuid" in sample.question else 12
    return min(160, 8 + per * len(sample.outputs))


class MemorySystem:
    """Ingest each sample's context into a fresh ``LongContextMemory`` and ask it."""

    def __init__(self, model: Any, mode: str = "recall", **memory_kw: Any) -> None:
        from .memory import EncodingCache
        self.model, self.mode, self.memory_kw = model, mode, memory_kw
        self.cache = EncodingCache(keep_values=True)     # the essays repeat across samples

    def __call__(self, sample: RulerSample) -> Dict[str, Any]:
        from .memory import LongContextMemory
        mem = LongContextMemory(self.model, mode=self.mode, cache=self.cache, **self.memory_kw)
        st = mem.ingest(sample.context)
        t0 = time.perf_counter()
        a = mem.ask_trace(sample.answer_prefix, sample.question,
                          max_new_tokens=_max_new_tokens(sample))
        return {"answer": a.answer, "guess": a.guess, "found": a.found,
                "confidence": a.confidence, "ask_seconds": time.perf_counter() - t0,
                "ingest": st.as_dict(), "sources": [asdict(s) for s in a.sources],
                "passages": a.passages, "answers": a.answers, "extracted": a.extracted,
                "stages": a.seconds}


class InContextSystem:
    """The decoder alone with the sample's whole input in its prompt (``InContextBaseline``)."""

    def __init__(self, baseline: Any = None) -> None:
        if baseline is None:
            from .baseline import InContextBaseline
            baseline = InContextBaseline()
        self.baseline = baseline

    def __call__(self, sample: RulerSample) -> Dict[str, Any]:
        r = self.baseline.ask(f"{sample.header}\n{sample.context}", sample.question,
                              sample.answer_prefix, _max_new_tokens(sample))
        return {"answer": r["answer"], "guess": r["answer"], "found": True,
                "ask_seconds": r["seconds"], "truncated": r["truncated"]}


def _key(rec: Dict[str, Any]) -> Tuple:
    return (rec["system"], rec["length"], rec["task"], rec["line"])


def run_ruler(samples: Sequence[RulerSample], system: Callable[[RulerSample], Dict[str, Any]],
              system_name: str, out: Union[str, Path], progress: bool = True,
              config: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Run ``system`` on every sample not yet in ``<out>/records.jsonl``, score, write the
    outputs (module docstring); returns {"records", "summary", "files"}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "records.jsonl"
    records: List[Dict[str, Any]] = []
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:      # a line cut by a kill: run it again
                    continue
    done = {_key(r) for r in records}
    todo = [s for s in samples if (system_name, s.length, s.task, s.line) not in done]
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc=f"ruler [{system_name}]", unit="sample",
                   dynamic_ncols=True)
    try:
        with log.open("a", encoding="utf-8") as fh:
            for s in todo:
                t0 = time.perf_counter()
                res = system(s)
                rec = {"system": system_name, "length": s.length, "task": s.task,
                       "index": s.index, "line": s.line, "outputs": s.outputs,
                       "score": string_match_all(res["answer"], s.outputs),
                       "score_guess": string_match_all(res["guess"], s.outputs),
                       **res, "seconds": time.perf_counter() - t0}
                records.append(rec)
                fh.write(dumps(rec) + "\n")
                fh.flush()
                if bar is not None:
                    bar.set_postfix(task=s.task, length=s.length,
                                    score=f"{np.mean([r['score'] for r in records]):.2f}")
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    wanted = {(system_name, s.length, s.task, s.line) for s in samples}
    mine = [r for r in records if _key(r) in wanted]
    summary = summarize(mine)
    result = {"system": system_name, "config": config or {}, "summary": summary,
              "records": mine}
    write_json(out / "ruler.json", result, indent=1)
    (out / "ruler.md").write_text(markdown_table(summary, system_name) + "\n")
    files = [str(log), str(out / "ruler.json"), str(out / "ruler.md")]
    try:
        files.append(str(plot_table(summary, out / "ruler.png", f"RULER NIAH, {system_name}")))
    except ImportError:
        pass
    result["files"] = files
    return result


def summarize(records: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """{"tasks", "lengths", "score": {task: {length: mean}}, "mean": {length: mean over
    tasks}, "n": {task: {length: samples}}, "withheld": {length: share answered 'not
    found'}}."""
    tasks = sorted({r["task"] for r in records})
    lengths = sorted({r["length"] for r in records})
    score: Dict[str, Dict[int, float]] = {}
    n: Dict[str, Dict[int, int]] = {}
    for t in tasks:
        for L in lengths:
            rows = [r["score"] for r in records if r["task"] == t and r["length"] == L]
            if rows:
                score.setdefault(t, {})[L] = float(np.mean(rows))
                n.setdefault(t, {})[L] = len(rows)
    mean = {L: float(np.mean([score[t][L] for t in tasks if L in score.get(t, {})]))
            for L in lengths}
    withheld = {L: float(np.mean([not r.get("found", True) for r in records
                                  if r["length"] == L])) for L in lengths}
    return {"tasks": tasks, "lengths": lengths, "score": score, "mean": mean, "n": n,
            "withheld": withheld}


def markdown_table(summary: Dict[str, Any], system: str = "") -> str:
    """The task x length table (and the mean row) as Markdown."""
    lengths = summary["lengths"]
    head = f"| task ({system}) | " + " | ".join(f"{L:,}" for L in lengths) + " |"
    lines = [head, "|---|" + "---|" * len(lengths)]
    for t in summary["tasks"]:
        cells = [summary["score"][t].get(L) for L in lengths]
        lines.append(f"| {t} | " + " | ".join("-" if c is None else f"{c:.2f}" for c in cells)
                     + " |")
    lines.append("| **mean** | " + " | ".join(f"**{summary['mean'][L]:.2f}**" for L in lengths)
                 + " |")
    return "\n".join(lines)


def plot_table(summary: Dict[str, Any], path: Union[str, Path], title: str) -> Path:
    """Heatmap PNG: tasks (y) x lengths (x), every cell annotated."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, lengths = summary["tasks"], summary["lengths"]
    grid = np.full((len(tasks), len(lengths)), np.nan)
    for i, t in enumerate(tasks):
        for j, L in enumerate(lengths):
            v = summary["score"].get(t, {}).get(L)
            if v is not None:
                grid[i, j] = v
    fig, ax = plt.subplots(figsize=(1.3 * len(lengths) + 3.2, 0.45 * len(tasks) + 1.6))
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(lengths)), [f"{L:,}" for L in lengths])
    ax.set_yticks(range(len(tasks)), tasks)
    ax.set_xlabel("context length (tokens)")
    ax.set_title(title, fontsize=10)
    for i in range(len(tasks)):
        for j in range(len(lengths)):
            v = grid[i, j]
            ax.text(j, i, "-" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=9)
    fig.colorbar(im, ax=ax, label="string_match_all")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
