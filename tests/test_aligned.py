"""Decoder-aligned slots and the prefix path (larimar_ext/model/aligned.py) on tiny models.

The encoder tokenizer keeps words whole; the decoder tokenizer splits every digit, as
SmolLM2's does, so a number is one encoder piece but several decoder tokens and the
alignment has to find each digit inside its piece.
"""
from __future__ import annotations

import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from larimar_ext.model import LarimarModel  # noqa: E402
from larimar_ext.model.aligned import (AlignedPooler, SlotAligner, SlotPrefix,  # noqa: E402
                                       _PieceFinder)

SENTENCES = [f"order {n} went to {city} today ." for n, city in zip(
    ["4821", "907", "55213", "12", "30118", "6", "771", "2024", "48213", "3190", "88", "500",
     "61", "73345", "1009", "42"],
    ["paris", "oslo", "lima", "rome", "cairo", "kyiv", "bern", "riga", "baku", "doha",
     "lome", "suva", "apia", "male", "dili", "nuuk"])]
WORDS = sorted({w for s in SENTENCES for w in s.split() if not w.isdigit()})
P, C_SLOT = 12, 8


def _fast(model, pre):
    tk = tokenizers.Tokenizer(model)
    tk.pre_tokenizer = pre
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]",
                                                unk_token="[UNK]", eos_token="[EOS]")


@pytest.fixture(scope="module")
def toks():
    numbers = sorted({w for s in SENTENCES for w in s.split() if w.isdigit()})
    enc_vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2,
                 **{w: i + 3 for i, w in enumerate(WORDS + numbers)}}
    enc = _fast(tokenizers.models.WordLevel(enc_vocab, unk_token="[UNK]"),
                tokenizers.pre_tokenizers.WhitespaceSplit())
    dec_vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2,
                 **{w: i + 3 for i, w in enumerate(WORDS + list("0123456789"))}}
    dec = _fast(tokenizers.models.WordLevel(dec_vocab, unk_token="[UNK]"),
                tokenizers.pre_tokenizers.Sequence([
                    tokenizers.pre_tokenizers.WhitespaceSplit(),
                    tokenizers.pre_tokenizers.Digits(individual_digits=True)]))
    return enc, dec


def make_aligned_model(toks, seed=0, memory_size=32):
    enc_tok, dec_tok = toks
    torch.manual_seed(seed)
    enc = transformers.BertModel(transformers.BertConfig(
        vocab_size=len(enc_tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64), add_pooling_layer=False)
    dec = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(dec_tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128,
        pad_token_id=0, eos_token_id=2, bos_token_id=2))
    for p in list(enc.parameters()) + list(dec.parameters()):
        p.requires_grad_(False)
    return LarimarModel(enc, dec, memory_size, P * C_SLOT, tokenizer=dec_tok,
                        encoder_tokenizer=enc_tok, embedding_path=False, memory_path=False,
                        pooler=AlignedPooler(32, P, C_SLOT, 64),
                        prefix=SlotPrefix(P, C_SLOT, 64, 64),
                        aligner=SlotAligner(enc_tok, dec_tok, P),
                        prompt_template=("[EOS]", "[EOS]"))


def test_aligner_finds_every_decoder_token_inside_its_encoder_piece(toks):
    enc_tok, dec_tok = toks
    aligner = SlotAligner(enc_tok, dec_tok, P)
    seg = aligner(SENTENCES)
    for i, s in enumerate(SENTENCES):
        dec_ids = dec_tok(s, add_special_tokens=False)["input_ids"]
        assert seg.live[i].sum() == len(dec_ids) <= P
        assert seg.target_ids[i, :len(dec_ids)].tolist() == dec_ids
        assert (not seg.live[i, len(dec_ids):].any()
                and (seg.target_ids[i, len(dec_ids):] == 0).all())
        enc_tokens = enc_tok.convert_ids_to_tokens(seg.input_ids[i])
        number = s.split()[1]
        for p in range(len(dec_ids)):
            piece = enc_tokens[int(seg.piece[i, p])]
            token = dec_tok.convert_ids_to_tokens(dec_ids[p])
            # the decoder token is the piece's characters at its offset
            off, length = int(seg.offset[i, p]), int(seg.length[i, p])
            assert piece[off:off + length] == token
            if token.isdigit():
                assert piece == number
    # a segment longer than P decoder tokens keeps its first P
    long = aligner(["order " + "1" * 20 + " went ."])
    assert (bool(long.live.all())
            and long.target_ids[0, 1:].eq(dec_tok.convert_tokens_to_ids("1")).all())


