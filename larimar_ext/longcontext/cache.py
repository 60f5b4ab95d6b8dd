"""The encoding cache of ``LongContextMemory``: encodings of texts already seen.

A memory keeps the key vectors of the key texts it has encoded, so that every segment with
a known key text is written with the bitwise same key (and, in paper mode, lands in the
same row); a cache shared by several memories (``keep_values=True``) also keeps values, so
benchmark trials over one haystack run the encoder once. numpy only: no torch.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

__all__ = ["EncodingCache"]


class EncodingCache:
    """Encodings of texts already seen, shared by the memories it is given to.

    ``keys``: key text -> key (H_enc,) float32; ``values``: segment text -> the stored
    value, z (C,) or its slot ids (P,), float32 (``value_kind``).
    A memory always keeps the keys of its prefixes (so segments sharing a prefix get the
    bitwise same key vector); a cache with ``keep_values=True`` also keeps values, which lets
    benchmark trials over the same haystack skip the encoder for texts an earlier trial
    encoded (the results are the same up to float rounding of a different batch padding).
    ``encoder``: which of the model's encoders made them ("float" or "int8", None before the
    first ingest): the two give different keys and, on a few slots, different tokens, so a
    memory that encodes with the other one refuses the cache instead of mixing them.
    """

    def __init__(self, keep_values: bool = False) -> None:
        self.keep_values = bool(keep_values)
        self.keys: Dict[str, np.ndarray] = {}
        self.values: Dict[str, np.ndarray] = {}
        self.model_id: Optional[int] = None     # the model the encodings came from
        self.value_kind: Optional[str] = None   # "latent" or "tokens" (LongContextMemory)
        self.encoder: Optional[str] = None      # "float" or "int8" (LongContextMemory)

    def nbytes(self) -> int:
        return (sum(v.nbytes for v in self.keys.values())
                + sum(v.nbytes for v in self.values.values()))
