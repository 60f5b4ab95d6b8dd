"""Offline training text for Larimar: real English sentences this machine already has, plus
generated sentences that carry numbers, names, dates and codes.

Sources (all local, nothing downloaded):
- docstrings of the Python standard library, read with ``ast`` (never imported, so no
  module runs): present wherever Python is;
- Debian manual pages (``/usr/share/man/man1..8``, English only) with the roff markup
  stripped, and fortunes (``/usr/share/games/fortunes``) where the ``fortunes`` package is
  installed;
- generated sentences from templates (``generated_sentences``).

The long-context benchmarks must stay held out: no passkey-style sentence, no needle and
none of the passkey filler may reach training. ``is_held_out`` names what is banned;
``build_corpus`` drops such sentences from the real text and asserts that none is left.
"""

from __future__ import annotations

import ast
import gzip
import random
import re
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

__all__ = ["HELD_OUT_PATTERNS", "is_held_out", "split_sentences", "python_docstring_sentences",
           "man_page_sentences", "fortune_sentences", "generated_sentences", "Corpus",
           "build_corpus"]

# everything the long-context benchmarks ask about (docs/DESIGN.md section 4)
HELD_OUT_PATTERNS = [
    r"pass\s*-?\s*keys?\b", r"\bpasskey", r"san\s+francisco", r"dolores\s+park",
    r"sandwich", r"grass is green", r"sky is blue", r"sun is yellow", r"here we go",
    r"there and back again", r"important info hidden", r"irrelevant text",
]
_HELD_OUT = re.compile("|".join(HELD_OUT_PATTERNS), re.IGNORECASE)


def is_held_out(text: str) -> bool:
    """True if ``text`` touches a benchmark question, needle or filler."""
    return _HELD_OUT.search(text) is not None


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_WORD = re.compile(r"[A-Za-z]{2,}")


def split_sentences(text: str, min_words: int = 4, max_words: int = 32) -> list[str]:
    """Sentences of plain prose: whitespace collapsed, split after . ! ? before a capital,
    kept if they have ``min_words``..``max_words`` words, mostly letters, and end like a
    sentence."""
    text = re.sub(r"\s+", " ", text).strip()
    out = []
    for s in _SENTENCE_END.split(text):
        s = s.strip()
        words = s.split()
        if not (min_words <= len(words) <= max_words) or s[-1] not in ".!?":
            continue
        letters = sum(ch.isalpha() for ch in s)
        if letters < 0.6 * len(s) or not s.isascii() or len(_WORD.findall(s)) < min_words:
            continue
        if any(ch in s for ch in "{}[]<>|\\@#$^~`_=") or ">>>" in s:
            continue
        out.append(s)
    return out