@settings(max_examples=200, deadline=None)
@given(spans=st.lists(st.tuples(st.integers(0, 30), st.integers(1, 6)), min_size=1, max_size=12),
       ordered=st.booleans(), c=st.integers(0, 40))
def test_piece_finder_answers_as_the_scan_in_token_order(spans, ordered, c):
    # pieces as word-piece offsets give them (starts and ends ascending, bisected) or in any
    # order (scanned); either way the first piece in token order that qualifies
    if ordered:
        spans = sorted(spans)
    pieces = [(a, a + n, j) for j, (a, n) in enumerate(spans)]
    find = _PieceFinder(pieces)
    covering = next(((x, j) for x, y, j in pieces if x <= c < y), None)
    following = next(((x, j) for x, y, j in pieces if x >= c), pieces[-1][::2])
    assert find.covering(c) == covering
    assert find.next_from(c) == following


def test_aligner_needs_fast_tokenizers(toks):
    class Slow:
        is_fast = False
    with pytest.raises(ValueError, match="encoder_tokenizer"):
        SlotAligner(Slow(), toks[1], P)


def test_pooler_dead_slots_are_zero_and_live_slots_have_fixed_scale(toks):
    model = make_aligned_model(toks)
    z = model.encode(SENTENCES[:4]).detach()
    slots = z.reshape(4, P, C_SLOT)
    seg = model.aligner(SENTENCES[:4])
    norms = slots.norm(dim=-1)
    assert torch.all(norms[~seg.live] == 0)
    assert torch.allclose(norms[seg.live], torch.full_like(norms[seg.live], C_SLOT ** 0.5),
                          rtol=1e-3)
    assert torch.equal(model.prefix.live(z), seg.live)


def test_prefix_model_arguments_are_checked(toks):
    enc_tok, dec_tok = toks
    m = make_aligned_model(toks)
    with pytest.raises(ValueError, match="prefix"):
        LarimarModel(m.encoder, m.decoder, 8, 16, tokenizer=dec_tok, prefix=SlotPrefix(2, 8, 64))
    with pytest.raises(ValueError, match="prefix"):
        LarimarModel(m.encoder, m.decoder, 8, P * C_SLOT, tokenizer=dec_tok,
                     pooler=AlignedPooler(32, P, C_SLOT), aligner=m.aligner,
                     prefix=SlotPrefix(P, C_SLOT, 64))           # embedding path still on
    with pytest.raises(ValueError, match="code_size"):
        LarimarModel(m.encoder, m.decoder, 8, 7, tokenizer=dec_tok, memory_path=False,
                     embedding_path=False, pooler=AlignedPooler(32, P, C_SLOT), aligner=m.aligner,
                     prefix=SlotPrefix(P, C_SLOT, 64))
    with pytest.raises(ValueError, match="inputs"):
        m.encode(torch.zeros(2, 3, dtype=torch.long))


def test_generate_with_prefix_matches_teacher_forcing_and_masks_dead_slots(toks):
    model = make_aligned_model(toks).eval()
    dec_tok = model.tokenizer
    z = model.encode(SENTENCES[:3]).detach()
    prompt = dec_tok(["order", "order", "order"], add_special_tokens=False, return_tensors="pt")
    out = model.generate(prompt["input_ids"], z, max_new_tokens=3, do_sample=False)
    assert torch.equal(out[:, :1], prompt["input_ids"])
    seq = out[:, :-1]
    logits = model.decode(seq, z).logits[:, -1]
    assert torch.equal(logits.argmax(-1), out[:, -1])
    # dead slots are masked: changing what the prefix makes of them changes nothing
    soft, live = model.prefix(z)
    assert (~live).any()
    base = model.decode(prompt["input_ids"], z).logits
    with torch.no_grad():
        model.prefix.net[-1].bias.add_(1.0)                   # moves every soft token...
    moved = model.decode(prompt["input_ids"], z).logits
    assert not torch.allclose(base, moved)                    # ...live ones matter
    z_dead = z.clone().reshape(3, P, C_SLOT)
    z_dead[~live] = 0.01                                      # still below the live threshold
    dead = model.decode(prompt["input_ids"], z_dead.reshape(3, -1)).logits
    # (the dead positions' own logits change; what the real tokens see does not)
    assert torch.allclose(dead[:, -1], moved[:, -1], atol=1e-5)


