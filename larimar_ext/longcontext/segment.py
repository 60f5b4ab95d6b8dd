"""Sentence-aware segmentation of arbitrary text for the fixed-key memory, in linear time.

One sentence is one segment (Nelson et al. store a context segment by segment; a sentence
is the unit a question's answer prefix lines up with: the passkey needle "The pass key is
{KEY}. Remember it. {KEY} is the pass key." yields the segment "The pass key is {KEY}."
whose first words are the question's answer prefix). Sentence ends are those of the Latin,
CJK (。！？), Devanagari (।), Arabic (؟ ۔) and other scripts, and blank lines.

A sentence longer than ``max_tokens`` decoder tokens (or text with no sentence punctuation
at all) becomes overlapping token windows: the sentence is tokenized once, windows of at
most ``max_tokens`` tokens start every ``max_tokens // 2`` tokens or so, and every cut falls
on a decoder-token boundary that is also a character boundary (preferably a word start), so
no window breaks a character or a token. Any span of at most ``span_tokens(max_tokens)``
tokens (14 for 32-token windows) lies whole inside at least one window, and consecutive
windows of a sentence are linked (``Segment.overlap``) so that a reader can stitch the
sentence back together without repeating the overlap.

Whitespace inside a segment is normalised to single spaces; every non-space character of
the text lands in at least one segment, in order, and in exactly one when overlapping
windows are counted once (the covering property the tests check).

Nothing here needs torch: the token counts come from any Hugging Face tokenizer (its
``__call__`` returning ``input_ids``), cached per distinct sentence, because long contexts
repeat sentences (the passkey filler is five sentences repeated to a million tokens).
"""

from __future__ import annotations

import bisect
import re
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

__all__ = ["Segmenter", "Segment", "split_sentences", "stream_sentences", "prefix_text",
           "TokenCounter", "WORD_TOKEN_RATIO", "span_tokens"]

_CLOSE = "\"'\u201d\u2019)\\]\u300d\u300f\uff09\u3011"
# Candidate sentence ends: Latin terminal punctuation with any closing quotes or brackets,
# before whitespace, the end of the text or an upper-case letter (the essays glue paragraphs
# as "accelerating.We"); full stops of scripts that need no space after them (CJK 。！？,
# Devanagari danda, Arabic and Urdu question mark and full stop, Armenian, Ethiopic); and
# blank lines (headings, list items without a full stop).
_END = re.compile(r"[.!?]+[" + _CLOSE + r"]*(?=\s|$|[A-Z])"
                  r"|[\u3002\uff01\uff1f\uff61\u0964\u0965\u061f\u06d4\u0589\u1362]+[" + _CLOSE
                  + r"]*|\n[ \t]*\n")
