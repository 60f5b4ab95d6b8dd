"""Encoder pooling: token states (B, T, H) and mask (B, T) -> one pooled vector per segment.

The pooled vector goes through ``LarimarModel.encoder_proj`` (Linear -> C) to give z.
``output_size`` tells the model the pooled width.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["masked_mean", "MeanPooler", "ClsPooler", "AttentionPooler", "make_pooler"]


def masked_mean(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean of hidden (B, T, H) over the positions where mask (B, T) is 1 -> (B, H)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class MeanPooler(nn.Module):
    """Masked mean of the last hidden states (sentence-transformers' pooling)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.output_size = int(hidden_size)

    def forward(self, hidden: Tensor, mask: Tensor, encoder_output: Any = None) -> Tensor:
        return masked_mean(hidden, mask)


class ClsPooler(nn.Module):
    """BERT's pooled output (dense + tanh over the first token) when the encoder has a
    pooler, else the first token's state (the IBM Larimar / Optimus encoder)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.output_size = int(hidden_size)

    def forward(self, hidden: Tensor, mask: Tensor, encoder_output: Any = None) -> Tensor:
        pooled = getattr(encoder_output, "pooler_output", None)
        return pooled if pooled is not None else hidden[:, 0]


class AttentionPooler(nn.Module):
    """``num_queries`` learned queries read the token states through a small transformer
    decoder (cross-attention to the tokens, self-attention among the queries); each query
    state is projected to ``slot_size`` numbers and the slots are concatenated, so the
    pooled vector is (B, num_queries * slot_size).

    Mean pooling averages a sentence's exact tokens (digits, names) away; learned queries can
    each keep one part of the segment, which is what reconstruction from z needs."""

    def __init__(self, hidden_size: int, num_queries: int = 32, slot_size: int = 32,
                 num_layers: int = 2, num_heads: int = 6, ffn_size: int = 1024) -> None:
        super().__init__()
        self.num_queries, self.slot_size = int(num_queries), int(slot_size)
        self.output_size = self.num_queries * self.slot_size
        self.queries = nn.Parameter(torch.randn(self.num_queries, hidden_size) * 0.02)
        layer = nn.TransformerDecoderLayer(hidden_size, num_heads, ffn_size, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerDecoder(layer, num_layers)
        self.out = nn.Linear(hidden_size, self.slot_size)

    def forward(self, hidden: Tensor, mask: Tensor, encoder_output: Any = None) -> Tensor:
        q = self.queries.to(hidden.dtype).expand(hidden.shape[0], -1, -1)
        states = self.layers(q, hidden, memory_key_padding_mask=~mask.bool())
        return self.out(states).flatten(1)


def make_pooler(pooler: Any, hidden_size: int) -> nn.Module:
    """A pooler module from a module or one of the names "mean", "cls", "attention"."""
    if isinstance(pooler, nn.Module):
        if not hasattr(pooler, "output_size"):
            raise ValueError("pooler: a module needs an output_size attribute (its pooled width)")
        return pooler
    names = {"mean": MeanPooler, "cls": ClsPooler, "attention": AttentionPooler}
    if pooler not in names:
        raise ValueError(f"pooler: expected an nn.Module or one of {sorted(names)}, got {pooler!r}")
    return names[pooler](hidden_size)
