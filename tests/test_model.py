"""LarimarModel (docs/DESIGN.md sections 2 and 3) on tiny randomly initialised models.

Nothing is downloaded: the tiny encoder and decoder of tests/tiny_models.py and a
word-level tokenizer built here from the training sentences, shared by both.
"""
from __future__ import annotations

import time

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from larimar_ext import torch_ops  # noqa: E402
from larimar_ext.model import LarimarModel  # noqa: E402
from tiny_models import BOS, EOS, PAD, UNK, tiny_larimar, word_tokenizer  # noqa: E402

SENTENCES = [
    "the red cat sat on the mat", "a blue dog ran in the park", "my old car is very fast",
    "she reads a book every night", "we ate fresh bread for lunch", "the green frog jumps high",
    "his little sister plays the drum", "rain falls on the quiet town",
    "a tall tree grows by the river", "they sing songs at the party",
    "the small boat sails at dawn", "our teacher likes hot tea", "an owl sleeps during the day",
    "the baker sells sweet cakes", "two birds fly over the hill", "my friend paints the blue door",
]


def make_tokenizer(sentences=SENTENCES):
    return word_tokenizer({w for s in sentences for w in s.split()},
                          tokenizers.pre_tokenizers.WhitespaceSplit())


def make_model(tok, memory_size=16, code_size=32, seed=0, **kw):
    return tiny_larimar(tok, memory_size, code_size, seed=seed, **kw)


def segments(tok, sentences=SENTENCES):
    """[BOS] words [EOS], right padded: ids (S, T), mask (S, T), the unpadded id lists."""
    rows = [[BOS] + tok.convert_tokens_to_ids(s.split()) + [EOS] for s in sentences]
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return ids, mask, rows


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


# ----------------------------------------------------------------------------- training pass