_LATIN_END = frozenset(".!?")
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
        if m.group()[0] not in _LATIN_END:      # a script whose full stop always ends
            yield end
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
                     max_carry: int = 8192) -> Iterator[str]:
    """The sentences of the concatenation ``separator.join(texts)``, read lazily: a
    sentence may run from one text into the next (a file read in pieces is segmented as
    the whole file). ``separator="\n\n"`` keeps texts apart (a blank line ends a
    sentence). A partial sentence longer than ``max_carry`` characters (text without
    sentence punctuation) is let through up to its last whitespace or clause mark in its
    second half (else at ``max_carry`` characters, never inside a character) and cut into
    token windows later; the next piece starts ``max_carry // 32`` characters before that
    cut, so a span of up to that many characters crossing the cut is still whole in one
    piece. Each character is scanned a bounded number of times: linear time (tokenizers
    are also far slower on one unbroken run of a million characters than on pieces)."""
    carry: Optional[str] = None
    for text in texts:
        if not isinstance(text, str):
            raise ValueError(f"texts: expected strings, got {type(text).__name__}")
        buf = text if carry is None else carry + separator + text
        sentences, carry = _split(buf, False)
        yield from sentences
        pos = 0                               # walk the carry without re-slicing it
        while len(carry) - pos > max_carry:
            cut = _last_break(carry, pos + max_carry // 2, pos + max_carry)
            yield from _split(carry[pos:cut], True)[0]
            pos = max(cut - max_carry // 32, pos + 1)
        if pos:
            carry = carry[pos:]
    if carry is not None:
        yield from _split(carry, True)[0]


_CLAUSE = frozenset(",;:\u3001\uff0c\uff1b\uff1a\u060c")


def _last_break(text: str, lowest: int, highest: int) -> int:
    """The offset after the last whitespace (else clause mark: , ; : 、 ，) in
    text[lowest:highest], else ``highest``."""
    clause = -1
    for i in range(min(highest, len(text)) - 1, lowest - 1, -1):
        if text[i].isspace():
            return i + 1
        if clause < 0 and text[i] in _CLAUSE:
            clause = i + 1
    return clause if clause > 0 else highest


def span_tokens(max_tokens: int) -> int:
    """The longest span of decoder tokens guaranteed to lie whole inside one window of a
    long sentence cut by ``Segmenter(max_tokens=...)`` (windows start at most
    ``max_tokens // 2`` tokens apart, less a token for the first word's lost leading space)."""
    return max(1, max_tokens - _stride(max_tokens) - 2)


def _stride(max_tokens: int) -> int:
    return max(1, max_tokens // 2)


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
        cache_limit: distinct texts kept (the cache is cleared when it is full). The
            default holds a repeated haystack's sentences (the essays: 8,007 segments)
            and bounds what distinct text leaves behind to a few MB: a long-context memory
            keeps its segmenter, and on distinct Debian documentation a cache of every
            sentence held about 110 bytes a row, a tenth of the memory's Python side.
    """

    def __init__(self, tokenizer: Any = None, cache_limit: int = 2 ** 14) -> None:
        self.tokenizer = tokenizer
        self.cache_limit = int(cache_limit)
        self._cache: Dict[str, int] = {}
        # a fast tokenizer's Rust backend, called directly: the Python wrapper's per-text
        # conversion cost more than the tokenization itself on long unpunctuated texts
        self._backend = getattr(tokenizer, "backend_tokenizer", None)

    def _encode(self, texts: List[str]) -> list:
        # the wrapper leaves its last call's padding/truncation set on the shared backend
        # (a padded encoder batch would pad these too): clear both before every call
        self._backend.no_padding()
        self._backend.no_truncation()
        return self._backend.encode_batch(texts, add_special_tokens=False)

    def offsets(self, texts: List[str]) -> List[List[Tuple[int, int]]]:
        """The (start, end) character spans of each text's decoder tokens (no special
        tokens); without a tokenizer, its whitespace words."""
        if self.tokenizer is None:
            return [[m.span() for m in re.finditer(r"\S+", t)] for t in texts]
        if self._backend is not None:
            return [e.offsets for e in self._encode(texts)]
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return [[tuple(o) for o in offs] for offs in enc["offset_mapping"]]

    def _raw(self, texts: List[str]) -> List[int]:
        if self.tokenizer is None:
            return [-(-int(WORD_TOKEN_RATIO * 1000 * len(t.split())) // 1000) for t in texts]
        if self._backend is not None:
            return [len(e.ids) for e in self._encode(texts)]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [len(x) for x in ids]

    def counts(self, texts: Sequence[str]) -> List[int]:
        """Token counts (len(texts),), one batched tokenizer call for the unseen texts."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        fresh = dict(zip(todo, self._raw(todo))) if todo else {}
        # read before the cache may be cleared: a text counted earlier is not counted again
        out = [fresh[t] if t in fresh else self._cache[t] for t in texts]
        if fresh:
            if len(self._cache) + len(fresh) > self.cache_limit:
                self._cache.clear()
            self._cache.update(fresh)
        return out

    def count(self, text: str) -> int:
        return self.counts([text])[0]


    def spans(self, text: str) -> List[Tuple[int, int]]:
        """``offsets`` of one text."""
        return self.offsets([text])[0]


class Segment(NamedTuple):
    """One segment: ``text``, its decoder ``tokens``, and how it follows the segment before it:
    ``overlap`` = the number of its own leading tokens that repeat the end of the previous
    window of the same sentence (0 for the first window and for a whole sentence), and
    ``continues`` = it is a later window of the sentence before."""
    text: str
    tokens: int
    overlap: int = 0
    continues: bool = False


class Segmenter:
    """Splits text into segments of at most ``max_tokens`` decoder tokens, one sentence each,
    long sentences as overlapping windows (module docstring).

    Args:
        tokenizer: the decoder's tokenizer (segment sizes are in the tokens the decoder
            will produce), or None for the calibrated word estimate.
        max_tokens: the largest segment, in decoder tokens (>= 1).
        block: sentences tokenized per batched tokenizer call when streaming.
        overlap: False cuts long sentences into windows that do not overlap.
    """

    def __init__(self, tokenizer: Any = None, max_tokens: int = 64, block: int = 2048,
                 overlap: bool = True) -> None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens: expected an integer >= 1, got {max_tokens!r}")
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ValueError(f"block: expected an integer >= 1, got {block!r}")
        self.max_tokens = max_tokens
        self.block = block
        self.overlap = bool(overlap)
        self.counter = TokenCounter(tokenizer)
        # sentence -> its segments (long contexts repeat sentences)
        self._chunks: Dict[str, Tuple[Segment, ...]] = {}
        self.split_sentences = 0   # sentences that had to be cut into several windows

    def split(self, text: str) -> List[str]:
        """The segments of one text, in order."""
        return [s.text for s in self.segments([text])]

    def segments(self, texts: Iterable[str], separator: str = "") -> Iterator[Segment]:
        """Stream the ``Segment``s of ``separator.join(texts)`` (see ``stream_sentences``),
        in order. Sentences are tokenized in blocks (one tokenizer call per ``block`` new
        sentences)."""
        buf: List[str] = []
        for sentence in stream_sentences(texts, separator):
            buf.append(sentence)
            if len(buf) >= self.block:
                yield from self._resolve(buf)
                buf = []
        if buf:
            yield from self._resolve(buf)

    def _resolve(self, sentences: List[str]) -> Iterator[Segment]:
        new = list(dict.fromkeys(s for s in sentences if s not in self._chunks))
        if new:
            if len(self._chunks) + len(new) > 1_000_000:   # bound the cache on endless streams
                self._chunks.clear()
            for s, n in zip(new, self.counter.counts(new)):
                if n <= self.max_tokens:
                    self._chunks[s] = (Segment(s, n),)
                else:
                    self.split_sentences += 1
                    self._chunks[s] = tuple(self._windows(s))
        for s in sentences:
            yield from self._chunks[s]

    def _windows(self, sentence: str) -> List[Segment]:
        """Overlapping token windows of one long sentence: one tokenization of the sentence,
        cuts at token starts that are character boundaries (a word start when one leaves
        the window at least half full), then one batched tokenization of all windows for
        their own counts and overlaps (a window's first word loses its leading space, so
        a window is shortened in the rare case its own tokenization is longer). Linear in
        the sentence."""
        spans = self.counter.spans(sentence)
        n = len(spans)
        per_unit = WORD_TOKEN_RATIO if self.counter.tokenizer is None else 1.0
        size = max(1, int((self.max_tokens - (1 if self.max_tokens > 4 else 0)) / per_unit))
        stride = max(1, int(_stride(self.max_tokens) / per_unit)) if self.overlap else size
        # legal cuts: token i starts a new character (byte tokens of one character share it)
        legal = [0] + [i for i in range(1, n) if spans[i][0] >= spans[i - 1][1]]
        word = [i for i in legal
                if i == 0 or sentence[spans[i][0] - 1].isspace() or sentence[spans[i][0]].isspace()]

        def cut(limit: int, lowest: int, word_lowest: int) -> int:
            """The largest cut in (lowest, limit]: a word start above word_lowest if any."""
            for pool, low in ((word, max(lowest, word_lowest)), (legal, lowest)):
                j = bisect.bisect_right(pool, limit) - 1
                if j >= 0 and pool[j] > low:
                    return pool[j]
            return -1

        def char(i: int) -> int:
            return spans[i][0] if i < n else len(sentence)

        plan: List[Tuple[int, int]] = []          # (first token, end token) per window
        start = 0
        while start < n:
            end = n if start + size >= n else cut(start + size, start, start + size // 2)
            if end < 0:        # one character longer than the window: it goes whole
                end = next((c for c in legal if c > start), n)
            plan.append((start, end))
            if end >= n:
                break
            target = end - (size - stride)
            nxt = cut(target, start, target - stride // 2) if stride < size else -1
            start = nxt if nxt > start else end
        return self._measured(sentence, plan, char, cut)

    def _measured(self, sentence: str, plan: List[Tuple[int, int]], char, cut) -> List[Segment]:
        """Segments of planned windows, each counted and its overlap with the window before
        measured in its own tokens (one batched tokenizer call)."""
        out: List[Segment] = []
        prev_end_char: Optional[int] = None
        raw = [(char(a), sentence[char(a):char(b)]) for a, b in plan]
        texts = [t.strip() for _, t in raw]
        own = self.counter.offsets(texts)
        for w, ((a, b), (c0, rawtext)) in enumerate(zip(plan, raw)):
            text, spans = texts[w], own[w]
            while len(spans) > self.max_tokens and b - a > 1:     # rare: shorten and recount
                shorter = cut(b - 1, a, b)
                if shorter < 0:
                    break
                b = shorter
                text = sentence[char(a):char(b)].strip()
                spans = self.counter.spans(text)
            if not text:
                continue
            lead = len(rawtext) - len(rawtext.lstrip())
            overlap = 0
            if prev_end_char is not None and char(a) < prev_end_char:
                shared = prev_end_char - c0 - lead           # characters of text already read
                overlap = sum(1 for s0, _ in spans if s0 < shared)
            out.append(Segment(text, len(spans), overlap, bool(out)))
            prev_end_char = char(b)
        return out
