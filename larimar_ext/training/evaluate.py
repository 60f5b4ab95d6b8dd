"""Reconstruction accuracy of a prefix-path Larimar model (issue: "the default model's
reconstruction accuracy on held-out sentences").

Episodes of ``episode_size`` held-out segments are written to the host ``EpisodicMemory``
(least-squares write through the learned prior), every segment is read back with its own
latent as the query, and the readout is decoded two ways:
- ``slots``: the decoder tokens the readout's slots stand for (nearest input embedding);
- ``decoder``: the frozen decoder generates from the readout (soft tokens in its chat turn),
  prompted with the sentence's words before the number (number sentences) or with its
  first ``prompt_words`` words (whole sentences), and must generate the rest exactly.
Scores: exact match of the embedded number (by digit count) and of the whole sentence.
"""

from __future__ import annotations

import random
import re
from typing import Optional

from .data import is_held_out

__all__ = ["number_sentences", "evaluate_reconstruction"]

# templates not used in training (their wording is new to the model)
_EVAL_TEMPLATES = [
    "The shipment {n} reached the harbor before noon.",
    "Please send the report to desk {n} tomorrow.",
    "Her new phone extension is {n} since Monday.",
    "We counted {n} birds near the old bridge.",
    "The library card {n} expired last winter.",
    "Train {n} stops at every station on weekends.",
]


def number_sentences(digits: int, n: int, seed: int = 1234) -> list[tuple[str, str]]:
    """(sentence, number) pairs with a random ``digits``-digit number in held-out templates."""
    rng = random.Random(seed * 10 + digits)
    out = []
    for _ in range(n):
        num = str(rng.randrange(10 ** (digits - 1), 10 ** digits))
        out.append((rng.choice(_EVAL_TEMPLATES).format(n=num), num))
    assert not any(is_held_out(s) for s, _ in out)
    return out


def _first_number(text: str) -> Optional[str]:
    m = re.search(r"\d+", text)
    return m.group(0) if m else None


def _readouts(model, texts: list[str], episode_size: int):
    """Write ``texts`` episode by episode to the host memory; readouts (n, C)."""
    import torch

    out = []
    for i in range(0, len(texts), episode_size):
        episode = texts[i:i + episode_size]
        model.write(episode)
        out.append(model.read(episode).float().cpu())
    return torch.cat(out)


def evaluate_reconstruction(model, digits=(3, 4, 5), n_per_digit: int = 64,
                            real_sentences: Optional[list[str]] = None, episode_size: int = 16,
                            decoder: bool = True, batch_size: int = 16, seed: int = 1234) -> dict:
    """Exact-match rates of numbers (per digit count) and whole sentences; see module doc."""
    import torch

    with torch.no_grad():
        return _evaluate(model, digits, n_per_digit, real_sentences, episode_size, decoder,
                         batch_size, seed)


def _evaluate(model, digits, n_per_digit, real_sentences, episode_size, decoder, batch_size,
              seed) -> dict:
    tok = model.tokenizer
    results: dict = {"episode_size": episode_size}
    was_training = model.training
    model.eval()
    try:
        for d in digits:
            pairs = number_sentences(d, n_per_digit, seed)
            texts = [s for s, _ in pairs]
            z = _readouts(model, texts, episode_size)
            slot_text = [tok.decode(ids) for ids in model.slot_tokens(z)]
            row = {"n": len(texts),
                   "slots_number": sum(_first_number(t) == num
                                       for t, (_, num) in zip(slot_text, pairs)) / len(texts),
                   "slots_sentence": sum(t.strip() == s
                                         for t, s in zip(slot_text, texts)) / len(texts)}
            if decoder:
                prompts = [s[:s.index(num)].rstrip() for s, num in pairs]
                got = []
                for i in range(0, len(texts), batch_size):
                    got += model.complete(prompts[i:i + batch_size], z[i:i + batch_size],
                                          max_new_tokens=d + 3)
                row["decoder_number"] = sum(_first_number(g) == num
                                            for g, (_, num) in zip(got, pairs)) / len(texts)
                row["examples"] = [[s, p + g]
                                   for (s, _), p, g in list(zip(pairs, prompts, got))[:3]]
            results[f"{d}_digits"] = row
        if real_sentences:
            texts = list(real_sentences)
            z = _readouts(model, texts, episode_size)
            slot_text = [tok.decode(ids).strip() for ids in model.slot_tokens(z)]
            row = {"n": len(texts),
                   "slots_sentence": sum(t == s for t, s in zip(slot_text, texts)) / len(texts)}
            if decoder:
                prompts = [" ".join(s.split()[:3]) for s in texts]
                got = []
                for i in range(0, len(texts), batch_size):
                    got += model.complete(prompts[i:i + batch_size], z[i:i + batch_size],
                                          max_new_tokens=48)
                # the continuation must be the sentence's rest, up to where the decoder stops
                full = [p + g for p, g in zip(prompts, got)]
                row["decoder_sentence"] = sum(f.split("\n")[0].strip() == s
                                              for f, s in zip(full, texts)) / len(texts)
                row["examples"] = [[s, f] for s, f in list(zip(texts, full))[:3]]
            results["sentences"] = row
    finally:
        model.train(was_training)
    return results


def add_arguments(p) -> None:
    p.add_argument("--model", default=None, help="saved model folder (default: the shipped model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=128, help="sentences per digit count and per text kind")
    p.add_argument("--episode-size", type=int, default=16)
    p.add_argument("--no-decoder", action="store_true", help="slot decoding only (fast)")
    p.add_argument("--sources", default="python,man",
                   help="real text sources; held-out sentences come from the training split's "
                        "complement (same seed and caps as `larimar-ext train`)")
    p.add_argument("--max-real", type=int, default=150_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")


def run(args) -> dict:
    import json
    import time

    from ..model import LarimarModel
    from .data import build_corpus

    model = LarimarModel.from_pretrained(args.model, device=args.device)
    limit = model.aligner.num_slots
    corpus = build_corpus(sources=[s for s in args.sources.split(",") if s], generated=1000,
                          eval_size=max(256, args.n), seed=args.seed, max_real=args.max_real)
    real = [s for s in corpus.eval_real if model.aligner.decoder_length(s) <= limit][:args.n]
    real = real[:len(real) - len(real) % args.episode_size]
    t0 = time.time()
    results = evaluate_reconstruction(model, n_per_digit=args.n, real_sentences=real,
                                      episode_size=args.episode_size,
                                      decoder=not args.no_decoder, seed=args.seed + 1234)
    results["seconds"] = round(time.time() - t0, 1)
    results["model"] = str(args.model or "default")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2)
    return results


def main(argv=None) -> int:
    import argparse
    import json

    p = argparse.ArgumentParser(prog="larimar-ext evaluate",
                                description="reconstruction accuracy of a Larimar model")
    add_arguments(p)
    print(json.dumps(run(p.parse_args(argv)), indent=2))
    return 0
