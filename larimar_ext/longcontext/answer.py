"""What ``LongContextMemory.ask_trace`` returns: the ``Answer`` to one question, the
``Source`` rows it was read from, and ``NOT_FOUND``, the answer when the memory does not
hold one. numpy only: no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

__all__ = ["Answer", "Source", "NOT_FOUND"]

# What ``ask`` answers when the best source's confidence is below the threshold.
NOT_FOUND = "The context does not contain the answer."


@dataclass
class Source:
    """One stored segment an answer was read from: its memory ``row``, ``text``, fused
    ``score`` and the two views' scores (``dense`` cosine, ``lexical`` coverage), and
    ``position``: the segment's first place in the context (segments in document order)."""
    row: int
    text: str
    score: float
    dense: float
    lexical: float
    position: int


@dataclass
class Answer:
    """One question: the answer text and how it was found.

    ``answer``: the decoder's answer, or ``NOT_FOUND`` when ``found`` is False (then
    ``guess`` still holds what the decoder said); ``confidence``: recall mode: the mean of
    the best source's cosine and the share of the query's IDF mass the sources cover
    together; paper mode: the best key's cosine. ``found`` = confidence >= the memory's
    threshold (and, in recall mode, no ``swapped`` term).
    ``sources``: the retrieved rows that were read, best first; ``passages``: the texts the
    decoder got, in document order. ``rows``/``scores``: the top-k memory rows (k,) and their
    scores; ``segments``: the distinct segment texts stored in the top-1 row; ``readout``:
    z_read (C,) of the top row on the host. Recall mode: ``answers``: the distinct answers,
    one per passage when several were read (``answer`` joins them); ``extracted``: True when
    the decoder's answer was not supported by its passage and the passage's own words were
    given instead (``grounding``); ``swapped``: (asked, found) when the best passage states
    the asked fact about something the memory never mentions (then ``found`` is False);
    ``seconds``: (recall mode) wall time of each stage: "encode_query", "search" (both
    views, fusion, selection), "readout" (passages, values by id), "decode" and "check"
    (grounding and the swap check)."""
    answer: str
    answer_prefix: str
    question: Optional[str]
    rows: List[int]
    scores: List[float]
    segments: List[str]
    readout: np.ndarray = field(repr=False)
    confidence: float = 0.0
    found: bool = True
    guess: str = ""
    sources: List[Source] = field(default_factory=list)
    passages: List[str] = field(default_factory=list)
    answers: List[str] = field(default_factory=list)
    extracted: bool = False
    swapped: Optional[Tuple[str, str]] = None
    seconds: Dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.answer
