"""A saved LarimarModel folder: the generic save and load, with no model build of its own.

A saved model is a folder with ``config.json`` (how to build it: the build config, plus
notes such as training figures) and ``model.safetensors`` (only the tensors training
changed, ``trained_state``: everything outside the frozen encoder and decoder, and any of
their parameters that train), so a saved model stays a few MB.

What a config means (which encoder and decoder, how they are built) is not known here: a
``FolderBuild`` turns a folder's config into a fresh model whose parameters the saved
tensors then fill. The package's own build (MiniLM + SmolLM2, ``pretrained.py``) is the
default build: ``larimar_ext.model`` registers it with ``set_default_build`` as a
function that imports ``pretrained.py`` on the first load or save, so importing the
generic model (``larimar.py``) never imports the default build.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import torch

if TYPE_CHECKING:  # larimar.py imports this module: no import of it at run time
    from .larimar import LarimarModel

__all__ = ["FolderBuild", "set_default_build", "default_build", "trained_state",
           "save_folder", "load_folder", "load", "save"]


@dataclass(frozen=True)
class FolderBuild:
    """How the folders of one model build are written and read.

    ``format``: the tag written into the weights file's metadata; ``build(config, dtype)``:
    a model with fresh tensors for a folder's whole ``config.json`` dict (the builder keeps
    the keys it knows and leaves the notes); ``default_dir()``: the folder a load with no
    path reads (for the package's build, the trained default model shipped in it).
    """
    format: str
    build: Callable[[dict[str, Any], Optional[torch.dtype]], "LarimarModel"]
    default_dir: Callable[[], Path]


# A provider rather than the FolderBuild itself: the default build imports its encoder and
# decoder loaders, which only the first load or save should pay for.
_default_provider: Optional[Callable[[], FolderBuild]] = None


def set_default_build(provider: Callable[[], FolderBuild]) -> None:
    """Register the build that ``LarimarModel.from_pretrained``/``save_pretrained`` use:
    ``provider()`` returns it, called on each load or save (not here)."""
    global _default_provider
    _default_provider = provider


def default_build() -> FolderBuild:
    """The registered default build (``larimar_ext.model`` registers the package's own)."""
    if _default_provider is None:
        raise RuntimeError("no default model build is registered "
                           "(larimar_ext.model registers the package's own on import)")
    return _default_provider()


def _kept(name: str, p: torch.nn.Parameter) -> bool:
    """Whether a saved model keeps parameter ``name``: it is not part of the frozen encoder
    or decoder (those always come from their own packages), or it trains."""
    return p.requires_grad or not name.startswith(("encoder.", "decoder."))


def trained_state(model: "LarimarModel") -> dict[str, torch.Tensor]:
    """The tensors a saved model keeps: everything outside the frozen encoder/decoder, and
    encoder/decoder parameters that train."""
    out = {}
    for name, p in model.named_parameters():
        if _kept(name, p):
            out[name] = p.detach().to("cpu").contiguous()
    return out


def save_folder(model: "LarimarModel", path: Union[str, Path],
                extra: Optional[dict[str, Any]] = None, *, tag: str) -> Path:
    """Write ``config.json`` (the model's ``build_config`` + ``extra`` notes, e.g. training
    figures) and ``model.safetensors`` (metadata ``format`` = ``tag``) into folder ``path``
    (replaced atomically)."""
    from safetensors.torch import save_file

    cfg = getattr(model, "build_config", None)
    if cfg is None:
        raise ValueError("model: only models made by build_model()/from_pretrained() can be "
                         "saved (a saved folder needs the model's build_config)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".larimar-model-", dir=path.parent))
    try:
        save_file(trained_state(model), str(tmp / "model.safetensors"), metadata={"format": tag})
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


def load_folder(path: Union[str, Path],
                build: Callable[[dict[str, Any], Optional[torch.dtype]], "LarimarModel"],
                device: Union[str, torch.device] = "cpu",
                dtype: Optional[torch.dtype] = None) -> "LarimarModel":
    """Load the saved model in folder ``path``, made by ``build(config, dtype)``, in eval
    mode. Every saved tensor must match a model parameter by name and shape, and every
    parameter a saved model keeps must be in the file."""
    from safetensors.torch import load_file

    path = Path(path)
    config_file, weights_file = path / "config.json", path / "model.safetensors"
    if not config_file.is_file() or not weights_file.is_file():
        raise FileNotFoundError(f"{path}: expected config.json and model.safetensors")
    try:
        cfg = json.loads(config_file.read_text())
    except ValueError as exc:
        raise ValueError(f"{config_file}: not JSON ({exc})") from None
    model = build(cfg, dtype)
    model.build_config = cfg   # keep the notes (training figures) with the model
    state = load_file(str(weights_file))
    params = dict(model.named_parameters())
    missing = sorted(k for k, p in params.items() if _kept(k, p) and k not in state)
    wrong = sorted(k for k, v in state.items() if k not in params or params[k].shape != v.shape)
    if missing or wrong:
        raise ValueError(f"{weights_file}: does not match its config "
                         f"(missing {missing[:10]}, unexpected or mis-shaped {wrong[:10]})")
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)
    return model.to(device).eval()


def load(path: Union[str, Path, None] = None, device: Union[str, torch.device] = "cpu",
         dtype: Optional[torch.dtype] = None) -> "LarimarModel":
    """``load_folder`` with the default build: folder ``path``, or the build's default
    folder for None (``LarimarModel.from_pretrained``)."""
    b = default_build()
    return load_folder(b.default_dir() if path is None else path, b.build,
                       device=device, dtype=dtype)


def save(model: "LarimarModel", path: Union[str, Path],
         extra: Optional[dict[str, Any]] = None) -> Path:
    """``save_folder`` tagged with the default build's format
    (``LarimarModel.save_pretrained``)."""
    return save_folder(model, path, extra, tag=default_build().format)