def python_docstring_sentences(limit_files: Optional[int] = None) -> Iterator[str]:
    """Sentences from the docstrings of the standard library's .py files (parsed, not run)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py")
                   if "test" not in p.parts and "site-packages" not in p.parts
                   and "idlelib" not in p.parts)
    for path in files[:limit_files]:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    yield from split_sentences(doc)


_ROFF_FONT = re.compile(r"\\f(\[[^\]]*\]|\(..|.)")
_ROFF_ESCAPE = re.compile(r"\\(\(..|\[[^\]]*\]|[-e&|^%/,:])")


def _strip_roff(source: str) -> str:
    lines = []
    for line in source.splitlines():
        if line.startswith((".", "'")):
            # macro lines; a few carry text (.B word) - keep their words
            parts = line.split(None, 1)
            if len(parts) == 2 and parts[0] in (".B", ".I", ".BR", ".IR", ".BI", ".IB", ".RB",
                                                ".RI"):
                lines.append(parts[1].replace('"', ""))
            else:
                lines.append("\n")   # a paragraph break: never join sentences across it
            continue
        line = _ROFF_FONT.sub("", line)
        line = line.replace("\\-", "-").replace("\\(em", "-")
        lines.append(_ROFF_ESCAPE.sub("", line))
    return " ".join(lines)


def man_page_sentences(root: str | Path = "/usr/share/man",
                       limit_files: Optional[int] = None) -> Iterator[str]:
    """Sentences from English manual pages (sections 1-8, roff stripped)."""
    root = Path(root)
    files = sorted(p for sec in range(1, 9) for p in (root / f"man{sec}").glob("*.gz"))
    for path in files[:limit_files]:
        try:
            with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
                text = _strip_roff(fh.read())
        except (OSError, EOFError):
            continue
        for paragraph in text.split("\n"):
            yield from split_sentences(paragraph)


def fortune_sentences(root: str | Path = "/usr/share/games/fortunes") -> Iterator[str]:
    """Sentences from fortune files (the ``fortunes`` Debian package), if installed."""
    root = Path(root)
    if not root.is_dir():
        return
    for path in sorted(root.iterdir()):
        if path.suffix or not path.is_file():
            continue   # .dat index files
        text = path.read_text(encoding="utf-8", errors="replace")
        for cookie in text.split("\n%\n"):
            yield from split_sentences(cookie)


_FIRST = ("Alice Bob Carol David Emma Frank Grace Henry Irene Jack Karen Liam Maria Noah Olivia "
          "Peter Quinn Rosa Samuel Tara Victor Wendy Yusuf Zoe Ahmed Chen Priya Sofia Mateo "
          "Hana Ivan Lena Omar Nina Felix").split()
_LAST = ("Smith Garcia Chen Novak Okafor Larsen Rossi Tanaka Silva Kim Nguyen Patel Weber "
         "Moreau Ivanova Costa Haddad Lindgren Murphy Kowalski").split()
_PLACES = ("Paris Berlin Tokyo Lima Cairo Oslo Dublin Madrid Toronto Nairobi Seoul Austin Lisbon "
           "Denver Prague Vienna Sydney Boston Quito Hanoi Accra Riga Porto Osaka").split()
_THINGS = ("invoice order ticket account parcel room flight batch sample record contract "
           "shipment case badge locker policy claim permit vehicle").split()
_MONTHS = ("January February March April May June July August September October November "
           "December").split()
_UNITS = "grams kilograms meters kilometers liters dollars euros minutes seconds pages".split()
_VERBS = "approved checked signed opened closed moved shipped reviewed paid stored".split()


def _number(rng: random.Random, digits: Optional[int] = None) -> str:
    d = digits or rng.choice([1, 2, 3, 3, 4, 4, 4, 5, 5, 5, 5, 6, 7])
    return str(rng.randrange(10 ** (d - 1) if d > 1 else 0, 10 ** d))


def _code(rng: random.Random) -> str:
    letters = "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(rng.randint(2, 3)))
    return f"{letters}-{_number(rng, rng.randint(2, 5))}"


def _date(rng: random.Random) -> str:
    return f"{rng.choice(_MONTHS)} {rng.randint(1, 28)}, {rng.randint(1900, 2035)}"


def _name(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}" if rng.random() < 0.5 else rng.choice(_FIRST)


_TEMPLATES = [
    lambda r: (f"{_name(r)} paid {_number(r)} {r.choice(_UNITS[5:7])} for the "
               f"{r.choice(_THINGS)} in {r.choice(_PLACES)}."),
    lambda r: f"The {r.choice(_THINGS)} number is {_number(r)}.",
    lambda r: f"The {r.choice(_THINGS)} number {_number(r)} was {r.choice(_VERBS)} by {_name(r)}.",
    lambda r: (f"{_name(r)} lives at {_number(r, r.randint(1, 4))} {r.choice(_LAST)} "
               f"Street in {r.choice(_PLACES)}."),
    lambda r: f"Flight {_number(r, r.randint(2, 4))} to {r.choice(_PLACES)} leaves on {_date(r)}.",
    lambda r: f"On {_date(r)}, {_name(r)} moved to {r.choice(_PLACES)}.",
    lambda r: f"The code for the {r.choice(_THINGS)} is {_code(r)}.",
    lambda r: f"The secret number is {_number(r)}.",
    lambda r: f"My lucky number is {_number(r)}.",
    lambda r: f"The {r.choice(_THINGS)} {_code(r)} weighs {_number(r)} {r.choice(_UNITS[:2])}.",
    lambda r: f"{_name(r)} was born on {_date(r)} in {r.choice(_PLACES)}.",
    lambda r: (f"The meeting with {_name(r)} is in room {_number(r, r.randint(2, 4))} at "
               f"{r.randint(1, 12)} o'clock."),
    lambda r: f"Remember that the {r.choice(_THINGS)} id is {_number(r)}.",
    lambda r: f"The total was {_number(r)} {r.choice(_UNITS)}.",
    lambda r: f"Call {_name(r)} at {_number(r, 3)} {_number(r, 4)}.",
    lambda r: f"The answer is {_number(r)}.",
    lambda r: (f"{_name(r)} scored {_number(r, r.randint(1, 3))} points against "
               f"{r.choice(_PLACES)}."),
    lambda r: f"The {r.choice(_THINGS)} {_number(r)} belongs to {_name(r)}.",
    lambda r: f"Order {_number(r)} arrived in {r.choice(_PLACES)} on {_date(r)}.",
    lambda r: f"The value of the {r.choice(_THINGS)} is {_number(r)}.",
]


def generated_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` template sentences with numbers (1-7 digits), names, dates and codes."""
    rng = random.Random(seed)
    out = [rng.choice(_TEMPLATES)(rng) for _ in range(n)]
    assert not any(is_held_out(s) for s in out), "a template produced a held-out sentence"
    return out


