"""Long-context recall through the host fixed-key memory (Nelson et al. 2024).

- ``LongContextMemory``: segment, encode, write to a ``KeyValueMemory`` on the host, answer
  from one readout (needs torch).
- ``Segmenter``, ``split_sentences``: sentence-aware segmentation (no torch).
- ``tasks``: passkey and needle-in-a-haystack contexts and scoring (no torch).
- ``bench``: the benchmark runner shared by the command line and benchmarks/.
"""

from __future__ import annotations

from typing import Any

from .segment import Segmenter, TokenCounter, prefix_text, split_sentences

__all__ = ["LongContextMemory", "EncodingCache", "IngestStats", "Answer", "Segmenter",
           "TokenCounter", "prefix_text", "split_sentences"]

_LAZY = {"LongContextMemory", "EncodingCache", "IngestStats", "Answer"}


def __getattr__(name: str) -> Any:
    # memory.py needs torch: imported on first use only
    if name in _LAZY:
        from . import memory
        return getattr(memory, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
