"""The long-context tasks of docs/DESIGN.md section 4: context builders and scoring.

Both builders work sentence by sentence (the segmenter's unit) and count decoder tokens per
distinct sentence (``TokenCounter``), so "137k" means a context of about 137,000 tokens of
the decoder's tokenizer (SmolLM2 for the default model): the sum of the sentences' token
counts, within one sentence of the target (tokenizing the joined text gives the same count
to within 0.1% on the essays: the tests check it).

Depth d% places the needle on the sentence boundary where d% of the haystack's tokens lie
before it (0 = first, 100 = last; the passkey intro is a header, not haystack).

Nothing here needs torch.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from .segment import TokenCounter, split_sentences

__all__ = ["INTRO", "FILLER", "PASSKEY_NEEDLE", "PASSKEY_QUESTION", "PASSKEY_PREFIX",
           "SF_NEEDLE", "SF_QUESTION", "SF_PREFIX", "SF_ANSWER", "Context", "Haystack",
           "passkey_context", "needle_context", "parse_context_size", "parse_list",
           "extract_digits", "score_passkey", "score_needle", "content_words",
           "MIN_CONTEXT", "MAX_CONTEXT"]

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
         "memorize it. I will quiz you about the important information there.")
FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
          "There and back again.")
PASSKEY_NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
PASSKEY_QUESTION = "What is the pass key?"
PASSKEY_PREFIX = "The pass key is"

SF_NEEDLE = ("The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park "
             "on a sunny day.")
SF_QUESTION = "What is the best thing to do in San Francisco?"
SF_PREFIX = "The best thing to do in San Francisco is"
SF_ANSWER = "eat a sandwich and sit in Dolores Park on a sunny day"

MIN_CONTEXT = 1_000
# A context is a list of sentences: 10M tokens of repeated haystack is about 500K of them.
MAX_CONTEXT = 10_000_000


@dataclass
class Context:
    """One long-context trial: the text and what the question should recall from it.

    ``tokens`` is the decoder-token count of the whole context (intro, haystack, needle);
    ``depth`` the requested depth in percent, ``actual_depth`` the haystack-token fraction
    before the needle (percent); ``answer`` the passkey's digits or the needle's answer span.
    """
    task: str
    text: str
    tokens: int
    target_tokens: int
    depth: float
    actual_depth: float
    needle: str
    answer: str
    question: str
    answer_prefix: str
    digits: Optional[int] = None
    needle_char: int = 0                    # offset of the needle in text
    meta: Dict[str, Any] = field(default_factory=dict)

    def describe(self) -> Dict[str, Any]:
        """Everything but the text (for the JSON of a trial)."""
        d = asdict(self)
        d.pop("text")
        return d


# ----------------------------------------------------------------------------- arguments


def parse_context_size(value: Union[str, int], name: str = "context") -> int:
    """"128k" -> 128000, "1m" -> 1000000, "4096" -> 4096 (k = 1,000, m = 1,000,000);
    between ``MIN_CONTEXT`` (1k) and ``MAX_CONTEXT`` (10m)."""
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected a size such as 128k, got {value!r}")
    if isinstance(value, (int, np.integer)):
        n = int(value)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", str(value))
        if not m:
            raise ValueError(f"{name}: expected a size such as 4096, 128k or 1m, got {value!r}")
        n = int(round(float(m.group(1)) * {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2).lower()]))
    if not MIN_CONTEXT <= n <= MAX_CONTEXT:
        raise ValueError(f"{name}: expected 1k ... 10m tokens, got {value!r} ({n} tokens)")
    return n


def parse_list(value: Union[str, Sequence[Any]], name: str, kind: type = float,
               lo: Optional[float] = None, hi: Optional[float] = None) -> List[Any]:
    """A comma list ("0,25,50") or a sequence -> list of ``kind``, each in [lo, hi]."""
    items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
    if not items:
        raise ValueError(f"{name}: expected at least one value, got {value!r}")
    out = []
    for v in items:
        try:
            x = kind(v.strip() if isinstance(v, str) else v)
            if kind is int and isinstance(v, float) and v != int(v):
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected {kind.__name__} values, got {v!r}") from None
        if (lo is not None and x < lo) or (hi is not None and x > hi):
            raise ValueError(f"{name}: expected values in [{lo}, {hi}], got {x!r}")
        out.append(x)
    return out


def _depth(depth: float) -> float:
    try:
        d = float(depth)
    except (TypeError, ValueError):
        raise ValueError(f"depth: expected a percentage in [0, 100], got {depth!r}") from None
    if not 0.0 <= d <= 100.0:
        raise ValueError(f"depth: expected a percentage in [0, 100], got {depth!r}")
    return d


def _counter(tokenizer: Any) -> TokenCounter:
    return tokenizer if isinstance(tokenizer, TokenCounter) else TokenCounter(tokenizer)


# ----------------------------------------------------------------------------- builders


def _assemble(task: str, head: List[str], hay: List[str], hay_counts: List[int],
              needle: str, needle_tokens: int, head_tokens: int, target: int, depth: float,
              **kw: Any) -> Context:
    """head + hay with the needle at the sentence boundary nearest depth% of hay's tokens."""
    total_hay = sum(hay_counts)
    cum = np.concatenate([[0], np.cumsum(hay_counts)])
    want = depth / 100.0 * total_hay
    i = int(np.argmin(np.abs(cum - want)))      # boundary i: i sentences before the needle
    before = " ".join(head + hay[:i])
    text = " ".join(x for x in (before, needle, " ".join(hay[i:])) if x)
    actual = 100.0 * cum[i] / total_hay if total_hay else 0.0
    return Context(task=task, text=text, tokens=head_tokens + total_hay + needle_tokens,
                   target_tokens=target, depth=depth, actual_depth=float(actual),
                   needle=needle, needle_char=len(before) + (1 if before else 0), **kw)


