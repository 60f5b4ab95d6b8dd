"""Checking a decoded answer against the passages it was read from.

A 135M decoder reading a uuid drops or changes a character, echoes the question back, or,
steered by an answer prefix the text does not share ("I recommend that you"), writes an
answer of its own. The passages it was given are known text, so the answer can be checked:

- ``snap_codes``: a code in the answer (a word with a digit: numbers, uuids, keys) that the
  passages do not hold, but that is one or two edits from one they do, becomes that one;
- ``support``: the share of the answer's terms that come from the passages and not from
  the question (an echo of the question is no support);
- ``continuation``: the passage's own words after the answer prefix, when a passage holds
  the prefix's end word for word (the extractive fallback for an unsupported answer);
- ``swapped_term``: the passage states the asked fact about something else (the red door's
  key, asked for the orange door's, and "orange" is nowhere in the memory): not found.

Terms are ``lexical.terms`` (words, compounds, CJK/Hangul character bigrams). All of it is
linear in the lengths of the answer and the passages, and needs no model.
"""

from __future__ import annotations

import difflib
import re
from typing import Callable, List, Optional, Sequence, Tuple

from .lexical import terms

__all__ = ["snap_codes", "support", "continuation", "swapped_term"]

# a code: a run of letters, digits and - _ . / : that holds a digit, ends alphanumeric
_CODE = re.compile(r"[^\W_](?:[\w./:-]*[^\W_])?", re.UNICODE)
_MIN_CODE = 4          # shorter codes ("11", "3.5") are too easy to snap to a wrong neighbour
_SNAP_RATIO = 0.85     # difflib ratio: one edit in a 7-digit number (0.857), 1-3 in a uuid
_WORDS = re.compile(r"[^\W_]+(?:[-_./:][^\W_]+)*", re.UNICODE)


def _codes(text: str) -> List[str]:
    return [m.group() for m in _CODE.finditer(text)
            if len(m.group()) >= _MIN_CODE and any(c.isdigit() for c in m.group())]


def snap_codes(answer: str, passages: Sequence[str]) -> str:
    """``answer`` with each code the passages do not hold replaced by the passages' closest
    code (difflib ratio >= 0.85), e.g. "2c7bffb-6118-..." -> "d2c7bffb-6118-..."."""
    known = list(dict.fromkeys(c for p in passages for c in _codes(p)))
    if not known:
        return answer
    have = set(known)
    out, at = [], 0
    for m in _CODE.finditer(answer):
        word = m.group()
        if word in have or len(word) < _MIN_CODE or not any(c.isdigit() for c in word):
            continue
        close = difflib.get_close_matches(word, known, n=1, cutoff=_SNAP_RATIO)
        if close:
            out.append(answer[at:m.start()] + close[0])
            at = m.end()
    return "".join(out) + answer[at:]


def support(answer: str, passages: Sequence[str], asked: str) -> float:
    """Share of the answer's terms found in the passages but not in ``asked`` (the question
    and answer prefix), in [0, 1]; 0 for an answer with no terms."""
    said = terms(answer)
    if not said:
        return 0.0
    held = set().union(*(terms(p) for p in passages)) if passages else set()
    return len((said & held) - terms(asked)) / len(said)


def continuation(answer_prefix: str, passage: str, min_chars: int = 8) -> Optional[str]:
    """What the passage says after the answer prefix: its text after the last of the words
    it shares with the prefix in order (at least two shared words: "... for A, B, and C
    are" against "... for B is: 12." gives "is: 12."); when only punctuation follows them,
    the fact stated the other way round, its words before them without the prefix's words
    next to them ("86556 is the pass key." gives "86556"); in a script without spaces, what
    follows the longest end of the prefix it holds (at least ``min_chars`` characters, or
    the whole prefix when shorter). None when it shares too little or holds nothing else."""
    asked = [w.lower() for w in _WORDS.findall(answer_prefix)]
    found = list(_WORDS.finditer(passage))
    told = [m.group().lower() for m in found]
    blocks = difflib.SequenceMatcher(None, asked, told, autojunk=False).get_matching_blocks()
    if sum(b.size for b in blocks) >= min(2, len(asked)) and len(asked) > 1:
        shared = [b for b in blocks if b.size]
        last = max(shared, key=lambda b: b.b)
        rest = passage[found[last.b + last.size - 1].end():].strip()
        if _WORDS.search(rest):
            return rest
        end = min(b.b for b in shared)
        while end and told[end - 1] in asked:
            end -= 1
        return passage[:found[end - 1].end()].strip() if end else None
    words = answer_prefix.split()
    if len(words) != 1:
        return None
    ends = [words[0][i:] for i in range(len(words[0]))]      # one unspaced "word"
    need = min(min_chars, len(ends[0]))
    for end in ends:
        if len(end) < need:
            break
        at = passage.lower().find(end.lower())
        if at >= 0:
            return passage[at + len(end):].strip() or None
    return None

_SAME_WORD = 0.75      # difflib ratio: "number"/"numbers" (0.92) are one word, "red"/"orange" not


def _similar(a: str, b: str) -> bool:
    return difflib.SequenceMatcher(None, a, b).ratio() >= _SAME_WORD


def _name_like(word: str, first: bool) -> bool:
    """A proper name or a code: capitalised where a sentence does not start, or a compound
    (a hyphen, a dot, digits): "Tokyo", "quiet-harbor", "A7"."""
    return (word[:1].isupper() and not first) or any(not c.isalpha() for c in word)


def swapped_term(answer_prefix: str, passage: str, known: Callable[[str], bool]
                 ) -> Optional[Tuple[str, str]]:
    """(asked, found) when the passage states the prefix's fact about something else: the
    two word sequences align around a replaced span, before the last words they share (what
    follows those is the answer), whose prefix side holds a word the memory never holds
    (``known(word)`` False), like no word on the passage side, and either a name or code
    ("Tokyo" for "San Francisco", "quiet-harbor" for "faint-water") or one word put for one
    word ("the pass key for the orange door is" against "the pass key for the red door is
    86556": ("orange", "red")). A rephrasing ("the top activity" for "the best thing to
    do") is not a swap. None when there is no such span."""
    raw = _WORDS.findall(answer_prefix)
    asked = [w.lower() for w in raw]
    told = [w.lower() for w in _WORDS.findall(passage)]
    ops = difflib.SequenceMatcher(None, asked, told, autojunk=False).get_opcodes()
    last_equal = max((i for i, op in enumerate(ops) if op[0] == "equal"), default=-1)
    for tag, i1, i2, j1, j2 in ops[:max(last_equal, 0)]:
        if tag != "replace":
            continue
        theirs = told[j1:j2]
        one_for_one = i2 - i1 == 1 and j2 - j1 == 1
        for i in range(i1, i2):
            w = asked[i]
            if known(w) or any(_similar(w, t) for t in theirs):
                continue
            if one_for_one or _name_like(raw[i], i == 0):
                return w, " ".join(theirs)
    return None
