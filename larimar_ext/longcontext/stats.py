"""What one ``LongContextMemory.ingest`` call did (``IngestStats``). The memory keeps its
running totals in the same form (``LongContextMemory.totals``, saved with the memory and
reported by ``stats``). No torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict

__all__ = ["IngestStats"]


@dataclass
class IngestStats:
    """What one ``ingest`` call did. Tokens are decoder tokens; ``seconds`` is wall time
    from the first text to the last write. Its stages: ``segment_seconds`` (splitting the
    text and the bookkeeping of every segment, in the caller's thread), ``encode_seconds``
    (the encoder, caller's thread) and ``write_seconds`` (the host writes and the lexical
    index, in the writer thread: they overlap the encoding, so the three need not sum to
    ``seconds``)."""
    texts: int = 0
    segments: int = 0               # segment instances in the text
    new_segments: int = 0           # distinct segments not seen before (each encoded once)
    encoded_keys: int = 0           # key texts run through the encoder
    encoded_values: int = 0         # segments run through the encoder
    tokens: int = 0
    seconds: float = 0.0
    tokens_per_s: float = 0.0
    rows: int = 0                   # memory rows after the call
    host_bytes: int = 0             # bytes the KeyValueMemory stores after the call
    split_sentences: int = 0        # sentences cut into several segments (cumulative)
    segment_seconds: float = 0.0
    encode_seconds: float = 0.0
    write_seconds: float = 0.0

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)