def _fill(sentences: List[str], counts: List[int], budget: int, cycle: bool) -> tuple:
    """Sentences taken in order (cycling when ``cycle``) while the total stays <= budget."""
    out, out_counts, total, i, n = [], [], 0, 0, len(sentences)
    if n == 0 or min(counts) <= 0:
        raise ValueError("haystack: no sentences with tokens")
    while True:
        if i >= n and not cycle:
            break
        c = counts[i % n]
        if total + c > budget:
            break
        out.append(sentences[i % n])
        out_counts.append(c)
        total += c
        i += 1
    return out, out_counts


def passkey_context(tokens: Union[int, str], depth: float, digits: int = 5,
                    seed: Union[int, np.random.Generator, None] = 0, tokenizer: Any = None,
                    key: Optional[str] = None) -> Context:
    """The passkey context: INTRO, then FILLER repeated, with PASSKEY_NEEDLE at ``depth``%.

    Args:
        tokens: target length in decoder tokens (int or "128k"; 1k ... 10m).
        depth: needle depth in percent of the filler's tokens (0 ... 100).
        digits: digits of the random key (1 ... 18; the first digit is never 0).
        seed: an int seed or a numpy Generator (the key's randomness).
        tokenizer: the decoder tokenizer (or a ``TokenCounter``; None: word estimate).
        key: a fixed key instead of a random one.
    """
    target = parse_context_size(tokens, "tokens")
    d = _depth(depth)
    if isinstance(digits, bool) or not isinstance(digits, (int, np.integer)) \
            or not 1 <= digits <= 18:
        raise ValueError(f"digits: expected an integer in [1, 18], got {digits!r}")
    if key is None:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        key = str(int(rng.integers(10 ** (digits - 1), 10 ** digits)))
    elif not (isinstance(key, str) and key.isdigit()):
        raise ValueError(f"key: expected a string of digits, got {key!r}")
    counter = _counter(tokenizer)
    head = list(split_sentences(INTRO))
    filler = list(split_sentences(FILLER))
    needle = PASSKEY_NEEDLE.format(key=key)
    head_tokens = sum(counter.counts(head))
    needle_tokens = sum(counter.counts(list(split_sentences(needle))))
    hay, hay_counts = _fill(filler, counter.counts(filler),
                            target - head_tokens - needle_tokens, cycle=True)
    return _assemble("passkey", head, hay, hay_counts, needle, needle_tokens, head_tokens,
                     target, d, answer=key, question=PASSKEY_QUESTION,
                     answer_prefix=PASSKEY_PREFIX, digits=len(key))


