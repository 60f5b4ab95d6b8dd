"""Load a checkpoint of the IBM reference Larimar (github.com/IBM/larimar) into ``LarimarModel``.

The reference trains ``MemNetLight`` (``larimar_base/lightning_model.py``), a Lightning module
whose only weight-holding attribute is ``self.model = MemVAE(...)``
(``larimar_base/modules/mem_vae.py``), so every tensor of its ``state_dict`` starts with
``model.``:

- ``model.encoder.*``: ``BertForLatentConnector`` (``pytorch_transformers/modeling_bert.py``),
  a BERT (``embeddings``, ``encoder.layer.{i}``, ``pooler``) plus ``linear`` =
  Linear(H_enc -> 2C, no bias); ``mean, logvar = linear(pooled_output).chunk(2, -1)`` and the
  latent z is the mean half.
- ``model.decoder.*``: ``GPT2ForLatentConnector`` (``pytorch_transformers/modeling_gpt2.py``),
  GPT-2 (``transformer.{wte,wpe,h.{i},ln_f}``, ``lm_head``) plus, in ``transformer``,
  ``linear`` = Linear(C -> H * L, no bias) (memory path: chunk l of H numbers is layer l's one
  past position, used as both key and value) and ``linear_emb`` = Linear(C -> H, no bias)
  (embedding path: added to every token's word + position embedding). Both paths are on
  (``latent_as_gpt_emb=True, latent_as_gpt_memory=True`` are the class defaults and
  ``prepare_enc_dec`` does not change them).
- ``model.memory.*``: ``GPM`` (``modules/memory.py``): ``memory_mean`` (K, C), the learned
  prior memory M0; ``memory_logvar`` (1,); ``w_logvar`` (a (1,) or (K,) parameter, or a Linear
  for ``w_logvar_setting`` 2-4); the buffer ``ben_cohen_memory_init`` (1,); ``lstm_z`` only
  when ``ordering=True``.

Mapping (IBM key -> ``LarimarModel`` target):

- ``model.encoder.<bert key>`` -> ``encoder.<bert key>`` (a ``transformers.BertModel``);
- ``model.encoder.linear.weight`` (2C, H_enc): rows [:C] -> ``encoder_proj.weight`` (a
  bias-free Linear, as IBM's); rows [C:] (the logvar head) -> ``ibm_extra``;
- ``model.decoder.transformer.<gpt2 key>`` -> ``decoder.transformer.<gpt2 key>`` and
  ``model.decoder.lm_head.weight`` -> ``decoder.lm_head.weight`` (a ``GPT2LMHeadModel``, tied
  to ``wte`` when the two are equal, else untied);
- ``model.decoder.transformer.linear.weight`` (L*H, C) -> ``memory_slot.proj.weight``
  (``shared_kv=True``);
- ``model.decoder.transformer.linear_emb.weight`` (H, C) ->
  ``embedding_conditioner.proj.weight``;
- ``model.memory.memory_mean`` (K, C) -> ``prior``;
- ``model.memory.memory_logvar``, ``model.memory.w_logvar[.weight/.bias]``,
  ``model.memory.ben_cohen_memory_init`` (and ``ben_cohen_init`` of an older GPM) ->
  ``ibm_extra``: the stochastic read (w sampled with w_logvar) and the Ben-Israel-Cohen
  pseudo-inverse are not part of LarimarModel, which reads deterministically with exact
  pseudo-inverses.

Slot and positions: IBM splits ``linear(z)`` into L chunks of H, chunk l being layer l's past
key and value, split into heads exactly like the layer's own keys ((B, 1, H) -> (B, nh, 1,
hd)); ``MemorySlot``'s (layer, head, head_dim) order of the same H * L numbers is identical.
IBM sets ``past_length = 1``, so the tokens take positions 1..T and the slot has no position
embedding of its own; ``LarimarModel`` does the same (slot at 0, tokens from 1).

Derived buffers that older transformers / pytorch_transformers releases saved (BERT
``embeddings.position_ids``, GPT-2 ``h.{i}.attn.bias`` / ``attn.masked_bias``) are accepted
only if they hold what the config implies (positions 0..P-1, a lower-triangular mask) and are
then dropped. ``model.memory.lstm_z.*`` (``ordering=True``) is refused: that LSTM rewrites the
latents before the write and LarimarModel has no such step.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from .larimar import LarimarModel

__all__ = ["load_ibm_checkpoint"]

_SHOW = 10   # offending keys shown per category in an error message


# --------------------------------------------------------------------------- safe reading

class _AttributeDictStandIn:
    """Stands in for Lightning's ``AttributeDict`` (a dict subclass) while unpickling:
    ``__new__`` returns a plain dict, so the weights-only unpickler may fill it (it only fills
    exact dicts) and nothing of Lightning is imported or run."""

    def __new__(cls, *args: Any, **kwargs: Any) -> dict:  # type: ignore[misc]
        return {}


class _NamespaceStandIn:
    """Stands in for ``argparse.Namespace`` (old Lightning hparams): an inert attribute bag."""


# Only these non-tensor classes may appear in the file; each maps to an inert stand-in.
_SAFE_GLOBALS = [
    (_AttributeDictStandIn, "lightning.fabric.utilities.data.AttributeDict"),
    (_AttributeDictStandIn, "pytorch_lightning.utilities.parsing.AttributeDict"),
    (_AttributeDictStandIn, "lightning.pytorch.utilities.parsing.AttributeDict"),
    (_NamespaceStandIn, "argparse.Namespace"),
]


_DROP = object()   # marks values _plain leaves out


def _plain(value: Any, depth: int = 0) -> Any:
    """Hyper-parameters reduced to str/int/float/bool/None, lists and dicts of them (stand-ins
    and tensors become dicts / Python numbers; anything else is dropped)."""
    if depth > 8:
        return _DROP
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, _NamespaceStandIn):
        value = vars(value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            v = _plain(v, depth + 1)
            if isinstance(k, str) and v is not _DROP:
                out[k] = v
        return out
    if isinstance(value, (list, tuple)):
        return [v for v in (_plain(v, depth + 1) for v in value) if v is not _DROP]
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.item()
    return _DROP


def _read_checkpoint(path: str, map_location: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state_dict, plain hyper-parameters) of a Lightning checkpoint, read weights-only."""
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, not a Lightning .ckpt file (a DeepSpeed "
                         "sharded checkpoint? convert it to one file first)")
    try:
        use_mmap = zipfile.is_zipfile(path)   # big files: tensors are paged in on demand
    except OSError as e:
        raise ValueError(f"{path}: cannot read the file ({e})") from e
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            obj = torch.load(path, map_location=map_location, weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as e:
        # weights_only=True refuses every global outside torch's tensor allowlist and the
        # stand-ins above, before calling anything: nothing in the file was run
        found = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\n|$)", str(e), re.DOTALL)
        detail = (found.group(1) if found else str(e)).strip()[:300]
        if re.search(r"GLOBAL|global|Can only|reduce", detail):
            raise ValueError(f"{path}: refused: the file holds a pickled object that a "
                             f"weights-only load does not construct (nothing was executed): "
                             f"{detail}") from e
        raise ValueError(f"{path}: not a PyTorch checkpoint, or not one a weights-only load "
                         f"can read (nothing was executed): {detail}") from e
    except OSError as e:
        raise ValueError(f"{path}: cannot read the file ({e})") from e
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError/EOFError/... on garbage
        raise ValueError(f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        kind = (f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict)
                else type(obj).__name__)
        raise ValueError(f"{path}: not a Lightning checkpoint: expected a dict with a "
                         f"'state_dict' entry (and 'hyper_parameters', "
                         f"'pytorch-lightning_version'), got {kind}")
    sd = obj["state_dict"]
    bad = [repr(k) for k, v in sd.items() if not (isinstance(k, str) and isinstance(v, Tensor))]
    if bad:
        raise ValueError(f"{path}: the state_dict holds non-tensor entries: {_listing(bad)}")
    hp = _plain(obj.get("hyper_parameters") or {})
    return sd, hp if isinstance(hp, dict) else {}


