"""A lexical view of the stored segments: IDF-weighted term coverage, built while streaming.

Dense sentence keys find paraphrases but blur rare strings (names, codes, numbers, uuids):
"faint-water" and "faint-river" embed alike, and in a haystack made only of needles every
row looks the same to them. Exact terms tell such rows apart. A segment's terms are its
lower-cased words, the compounds they form with - _ . / : (a uuid, "faint-water", "3.14")
and, in scripts written without spaces (CJK, kana, Thai) and in Hangul, character bigrams.

A query's score for a row is the share of the query's IDF mass that the row contains,
coverage = sum(idf(t) for t in q & row) / sum(idf(t) for t in q), in [0, 1], with the
BM25 idf log(1 + (N - df + 0.5) / (df + 0.5)) over the N rows indexed so far (segments are
at most a few dozen tokens, so term frequency and length normalisation change little).
Terms in more than half the rows are left out of both sums: they carry almost no
information and their posting lists are the long ones.

Many terms occur in one row (a third of the terms of 18,533 Debian documentation
segments): such a term's posting is the row itself, an int; a second row makes it a
growable int64 ``array`` (amortised appends, copied into numpy to score). On those
segments the index holds 268 bytes a row, where one numpy array per term held 443. An
add is O(terms) and a query O(postings of its rare terms). Nothing here needs torch.
"""

from __future__ import annotations

import math
import re
from array import array
from typing import Dict, List, Set, Tuple, Union

import numpy as np

__all__ = ["LexicalIndex", "terms"]

# characters of scripts written without spaces between words (bigrams are their terms)
_NO_SPACE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0e7f"
                       r"\uac00-\ud7af\u1100-\u11ff]")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_COMPOUND = re.compile(r"[^\W_]+(?:[-_./:][^\W_]+)+", re.UNICODE)


def terms(text: str) -> Set[str]:
    """The distinct lexical terms of a text (see the module docstring)."""
    low = text.lower()
    out: Set[str] = set(m.group() for m in _COMPOUND.finditer(low))
    for m in _WORD.finditer(low):
        w = m.group()
        if not _NO_SPACE.search(w):
            out.add(w)
            continue
        # split the run into its spaced-script and unspaced-script parts
        run: List[str] = []
        for ch in w + " ":
            if _NO_SPACE.match(ch):
                run.append(ch)
                continue
            if len(run) == 1:
                out.add(run[0])
            elif run:
                out.update(a + b for a, b in zip(run, run[1:]))
            run = []
        rest = _NO_SPACE.sub(" ", w).split()
        out.update(rest)
    return out


#: a term's rows: one row as an int, more as an int64 array
_Postings = Union[int, "array[int]"]


def _df(p: _Postings) -> int:
    return 1 if isinstance(p, int) else len(p)


class LexicalIndex:
    """Rows (int ids, any order, each added once) with the terms of their text."""

    def __init__(self) -> None:
        self._postings: Dict[str, _Postings] = {}
        self._rows = 0
        self._max_row = -1

    def __len__(self) -> int:
        return self._rows

    def add(self, row: int, text: str) -> None:
        row = int(row)
        for t in terms(text):
            p = self._postings.get(t)
            if p is None:
                self._postings[t] = row
            elif isinstance(p, int):
                self._postings[t] = array("q", (p, row))
            else:
                p.append(row)
        self._rows += 1
        self._max_row = max(self._max_row, int(row))

    def holds(self, term: str) -> bool:
        """Whether any indexed row has this term (``terms`` form: lower-cased)."""
        return term in self._postings

    def weights(self, query: str) -> List[Tuple[str, float]]:
        """The query's informative terms and their idf (terms in at most half the rows;
        a term no row holds has the largest idf)."""
        n = self._rows
        out = []
        for t in sorted(terms(query)):
            p = self._postings.get(t)
            df = _df(p) if p is not None else 0
            if n and df > n / 2:
                continue
            out.append((t, math.log(1.0 + (n - df + 0.5) / (df + 0.5))))
        return out

    def scores(self, query: str) -> Tuple[np.ndarray, np.ndarray]:
        """(rows, coverage) of every row holding at least one informative query term,
        best first (ties: lower row first)."""
        w = self.weights(query)
        total = sum(x for _, x in w)
        if total <= 0 or self._max_row < 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        acc = np.zeros(self._max_row + 1, np.float64)
        for t, idf in w:
            p = self._postings.get(t)
            if p is not None:                     # a row holds a term once: no repeats
                acc[p if isinstance(p, int) else np.array(p, np.int64)] += idf
        rows = np.flatnonzero(acc)
        cov = acc[rows] / total
        order = np.lexsort((rows, -cov))
        return rows[order], cov[order]

    def search(self, query: str, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """The top-k of ``scores`` (fewer when fewer rows match)."""
        rows, cov = self.scores(query)
        return rows[:k], cov[:k]
