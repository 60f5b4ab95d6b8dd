"""load_ibm_checkpoint on a tiny, randomly initialised checkpoint in the IBM Larimar layout.

The key names below are written out by hand from IBM's source (github.com/IBM/larimar,
larimar_base/): ``MemNetLight.model = MemVAE(...)`` (lightning_model.py), whose ``encoder`` is
``BertForLatentConnector`` (pytorch_transformers/modeling_bert.py: embeddings, encoder.layer.i,
pooler, linear (2C, H)), ``decoder`` is ``GPT2ForLatentConnector`` (modeling_gpt2.py:
transformer.{wte, wpe, h.i, ln_f, linear (H*L, C), linear_emb (H, C)}, lm_head) and
``memory`` is ``GPM`` (modules/memory.py: memory_mean, memory_logvar, w_logvar,
ben_cohen_memory_init). The decoder reference below re-implements IBM's GPT-2 forward with a
latent (modeling_gpt2.py, GPT2Model.forward / GPT2Attention) in plain torch, so the slot
layout and positions are checked against IBM's math, not against transformers.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import types

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from larimar_ext.model import LarimarModel, load_ibm_checkpoint  # noqa: E402
from larimar_ext.model.ibm_checkpoint import _heads  # noqa: E402

# tiny sizes; hidden 64 / 128 give 1 / 2 heads by the hidden/64 default
VE, HE, LE, IE, PE = 40, 64, 2, 96, 24          # BERT vocab, hidden, layers, inner, positions
VD, HD, LD, ID, PD = 48, 128, 2, 160, 32        # GPT-2 vocab, hidden, layers, inner, positions
C, K = 16, 8
E, D, M = "model.encoder.", "model.decoder.", "model.memory."

BERT_LAYER = {   # BertLayer parameter -> shape
    "attention.self.query.weight": (HE, HE), "attention.self.query.bias": (HE,),
    "attention.self.key.weight": (HE, HE), "attention.self.key.bias": (HE,),
    "attention.self.value.weight": (HE, HE), "attention.self.value.bias": (HE,),
    "attention.output.dense.weight": (HE, HE), "attention.output.dense.bias": (HE,),
    "attention.output.LayerNorm.weight": (HE,), "attention.output.LayerNorm.bias": (HE,),
    "intermediate.dense.weight": (IE, HE), "intermediate.dense.bias": (IE,),
    "output.dense.weight": (HE, IE), "output.dense.bias": (HE,),
    "output.LayerNorm.weight": (HE,), "output.LayerNorm.bias": (HE,),
}
GPT2_BLOCK = {   # GPT2Block parameter -> shape (Conv1D weights are (in, out))
    "ln_1.weight": (HD,), "ln_1.bias": (HD,),
    "attn.c_attn.weight": (HD, 3 * HD), "attn.c_attn.bias": (3 * HD,),
    "attn.c_proj.weight": (HD, HD), "attn.c_proj.bias": (HD,),
    "ln_2.weight": (HD,), "ln_2.bias": (HD,),
    "mlp.c_fc.weight": (HD, ID), "mlp.c_fc.bias": (ID,),
    "mlp.c_proj.weight": (ID, HD), "mlp.c_proj.bias": (HD,),
}


def ibm_shapes() -> dict[str, tuple]:
    s = {E + "embeddings.word_embeddings.weight": (VE, HE),
         E + "embeddings.position_embeddings.weight": (PE, HE),
         E + "embeddings.token_type_embeddings.weight": (2, HE),
         E + "embeddings.LayerNorm.weight": (HE,), E + "embeddings.LayerNorm.bias": (HE,)}
    for i in range(LE):
        s.update({f"{E}encoder.layer.{i}.{k}": v for k, v in BERT_LAYER.items()})
    s.update({E + "pooler.dense.weight": (HE, HE), E + "pooler.dense.bias": (HE,),
              E + "linear.weight": (2 * C, HE)})
    s.update({D + "transformer.wte.weight": (VD, HD), D + "transformer.wpe.weight": (PD, HD)})
    for i in range(LD):
        s.update({f"{D}transformer.h.{i}.{k}": v for k, v in GPT2_BLOCK.items()})
    s.update({D + "transformer.ln_f.weight": (HD,), D + "transformer.ln_f.bias": (HD,),
              D + "transformer.linear.weight": (HD * LD, C),
              D + "transformer.linear_emb.weight": (HD, C),
              D + "lm_head.weight": (VD, HD)})
    s.update({M + "w_logvar.weight": (K, C * K), M + "w_logvar.bias": (K,),   # setting 3
              M + "memory_logvar": (1,), M + "memory_mean": (K, C),
              M + "ben_cohen_memory_init": (1,)})
    return s


def ibm_state(seed: int = 0, tied: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in ibm_shapes().items():
        t = torch.randn(shape, generator=g)
        if "LayerNorm.weight" in k or k.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            t = 1.0 + 0.1 * t
        elif k.endswith("bias"):
            t = 0.1 * t
        elif k.endswith("ben_cohen_memory_init"):
            t = torch.tensor([-5.0])
        elif k.endswith("memory_logvar"):
            t = torch.zeros(1)
        elif "memory_mean" not in k:
            t = t * (0.3 if "linear" in k else 0.15)
        sd[k] = t
    if tied:   # Lightning saves both names of GPT-2's tied embedding, one storage
        sd[D + "lm_head.weight"] = sd[D + "transformer.wte.weight"]
    return sd


def save(path, sd, hparams=None, **extra) -> str:
    hp = {"latent_size": C, "memory_size": K, "encoder_model_name_or_path": "bert-base-cased",
          "decoder_model_name_or_path": "gpt2", "observation_noise_std": 1e-6,
          "pseudoinverse_approx_step": 15, "w_logvar_setting": 3, "episode_sizes": [16]}
    obj = {"state_dict": sd, "hyper_parameters": hp if hparams is None else hparams,
           "pytorch-lightning_version": "2.1.3", "epoch": 3, "global_step": 1000, **extra}
    torch.save(obj, path)
    return str(path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    sd = ibm_state()
    path = save(tmp_path_factory.mktemp("ibm") / "larimar.ckpt", sd)
    return path, sd, load_ibm_checkpoint(path)


# --------------------------------------------------------------------------- mapping

def target_of(model: LarimarModel, key: str) -> torch.Tensor:
    """Where IBM key ``key`` should land (hand-written, independent of the loader's table)."""
    if key == E + "linear.weight":
        return torch.cat([model.encoder_proj.weight,
                          model.ibm_extra["encoder.linear.weight[logvar]"]])
    if key == D + "transformer.linear.weight":
        return model.memory_slot.proj.weight
    if key == D + "transformer.linear_emb.weight":
        return model.embedding_conditioner.proj.weight
    if key == M + "memory_mean":
        return model.prior
    if key.startswith(M):
        return model.ibm_extra["memory." + key[len(M):]]
    if key.startswith(E):
        return model.encoder.state_dict()[key[len(E):]]
    return model.decoder.state_dict()[key[len(D):]]


def test_every_tensor_lands_where_it_should(ckpt):
    path, sd, model = ckpt
    assert isinstance(model, LarimarModel) and not model.training
    for key, value in sd.items():
        assert torch.equal(target_of(model, key), value), key
    # the 2C projection: first half is z's projection (no bias, like IBM's), second half kept
    assert model.encoder_proj.bias is None
    assert torch.equal(model.encoder_proj.weight, sd[E + "linear.weight"][:C])
    assert set(model.ibm_extra) == {"encoder.linear.weight[logvar]", "memory.w_logvar.weight",
                                    "memory.w_logvar.bias", "memory.memory_logvar",
                                    "memory.ben_cohen_memory_init"}
    # every parameter of the model came from the file (nothing left at its random init)
    n_file = sum(v.numel() for k, v in sd.items() if not k.startswith(M)) \
        - sd[D + "lm_head.weight"].numel() - C * HE + K * C
    assert sum(p.numel() for p in model.parameters()) == n_file
    assert model.decoder.lm_head.weight is model.decoder.transformer.wte.weight


def test_inferred_geometry_and_options(ckpt):
    path, sd, model = ckpt
    g = model.ibm_geometry
    assert (g["enc_layers"], g["enc_hidden"], g["enc_heads"], g["enc_inner"]) == (LE, HE, 1, IE)
    assert (g["dec_layers"], g["dec_hidden"], g["dec_heads"], g["dec_inner"]) == (LD, HD, 2, ID)
    assert (g["code_size"], g["memory_size"], g["w_logvar_setting"]) == (C, K, 3)
    assert (model.code_size, model.memory_size) == (C, K)
    assert model.memory_slot.shared_kv and model.embedding_conditioner is not None
    assert model.decoder.config.n_positions == PD and model.encoder.config.vocab_size == VE
    assert model.observation_noise == pytest.approx(1e-6)
    assert model.ibm_hparams["pseudoinverse_approx_step"] == 15
    assert model.ibm_hparams["episode_sizes"] == [16]


# --------------------------------------------------------------------------- IBM math

def _ln(x, w, b):
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b, eps=1e-5)