def _listing(keys: list[str]) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
    return f"({len(keys)}) " + ", ".join(keys[:_SHOW]) + more


# --------------------------------------------------------------------------- geometry

# Heads of the checkpoints IBM's scripts name (hparams *_model_name_or_path), by (name, hidden).
_KNOWN_HEADS = {
    "bert-base": (768, 12), "bert-large": (1024, 16),
    "gpt2": (768, 12), "distilgpt2": (768, 12), "gpt2-medium": (1024, 16),
    "gpt2-large": (1280, 20), "gpt2-xl": (1600, 25),
}


def _heads(explicit: Optional[int], name: Any, hidden: int, what: str, path: str) -> int:
    """Attention heads: the explicit argument, else the named model's (when its hidden size
    matches), else hidden / 64 (BERT and every GPT-2 size use head size 64)."""
    if explicit is not None:
        heads = int(explicit)
    else:
        heads = 0
        if isinstance(name, str):
            base = os.path.basename(name.rstrip("/")).lower()
            for prefix, (h, n) in sorted(_KNOWN_HEADS.items(), key=lambda kv: -len(kv[0])):
                if (base == prefix or base.startswith(prefix + "-")) and h == hidden:
                    heads = n
                    break
        if not heads and hidden % 64 == 0:
            heads = hidden // 64
    if heads <= 0 or hidden % heads:
        raise ValueError(f"{path}: cannot tell the {what} attention heads for hidden size "
                         f"{hidden}: pass {what}_num_heads=")
    return heads


