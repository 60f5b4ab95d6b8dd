"""Sentence-aware segmentation of arbitrary text for the fixed-key memory.

One sentence is one segment (Nelson et al. store a context segment by segment; a sentence
is the unit a question's answer prefix lines up with: the passkey needle "The pass key is
{KEY}. Remember it. {KEY} is the pass key." yields the segment "The pass key is {KEY}."
whose first words are the question's answer prefix). A sentence longer than ``max_tokens``
decoder tokens is cut into chunks on word boundaries (inside a word only when one word alone
is too long), so no segment exceeds ``max_tokens`` (the one exception: a single character
that alone takes more tokens, e.g. an emoji of several byte tokens with max_tokens = 1).

Whitespace inside a segment is normalised to single spaces; every non-space character of
the text lands in exactly one segment, in order (the covering property the tests check).

Nothing here needs torch: the token counts come from any Hugging Face tokenizer (its
``__call__`` returning ``input_ids``), cached per distinct sentence, because long contexts
repeat sentences (the passkey filler is five sentences repeated to a million tokens).
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

__all__ = ["Segmenter", "split_sentences", "stream_sentences", "prefix_text", "TokenCounter",
           "WORD_TOKEN_RATIO"]

# Candidate sentence ends: terminal punctuation with any closing quotes or brackets, before
# whitespace, the end of the text or an upper-case letter (the essays glue paragraphs as
# "accelerating.We"); and blank lines (headings, list items without a full stop).
_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s|$|[A-Z])|\n[ \t]*\n")
_WS = re.compile(r"\s+")

# SmolLM2 tokens per whitespace word, measured once on the 49 Paul Graham essays
# (153,963 tokens / 111,877 words = 1.376) and on the passkey filler (24 / 19 = 1.26); the
# estimate ``TokenCounter(None)`` uses when no tokenizer is given.
WORD_TOKEN_RATIO = 1.376


def _normalise(s: str) -> str:
    return _WS.sub(" ", s).strip()


def _sentence_ends(text: str, final: bool) -> Iterator[int]:
    """Offsets where sentences end. Without ``final`` an end followed only by whitespace
    is not yet known to be one (the next piece of a stream may start with "e.g." or a
    lower-case word), so it is not given."""
    n = len(text)
    for m in _END.finditer(text):
        end = m.end()
        if m.group().startswith("\n"):          # blank line: break before it
            yield m.start()
            continue
        j = end
        while j < n and text[j].isspace():
            j += 1
        if j == n and not final:
            return
        if j < n and text[j].islower():         # "e.g. the", "etc. and": not an end
            continue
        if j == end and j < n:                  # glued: "word.Next"
            if m.start() < 2 or not (text[m.start() - 1].islower()
                                     and text[m.start() - 2].islower()):
                continue
        yield end


def _split(text: str, final: bool) -> Tuple[List[str], str]:
    """(sentences, tail): the complete sentences of ``text`` and the rest after the last
    known end (everything when ``final``)."""
    out, start = [], 0
    for end in _sentence_ends(text, final):
        s = _normalise(text[start:end])
        if s:
            out.append(s)
        start = end
    if final:
        s = _normalise(text[start:])
        if s:
            out.append(s)
        return out, ""
    return out, text[start:]


def split_sentences(text: str) -> Iterator[str]:
    """Yield the sentences of ``text``, whitespace normalised, empty ones skipped.

    A full stop, "?" or "!" (with any closing quotes or brackets) ends a sentence when
    whitespace, the end of the text or an upper-case letter follows, except before a
    lower-case word ("e.g. the") and, when no space follows, unless two lower-case letters
    precede it (so "U.S.A" stays whole but the essays' "accelerating.We" splits). A blank
    line always ends a sentence.
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected a string, got {type(text).__name__}")
    yield from _split(text, True)[0]


def stream_sentences(texts: Iterable[str], separator: str = "",
                     max_carry: int = 100_000) -> Iterator[str]:
    """The sentences of the concatenation ``separator.join(texts)``, read lazily: a
    sentence may run from one text into the next (a file read in pieces is segmented as
    the whole file). ``separator="\n\n"`` keeps texts apart (a blank line ends a
    sentence). A partial sentence longer than ``max_carry`` characters is let through as it
    is (no full stop for that long: it is cut by tokens later)."""
    carry: Optional[str] = None
    for text in texts:
        if not isinstance(text, str):
            raise ValueError(f"texts: expected strings, got {type(text).__name__}")
        buf = text if carry is None else carry + separator + text
        sentences, carry = _split(buf, False)
        yield from sentences
        if len(carry) > max_carry:
            yield from _split(carry, True)[0]
            carry = ""
    if carry is not None:
        yield from _split(carry, True)[0]


def prefix_text(segment: str, words: Optional[int]) -> str:
    """The first ``words`` whitespace words of ``segment`` (all of it for None)."""
    if words is None:
        return segment
    return " ".join(segment.split(" ")[:words])


class TokenCounter:
    """Decoder-token counts of texts, cached per distinct text.

    Args:
        tokenizer: a Hugging Face tokenizer (counts without special tokens), or None for
            the word estimate ``ceil(WORD_TOKEN_RATIO * words)`` (SmolLM2, calibrated on the
            essays; about 1% off on English prose, see ``WORD_TOKEN_RATIO``).
        cache_limit: distinct texts kept (the cache is cleared when it is full).
    """

    def __init__(self, tokenizer: Any = None, cache_limit: int = 1_000_000) -> None:
        self.tokenizer = tokenizer
        self.cache_limit = int(cache_limit)
        self._cache: Dict[str, int] = {}

    def _raw(self, texts: List[str]) -> List[int]:
        if self.tokenizer is None:
            return [-(-int(WORD_TOKEN_RATIO * 1000 * len(t.split())) // 1000) for t in texts]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [len(x) for x in ids]

    def counts(self, texts: Sequence[str]) -> List[int]:
        """Token counts (len(texts),), one batched tokenizer call for the unseen texts."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            if len(self._cache) + len(todo) > self.cache_limit:
                self._cache.clear()
            self._cache.update(zip(todo, self._raw(todo)))
        return [self._cache[t] for t in texts]

    def count(self, text: str) -> int:
        return self.counts([text])[0]


class Segmenter:
    """Splits text into segments of at most ``max_tokens`` decoder tokens, one sentence each.

    Args:
        tokenizer: the decoder's tokenizer (segment sizes are in the tokens the decoder
            will produce), or None for the calibrated word estimate.
        max_tokens: the largest segment, in decoder tokens (>= 1).
        block: sentences tokenized per batched tokenizer call when streaming.
    """

    def __init__(self, tokenizer: Any = None, max_tokens: int = 64, block: int = 2048) -> None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens: expected an integer >= 1, got {max_tokens!r}")
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ValueError(f"block: expected an integer >= 1, got {block!r}")
        self.max_tokens = max_tokens
        self.block = block
        self.counter = TokenCounter(tokenizer)
        # sentence -> its segments with their token counts (long contexts repeat sentences)
        self._chunks: Dict[str, Tuple[Tuple[str, int], ...]] = {}
        self.split_sentences = 0   # sentences that had to be cut into several chunks

    def split(self, text: str) -> List[str]:
        """The segments of one text, in order."""
        return [s for s, _ in self.segments([text])]

    def segments(self, texts: Iterable[str], separator: str = "") -> Iterator[Tuple[str, int]]:
        """Stream (segment, decoder tokens) over ``separator.join(texts)`` (see
        ``stream_sentences``), in order. Sentences are tokenized in blocks (one tokenizer
        call per ``block`` new sentences)."""
        buf: List[str] = []
        for sentence in stream_sentences(texts, separator):
            buf.append(sentence)
            if len(buf) >= self.block:
                yield from self._resolve(buf)
                buf = []
        if buf:
            yield from self._resolve(buf)

    def _resolve(self, sentences: List[str]) -> Iterator[Tuple[str, int]]:
        new = list(dict.fromkeys(s for s in sentences if s not in self._chunks))
        if new:
            if len(self._chunks) + len(new) > 1_000_000:   # bound the cache on endless streams
                self._chunks.clear()
            for s, n in zip(new, self.counter.counts(new)):
                if n <= self.max_tokens:
                    self._chunks[s] = ((s, n),)
                else:
                    self.split_sentences += 1
                    self._chunks[s] = tuple(self._cut(s))
        for s in sentences:
            yield from self._chunks[s]

    def _fits(self, text: str) -> Tuple[bool, int]:
        n = self.counter.count(text)
        return n <= self.max_tokens, n

    def _longest(self, pieces: List[str], i: int, sep: str) -> Tuple[int, int]:
        """The largest j > i with sep.join(pieces[i:j]) within max_tokens (binary search:
        token counts grow with the number of words), and its token count; j == i when even
        pieces[i] alone is too long."""
        lo, hi, best = i, len(pieces), (i, 0)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            ok, n = self._fits(sep.join(pieces[i:mid]))
            if ok:
                lo, best = mid, (mid, n)
            else:
                hi = mid - 1
        return best

    def _cut(self, sentence: str) -> Iterator[Tuple[str, int]]:
        words = sentence.split(" ")
        i = 0
        while i < len(words):
            j, n = self._longest(words, i, " ")
            if j > i:
                yield " ".join(words[i:j]), n
                i = j
                continue
            # one word alone is longer than max_tokens (a URL, a long number): cut it by
            # characters, each piece as long as fits
            chars = list(words[i])
            k = 0
            while k < len(chars):
                m, n = self._longest(chars, k, "")
                m = max(m, k + 1)       # a single character always goes (one token or more)
                if n == 0:
                    n = self.counter.count("".join(chars[k:m]))
                yield "".join(chars[k:m]), n
                k = m
            i += 1

