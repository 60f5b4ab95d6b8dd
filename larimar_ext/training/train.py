"""``larimar-ext train``: the training recipe of the default Larimar model.

Episodes of ``episode_size`` sentences (real text and generated sentences with numbers,
names, dates and codes; ``data.py``) are encoded, written to a differentiable memory per
episode (W = Z M0^+, M = W^+ Z), read back with each segment's own latent, and the readouts
are trained to reconstruct their segments (``LarimarModel.slot_loss``). The encoder and the
decoder stay frozen (unless ``--train-encoder-layers``); what trains is the aligned pooler,
the soft-token prefix and the prior memory, a few MB.

CPU and CUDA (bf16 autocast there); resumes from ``OUT/checkpoint.pt``; logs JSON lines to
``OUT/log.jsonl`` with a held-out evaluation every ``--eval-every`` steps; writes the model
to ``OUT/model`` (``LarimarModel.from_pretrained(OUT/model)`` loads it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["add_arguments", "train"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (checkpoint, log, model)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--episodes", type=int, default=4, help="episodes per step (batch)")
    p.add_argument("--episode-size", type=int, default=16, help="segments per episode")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--generated-fraction", type=float, default=0.5,
                   help="share of generated (number-bearing) sentences in an episode")
    p.add_argument("--sources", default="python,man,fortunes",
                   help="real text sources (comma list of python, man, fortunes)")
    p.add_argument("--max-real", type=int, default=None, help="cap on real sentences")
    p.add_argument("--limit-files", type=int, default=None, help="cap on files read per source")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--eval-size", type=int, default=256)
    p.add_argument("--train-encoder-layers", type=int, default=0)
    p.add_argument("--memory-size", type=int, default=128,
                   help="K of the episodic memory (its pseudo-inverses dominate a CPU step "
                        "after the encoder; any K >= the episode size reads episodes back)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop (checkpointed, resumable) after this many minutes")


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup)
                                                          / max(1, total - warmup))))


def _atomic_save(obj, path: Path) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _quick_eval(model, texts: list[str], episode_size: int) -> dict:
    """Token and sentence exact match of slot decoding, through the differentiable memory."""
    import torch

    with torch.no_grad():
        return _slot_accuracy(model, texts, episode_size)


def _slot_accuracy(model, texts: list[str], episode_size: int) -> dict:
    model.eval()
    n = len(texts) - len(texts) % episode_size
    seg = model.aligner(texts[:n])
    out = model.forward_aligned(seg, episode_size)
    got = model.slot_tokens(out.z_read.reshape(n, -1))
    exact = tokens = right = 0
    for ids, live, target in zip(got, seg.live, seg.target_ids):
        want = target[live].tolist()
        exact += ids == want
        tokens += len(want)
        right += sum(a == b for a, b in zip(ids, want))
    model.train()
    return {"eval_loss": float(out.loss), "eval_token_acc": right / max(tokens, 1),
            "eval_sentence_exact": exact / max(n, 1)}


def train(args: argparse.Namespace) -> Path:
    import torch
    from tqdm import tqdm

    from ..model.pretrained import build_model
    from ..model.saved import trained_state
    from .data import build_corpus

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    model = build_model({"trainable_encoder_layers": args.train_encoder_layers,
                         "memory_size": args.memory_size}).to(device)
    model.train()
    limit = model.aligner.num_slots
    def fits(s):   # a whole segment in the slots
        return model.aligner.decoder_length(s) <= limit

    t0 = time.time()
    corpus = build_corpus(sources=[s for s in args.sources.split(",") if s],
                          generated=max(20_000, args.steps * args.episodes * args.episode_size),
                          eval_size=args.eval_size, seed=args.seed, max_real=args.max_real,
                          limit_files=args.limit_files)
    corpus.train_real = [s for s in corpus.train_real if fits(s)]
    corpus.eval_real = [s for s in corpus.eval_real if fits(s)]
    print(f"corpus: {len(corpus.train_real)} real + {len(corpus.train_generated)} generated "
          f"training sentences, {len(corpus.eval_real)} + {len(corpus.eval_generated)} held out "
          f"({time.time() - t0:.0f} s)", flush=True)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    ckpt_path, log_path = out / "checkpoint.pt", out / "log.jsonl"
    step = 0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        result = model.load_state_dict(ckpt["model"], strict=False)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        missing = sorted(trainable & set(result.missing_keys))
        if missing or result.unexpected_keys:
            raise ValueError(f"{ckpt_path}: written by another model configuration (missing "
                             f"{missing[:5]}, unexpected {result.unexpected_keys[:5]}); "
                             f"use a new --out")
        opt.load_state_dict(ckpt["optimizer"])
        step = int(ckpt["step"])
        print(f"resumed from {ckpt_path} at step {step}", flush=True)
    episodes = corpus.episodes(args.episode_size, args.generated_fraction, seed=args.seed + step)
    eval_texts = (corpus.eval_generated[:args.eval_size // 2]
                  + corpus.eval_real[:args.eval_size // 2])

    def checkpoint():
        _atomic_save({"model": trained_state(model), "optimizer": opt.state_dict(), "step": step},
                      ckpt_path)

    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    started, seen_tokens = time.time(), 0
    bar = tqdm(total=args.steps, initial=step, desc="train", dynamic_ncols=True)
    with log_path.open("a") as log:
        while step < args.steps:
            texts = [s for _ in range(args.episodes) for s in next(episodes)]
            seg = model.aligner(texts)
            for g in opt.param_groups:
                g["lr"] = args.lr * _lr_factor(step, args.warmup, args.steps)
            t_step = time.time()
            with autocast:
                loss = model.forward_aligned(seg, args.episode_size).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            tokens = int(seg.live.sum())
            seen_tokens += tokens
            dt = time.time() - t_step
            loss_value = loss.item()
            record = {"step": step, "loss": loss_value, "step_s": dt, "tokens_per_s": tokens / dt,
                      "lr": opt.param_groups[0]["lr"]}
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", s_per_step=f"{dt:.2f}")
            if step % args.eval_every == 0 or step == args.steps:
                record.update(_quick_eval(model, eval_texts, args.episode_size))
                bar.write(json.dumps(record))
            log.write(json.dumps(record) + "\n")
            log.flush()
            if step % args.save_every == 0 or step == args.steps:
                checkpoint()
            if args.max_minutes and time.time() - started > 60 * args.max_minutes:
                checkpoint()
                bar.write(f"stopping after {args.max_minutes} minutes at step {step} (resumable)")
                break
    bar.close()
    elapsed = time.time() - started
    extra = {"training": {"steps": step, "device": str(device), "episodes_per_step": args.episodes,
                          "episode_size": args.episode_size, "lr": args.lr,
                          "generated_fraction": args.generated_fraction,
                          "sources": args.sources, "seconds_this_run": round(elapsed, 1),
                          "slot_tokens_per_s_this_run": round(seen_tokens / max(elapsed, 1e-9), 1)}}
    return model.save_pretrained(out / "model", extra)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="larimar-ext train", description=__doc__.split("\n")[0])
    add_arguments(p)
    path = train(p.parse_args(argv))
    print(f"saved {path}")
    return 0