def test_forward_backward_finite_loss_and_gradients_everywhere(tok):
    model = make_model(tok, observation_noise=0.1, word_dropout=0.3)
    model.train()
    ids, mask, _ = segments(tok)
    out = model(ids[:8].view(2, 4, -1), mask[:8].view(2, 4, -1))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.z.shape == out.z_read.shape == (2, 4, 32)
    assert out.logits.shape[:3] == (2, 4, ids.shape[1])
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient: {missing}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient: {bad}"
    # every new part of the model is trained: projections, prior memory, both paths
    for name in ("encoder_proj.weight", "prior", "embedding_conditioner.proj.weight",
                 "memory_slot.proj.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_word_dropout_only_in_training_and_keeps_first_token(tok):
    model = make_model(tok, word_dropout=1.0)
    ids, mask, _ = segments(tok)
    model.train()
    dropped = model._word_dropout(ids, mask)
    assert (dropped[:, 0] == BOS).all()
    assert (dropped[:, 1:][mask[:, 1:].bool()] == UNK).all()
    assert (dropped[mask == 0] == PAD).all()
    model.eval()
    assert torch.equal(model._word_dropout(ids, mask), ids)


def test_differentiable_and_host_memory_agree(tok):
    model = make_model(tok)
    model.eval()
    ids, mask, _ = segments(tok)
    with torch.no_grad():
        Z = model.encode(ids[:4], mask[:4])                          # (4, C)
        assert torch.allclose(model.encode(SENTENCES[:4]), model.encode(
            tok(SENTENCES[:4], padding=True, return_tensors="pt")["input_ids"],
            tok(SENTENCES[:4], padding=True, return_tensors="pt")["attention_mask"]))
        M = model.write(Z[None], differentiable=True)                # (1, K, C)
        W = torch_ops.pinv_address(Z, model.prior)                   # W = Z M0^+
        assert torch.allclose(M[0], torch.linalg.pinv(W) @ Z, atol=1e-4)
        r_train = model.read(Z[None], memory=M)[0]
        model.write(Z)                                               # host EpisodicMemory
        r_host = model.read(Z)
    # N < K: the episode is stored exactly, both paths give its latents back
    assert torch.allclose(r_train, Z, atol=1e-4)
    assert torch.allclose(r_host, Z, atol=1e-3)
    assert r_host.device == next(model.decoder.parameters()).device


# ----------------------------------------------------------------------------- memory slot


def _reference_logits(model, ids, mask, z):
    """The decoder run on [dummy] + ids at positions 0..T with every layer's key and value
    projection output at position 0 overwritten by the slot's key and value: the explicit
    attention over the extra position, with no cache involved."""
    B = ids.shape[0]
    kv = model.memory_slot.key_values(z)
    handles = []

    def overwrite(vec):
        def hook(module, inputs, output):
            output = output.clone()
            output[:, 0] = vec
            return output
        return hook

    for layer, (k, v) in zip(model.decoder.model.layers, kv):
        # (B, kv_heads, 1, head_dim) -> (B, kv_heads * head_dim), the k_proj output layout
        handles.append(layer.self_attn.k_proj.register_forward_hook(
            overwrite(k[:, :, 0].reshape(B, -1))))
        handles.append(layer.self_attn.v_proj.register_forward_hook(
            overwrite(v[:, :, 0].reshape(B, -1))))
    try:
        full_ids = torch.cat([torch.full((B, 1), 5), ids], 1)
        full_mask = torch.cat([torch.ones(B, 1, dtype=torch.long), mask], 1)
        pos = torch.arange(full_ids.shape[1]).expand(B, -1)
        with model.conditioned(z):
            logits = model.decoder(input_ids=full_ids, attention_mask=full_mask,
                                   position_ids=pos).logits
    finally:
        for h in handles:
            h.remove()
    return logits[:, 1:]


@pytest.mark.parametrize("shared_kv", [False, True], ids=["separate_kv", "shared_kv"])
def test_memory_slot_equals_explicit_extra_position(tok, shared_kv):
    model = make_model(tok, shared_kv=shared_kv)
    model.eval()
    g = model.geometry
    assert (g.num_layers, g.num_kv_heads, g.head_dim) == (2, 2, 16)   # GQA: 4 query heads
    ids, mask, _ = segments(tok)
    ids, mask = ids[:3], mask[:3]
    with torch.no_grad():
        torch.nn.init.normal_(model.memory_slot.proj.weight, std=1.0)   # a slot that matters
        z = torch.randn(3, 32)
        cache = model.slot_cache(z)
        assert cache.get_seq_length() == 1
        assert cache.layers[0].keys.shape == (3, 2, 1, 16)
        got = model.decode(ids, z, mask).logits
        want = _reference_logits(model, ids, mask, z)
        real = mask.bool()
        torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=1e-4)
        # the check can fail: the same run without the slot, or with the real tokens at
        # positions 0..T-1 (no offset), is different
        with model.conditioned(z):
            plain = model.decoder(input_ids=ids, attention_mask=mask).logits
        assert (plain[real] - want[real]).abs().max() > 1e-2
        full_mask, _ = model._slot_inputs(ids, mask)
        with model.conditioned(z):
            no_offset = model.decoder(input_ids=ids, attention_mask=full_mask,
                                      position_ids=torch.arange(ids.shape[1]).expand(3, -1),
                                      **{model._cache_kw: model.slot_cache(z)}).logits
        assert (no_offset[real] - want[real]).abs().max() > 1e-3


def test_generate_uses_the_slot_and_matches_teacher_forcing(tok):
    # memory path only: any dependence of generate() on z goes through the KV slot
    model = make_model(tok, embedding_path=False, seed=1)
    model.eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.memory_slot.proj.weight, std=2.0)
    torch.manual_seed(3)
    z = 3 * torch.randn(6, 32)
    prompt = torch.full((6, 1), BOS)
    out = model.generate(prompt, z, max_new_tokens=6, do_sample=False, eos_token_id=None)
    assert out.shape == (6, 7) and (out[:, 0] == BOS).all()
    assert len({tuple(r) for r in out.tolist()}) > 1, "greedy output does not depend on z"
    # generate()'s incremental decoding with its own cache == a teacher-forced pass
    with torch.no_grad():
        logits = model.decode(out[:, :-1], z).logits
    assert torch.equal(logits.argmax(-1), out[:, 1:])
    # the same readout gives the same text
    again = model.generate(prompt, z, max_new_tokens=6, do_sample=False, eos_token_id=None)
    assert torch.equal(again, out)


