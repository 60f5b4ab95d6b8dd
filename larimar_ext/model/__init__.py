"""Larimar model: any Hugging Face encoder and causal LM around the episodic memory
(docs/DESIGN.md sections 2 and 3). Needs ``transformers`` (the ``models`` extra)."""

from .conditioning import DecoderGeometry, EmbeddingConditioner, MemorySlot
from .ibm_checkpoint import load_ibm_checkpoint
from .larimar import LarimarModel, LarimarOutput

__all__ = ["DecoderGeometry", "EmbeddingConditioner", "LarimarModel", "LarimarOutput",
           "MemorySlot", "load_ibm_checkpoint"]
