"""Command line: ``larimar-ext info``, ``demo``, ``bench`` (op throughput, see
larimar_ext/throughput.py), and the long-context benchmarks ``passkey``, ``needle`` and
``ruler`` (see larimar_ext/longcontext/bench.py)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Optional, Sequence

import numpy as np

from . import EpisodicMemory, KeyValueMemory, info, lstsq_write, pinv_address, read



def _set_threads(n: int) -> None:
    """Both thread pools, torch's and the kernel's (it searches and snaps to tokens): an
    OpenMP pool wider than the cores a run is given spins against the other run."""
    import torch

    from . import set_num_threads
    torch.set_num_threads(n)
    set_num_threads(n)

def _demo(args: argparse.Namespace) -> int:
    rng = np.random.default_rng(args.seed)
    print("larimar-ext", json.dumps(info(), indent=2))

    # 1. Larimar episode: addresses from a prior, least-squares write, read back.
    b, n, k, c = 32, 16, 512, 768
    prior = (rng.standard_normal((k, c)) / np.sqrt(c)).astype(np.float32)
    z = rng.standard_normal((b, n, c)).astype(np.float32)
    t0 = time.perf_counter()
    prior_pinv = pinv_address(np.eye(c, dtype=np.float32), prior)  # (C, K), once per prior
    t_prior = time.perf_counter() - t0

    def episode() -> np.ndarray:
        # what benchmarks/bench_episode.py times as "ours" (the README's write + read row):
        # W = Z M0^+, M = lstsq_write(W, Z), then the read of Z through M's pseudo-inverse
        w = (z.reshape(-1, c) @ prior_pinv).reshape(b, n, k)
        m = lstsq_write(w, z)
        return read(pinv_address(z, m), m)

    times = []
    for _ in range(6):                 # the first call pays thread start-up and page faults
        t0 = time.perf_counter()
        z_read = episode()
        times.append(time.perf_counter() - t0)
    err = np.linalg.norm(z_read - z) / np.linalg.norm(z)
    print(f"\nepisodes: B={b} N={n} K={k} C={c}, reconstruction rel. error {err:.2e}\n"
          f"  prior pseudo-inverse: {1e3 * t_prior:.1f} ms (once per prior, not part of "
          f"write + read)\n"
          f"  write + read: first call {1e3 * times[0]:.1f} ms, median of the next 5 "
          f"{1e3 * float(np.median(times[1:])):.1f} ms\n"
          f"  (addresses from the prior, lstsq_write, pinv_address, read: the path that "
          f"benchmarks/bench_episode.py\n   times for the README's write + read row, as the "
          f"median of repeats after warm-up on a quiet machine)")

    # 2. Sequential write and forget keep the batch least-squares answer.
    mem = EpisodicMemory(k, c, prior=prior)
    mem.write(z[0])
    mem.update(z[1, :4], (z[1, :4] @ prior_pinv), alpha=1.0)
    mem.update(z[1, :4], (z[1, :4] @ prior_pinv), alpha=-1.0)
    again = EpisodicMemory(k, c, prior=prior)
    again.write(z[0])
    drift = np.linalg.norm(mem.memory - again.memory) / np.linalg.norm(again.memory)
    print(f"write 4 rows then forget them: memory differs from never writing them by {drift:.1e}")

    # 3. Fixed-key memory: exact search and one-hot reads.
    kv = KeyValueMemory(384, 384, metric="cosine")
    keys = rng.standard_normal((args.keys, 384)).astype(np.float32)
    values = rng.standard_normal((args.keys, 384)).astype(np.float32)
    t0 = time.perf_counter()
    kv.add(keys, values)
    t1 = time.perf_counter()
    probe = rng.integers(0, args.keys, 64)
    got = kv.read(keys[probe] + 0.01 * rng.standard_normal((64, 384)).astype(np.float32))
    t2 = time.perf_counter()
    exact = bool(np.array_equal(got, values[probe]))
    print(f"key-value memory: {len(kv)} keys ({kv.nbytes / 2**20:.0f} MiB) added in "
          f"{t1 - t0:.2f} s; 64 noisy queries read back their values exactly: {exact} "
          f"({1e3 * (t2 - t1):.1f} ms)")
    return 0 if err < 1e-3 and drift < 1e-4 and exact else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="larimar-ext", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print version, BLAS and threading")
    bench = sub.add_parser("bench", help="write/address/read/search/update throughput beside "
                                         "numpy and this machine's ceilings",
                           description=_throughput_doc())
    _bench_throughput_parser(bench)
    demo = sub.add_parser("demo", help="run the memory ops end to end on random data")
    demo.add_argument("--keys", type=int, default=100_000)
    demo.add_argument("--seed", type=int, default=0)
    for name, helptext in (("passkey", "passkey retrieval through the host memory (built-in "
                                        "filler, no data needed)"),
                           ("needle", "needle in a haystack of .txt files through the host "
                                      "memory")):
        _bench_parser(sub.add_parser(name, help=helptext, description=helptext), name)
    _ruler_parser(sub.add_parser(
        "ruler", help="RULER's needle suite (its own output folders) through the memory",
        description="Ingest each RULER sample's context, ask its question with its answer "
                    "prefix, score with RULER's string_match_all; writes records.jsonl "
                    "(resumable), ruler.json, ruler.md and ruler.png to --out."))
    from .training import evaluate as _evaluate, train as _train   # no torch import here
    _train.add_arguments(sub.add_parser("train", help="train a Larimar model (default recipe)",
                                        description=_train.__doc__.split("\n")[0]))
    _evaluate.add_arguments(sub.add_parser("evaluate", help="reconstruction accuracy of a model",
                                           description=_evaluate.__doc__.split("\n")[0]))
    args = parser.parse_args(argv)
    if args.command == "train":
        print(f"saved {_train.train(args)}")
        return 0
    if args.command == "evaluate":
        print(json.dumps(_evaluate.run(args), indent=2))
        return 0
    if args.command == "info":
        print(json.dumps(info(), indent=2))
        return 0
    if args.command == "bench":
        return _bench_throughput(args, bench)
    if args.command in ("passkey", "needle"):
        return _bench(args, parser)
    if args.command == "ruler":
        return _ruler(args, parser)
    return _demo(args)


def _throughput_doc() -> str:
    from . import throughput
    return throughput.__doc__.split("\n\n")[0].replace("\n", " ")


def _ints(text: str, count: Optional[int], name: str) -> Optional[list]:
    """A comma list of positive integers ("32,16,512,768"); "0" or "none": skip (None)."""
    if text.strip().lower() in ("0", "none", "off"):
        return None
    try:
        out = [int(x) for x in text.split(",")]
    except ValueError:
        out = []
    if not out or any(x < 1 for x in out) or (count is not None and len(out) != count):
        raise ValueError(f"{name}: expected {count or 'some'} positive integers separated by "
                         f"commas, or 0 to skip, got {text!r}")
    return out


def _bench_throughput_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--episode", default="32,16,512,768",
                   help="B,N,K,C of the episode ops (0: skip)")
    p.add_argument("--keys", type=int, default=1_000_000, help="keys searched (0: skip)")
    p.add_argument("--key-dim", type=int, default=384, help="key width")
    p.add_argument("--batches", default="1,256", help="query batch sizes, comma list")
    p.add_argument("--k", type=int, default=1, help="neighbours per query")
    p.add_argument("--sequential", default="1000,768,1000,1",
                   help="K,C,rows,rows per update of the sequential writes (0: skip)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--threads", type=int, default=None, help="kernel threads (default: all)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per op after warm-up")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")


def _bench_throughput(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from . import set_num_threads, throughput
    try:
        episode = _ints(args.episode, 4, "--episode")
        sequential = _ints(args.sequential, 4, "--sequential")
        batches = _ints(args.batches, None, "--batches") or []
        for name, v in (("--keys", args.keys), ("--key-dim", args.key_dim), ("--k", args.k),
                        ("--repeats", args.repeats)):
            if v < (0 if name == "--keys" else 1):
                raise ValueError(f"{name}: expected a positive integer, got {v}")
        if args.keys and args.k > args.keys:
            raise ValueError(f"--k: expected at most --keys ({args.keys}), got {args.k}")
        if args.threads is not None:
            set_num_threads(args.threads)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    result = throughput.run(episode, args.keys, args.key_dim, batches, args.k, sequential,
                            args.dtype, repeats=args.repeats)
    result["machine"] = info()
    print(json.dumps(result, indent=2) if args.json else throughput.format_table(result))
    return 0


def _add_int8_values(p: argparse.ArgumentParser) -> None:
    p.add_argument("--int8-values", action="store_true",
                   help="encode values with an int8 copy of the encoder (faster ingest on the "
                        "CPU; recall mode takes segment keys from the same pass, paper-mode "
                        "prefix keys stay float)")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu",
                   help="where the Larimar model runs: cpu (default), cuda, cuda:1, ...; the "
                        "memory stays in host memory and only readouts cross to the device "
                        "(the int8 copies are CPU only; the in-context baseline runs on the "
                        "CPU)")


def _check_device(args: argparse.Namespace) -> None:
    """Raises ValueError naming the argument when --device cannot run the model here."""
    if args.device == "cpu":
        return
    import torch
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type != "cuda":
        raise ValueError(f"device: expected cpu, cuda or cuda:N, got {args.device!r}")
    if not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device: {args.device!r} is not available on this machine")
    for name in ("int8_values", "int8_answers"):
        if getattr(args, name):
            raise ValueError(f"{name}: the int8 copies run on the CPU only, not on "
                             f"{args.device!r}")


def _add_answer_precision(p: argparse.ArgumentParser) -> None:
    answers = p.add_mutually_exclusive_group()
    answers.add_argument("--bf16-answers", action="store_true",
                         help="generate answers with a bfloat16 copy of the decoder (about "
                              "half the answer time on a CPU with AVX-512 BF16; answers may "
                              "differ)")
    answers.add_argument("--int8-answers", action="store_true",
                         help="generate answers with an int8 copy of the decoder (a quarter "
                              "of the weight bytes a step streams, on any CPU; answers may "
                              "differ)")


def _bench_parser(p: argparse.ArgumentParser, task: str) -> None:
    p.add_argument("--context", default="4k",
                   help="context sizes in decoder tokens, comma list with k/m suffixes "
                        "(1k ... 10m), e.g. 32k,128k,1m")
    if task == "passkey":
        p.add_argument("--digits", default="5", help="passkey lengths, comma list (e.g. 3,4,5)")
    else:
        p.add_argument("--haystack-dir", required=True,
                       help="folder of .txt files (e.g. ../shared/data/paul_graham_essays)")
    p.add_argument("--depths", default="0,25,50,75,100", help="needle depths in percent")
    p.add_argument("--trials", type=int, default=1 if task == "needle" else 5,
                   help="trials per cell (passkey: a new random key each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None,
                   help="a saved LarimarModel folder (default: the trained default model)")
    p.add_argument("--prefix-words", type=int, default=4,
                   help="words of a segment's start that make its key")
    p.add_argument("--mode", choices=("recall", "paper"), default="recall",
                   help="recall (default): dense + lexical keys, several readouts; paper: "
                        "Nelson et al.'s prefix keys and one readout")
    p.add_argument("--no-prefix", action="store_true",
                   help="paper-mode ablation: keys from whole segments instead of prefixes")
    _add_int8_values(p)
    _add_answer_precision(p)
    _add_device(p)
    p.add_argument("--max-tokens", type=int, default=None,
                   help="largest segment, decoder tokens (default: the model's slots per "
                        "segment, 32 for the default model; 64 for other models)")
    p.add_argument("--k", type=int, default=None,
                   help="rows read per question (recall: at most this many readouts, default "
                        "6; paper: default 1, > 1 Gaussian weights)")
    p.add_argument("--baseline", choices=("memory", "in-context"), default="memory",
                   help="memory: the Larimar pipeline; in-context: SmolLM2-135M-Instruct with "
                        "the context in its prompt (truncated beyond 8192 tokens; slow)")
    p.add_argument("--out", default="longcontext-results",
                   help="folder for the JSON of every trial and the PNG heatmaps")
    p.add_argument("--threads", type=int, default=None,
                   help="torch and kernel threads (default: theirs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .longcontext import bench, tasks

    # check every argument before a model is loaded (minutes for the in-context baseline)
    try:
        contexts = tasks.parse_list(args.context, "context", str)
        contexts = [tasks.parse_context_size(c, "context") for c in contexts]
        depths = tasks.parse_list(args.depths, "depths", float, 0.0, 100.0)
        digits = (tasks.parse_list(args.digits, "digits", int, 1, 18)
                  if args.command == "passkey" else None)
        for name in ("trials", "prefix_words", "max_tokens", "k"):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                raise ValueError(f"{name.replace('_', '-')}: expected an integer >= 1, "
                                 f"got {getattr(args, name)}")
        if args.seed < 0:
            raise ValueError(f"seed: expected an integer >= 0, got {args.seed}")
        if args.no_prefix and args.baseline != "memory":
            raise ValueError("no-prefix: only applies to --baseline memory")
        if args.no_prefix and args.mode != "paper":
            raise ValueError("no-prefix: the prefix-key ablation is a paper-mode option "
                             "(--mode paper)")
        if args.command == "needle":
            from pathlib import Path
            if not Path(args.haystack_dir).is_dir():
                raise ValueError(f"haystack-dir: not a folder: {args.haystack_dir!r}")
        _check_device(args)
    except ValueError as exc:
        parser.error(str(exc))
    if args.threads is not None:
        _set_threads(args.threads)
    system = "in-context" if args.baseline == "in-context" else (
        "memory-noprefix" if args.no_prefix else
        "memory-paper" if args.mode == "paper" else "memory")
    model = None
    if system != "in-context":
        model = _load_model(args)
        if model is None:
            return 2
    common = dict(contexts=contexts, depths=depths, trials=args.trials, seed=args.seed,
                  system=system, prefix_words=args.prefix_words, max_tokens=args.max_tokens,
                  int8_values=args.int8_values,
                  k=args.k, out=args.out, progress=not args.no_progress)
    if args.command == "passkey":
        result = bench.run_passkey(model, digits=digits, **common)
    else:
        result = bench.run_needle(model, args.haystack_dir, **common)
    _print_summary(result)
    for f in result.get("files", []):
        print(f"wrote {f}")
    return 0


def _ruler_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True,
                   help="RULER output folder: <length>/<task>/validation.jsonl "
                        "(e.g. ../shared/data/ruler_niah)")
    p.add_argument("--out", required=True, help="folder for records, table and heatmap")
    p.add_argument("--lengths", default=None, help="comma list of lengths (default: all)")
    p.add_argument("--tasks", default=None, help="comma list of task folders (default: all)")
    p.add_argument("--limit", type=int, default=None, help="first N samples per length and task")
    p.add_argument("--system", choices=("memory", "in-context"), default="memory",
                   help="memory: the long-context memory; in-context: SmolLM2 with the whole "
                        "input in its prompt (slow, cut beyond 8192 tokens)")
    p.add_argument("--mode", choices=("recall", "paper"), default="recall",
                   help="memory mode (recall: the default pipeline; paper: prefix keys, one "
                        "readout)")
    p.add_argument("--model", default=None, help="a saved LarimarModel folder")
    p.add_argument("--threshold", type=float, default=None,
                   help="confidence below which the memory answers 'not found'")
    _add_int8_values(p)
    _add_answer_precision(p)
    _add_device(p)
    p.add_argument("--threads", type=int, default=None, help="torch and kernel threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _ruler(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .longcontext import ruler

    try:
        lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else None
    except ValueError:
        parser.error(f"lengths: expected a comma list of integers, got {args.lengths!r}")
    tasks = args.tasks.split(",") if args.tasks else None
    if args.limit is not None and args.limit < 1:
        parser.error(f"limit: expected an integer >= 1, got {args.limit}")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        parser.error(f"threshold: expected a number in [0, 1], got {args.threshold}")
    try:
        samples = ruler.load_samples(args.data, lengths, tasks, args.limit)
    except ValueError as exc:
        parser.error(str(exc))
    if args.system == "in-context" and args.int8_values:
        parser.error("int8_values: the in-context system has no memory to encode values for")
    try:
        _check_device(args)
    except ValueError as exc:
        parser.error(str(exc))
    if args.threads is not None:
        _set_threads(args.threads)
    if args.system == "in-context":
        system, name = ruler.InContextSystem(), "in-context"
    else:
        model = _load_model(args)
        if model is None:
            return 2
        kw = {} if args.threshold is None else {"threshold": args.threshold}
        if args.int8_values:
            kw["int8_values"] = True
        system = ruler.MemorySystem(model, args.mode, **kw)
        name = f"memory-{args.mode}"
    config = {k: getattr(args, k) for k in ("data", "lengths", "tasks", "limit", "system",
                                            "mode", "model", "threshold", "int8_values",
                                            "bf16_answers", "int8_answers", "device")}
    result = ruler.run_ruler(samples, system, name, args.out, not args.no_progress, config)
    print(ruler.markdown_table(result["summary"], name))
    for f in result["files"]:
        print(f"wrote {f}")
    return 0


def _load_model(args: argparse.Namespace):
    """The LarimarModel of ``--model`` (default: the trained one), or None after a one-line
    error (no trained model, a bad folder)."""
    from .longcontext import bench
    try:
        model = bench.load_larimar(args.model)
    except (RuntimeError, OSError) as exc:
        print(f"larimar-ext {args.command}: model: {exc}", file=sys.stderr)
        return None
    if args.device != "cpu":
        model.to(args.device)
    try:
        if args.bf16_answers:
            model.bf16_answers(True)
        if args.int8_answers:
            model.int8_answers(True)
    except ValueError as exc:
        print(f"larimar-ext {args.command}: {exc}", file=sys.stderr)
        return None
    return model


def _print_summary(result: dict) -> None:
    def fmt(v):
        return "-" if v is None else f"{v:.2f}"

    print(f"\n{result['task']} [{result['system']}]: {len(result['trials'])} trials, "
          f"{result['seconds']:.0f} s")
    print("| context | digits | depth | n | accuracy | retrieval@1 | decoding given segment "
          "| truncated |")
    print("|---|---|---|---|---|---|---|---|")
    for r in result["summary"]:
        print(f"| {r['context']:,} | {r['digits'] or '-'} | {r['depth']:g} | {r['n']} | "
              f"{fmt(r['accuracy'])} | {fmt(r['retrieval_at_1'])} | "
              f"{fmt(r['decoding_given_segment'])} | {fmt(r['truncated'])} |")
    cold = [t["ingest"] for t in result["trials"] if t.get("ingest")]
    if cold:
        first = cold[0]
        print(f"first ingest (cold encoder cache): {first['tokens']:,} tokens, "
              f"{first['tokens_per_s']:,.0f} tokens/s, {first['rows']:,} rows, "
              f"{first['host_bytes'] / 2**20:.1f} MiB on the host")


if __name__ == "__main__":
    sys.exit(main())