@dataclass
class Corpus:
    """Training and held-out sentences, real text and generated kept apart."""
    train_real: list[str] = field(default_factory=list)
    train_generated: list[str] = field(default_factory=list)
    eval_real: list[str] = field(default_factory=list)
    eval_generated: list[str] = field(default_factory=list)

    def check_held_out(self) -> None:
        """Assert the benchmarks' sentences are absent and train/eval are disjoint."""
        for name in ("train_real", "train_generated", "eval_real", "eval_generated"):
            bad = [s for s in getattr(self, name) if is_held_out(s)]
            assert not bad, f"{name} holds benchmark sentences, e.g. {bad[:3]}"
        train = set(self.train_real) | set(self.train_generated)
        leak = [s for s in self.eval_real + self.eval_generated if s in train]
        assert not leak, f"held-out sentences also in training: {leak[:3]}"

    def episodes(self, size: int, generated_fraction: float, seed: int) -> Iterator[list[str]]:
        """Endless episodes of ``size`` distinct training sentences, a ``generated_fraction``
        of them from the generated pool."""
        rng = random.Random(seed)
        while True:
            n_gen = sum(rng.random() < generated_fraction for _ in range(size))
            ep = rng.sample(self.train_generated, n_gen) + rng.sample(self.train_real, size - n_gen)
            rng.shuffle(ep)
            yield ep


def build_corpus(sources: Sequence[str] = ("python", "man", "fortunes"), generated: int = 200_000,
                 eval_size: int = 512, seed: int = 0, max_real: Optional[int] = None,
                 limit_files: Optional[int] = None, extra: Iterable[str] = ()) -> Corpus:
    """Collect, filter (held-out, duplicates), shuffle and split the training text.

    The eval split takes ``eval_size`` real and ``eval_size`` generated sentences that appear
    nowhere in training. ``extra`` adds the user's own sentences to the real pool."""
    readers = {"python": lambda: python_docstring_sentences(limit_files),
               "man": lambda: man_page_sentences(limit_files=limit_files),
               "fortunes": fortune_sentences}
    unknown = [s for s in sources if s not in readers]
    if unknown:
        raise ValueError(f"sources: unknown {unknown}, expected some of {sorted(readers)}")
    real: dict[str, None] = {}
    for source in sources:
        for s in readers[source]():
            if not is_held_out(s):
                real.setdefault(s)
    for s in extra:
        if not is_held_out(s):
            real.setdefault(s)
    real_list = list(real)
    rng = random.Random(seed)
    rng.shuffle(real_list)
    if max_real is not None:
        real_list = real_list[:max_real]
    if len(real_list) < 2 * eval_size:
        raise ValueError(f"only {len(real_list)} real sentences found for eval_size={eval_size}")
    gen = list(dict.fromkeys(generated_sentences(generated + 4 * eval_size, seed=seed + 1)))
    eval_gen = gen[:eval_size]
    gen_set = set(eval_gen)
    corpus = Corpus(train_real=real_list[eval_size:],
                    train_generated=[s for s in gen[eval_size:] if s not in gen_set][:generated],
                    eval_real=real_list[:eval_size], eval_generated=eval_gen)
    corpus.check_held_out()
    return corpus
