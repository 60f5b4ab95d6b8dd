"""Decoder conditioning on a readout z (docs/DESIGN.md section 3), for any Hugging Face causal LM.

Two paths, both linear in z and without bias:

- embedding path: ``EmbeddingConditioner`` adds ``Linear(C -> H)(z)`` to every input token
  embedding through a forward hook on ``decoder.get_input_embeddings()``, so it also acts
  inside ``generate()`` (every step embeds its new token through the same module);
- memory path: ``MemorySlot`` maps z to one extra key and value position per decoder layer
  and returns them as a real ``transformers.DynamicCache`` of length 1. Shapes are
  (B, num_key_value_heads, 1, head_dim) per layer (grouped-query attention has fewer key/value
  heads than query heads). The slot sits at position 0, where rotary embeddings are the
  identity, so its keys are stored unrotated; the real tokens then run at positions 1, 2, ...
  (the attention mask gets a leading 1 for the slot).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import Tensor, nn

__all__ = ["DecoderGeometry", "EmbeddingConditioner", "MemorySlot"]


class DecoderGeometry:
    """Layers, hidden size, key/value heads and head size of a causal LM's attention."""

    def __init__(self, config) -> None:
        cfg = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        self.num_layers = int(cfg.num_hidden_layers)
        self.hidden_size = int(cfg.hidden_size)
        self.num_heads = int(cfg.num_attention_heads)
        kv = getattr(cfg, "num_key_value_heads", None)
        self.num_kv_heads = int(kv) if kv else self.num_heads
        hd = getattr(cfg, "head_dim", None)
        self.head_dim = int(hd) if hd else self.hidden_size // self.num_heads
        self.config = config

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim


class EmbeddingConditioner(nn.Module):
    """Adds ``proj(z)`` to the output of a decoder's input-embedding module while active."""

    def __init__(self, code_size: int, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(code_size, hidden_size, bias=False)
        self._z: Optional[Tensor] = None
        self._handle = None

    def attach(self, embeddings: nn.Module) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle = embeddings.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        z = self._z
        if z is None:
            return output
        shift = self.proj(z.to(self.proj.weight.dtype)).to(output.dtype)  # (b, H)
        if output.shape[0] != shift.shape[0]:
            if output.shape[0] % shift.shape[0]:
                raise ValueError(f"readout batch {shift.shape[0]} does not divide the decoder "
                                 f"batch {output.shape[0]}")
            # generate() expands the batch (num_return_sequences, beams) by repeat_interleave
            shift = shift.repeat_interleave(output.shape[0] // shift.shape[0], dim=0)
        return output + shift.unsqueeze(1)

    @contextlib.contextmanager
    def active(self, z: Optional[Tensor]) -> Iterator[None]:
        previous, self._z = self._z, z
        try:
            yield
        finally:
            self._z = previous


class MemorySlot(nn.Module):
    """z (B, C) -> one key/value position per decoder layer, as a length-1 DynamicCache.

    ``shared_kv=True`` is the IBM/Optimus layout: one Linear(C -> L * kv_size) whose output
    is used as both key and value; otherwise separate key and value projections
    (Linear(C -> 2 * L * kv_size)).
    """

    def __init__(self, code_size: int, geometry: DecoderGeometry, shared_kv: bool = False) -> None:
        super().__init__()
        self.geometry = geometry
        self.shared_kv = shared_kv
        parts = 1 if shared_kv else 2
        self.proj = nn.Linear(code_size, parts * geometry.num_layers * geometry.kv_size, bias=False)

    def key_values(self, z: Tensor,
                   dtype: Optional[torch.dtype] = None) -> list[tuple[Tensor, Tensor]]:
        g = self.geometry
        out = self.proj(z.to(self.proj.weight.dtype))  # (B, parts * L * kv)
        if dtype is not None:
            out = out.to(dtype)
        b = z.shape[0]
        out = out.view(b, 1 if self.shared_kv else 2, g.num_layers, g.num_kv_heads, 1, g.head_dim)
        keys = out[:, 0]
        values = out[:, 0] if self.shared_kv else out[:, 1]
        return [(keys[:, layer], values[:, layer]) for layer in range(g.num_layers)]

    def cache(self, z: Tensor, dtype: Optional[torch.dtype] = None):
        """A fresh ``DynamicCache`` holding the slot (length 1); generate() extends it."""
        from transformers import DynamicCache

        try:
            cache = DynamicCache(config=self.geometry.config)   # per-layer types (sliding...)
        except TypeError:                                       # transformers < 4.56
            cache = DynamicCache()
        for layer, (k, v) in enumerate(self.key_values(z, dtype)):
            cache.update(k.contiguous(), v.contiguous(), layer)
        return cache