@dataclass
class _Geometry:
    enc_layers: int
    enc_hidden: int
    enc_heads: int
    enc_inner: int
    enc_vocab: int
    enc_positions: int
    enc_types: int
    dec_layers: int
    dec_hidden: int
    dec_heads: int
    dec_inner: int
    dec_vocab: int
    dec_positions: int
    code_size: int
    memory_size: int
    tied: bool
    w_logvar_setting: int


_E, _D, _M = "model.encoder.", "model.decoder.", "model.memory."


def _layer_count(sd: dict[str, Tensor], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = [int(m.group(1)) for k in sd for m in [pat.match(k)] if m]
    return max(idx) + 1 if idx else 0


def _infer(sd: dict[str, Tensor], hp: dict[str, Any], path: str,
           enc_heads: Optional[int], dec_heads: Optional[int]) -> _Geometry:
    """Sizes from tensor shapes (the anchors below); hyper-parameters only cross-check."""
    anchors = {
        "enc_word": _E + "embeddings.word_embeddings.weight",
        "enc_pos": _E + "embeddings.position_embeddings.weight",
        "enc_type": _E + "embeddings.token_type_embeddings.weight",
        "enc_inner": _E + "encoder.layer.0.intermediate.dense.weight",
        "enc_linear": _E + "linear.weight",
        "dec_wte": _D + "transformer.wte.weight",
        "dec_wpe": _D + "transformer.wpe.weight",
        "dec_inner": _D + "transformer.h.0.mlp.c_fc.weight",
        "mem": _M + "memory_mean",
    }
    missing = [k for k in anchors.values() if k not in sd]
    if missing:
        raise ValueError(f"{path}: not an IBM Larimar checkpoint (MemNetLight with a "
                         f"BERT encoder, GPT-2 decoder and memory): missing tensors "
                         f"{_listing(missing)}")
    shape = {name: tuple(sd[key].shape) for name, key in anchors.items()}
    bad = [f"{anchors[n]} {shape[n]}" for n in anchors if len(shape[n]) != 2]
    if bad:
        raise ValueError(f"{path}: shape mismatches "
                         f"{_listing([b + ' (expected 2-D)' for b in bad])}")
    enc_vocab, enc_hidden = shape["enc_word"]
    dec_vocab, dec_hidden = shape["dec_wte"]
    K, C = shape["mem"]
    enc_layers = _layer_count(sd, _E + "encoder.layer.")
    dec_layers = _layer_count(sd, _D + "transformer.h.")
    for key, value in (("latent_size", C), ("memory_size", K)):
        want = hp.get(key)
        if isinstance(want, int) and not isinstance(want, bool) and want != value:
            raise ValueError(f"{path}: hyper_parameters say {key}={want} but "
                             f"{_M}memory_mean is {(K, C)}")
    lm = sd.get(_D + "lm_head.weight")
    wte = sd[anchors["dec_wte"]]
    tied = lm is None or (lm.shape == wte.shape and bool(torch.equal(lm, wte)))
    setting = 0
    if _M + "w_logvar.weight" in sd:
        in_features = sd[_M + "w_logvar.weight"].shape[-1]
        setting = {C: 2, C * K: 3, C + C * K: 4}.get(in_features, 3)
    elif _M + "w_logvar" in sd and sd[_M + "w_logvar"].numel() == K and K != 1:
        setting = 1
    return _Geometry(
        enc_layers=enc_layers, enc_hidden=enc_hidden,
        enc_heads=_heads(enc_heads, hp.get("encoder_model_name_or_path"), enc_hidden,
                         "encoder", path),
        enc_inner=shape["enc_inner"][0], enc_vocab=enc_vocab, enc_positions=shape["enc_pos"][0],
        enc_types=shape["enc_type"][0],
        dec_layers=dec_layers, dec_hidden=dec_hidden,
        dec_heads=_heads(dec_heads, hp.get("decoder_model_name_or_path"), dec_hidden,
                         "decoder", path),
        dec_inner=shape["dec_inner"][1], dec_vocab=dec_vocab, dec_positions=shape["dec_wpe"][0],
        code_size=C, memory_size=K, tied=tied, w_logvar_setting=setting)


def _build_backbones(g: _Geometry) -> tuple[nn.Module, nn.Module]:
    """BertModel (with pooler) and GPT2LMHeadModel of the inferred sizes. Activation and
    LayerNorm epsilon are the library defaults, which are those of bert-*-cased and gpt2-*
    (erf gelu / 1e-12; tanh gelu "gelu_new" / 1e-5; IBM's GPT-2 ``gelu`` is the tanh form)."""
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    enc = BertModel(BertConfig(
        vocab_size=g.enc_vocab, hidden_size=g.enc_hidden, num_hidden_layers=g.enc_layers,
        num_attention_heads=g.enc_heads, intermediate_size=g.enc_inner,
        max_position_embeddings=g.enc_positions, type_vocab_size=g.enc_types),
        add_pooling_layer=True)
    # 50256 is GPT-2's <|endoftext|>; tiny vocabularies have none
    special = 50256 if g.dec_vocab > 50256 else None
    dec = GPT2LMHeadModel(GPT2Config(
        vocab_size=g.dec_vocab, n_embd=g.dec_hidden, n_layer=g.dec_layers, n_head=g.dec_heads,
        n_inner=g.dec_inner, n_positions=g.dec_positions, bos_token_id=special,
        eos_token_id=special, tie_word_embeddings=g.tied))
    return enc, dec


# --------------------------------------------------------------------------- mapping

@dataclass
class _Plan:
    targets: dict            # model state key -> Tensor (already sliced)
    extra: dict              # ibm_extra name -> Tensor
    missing: list
    unexpected: list
    mismatched: list


def _derived_ok(key: str, t: Tensor) -> Optional[bool]:
    """None if key is not a known derived buffer, else whether its values are the implied ones."""
    if key == _E + "embeddings.position_ids":
        return t.dim() == 2 and t.shape[0] == 1 and bool(
            torch.equal(t[0].long(), torch.arange(t.shape[1])))
    if re.fullmatch(re.escape(_D) + r"transformer\.h\.\d+\.attn\.masked_bias", key):
        return t.dim() == 0
    if re.fullmatch(re.escape(_D) + r"transformer\.h\.\d+\.attn\.bias", key):
        if t.dim() != 4 or t.shape[0] != 1 or t.shape[1] != 1 or t.shape[2] != t.shape[3]:
            return False
        n = t.shape[-1]
        return bool(torch.equal(t[0, 0].bool(), torch.tril(torch.ones(n, n, dtype=torch.bool))))
    return None


def _plan(sd: dict[str, Tensor], model: LarimarModel, g: _Geometry) -> _Plan:
    """Every checkpoint tensor matched by name and shape against its target."""
    C, K = g.code_size, g.memory_size
    # IBM key -> (our state key or None for ibm_extra, expected shape, slice of rows or None)
    expect: dict[str, tuple[Optional[str], tuple, Optional[slice]]] = {}
    for k, v in model.encoder.state_dict().items():
        expect[_E + k] = ("encoder." + k, tuple(v.shape), None)
    for k, v in model.decoder.state_dict().items():
        expect[_D + k] = ("decoder." + k, tuple(v.shape), None)
    expect[_E + "linear.weight"] = ("encoder_proj.weight", (2 * C, g.enc_hidden), slice(0, C))
    expect[_D + "transformer.linear.weight"] = (
        "memory_slot.proj.weight", tuple(model.memory_slot.proj.weight.shape), None)
    expect[_D + "transformer.linear_emb.weight"] = (
        "embedding_conditioner.proj.weight", tuple(model.embedding_conditioner.proj.weight.shape),
        None)
    expect[_M + "memory_mean"] = ("prior", (K, C), None)
    expect[_M + "memory_logvar"] = (None, (1,), None)
    expect[_M + "ben_cohen_memory_init"] = (None, (1,), None)
    w_shapes = {0: {"w_logvar": (1,)}, 1: {"w_logvar": (K,)},
                2: {"w_logvar.weight": (K, C), "w_logvar.bias": (K,)},
                3: {"w_logvar.weight": (K, C * K), "w_logvar.bias": (K,)},
                4: {"w_logvar.weight": (K, C + C * K), "w_logvar.bias": (K,)}}
    for name, shape in w_shapes[g.w_logvar_setting].items():
        expect[_M + name] = (None, shape, None)
    optional = {_M + "ben_cohen_init": (None, (1,), None)}   # older GPM (commented out now)

    targets, extra, mismatched, unexpected = {}, {}, [], []
    for key, t in sd.items():
        spec = expect.get(key) or optional.get(key)
        if spec is None:
            ok = _derived_ok(key, t)
            if ok is None:
                unexpected.append(key)
            elif not ok:
                mismatched.append(f"{key} {tuple(t.shape)} (not the derived buffer's values)")
            continue
        target, shape, rows = spec
        if tuple(t.shape) != shape:
            mismatched.append(f"{key} {tuple(t.shape)} (expected {shape})")
            continue
        if target is None:
            # not cloned: IBM's w_logvar (setting 3) alone is K x K*C floats (0.8 GB for the
            # 1.3B model); from a zip file it stays memory-mapped and costs no RAM until read
            extra[key[len("model."):]] = t.detach()
            continue
        targets[target] = t if rows is None else t[rows]
        if key == _E + "linear.weight":
            # IBM: mean, logvar = linear(pooled).chunk(2, -1); z is the mean half
            extra["encoder.linear.weight[logvar]"] = t[C:].detach()
    missing = [k for k in expect if k not in sd]
    return _Plan(targets, extra, missing, unexpected, mismatched)


# --------------------------------------------------------------------------- entry point

_FIXED = ("memory_size", "code_size", "pooler", "shared_kv", "embedding_path", "memory_path")


def load_ibm_checkpoint(path: Union[str, os.PathLike], *, tokenizer: Any = None,
                        encoder_tokenizer: Any = None, map_location: Any = "cpu",
                        encoder_num_heads: Optional[int] = None,
                        decoder_num_heads: Optional[int] = None,
                        **model_kwargs: Any) -> LarimarModel:
    """A ``LarimarModel`` holding the weights of an IBM Larimar Lightning checkpoint.

    Safety: the file is read with ``torch.load(..., weights_only=True)``: only tensors and
    plain containers are rebuilt. Lightning's ``hyper_parameters`` may be an ``AttributeDict``
    or an ``argparse.Namespace``; those two class names (and nothing else) are let through as
    inert stand-ins (``torch.serialization.safe_globals``), reduced to plain values, and never
    instantiated as the real classes. Any other pickled object (in any entry: hparams,
    callbacks, optimizer state) makes the load refuse the file, without running it.

    Shapes inferred from the tensors: encoder layers / hidden / intermediate / vocabulary /
    positions / token types (``model.encoder.*``), decoder layers / hidden / inner / vocabulary
    / positions (``model.decoder.transformer.*``), C and K (``model.memory.memory_mean``, (K, C)).
    Attention heads are not in the tensors: ``encoder_num_heads`` / ``decoder_num_heads`` if
    given, else those of the model named by the hparams' ``encoder_model_name_or_path`` /
    ``decoder_model_name_or_path`` (bert-base/large, gpt2 sizes) when its hidden size matches,
    else hidden / 64 (right for every BERT and GPT-2 size). hparams ``latent_size`` and
    ``memory_size``, when present, must agree with the tensors.

    Every tensor of the file must map to a target with the right shape (see the module
    docstring for the table); missing tensors, unexpected tensors and shape mismatches are
    refused with a ValueError that names the path and lists the keys. Tensors with no
    counterpart by design are kept in ``model.ibm_extra`` (name -> tensor, the IBM key without
    ``model.``; the file's own tensors, memory-mapped when the file is a zip checkpoint, and
    left where ``map_location`` put them): the logvar half of ``encoder.linear`` (C, H_enc),
    ``memory.memory_logvar``, ``memory.w_logvar*`` and ``memory.ben_cohen_memory_init``
    (and ``memory.ben_cohen_init`` if present).

    The model is built with ``pooler="cls"`` (BERT's pooled output, as IBM), a bias-free
    ``encoder_proj`` (C, H_enc) (IBM's Linear has no bias), ``shared_kv=True`` and both
    conditioning paths; hparams ``observation_noise_std`` becomes ``observation_noise`` unless
    given. ``model_kwargs`` go to ``LarimarModel`` (not the fixed ones: memory_size,
    code_size, pooler, shared_kv, embedding_path, memory_path). IBM's tokenizers: BERT
    (bert-*-cased) for the encoder, GPT-2 with ``<PAD>``, ``<BOS>``, ``<EOS>`` added (vocab
    50260) for the decoder, whose inputs start with ``<BOS>``.

    Args:
        path: the ``.ckpt`` file.
        tokenizer, encoder_tokenizer: passed to ``LarimarModel``.
        map_location: ``torch.load``'s; a device (str or torch.device) also receives the model.
        encoder_num_heads, decoder_num_heads: attention heads, when the default is wrong.

    Returns:
        the model in eval mode, with ``ibm_extra`` (dict), ``ibm_hparams`` (plain dict) and
        ``ibm_geometry`` (dict of the inferred sizes) attributes.
    """
    path = os.fspath(path)
    fixed = sorted(set(model_kwargs) & set(_FIXED))
    if fixed:
        raise TypeError(f"load_ibm_checkpoint: {fixed} are fixed by the IBM layout")
    sd, hp = _read_checkpoint(path, map_location)
    lstm = [k for k in sd if k.startswith(_M + "lstm_z.")]
    if lstm:
        raise ValueError(f"{path}: unsupported IBM checkpoint: it was trained with ordering=True "
                         f"(an LSTM over the latents before the write, which LarimarModel does "
                         f"not have): {_listing(lstm)}")
    g = _infer(sd, hp, path, encoder_num_heads, decoder_num_heads)
    enc, dec = _build_backbones(g)
    noise = hp.get("observation_noise_std")
    if isinstance(noise, (int, float)) and not isinstance(noise, bool):
        model_kwargs.setdefault("observation_noise", float(noise))
    model = LarimarModel(enc, dec, memory_size=g.memory_size, code_size=g.code_size,
                         tokenizer=tokenizer, encoder_tokenizer=encoder_tokenizer, pooler="cls",
                         shared_kv=True, embedding_path=True, memory_path=True, **model_kwargs)
    # IBM's encoder head is Linear(H, 2C, bias=False): keep the mean half, without a bias
    model.encoder_proj = nn.Linear(g.enc_hidden, g.code_size, bias=False)

    plan = _plan(sd, model, g)
    if plan.missing or plan.unexpected or plan.mismatched:
        parts = [f"{what} {_listing(keys)}" for what, keys in
                 (("missing tensors", plan.missing), ("unexpected tensors", plan.unexpected),
                  ("shape mismatches", plan.mismatched)) if keys]
        raise ValueError(f"{path}: not loadable as an IBM Larimar checkpoint: " + "; ".join(parts))

    own = model.state_dict()
    covered = ("encoder.", "decoder.", "encoder_proj.", "prior", "memory_slot.",
               "embedding_conditioner.")
    left = [k for k in own if k not in plan.targets]
    inside = [k for k in left if k.startswith(covered)]
    if inside:   # every IBM module is fully covered by construction; this is a loader bug
        raise RuntimeError(f"load_ibm_checkpoint: no source for {_listing(inside)}")
    if left:     # parameters of LarimarModel features IBM does not have keep their init
        warnings.warn(f"load_ibm_checkpoint: {_listing(left)} have no IBM counterpart and keep "
                      "their initial values", stacklevel=2)
    with torch.no_grad():
        result = model.load_state_dict(plan.targets, strict=False)
    if result.unexpected_keys:   # targets are named from the model itself: a loader bug
        raise RuntimeError(f"load_ibm_checkpoint: no target for {_listing(result.unexpected_keys)}")

    model.ibm_extra = plan.extra
    model.ibm_hparams = hp
    model.ibm_geometry = dict(vars(g))
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval()