class Haystack:
    """The sentences of a folder of .txt files (sorted by name), with decoder-token counts.

    Args:
        directory: a folder holding at least one non-empty .txt file.
        tokenizer: the decoder tokenizer (or a ``TokenCounter``; None: word estimate).
    """

    def __init__(self, directory: Union[str, Path], tokenizer: Any = None) -> None:
        path = Path(directory)
        if not path.is_dir():
            raise ValueError(f"haystack_dir: not a folder: {str(directory)!r}")
        files = sorted(p for p in path.glob("*.txt") if p.is_file())
        sentences: List[str] = []
        for f in files:
            sentences.extend(split_sentences(f.read_text(encoding="utf-8", errors="replace")))
        if not sentences:
            raise ValueError(f"haystack_dir: no text in .txt files under {str(directory)!r}")
        self.directory = path
        self.files = [f.name for f in files]
        self.sentences = sentences
        self.counter = _counter(tokenizer)
        self.counts = self.counter.counts(sentences)
        self.tokens = int(sum(self.counts))

    def take(self, tokens: int) -> tuple:
        """(sentences, counts): the haystack from its start, repeated from the first file
        again when it is shorter than ``tokens``, cut on a sentence boundary at <= tokens."""
        return _fill(self.sentences, self.counts, tokens, cycle=True)


def needle_context(haystack: Haystack, tokens: Union[int, str], depth: float,
                   needle: str = SF_NEEDLE, question: str = SF_QUESTION,
                   answer_prefix: str = SF_PREFIX, answer: str = SF_ANSWER) -> Context:
    """Needle in a haystack (Kamradt): ``haystack`` cut to ``tokens`` decoder tokens
    (repeated when shorter, as for 1M tokens of essays) with ``needle`` at ``depth``%."""
    if not isinstance(haystack, Haystack):
        raise ValueError(f"haystack: expected a Haystack, got {type(haystack).__name__}")
    target = parse_context_size(tokens, "tokens")
    d = _depth(depth)
    for name, v in (("needle", needle), ("question", question),
                    ("answer_prefix", answer_prefix), ("answer", answer)):
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"{name}: expected a non-empty string, got {v!r}")
    needle_tokens = sum(haystack.counter.counts(list(split_sentences(needle))))
    hay, counts = haystack.take(target - needle_tokens)
    return _assemble("needle", [], hay, counts, needle, needle_tokens, 0, target, d,
                     answer=answer, question=question, answer_prefix=answer_prefix,
                     meta={"haystack_tokens": haystack.tokens,
                           "repeats": round(sum(counts) / max(haystack.tokens, 1), 3)})


# ----------------------------------------------------------------------------- scoring

_STOP = frozenset("""a an and are as at be by for from in into is it its of on or so than that
the their then there these this to was were will with""".split())


def extract_digits(text: str) -> str:
    """The first run of digits in ``text`` ("" when there is none): the passkey answer."""
    m = re.search(r"\d+", text)
    return m.group() if m else ""


def score_passkey(answer: str, key: str) -> bool:
    """The answer's first run of digits is exactly the key."""
    return extract_digits(answer) == key


def _words(text: str) -> List[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def content_words(text: str) -> List[str]:
    """Lower-cased words of ``text`` without the stop words (the needle's content words:
    eat, sandwich, sit, dolores, park, sunny, day)."""
    return [w for w in _words(text) if w not in _STOP]


def score_needle(answer: str, span: str = SF_ANSWER) -> Dict[str, Any]:
    """{"exact": the span's words appear in order, contiguously, in the answer (case and
    punctuation ignored), "recall": the fraction of the span's content words in the answer}."""
    a, s = _words(answer), _words(span)
    exact = any(a[i:i + len(s)] == s for i in range(len(a) - len(s) + 1)) if s else False
    cw = content_words(span)
    have = set(a)
    recall = sum(w in have for w in cw) / len(cw) if cw else 0.0
    return {"exact": bool(exact), "recall": float(recall)}