def test_host_memory_and_differentiable_memory_give_the_same_readouts(toks):
    model = make_aligned_model(toks).eval()
    seg = model.aligner(SENTENCES)
    with torch.no_grad():
        diff = model.forward_aligned(seg, episode_size=16).z_read.reshape(16, -1)
    model.write(SENTENCES)
    host = model.read(SENTENCES)
    assert torch.allclose(host, diff.float(), atol=1e-3)
    # K >= N: a readout with its own latent as the query gives the latent back
    assert torch.allclose(host, model.encode(SENTENCES).detach(), atol=1e-3)


def test_overfit_slots_reproduce_every_sentence_from_its_readout(toks):
    """Training only the pooler, the prefix and the prior through the memory (episodes of
    8) makes every readout decode to its own sentence, digits included."""
    model = make_aligned_model(toks, seed=1)
    params = [p for p in model.parameters() if p.requires_grad]
    assert all(not p.requires_grad for p in model.decoder.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    seg = model.aligner(SENTENCES)
    want = [seg.target_ids[i][seg.live[i]].tolist() for i in range(len(SENTENCES))]

    def exact():
        model.eval()
        with torch.no_grad():
            got = model.slot_tokens(model.forward_aligned(seg, 8).z_read.reshape(16, -1))
        model.train()
        return sum(g == w for g, w in zip(got, want))

    t0 = time.time()
    assert exact() < 16
    for step in range(600):
        loss = model.forward_aligned(seg, episode_size=8).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 49 and exact() == 16:
            break
    assert exact() == 16, f"after {step + 1} steps"
    assert time.time() - t0 < 120
    # the host memory path decodes the same
    model.eval()
    model.write(SENTENCES[:8])
    got = model.slot_tokens(model.read(SENTENCES[:8]))
    assert got == want[:8]


def make_token_code_model(toks, c2, snap=False, seed=0):
    enc_tok, dec_tok = toks
    base = make_aligned_model(toks, seed=seed)
    pooler = AlignedPooler(32, P, C_SLOT, 64, token_size=64, token_code_size=c2)
    prefix = SlotPrefix(P, C_SLOT, 64, 64, token_code_size=c2)
    prefix.init_token_code(*pooler.init_token_code(base.decoder.get_input_embeddings().weight))
    return LarimarModel(base.encoder, base.decoder, 32, P * (C_SLOT + c2), tokenizer=dec_tok,
                        encoder_tokenizer=enc_tok, embedding_path=False, memory_path=False,
                        pooler=pooler, prefix=prefix, aligner=base.aligner, prefix_snap=snap,
                        prompt_template=("[EOS]", "[EOS]"))


def test_token_code_reads_every_token_back_before_training(toks):
    """The principal directions of the decoder's embeddings as the token code: with as many
    directions as the vocabulary has, every slot decodes to its token at initialisation."""
    V = len(toks[1])
    model = make_token_code_model(toks, c2=V).eval()
    seg = model.aligner(SENTENCES)
    want = [seg.target_ids[i][seg.live[i]].tolist() for i in range(len(SENTENCES))]
    model.write(SENTENCES)
    assert model.slot_tokens(model.read(SENTENCES)) == want
    # too few directions lose tokens: the code size matters
    small = make_token_code_model(toks, c2=2).eval()
    assert small.slot_tokens(small.encode(SENTENCES).detach()) != want
    with pytest.raises(ValueError, match="token_code_size"):
        AlignedPooler(32, P, C_SLOT, token_code_size=4)


def test_snap_feeds_exact_embedding_rows_at_inference_only(toks):
    model = make_token_code_model(toks, c2=len(toks[1]), snap=True)
    table = model.decoder.get_input_embeddings().weight
    z = model.encode(SENTENCES[:2]).detach()
    prompt = model.tokenizer(["order", "order"], add_special_tokens=False, return_tensors="pt")
    model.eval()
    embeds, mask, lead = model._prefix_inputs(prompt["input_ids"], z, None)
    soft = embeds[:, lead - P:lead]
    rows = (soft.unsqueeze(2) == table.unsqueeze(0).unsqueeze(0)).all(-1).any(-1)
    assert rows.all()                      # every position is exactly some embedding row
    model.train()
    embeds, _, _ = model._prefix_inputs(prompt["input_ids"], z, None)
    soft = embeds[:, lead - P:lead]
    assert not (soft.unsqueeze(2) == table.unsqueeze(0).unsqueeze(0)).all(-1).any(-1).all()


def test_each_passage_batch_matches_each_passage_alone(toks):
    """complete_each_passage left-pads passages of different lengths into one batch; each
    continuation is the one that passage gets on its own (complete_passages with it alone)."""
    model = make_aligned_model(toks).eval()
    z = model.encode(SENTENCES[:3]).detach()
    # passages: [0], [1 + 2 joined, 2's first slot skipped] -> two inputs of unequal length
    skip, joined = [0, 0, 1], [False, False, True]
    both = model.complete_each_passage("order", z, skip, joined, max_new_tokens=4)
    alone = [model.complete_passages("order", z[:1], max_new_tokens=4),
             model.complete_passages("order", z[1:], [0, 1], [False, True], max_new_tokens=4)]
    assert both == alone and len(both) == 2
    with pytest.raises(ValueError, match="skip, joined"):
        model.complete_each_passage("order", z, [0], [False])


def test_slot_ids_give_the_decoder_the_readouts_input(toks):
    """A readout's slot ids (``slot_ids``: each live slot's snapped token, -1 dead) give
    every decoding path the input the readout gives it, bit for bit: the long-context
    memory keeps values as P ids instead of C floats."""
    model = make_token_code_model(toks, c2=len(toks[1]), snap=True).eval()
    z = model.encode(SENTENCES[:3]).detach()
    ids = model.slot_ids(z)
    assert ids.shape == (3, P) and ids.dtype == torch.long
    assert torch.equal(ids >= 0, model.prefix.live(z))
    assert model.slot_tokens(z) == [row[row >= 0].tolist() for row in ids]
    prompt = model.tokenizer(["order"] * 3, add_special_tokens=False, return_tensors="pt")
    live = model.prefix.live(z)
    a, mask_a, lead = model._prefix_inputs(prompt["input_ids"], z, None)
    b, mask_b, _ = model._prefix_inputs(prompt["input_ids"], ids, None)
    assert torch.equal(mask_a, mask_b)
    soft = slice(lead - P, lead)
    assert torch.equal(a[:, soft][live], b[:, soft][live])      # dead slots are masked
    assert torch.equal(a[:, lead:], b[:, lead:]) and torch.equal(a[:, :lead - P], b[:, :lead - P])
    parts_a, parts_b = (model._passage_parts("order", r, [0, 0, 1], [False, False, True], None)
                        for r in (z, ids))
    assert all(torch.equal(x, y) for x, y in zip([parts_a[0], *parts_a[1], parts_a[2]],
                                                 [parts_b[0], *parts_b[1], parts_b[2]]))
    assert model.complete(["order"] * 3, z, 4) == model.complete(["order"] * 3, ids, 4)
    assert (model.complete_each_passage("order", z, [0, 0, 1], [False, False, True], None, 4)
            == model.complete_each_passage("order", ids, [0, 0, 1], [False, False, True],
                                           None, 4))


def test_slot_ids_are_checked(toks):
    model = make_token_code_model(toks, c2=len(toks[1]), snap=True).eval()
    z = model.encode(SENTENCES[:2]).detach()
    ids = model.slot_ids(z)
    vocab = model.decoder.get_input_embeddings().num_embeddings
    for bad in (ids[:, :-1], ids.clone().fill_(vocab), ids.clone().fill_(-2), ids[0]):
        with pytest.raises(ValueError, match="readouts"):
            model.complete_passages("order", bad)
    with pytest.raises(ValueError, match="readouts"):
        model.slot_ids(ids)                                  # ids are not latents
    with pytest.raises(ValueError, match="readouts"):
        model.complete(["order"], ids[:, :-1])
    with pytest.raises(ValueError, match="prefix_snap"):
        make_token_code_model(toks, c2=len(toks[1]), snap=False).eval().complete_passages(
            "order", ids)
