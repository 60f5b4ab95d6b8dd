"""Batched greedy decoding with drafts from each row's own input
(larimar_ext/model/lookup_decoding.py) gives one-token-a-pass greedy decoding's tokens."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
from larimar_ext.model.lookup_decoding import draft, greedy_lookup  # noqa: E402


def test_draft_continues_the_first_earlier_match_of_the_longest_suffix():
    assert draft([5, 6, 7, 8, 9, 5, 6, 7], 2) == [8, 9]          # a 3-gram match
    assert draft([1, 2, 9, 1, 2, 4, 0, 2, 4], 3) == [0, 2, 4]    # 2-gram (2, 4), first match
    assert draft([5, 1, 6, 1], 4) == []                          # a lone repeated token: none
    assert draft([5, 1, 6, 1], 4, min_ngram=1) == [6, 1]
    assert draft([3], 4) == [] and draft([], 4) == []


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    dec = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=40, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128,
        pad_token_id=0, bos_token_id=1, eos_token_id=2))
    return dec.eval()


def one_token_a_pass(decoder, row, max_new, eos=()):
    """Greedy decoding of one unpadded row, no cache tricks: the reference."""
    ids, new = row[None], []
    with torch.no_grad():
        for _ in range(max_new):
            t = int(decoder(input_ids=ids).logits[0, -1].argmax())
            new.append(t)
            if t in eos:
                break
            ids = torch.cat([ids, torch.tensor([[t]])], 1)
    return new


def test_rows_of_different_lengths_get_their_own_greedy_tokens(decoder):
    """Left-padded rows of different lengths, inputs that repeat (drafts get accepted) and
    ones that do not: every row's tokens are its own greedy decoding's; a stop criterion
    cuts a row where one token a pass would have stopped."""
    g = torch.Generator().manual_seed(1)
    base = torch.randint(3, 40, (12,), generator=g)
    rows = [torch.cat([base, base[:5]]),                       # a copy to continue
            torch.randint(3, 40, (7,), generator=g),           # nothing repeats
            torch.cat([base[:4], torch.randint(3, 40, (9,), generator=g), base[:3]])]
    want = [one_token_a_pass(decoder, r, 12) for r in rows]
    got = greedy_lookup(decoder, rows, 12, draft_tokens=6, pad_id=0, eos_ids=[])
    assert got == want
    # a stop after the 3rd token of row 0's output: cut there, the others run on
    stop = want[0][:3]
    got = greedy_lookup(decoder, rows, 12, draft_tokens=6, pad_id=0, eos_ids=[],
                        done=lambda new: new[:3] == stop and len(new) >= 3)
    assert got[0] == stop and got[1:] == [w if w[:3] != stop else w[:3] for w in want[1:]]


def test_an_end_of_sequence_token_ends_its_row_and_is_kept(decoder):
    row = torch.randint(3, 40, (10,), generator=torch.Generator().manual_seed(2))
    free = one_token_a_pass(decoder, row, 10)
    eos = free[4]                                   # pretend the 5th new token is the end
    want = one_token_a_pass(decoder, row, 10, eos={eos})
    assert greedy_lookup(decoder, [row], 10, 4, pad_id=0, eos_ids=[eos]) == [want]
    assert want[-1] == eos and len(want) <= 5
    assert greedy_lookup(decoder, [row], 0, 4, pad_id=0, eos_ids=[]) == [[]]
