"""Greedy decoding of a batch of token-id inputs, each row drafting from its own input.

transformers' prompt lookup (``generate(prompt_lookup_num_tokens=...)``) takes one row at a
time. A question with several passages decodes each passage as a row of one batch, so it
fell back to one token a pass (docs/LONGCONTEXT.md, "Answers drafted from their own
passages"). Here every row drafts up to ``draft_tokens`` tokens that continue the longest
n-gram match of its last tokens in its own input and output. One decoder pass then checks
all rows' drafts at once, and each row keeps the greedy tokens that agree plus the
decoder's own next token.

Rows accept different numbers of tokens, but the KV cache has one length. So the
positions a row rejected stay in the cache, masked out of every later pass, and each
row's position ids count only what it kept. What each row attends to is exactly its greedy
prefix. The output is greedy decoding's, up to the rounding of a different matrix shape,
as with transformers' own prompt lookup (tests/test_default_model.py compares the text
with one token a pass).
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
from torch import Tensor, nn

__all__ = ["draft", "greedy_lookup"]

_NGRAM = 3   # longest n-gram matched (transformers' default is 2; 3 follows a passage's copy)
# shortest: a draft after one matching token is mostly wrong, and a wrong draft makes a pass
# of the whole batch cost about twice a one-token step for one token
_MIN_NGRAM = 2


def draft(tokens: Sequence[int], size: int, ngram: int = _NGRAM,
          min_ngram: int = _MIN_NGRAM) -> List[int]:
    """Up to ``size`` tokens that follow the first earlier occurrence of the longest suffix
    of ``tokens`` (n = ngram .. min_ngram) in ``tokens``; [] if none repeats."""
    n_tok = len(tokens)
    for n in range(min(ngram, n_tok - 1), min_ngram - 1, -1):
        tail = list(tokens[n_tok - n:])
        for start in range(n_tok - n):
            if list(tokens[start:start + n]) == tail:
                return list(tokens[start + n:start + n + size])
    return []


@torch.no_grad()
def greedy_lookup(decoder: nn.Module, rows: Sequence[Tensor], max_new_tokens: int,
                  draft_tokens: int, pad_id: int, eos_ids: Sequence[int],
                  done: Optional[Callable[[List[int]], bool]] = None) -> List[List[int]]:
    """New token ids of each row of ``rows`` (token ids (L_j,)): greedy, at most
    ``max_new_tokens``, a row ending at an id of ``eos_ids`` (kept) or once ``done(new ids)``
    says so, cut exactly where one token at a time would have stopped."""
    if max_new_tokens < 1 or not rows:
        return [[] for _ in rows]
    dev = next(decoder.parameters()).device
    width = max(int(r.numel()) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=dev)
    mask = torch.zeros_like(ids)
    for j, r in enumerate(rows):
        ids[j, width - r.numel():] = r.to(dev)
        mask[j, width - r.numel():] = 1
    out = decoder(input_ids=ids, attention_mask=mask,
                  position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True,
                  logits_to_keep=1)
    cache = out.past_key_values
    last = out.logits[:, -1].argmax(-1).tolist()        # each row's next token, not yet fed
    seqs = [r.tolist() for r in rows]
    new: List[List[int]] = [[] for _ in rows]
    finished = [False] * len(rows)
    position = [int(r.numel()) for r in rows]
    eos = set(eos_ids)

    def take(j: int, token: int) -> None:
        new[j].append(token)
        if (token in eos or len(new[j]) >= max_new_tokens
                or (done is not None and done(new[j]))):
            finished[j] = True

    for j, t in enumerate(last):
        take(j, t)
    while not all(finished):
        drafts = [[] if finished[j] else draft(seqs[j] + new[j], draft_tokens)
                  for j in range(len(rows))]
        span = 1 + max(len(d) for d in drafts)
        block = torch.full((len(rows), span), pad_id, dtype=torch.long, device=dev)
        keep = torch.zeros_like(block)
        for j, d in enumerate(drafts):
            block[j, 0] = last[j]
            block[j, 1:1 + len(d)] = torch.tensor(d, dtype=torch.long)
            keep[j, :0 if finished[j] else 1 + len(d)] = 1
        pos = torch.tensor(position, device=dev)[:, None] + torch.arange(span, device=dev)
        out = decoder(input_ids=block, attention_mask=torch.cat([mask, keep], 1),
                      position_ids=pos, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        greedy = out.logits.argmax(-1).tolist()               # (B, span)
        for j, d in enumerate(drafts):
            if finished[j]:
                continue
            m = 0
            while m < len(d) and d[m] == greedy[j][m]:
                m += 1
            keep[j, 1 + m:] = 0                 # the rejected drafts: masked from now on
            position[j] += 1 + m
            for t in greedy[j][:m + 1]:
                if finished[j]:
                    break
                take(j, t)
            last[j] = greedy[j][m]
        mask = torch.cat([mask, keep], 1)
    return new
