"""Larimar model: any Hugging Face encoder and causal LM around the episodic memory
(docs/DESIGN.md sections 2 and 3). Needs ``transformers`` (the ``models`` extra)."""

from . import saved as _saved
from .conditioning import DecoderGeometry, EmbeddingConditioner, MemorySlot
from .ibm_checkpoint import load_ibm_checkpoint
from .larimar import LarimarModel, LarimarOutput

__all__ = ["DecoderGeometry", "EmbeddingConditioner", "LarimarModel", "LarimarOutput",
           "MemorySlot", "load_ibm_checkpoint"]


def _package_build() -> _saved.FolderBuild:
    """The package's own build (MiniLM + SmolLM2), the default of
    ``LarimarModel.from_pretrained``/``save_pretrained``."""
    # Imported on the first load or save, not with this package: the generic model
    # (larimar.py) must not pull in the default build (tests/test_conventions.py).
    from .pretrained import FOLDER_BUILD
    return FOLDER_BUILD


_saved.set_default_build(_package_build)
