"""The offline training data builder keeps the long-context benchmarks held out."""
from __future__ import annotations

import re

import pytest

from larimar_ext.training.data import (Corpus, build_corpus, generated_sentences, is_held_out,
                                       python_docstring_sentences, split_sentences)

BENCHMARK_TEXT = [
    "The pass key is 48213. Remember it. 48213 is the pass key.",
    "What is the pass key? The pass key is",
    ("The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park "
     "on a sunny day."),
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.",
    "There is an important info hidden inside a lot of irrelevant text.",
    "Your PASSKEY is here",
]


@pytest.mark.parametrize("text", BENCHMARK_TEXT)
def test_benchmark_sentences_are_held_out(text):
    assert is_held_out(text)


def test_ordinary_sentences_are_not_held_out():
    for s in ["The key is in the drawer.", "Pass the salt, please.", "The sky was grey."]:
        assert not is_held_out(s)


def test_generated_sentences_carry_numbers_and_are_reproducible():
    a, b = generated_sentences(2000, seed=3), generated_sentences(2000, seed=3)
    assert a == b and a != generated_sentences(2000, seed=4)
    with_number = [s for s in a if re.search(r"\d", s)]
    assert len(with_number) > 0.9 * len(a)
    lengths = {len(n) for s in a for n in re.findall(r"\d+", s)}
    assert {3, 4, 5}.issubset(lengths)
    assert not any(is_held_out(s) for s in a)


def test_split_sentences_keeps_prose_only():
    text = ("Return the value. The mapping {1: 2} is not prose at all. A short one. "
            "This sentence has enough plain words to keep! Use >>> to show a prompt here.")
    got = split_sentences(text)
    assert "Return the value." not in got          # 3 words: too short
    assert "This sentence has enough plain words to keep!" in got
    assert not any("{" in s or ">>>" in s for s in got)


def test_python_docstrings_give_real_sentences():
    got = list(python_docstring_sentences(limit_files=40))
    assert len(got) > 50
    assert all(s[-1] in ".!?" and len(s.split()) >= 4 for s in got)


def test_corpus_drops_benchmark_text_and_splits_disjointly():
    corpus = build_corpus(sources=("python",), generated=500, eval_size=20, limit_files=60,
                          extra=BENCHMARK_TEXT)
    corpus.check_held_out()
    everything = (corpus.train_real + corpus.train_generated + corpus.eval_real
                  + corpus.eval_generated)
    assert not any(is_held_out(s) for s in everything)
    assert not set(corpus.eval_real) & set(corpus.train_real)
    assert len(corpus.eval_generated) == 20 and len(corpus.train_generated) == 500
    ep = next(corpus.episodes(16, 0.5, seed=0))
    assert len(ep) == 16 and len(set(ep)) == 16


def test_check_held_out_fails_on_a_leak():
    leaky = Corpus(train_real=["The pass key is 123."], eval_real=["x y z w."])
    with pytest.raises(AssertionError, match="benchmark"):
        leaky.check_held_out()
    overlap = Corpus(train_real=["one two three four."], eval_real=["one two three four."])
    with pytest.raises(AssertionError, match="also in training"):
        overlap.check_held_out()


def test_unknown_source_is_refused():
    with pytest.raises(ValueError, match="sources"):
        build_corpus(sources=("wikipedia",))