def test_generate_both_paths_left_padded_batch(tok):
    model = make_model(tok, seed=2)
    model.eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.memory_slot.proj.weight, std=2.0)
        torch.nn.init.normal_(model.embedding_conditioner.proj.weight, std=1.0)
    z = torch.randn(2, 32)
    ids, _, rows = segments(tok, SENTENCES[:1])
    p = torch.tensor([rows[0][:3]])                                   # BOS w1 w2
    batch = torch.stack([torch.cat([torch.tensor([PAD]), p[0, :2]]), p[0]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    out = model.generate(batch, z, attention_mask=mask, max_new_tokens=4, do_sample=False,
                         eos_token_id=None)
    # each row equals the same prompt generated alone (padding handled, positions offset)
    solo0 = model.generate(p[:, :2], z[:1], max_new_tokens=4, do_sample=False, eos_token_id=None)
    solo1 = model.generate(p, z[1:], max_new_tokens=4, do_sample=False, eos_token_id=None)
    assert torch.equal(out[0, 1:], solo0[0])
    assert torch.equal(out[1], solo1[0])


def _other_decoder(kind, V):
    if kind == "gpt2":        # multi-head attention, learned absolute positions, Conv1D
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=V, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=BOS,
            eos_token_id=EOS, pad_token_id=PAD))
    return transformers.Qwen3ForCausalLM(transformers.Qwen3Config(   # GQA, q/k norms, rotary
        vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, intermediate_size=128, bos_token_id=BOS,
        eos_token_id=EOS, pad_token_id=PAD))


@pytest.mark.parametrize("kind", ["gpt2", "qwen3"])
def test_other_decoders(tok, kind):
    torch.manual_seed(0)
    enc = transformers.BertModel(transformers.BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64), add_pooling_layer=False)
    model = LarimarModel(enc, _other_decoder(kind, len(tok)), 16, 32, tokenizer=tok,
                         embedding_path=False)
    ids, mask, _ = segments(tok)
    out = model(ids[:8].view(2, 4, -1), mask[:8].view(2, 4, -1))
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.memory_slot.proj.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.memory_slot.proj.weight, std=2.0)
    z = 3 * torch.randn(6, 32)
    g = model.generate(torch.full((6, 1), BOS), z, max_new_tokens=5, do_sample=False,
                       eos_token_id=None)
    assert len({tuple(r) for r in g.tolist()}) > 1
    with torch.no_grad():
        assert torch.equal(model.decode(g[:, :-1], z).logits.argmax(-1), g[:, 1:])


def test_generate_beams_and_multiple_sequences_expand_the_slot(tok):
    model = make_model(tok, seed=4)
    model.eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.memory_slot.proj.weight, std=2.0)
    z = 3 * torch.randn(2, 32)
    prompt = torch.full((2, 1), BOS)
    beams = model.generate(prompt, z, max_new_tokens=4, num_beams=2, num_return_sequences=2,
                           eos_token_id=None)
    assert beams.shape == (4, 5)
    solo = model.generate(prompt[1:], z[1:], max_new_tokens=4, num_beams=2,
                          num_return_sequences=2, eos_token_id=None)
    assert torch.equal(beams[2:], solo)
    sampled = model.generate(prompt, z, max_new_tokens=4, do_sample=True, num_return_sequences=3)
    assert sampled.shape[0] == 6


# ----------------------------------------------------------------------------- overfitting


