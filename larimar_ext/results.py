"""Named results of the search calls: tuples, so ``ids, scores = memory.search(Q, k)`` keeps
working, with fields read by name (``r.ids``, ``r.scores``) where FAISS's (D, I) and
torch.topk's (values, indices) put them in other orders."""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["SearchResult", "SearchAndReconstructResult"]


class SearchResult(NamedTuple):
    """Exact top-k: ``ids`` int64 (nq, k) and ``scores`` (nq, k), best first."""
    ids: Any
    scores: Any


class SearchAndReconstructResult(NamedTuple):
    """``SearchResult`` and ``values`` (nq, k, value_dim), the stored values of the hits."""
    ids: Any
    scores: Any
    values: Any