def ibm_gpt2_logits(sd: dict, ids: torch.Tensor, z: torch.Tensor, n_head: int) -> torch.Tensor:
    """IBM GPT2ForLatentConnector forward with past_key_values=z, no attention mask:
    linear(z) split into L chunks of H (one key = value position per layer, heads split like
    the layer's own keys), positions past_length=1 .. T, linear_emb(z) added to the embeddings."""
    P = D + "transformer."
    B, T = ids.shape
    H = sd[P + "wte.weight"].shape[1]
    hd = H // n_head
    past = torch.split((z @ sd[P + "linear.weight"].T).unsqueeze(1), H, dim=2)   # L x (B, 1, H)
    pos = torch.arange(1, T + 1)
    h = (sd[P + "wte.weight"][ids] + sd[P + "wpe.weight"][pos]
         + (z @ sd[P + "linear_emb.weight"].T)[:, None])

    def split(t):
        return t.view(B, -1, n_head, hd).permute(0, 2, 1, 3)

    causal = torch.tril(torch.ones(T + 1, T + 1, dtype=torch.bool))[1:]   # bias[kl-ql:kl, :kl]
    for i in range(LD):
        p = f"{P}h.{i}."
        x = _ln(h, sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        q, k, v = (x @ sd[p + "attn.c_attn.weight"] + sd[p + "attn.c_attn.bias"]).split(H, dim=2)
        q, k, v = split(q), split(k), split(v)
        pk = split(past[i])
        k, v = torch.cat([pk, k], 2), torch.cat([pk, v], 2)
        w = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        w = torch.where(causal, w, torch.finfo(w.dtype).min).softmax(-1)
        a = (w @ v).permute(0, 2, 1, 3).reshape(B, T, H)
        h = h + a @ sd[p + "attn.c_proj.weight"] + sd[p + "attn.c_proj.bias"]
        x = _ln(h, sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        m = torch.nn.functional.gelu(x @ sd[p + "mlp.c_fc.weight"] + sd[p + "mlp.c_fc.bias"],
                                     approximate="tanh")
        h = h + m @ sd[p + "mlp.c_proj.weight"] + sd[p + "mlp.c_proj.bias"]
    h = _ln(h, sd[P + "ln_f.weight"], sd[P + "ln_f.bias"])
    return h @ sd[D + "lm_head.weight"].T


def test_encode_write_read_decode_matches_ibm_math(ckpt):
    path, sd, model = ckpt
    g = torch.Generator().manual_seed(1)
    N = 6                                                  # N < K: minimum-norm write
    enc_ids = torch.randint(1, VE, (N, 9), generator=g)
    with torch.no_grad():
        Z = model.encode(enc_ids)
        # IBM: pooled_output = tanh(pooler(h[:, 0])); mean, logvar = linear(pooled).chunk(2)
        hidden = model.encoder(input_ids=enc_ids).last_hidden_state
        pooled = torch.tanh(hidden[:, 0] @ sd[E + "pooler.dense.weight"].T
                            + sd[E + "pooler.dense.bias"])
        z_ref, _ = (pooled @ sd[E + "linear.weight"].T).chunk(2, -1)
    torch.testing.assert_close(Z, z_ref, rtol=1e-5, atol=1e-5)

    model.write(Z)
    zq = Z[:3]
    z_read = model.read(zq)
    # least squares in float64: W = Z M0^+, M = W^+ Z, z_read = (zq M^+) M
    Z64, M0 = Z.double().numpy(), sd[M + "memory_mean"].double().numpy()
    Mem = np.linalg.pinv(Z64 @ np.linalg.pinv(M0)) @ Z64
    ref = zq.double().numpy() @ np.linalg.pinv(Mem) @ Mem
    np.testing.assert_allclose(z_read.double().numpy(), ref, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(ref, zq.double().numpy(), atol=1e-6)   # written rows come back

    dec_ids = torch.randint(0, VD, (3, 7), generator=g)
    with torch.no_grad():
        logits = model.decode(dec_ids, z_read).logits
        want = ibm_gpt2_logits(sd, dec_ids, z_read.float(), n_head=2)
        # the readout matters: a different z gives different logits
        other = model.decode(dec_ids, torch.zeros_like(z_read)).logits
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-4)
    assert (logits - other).abs().max() > 1e-2


def test_untied_lm_head_and_explicit_heads(tmp_path):
    sd = ibm_state(seed=2, tied=False)
    path = save(tmp_path / "untied.ckpt", sd)
    model = load_ibm_checkpoint(path, decoder_num_heads=4)
    assert model.decoder.config.n_head == 4
    assert not model.decoder.config.tie_word_embeddings
    assert torch.equal(model.decoder.lm_head.weight, sd[D + "lm_head.weight"])
    assert torch.equal(model.decoder.transformer.wte.weight, sd[D + "transformer.wte.weight"])
    ids, z = torch.randint(0, VD, (2, 5)), torch.randn(2, C)
    with torch.no_grad():
        torch.testing.assert_close(model.decode(ids, z).logits, ibm_gpt2_logits(sd, ids, z, 4),
                                   rtol=1e-4, atol=1e-4)


def test_heads_default():
    assert _heads(None, "bert-large-cased", 1024, "encoder", "p") == 16
    assert _heads(None, "/models/gpt2-large", 1280, "decoder", "p") == 20
    assert _heads(None, "gpt2-xl", 1600, "decoder", "p") == 25
    assert _heads(None, None, 768, "decoder", "p") == 12
    assert _heads(3, None, 96, "decoder", "p") == 3
    with pytest.raises(ValueError, match="decoder_num_heads"):
        _heads(None, None, 96, "decoder", "p")


# --------------------------------------------------------------------------- hparams forms

def test_hparams_as_namespace_and_attribute_dict(tmp_path, monkeypatch):
    sd = ibm_state()
    ns = argparse.Namespace(latent_size=C, memory_size=K, observation_noise_std=0.25)
    model = load_ibm_checkpoint(save(tmp_path / "ns.ckpt", sd, hparams=ns))
    assert model.ibm_hparams["latent_size"] == C and model.observation_noise == 0.25

    # Lightning's AttributeDict, pickled under its real name without importing lightning
    names = ["lightning", "lightning.fabric", "lightning.fabric.utilities",
             "lightning.fabric.utilities.data"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))

    class AttributeDict(dict):
        pass
    AttributeDict.__module__, AttributeDict.__qualname__ = names[-1], "AttributeDict"
    sys.modules[names[-1]].AttributeDict = AttributeDict
    path = save(tmp_path / "ad.ckpt", sd, hparams=AttributeDict(latent_size=C, memory_size=K))
    for name in names:
        monkeypatch.delitem(sys.modules, name)
    model = load_ibm_checkpoint(path)
    assert model.ibm_hparams == {"latent_size": C, "memory_size": K}

    bad = save(tmp_path / "bad_hp.ckpt", sd, hparams={"latent_size": C + 1})
    with pytest.raises(ValueError, match="latent_size"):
        load_ibm_checkpoint(bad)


def test_old_derived_buffers_accepted_only_with_their_values(tmp_path):
    sd = dict(ibm_state())
    sd[E + "embeddings.position_ids"] = torch.arange(PE).unsqueeze(0)
    for i in range(LD):
        sd[f"{D}transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(PD, PD)).view(1, 1, PD, PD)
        sd[f"{D}transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    model = load_ibm_checkpoint(save(tmp_path / "old.ckpt", sd))
    assert torch.equal(model.prior, sd[M + "memory_mean"])
    sd[f"{D}transformer.h.1.attn.bias"] = torch.ones(1, 1, PD, PD)   # not causal
    with pytest.raises(ValueError, match=r"h\.1\.attn\.bias"):
        load_ibm_checkpoint(save(tmp_path / "old_bad.ckpt", sd))


# --------------------------------------------------------------------------- refusals

def refused(tmp_path, sd, name="x.ckpt", **kw):
    path = save(tmp_path / name, sd, **kw)
    with pytest.raises(ValueError) as info:
        load_ibm_checkpoint(path)
    msg = str(info.value)
    assert path in msg
    return msg


def test_refuses_missing_tensor(tmp_path):
    sd = dict(ibm_state())
    del sd[D + "transformer.h.1.mlp.c_proj.bias"]
    msg = refused(tmp_path, sd)
    assert "missing tensors (1)" in msg and "h.1.mlp.c_proj.bias" in msg


def test_refuses_unexpected_tensor(tmp_path):
    sd = dict(ibm_state())
    sd[D + "transformer.adapter.weight"] = torch.zeros(3)
    sd[M + "lstm_like"] = torch.zeros(1)
    msg = refused(tmp_path, sd)
    assert "unexpected tensors (2)" in msg and "transformer.adapter.weight" in msg


def test_refuses_shape_mismatch(tmp_path):
    sd = dict(ibm_state())
    sd[E + "encoder.layer.0.attention.self.key.weight"] = torch.zeros(HE, HE - 1)
    sd[D + "transformer.linear.weight"] = torch.zeros(HD * LD, C + 1)
    msg = refused(tmp_path, sd)
    assert "shape mismatches (2)" in msg and f"({HE}, {HE - 1})" in msg
    assert "transformer.linear.weight" in msg


def test_listing_is_capped(tmp_path):
    sd = {k: v for k, v in ibm_state().items() if ".layer.1." not in k}
    sd[E + "encoder.layer.1.output.dense.bias"] = torch.zeros(HE)   # keeps 2 layers inferred
    msg = refused(tmp_path, sd)
    assert f"missing tensors ({len(BERT_LAYER) - 1})" in msg and "... and 5 more" in msg


def test_refuses_ordering_lstm(tmp_path):
    sd = dict(ibm_state())
    sd[M + "lstm_z.weight_ih_l0"] = torch.zeros(4 * (C // 2), C)
    assert "ordering=True" in refused(tmp_path, sd)


def test_refuses_files_that_are_not_lightning_checkpoints(tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save(ibm_state(), bare)                       # a state_dict, no Lightning wrapper
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        load_ibm_checkpoint(bare)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint at all\n")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint") as info:
        load_ibm_checkpoint(text)
    assert str(text) in str(info.value)
    with pytest.raises(ValueError, match="directory"):
        load_ibm_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="cannot read"):
        load_ibm_checkpoint(tmp_path / "absent.ckpt")
    with pytest.raises(ValueError, match="non-tensor"):
        load_ibm_checkpoint(save(tmp_path / "odd.ckpt", {**ibm_state(), "model.x": [1, 2]}))
    with pytest.raises(ValueError, match="not an IBM Larimar checkpoint"):
        load_ibm_checkpoint(save(tmp_path / "other.ckpt", {"model.fc.weight": torch.zeros(2, 2)}))


class _Payload:
    """Unpickling this would create ``marker`` (builtins.open in write mode)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("where", ["hyper_parameters", "callbacks", "top"])
def test_pickled_object_is_not_executed(tmp_path, where):
    marker = tmp_path / "pwned"
    sd = ibm_state()
    path = tmp_path / "evil.ckpt"
    if where == "hyper_parameters":
        save(path, sd, hparams={"latent_size": C, "x": _Payload(str(marker))})
    elif where == "callbacks":
        save(path, sd, callbacks={"ModelCheckpoint": {"best": _Payload(str(marker))}})
    else:
        torch.save(_Payload(str(marker)), path)
    with pytest.raises(ValueError, match="nothing was executed") as info:
        load_ibm_checkpoint(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_fixed_options_cannot_be_overridden(ckpt):
    path, _, _ = ckpt
    with pytest.raises(TypeError, match="shared_kv"):
        load_ibm_checkpoint(path, shared_kv=False)
    with pytest.raises(TypeError, match="pooler"):
        load_ibm_checkpoint(path, pooler="mean")


def test_model_kwargs_and_tokenizer_pass_through(ckpt):
    path, _, _ = ckpt
    model = load_ibm_checkpoint(path, observation_noise=0.5, inference_ridge=1e-4,
                                dummy_token_id=7)
    assert (model.observation_noise, model.inference_ridge, model.dummy_token_id) == (0.5, 1e-4, 7)
    assert os.path.exists(path)