def test_overfits_sixteen_sentences_each_reproduced_from_its_readout(tok):
    """16 sentences, episodes of 4: after training, greedy decoding from [BOS] conditioned on
    a sentence's readout from the host memory reproduces exactly that sentence. The prompt is
    the same for all 16, so the text can only come from z."""
    torch.set_num_threads(2)
    model = make_model(tok, observation_noise=0.1, word_dropout=0.2)
    ids, mask, rows = segments(tok)
    T = ids.shape[1]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)

    def exact():
        model.eval()
        hits = 0
        with torch.no_grad():
            for e in range(4):                       # one host-memory episode at a time
                Z = model.encode(ids[4 * e:4 * e + 4], mask[4 * e:4 * e + 4])
                model.write(Z)
                out = model.generate(torch.full((4, 1), BOS), model.read(Z), do_sample=False,
                                     max_new_tokens=T, eos_token_id=EOS, pad_token_id=PAD)
                for i in range(4):
                    want, got = rows[4 * e + i], out[i].tolist()
                    hits += got[:len(want)] == want and all(t == PAD for t in got[len(want):])
        model.train()
        return hits

    t0 = time.perf_counter()
    model.train()
    hits, step = 0, 0
    while step < 600 and time.perf_counter() - t0 < 150:
        perm = torch.randperm(16, generator=gen)
        loss = model(ids[perm].view(4, 4, T), mask[perm].view(4, 4, T)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 25 == 0:
            hits = exact()
            if hits == 16:
                break
    # control: the readouts of an episode rolled by one give the rolled sentences
    model.eval()
    with torch.no_grad():
        Z = model.encode(ids[:4], mask[:4])
        model.write(Z)
        out = model.generate(torch.full((4, 1), BOS), model.read(Z).roll(1, 0), do_sample=False,
                             max_new_tokens=T, eos_token_id=EOS, pad_token_id=PAD)
    for i in range(4):
        want = rows[(i - 1) % 4]
        assert out[i, :len(want)].tolist() == want
    print(f"overfit: {hits}/16 exact after {step} steps, {time.perf_counter() - t0:.1f} s, "
          f"loss {loss.item():.4f}")
    assert hits == 16, f"only {hits}/16 sentences reproduced after {step} steps"


# ----------------------------------------------------------------------------- devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_same_code(tok):
    model = make_model(tok, observation_noise=0.1, word_dropout=0.2).cuda()
    ids, mask, _ = segments(tok)
    out = model(ids[:8].view(2, 4, -1), mask[:8].view(2, 4, -1))   # CPU ids are moved
    out.loss.backward()
    assert out.loss.is_cuda and torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        Z = model.encode(ids[:4], mask[:4])
        model.write(Z)                       # host memory; only latents cross devices
        r = model.read(Z)
    assert r.is_cuda and torch.allclose(r, Z, atol=1e-3)
    g = model.generate(torch.full((4, 1), BOS), r, max_new_tokens=4, do_sample=False)
    assert g.is_cuda and g.shape == (4, 5)


@pytest.mark.parametrize("name", ["bf16_answers", "int8_answers"])
def test_the_answer_copies_need_the_prefix_path(tok, name):
    model = make_model(tok)
    with pytest.raises(ValueError, match=name):
        getattr(model, name)(True)
    assert not model.answers_in_bf16 and not model.answers_in_int8
    getattr(model, name)(False)               # turning off what is off is fine


def test_precision_blocks_nest_stay_in_their_thread_and_check_their_arguments(tok):
    """``precision`` overrides the model-wide int8 choice in its block only: nested blocks
    take the innermost choice, None keeps the outer one, another thread sees the model-wide
    one, the choice ends with the block (also on an error), and bad choices are refused
    naming the argument before anything changes."""
    import threading
    model = make_model(tok).eval()
    assert not model.values_in_int8
    with model.precision(int8_values=True):
        assert model.values_in_int8
        other = []
        t = threading.Thread(target=lambda: other.append(model.values_in_int8))
        t.start()
        t.join()
        assert other == [False]
        with model.precision(int8_values=False):
            assert not model.values_in_int8
            with model.precision(int8_values=None):
                assert not model.values_in_int8
        assert model.values_in_int8
        model.train()
        assert not model.values_in_int8               # training never uses the copy
        model.eval()
    assert not model.values_in_int8
    with pytest.raises(RuntimeError), model.precision(int8_values=True):
        raise RuntimeError("inside")
    assert not model.values_in_int8
    with pytest.raises(ValueError, match="int8_values: expected True, False or None"):
        with model.precision(int8_values=1):
            pass
    for name in ("bf16_answers", "int8_answers"):               # no prefix path: no copy
        with pytest.raises(ValueError, match=name):
            with model.precision(**{name: True}):
                pass
    with pytest.raises(ValueError, match="int8_answers: expected True, False or None"):
        with model.precision(int8_answers="yes"):
            pass
    assert not model.answers_in_bf16 and not model.values_in_int8
    model.int8_values(True)
    with model.precision(int8_values=False):
        assert not model.values_in_int8
    assert model.values_in_int8
    model.int8_values(False)
    assert not model.values_in_int8 and "_int8_encoder" not in model.__dict__
