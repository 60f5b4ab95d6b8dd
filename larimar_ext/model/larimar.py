"""LarimarModel: an encoder, an episodic memory and a conditioned decoder (docs/DESIGN.md 2, 3).

encoder (any HF encoder) -> pooling (masked mean by default) -> Linear(H_pool -> C) -> z
episode of N latents Z -> W = Z_xi M0^+ (M0 the learned prior memory, Z_xi = Z + sigma noise)
                      -> M = W^+ Z (least-squares write)
query z_q -> z_read = (z_q M^+) M -> decoder (any HF causal LM) conditioned on z_read by
  (1) the embedding path, (2) the memory path (one extra key/value position per layer) and/or
  (3) the prefix path: decoder-aligned slots of z read as soft tokens (``aligned.py``).

Training runs every memory step through ``larimar_ext.torch_ops`` (differentiable, batched
over episodes); inference writes into a host ``EpisodicMemory`` and only latents cross to
the decoder's device.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from .. import torch_ops
from .._arrays import optional_flag
from ..episodic import EpisodicMemory
from . import saved
from .aligned import AlignedPooler, AlignedSegments, SlotPrefix
from .conditioning import DecoderGeometry, EmbeddingConditioner, MemorySlot
from .lookup_decoding import greedy_lookup
from .pooling import make_pooler, masked_mean

__all__ = ["LarimarModel", "LarimarOutput"]

Texts = Union[str, Sequence[str]]

# This thread's open ``LarimarModel.precision`` blocks, innermost last:
# [(model, int8_values, bf16_answers, int8_answers)]. Thread-local so that two memories
# sharing a model in two threads each get their own choice.
_PRECISION = threading.local()


@dataclass
class LarimarOutput:
    loss: Optional[Tensor]
    logits: Tensor          # (B, N, T, V) decoder logits of every segment
    z: Tensor               # (B, N, C) encoder latents
    z_read: Tensor          # (B, N, C) readouts the decoder was conditioned on


class _FirstLine:
    """A generate stopping criterion: a row is done once its new text (its ids from column
    ``start`` on: generate's ids hold the prompt when it was given as ids) holds a line of
    text (after any leading space, colon or blank lines) and the line break after it."""

    _DONE = re.compile(r"^[\s:]*[^\s:][^\n]*\n")

    def __init__(self, tokenizer: Any, start: int = 0) -> None:
        self.tokenizer = tokenizer
        self.start = start

    def __call__(self, input_ids: Tensor, scores: Any, **kwargs: Any) -> Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.start:], skip_special_tokens=True)
        return torch.tensor([bool(self._DONE.match(t)) for t in texts],
                            device=input_ids.device)

    def text_done(self, new_ids: Sequence[int]) -> bool:
        """The same test on one row's new ids."""
        return bool(self._DONE.match(self.tokenizer.decode(new_ids, skip_special_tokens=True)))


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _retrieval_keys(hidden: Tensor, mask: Tensor) -> Tensor:
    """(n, H) float32 unit keys: the masked mean of token states (n, T, H)."""
    return torch.nn.functional.normalize(masked_mean(hidden, mask).float(), dim=-1)


class LarimarModel(nn.Module):
    """Larimar with any Hugging Face encoder and causal LM decoder.

    Args:
        encoder: an HF encoder model (its forward returns ``last_hidden_state``).
        decoder: an HF causal LM (``AutoModelForCausalLM``-like, with ``generate``).
        memory_size: K, the memory slots.
        code_size: C, the latent size.
        tokenizer: optional tokenizer for texts given to the decoder side and, unless
            ``encoder_tokenizer`` is given, to the encoder.
        encoder_tokenizer: optional separate tokenizer for the encoder.
        observation_noise: sigma_xi, std of the noise added to Z for addressing at training.
        word_dropout: probability of replacing a decoder input token (not the first one, and
            never the labels) by ``word_dropout_token_id`` at training, so the decoder has to
            rely on z.
        word_dropout_token_id: replacement id (default: the tokenizer's unk, else pad, else 0).
        ridge: ridge of the differentiable write (0: the minimum-norm W^+ Z).
        inference_ridge: ridge of the host ``EpisodicMemory`` (> 0).
        shared_kv: memory path with key == value (the IBM/Optimus layout).
        embedding_path, memory_path: switch either conditioning path off.
        dummy_token_id: the token id that stands for the memory slot in ``generate``'s
            input_ids (its embedding is never used; default: pad, else bos, else 0).
        pooler: how token states become one vector before ``encoder_proj``: "mean"
            (default), "cls" (BERT's pooled output), "attention" (learned queries), or a
            module (see ``larimar_ext.model.pooling``); an ``AlignedPooler`` makes z
            decoder-aligned slots (its ``encoder_proj`` is the identity).
        prefix: a ``SlotPrefix``: the decoder reads z's slots as soft tokens (needs an
            ``AlignedPooler`` and ``aligner``).
        aligner: the ``SlotAligner`` that tokenises texts for an ``AlignedPooler``.
        prefix_snap: at inference, replace each soft token by its nearest decoder
            embedding (``SlotPrefix.forward``); training always uses the soft tokens.
        prompt_template: (before, after) text around the soft tokens in ``complete``;
            ``after`` may hold ``{question}``. Default: the decoder's chat turn, where a
            small instruct model reads its context best.

    Attribute ``prompt_lookup_tokens`` (default 10; 0 turns it off): with ``prefix_snap``,
    ``complete_passages`` and ``complete_each_passage`` let the decoder draft up to this
    many tokens from its own input and check them in one pass (an answer copied from a
    passage costs a few passes, not one per token); greedy decoding gives the same tokens
    either way.
    """

    prompt_lookup_tokens: int = 10

    def __init__(self, encoder: nn.Module, decoder: nn.Module, memory_size: int, code_size: int,
                 *, tokenizer: Any = None, encoder_tokenizer: Any = None,
                 observation_noise: float = 0.0, word_dropout: float = 0.0,
                 word_dropout_token_id: Optional[int] = None, ridge: float = 0.0,
                 inference_ridge: float = 1e-6, shared_kv: bool = False,
                 embedding_path: bool = True, memory_path: bool = True,
                 dummy_token_id: Optional[int] = None, pooler: Any = "mean",
                 prefix: Optional[SlotPrefix] = None, aligner: Any = None,
                 prompt_template: Optional[tuple[str, str]] = None,
                 prefix_snap: bool = False) -> None:
        super().__init__()
        if not (embedding_path or memory_path or prefix is not None):
            raise ValueError("at least one of embedding_path, memory_path and prefix must be on")
        self.encoder = encoder
        self.decoder = decoder
        self.memory_size = int(memory_size)
        self.code_size = int(code_size)
        self.tokenizer = tokenizer
        self.encoder_tokenizer = encoder_tokenizer if encoder_tokenizer is not None else tokenizer
        self.observation_noise = float(observation_noise)
        self.word_dropout = float(word_dropout)
        self.ridge = float(ridge)
        self.inference_ridge = float(inference_ridge)

        enc_cfg = encoder.config.get_text_config() if hasattr(encoder.config, "get_text_config") \
            else encoder.config
        self.pooler = make_pooler(pooler, int(enc_cfg.hidden_size))
        self.aligned = isinstance(self.pooler, AlignedPooler)
        if self.aligned:
            if self.pooler.output_size != self.code_size:
                raise ValueError(f"code_size: an AlignedPooler gives {self.pooler.output_size} "
                                 f"numbers (num_slots * slot_size), got code_size={code_size}")
            if aligner is None:
                raise ValueError("aligner: an AlignedPooler needs a SlotAligner")
            self.encoder_proj = nn.Identity()
        else:
            self.encoder_proj = nn.Linear(self.pooler.output_size, self.code_size)
        if prefix is not None and not self.aligned:
            raise ValueError("prefix: the SlotPrefix path needs an AlignedPooler")
        if prefix is not None and (embedding_path or memory_path):
            raise ValueError("prefix: the prefix path replaces the embedding and memory paths; "
                             "pass embedding_path=False, memory_path=False")
        self.aligner = aligner
        self.prefix = prefix
        self.prompt_template = prompt_template
        self.prefix_snap = bool(prefix_snap)
        self.geometry = DecoderGeometry(decoder.config)
        # M0, the learned prior memory (K, C); rows of unit expected norm
        self.prior = nn.Parameter(torch.randn(self.memory_size, self.code_size)
                                  / self.code_size ** 0.5)
        self.embedding_conditioner = (
            EmbeddingConditioner(self.code_size, self.geometry.hidden_size)
            if embedding_path else None)
        self.memory_slot = (MemorySlot(self.code_size, self.geometry, shared_kv)
                            if memory_path else None)
        if self.embedding_conditioner is not None:
            self.embedding_conditioner.attach(decoder.get_input_embeddings())

        cfg = self.geometry.config
        def first(*ids):
            for i in ids:
                if i is not None:
                    return int(i[0] if isinstance(i, (list, tuple)) else i)
            return 0
        tok = tokenizer
        self.dummy_token_id = first(dummy_token_id, getattr(tok, "pad_token_id", None),
                                    getattr(cfg, "pad_token_id", None),
                                    getattr(cfg, "bos_token_id", None))
        self.word_dropout_token_id = first(word_dropout_token_id,
                                           getattr(tok, "unk_token_id", None),
                                           getattr(tok, "pad_token_id", None),
                                           getattr(cfg, "pad_token_id", None))
        self.memory: Optional[EpisodicMemory] = None   # host memory of the inference path
        # transformers >= 5.2x names the cache argument ``cache`` (``past_key_values`` is
        # deprecated); older releases only know ``past_key_values``
        params = inspect.signature(decoder.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    @classmethod
    def from_pretrained(cls, path: Union[str, Path, None] = None,
                        device: Union[str, torch.device] = "cpu",
                        dtype: Optional[torch.dtype] = None) -> "LarimarModel":
        """The trained default model (``path=None``) or a folder written by
        ``save_pretrained``; no download. The folder is read by ``saved.py`` and built by
        the default build that ``larimar_ext.model`` registers there (the package's own,
        ``larimar_ext.model.pretrained``, which this module does not import)."""
        return saved.load(path, device=device, dtype=dtype)

    def save_pretrained(self, path: Union[str, Path],
                        extra: Optional[dict[str, Any]] = None) -> Path:
        """Save the trained tensors and the build config into folder ``path``."""
        return saved.save(self, path, extra)

    # ------------------------------------------------------------------ encoder

    def _tokenize(self, texts: Texts, tokenizer: Any) -> tuple[Tensor, Tensor]:
        if tokenizer is None:
            raise ValueError("texts need a tokenizer: pass tokenizer= to LarimarModel")
        batch = tokenizer([texts] if isinstance(texts, str) else list(texts),
                          padding=True, return_tensors="pt")
        return batch["input_ids"], batch["attention_mask"]

    def encode(self, inputs: Union[Texts, Tensor, AlignedSegments],
               attention_mask: Optional[Tensor] = None) -> Tensor:
        """Texts or input_ids (..., T) -> z (..., C) on the encoder's device (an aligned
        model takes texts or ``AlignedSegments`` (B, ...) and gives (B, C))."""
        if self.aligned:
            return self._encode_aligned(inputs)
        return self._encode_plain(inputs, attention_mask)

    def _encode_plain(self, inputs: Union[Texts, Tensor], attention_mask: Optional[Tensor] = None,
                      with_keys: bool = False):
        if isinstance(inputs, (str, list, tuple)):
            inputs, attention_mask = self._tokenize(inputs, self.encoder_tokenizer)
        dev = _device(self.encoder)
        lead = inputs.shape[:-1]
        ids = inputs.reshape(-1, inputs.shape[-1]).to(dev)
        mask = (torch.ones_like(ids) if attention_mask is None
                else attention_mask.reshape(ids.shape).to(dev))
        output = self.encoder(input_ids=ids, attention_mask=mask)
        pooled = self.pooler(output.last_hidden_state, mask, output)
        z = self.encoder_proj(pooled.to(self.encoder_proj.weight.dtype))
        z = z.reshape(*lead, self.code_size)
        if not with_keys:
            return z
        return z, _retrieval_keys(output.last_hidden_state, mask)

    def _encode_aligned(self, inputs: Union[Texts, AlignedSegments], with_keys: bool = False):
        if isinstance(inputs, Tensor):
            raise ValueError("inputs: a model with decoder-aligned slots encodes texts or "
                             "AlignedSegments, not token ids")
        segments = inputs if isinstance(inputs, AlignedSegments) else self.aligner(inputs)
        segments = segments.to(_device(self.encoder))
        encoder = self.encoder
        if self.values_in_int8:
            encoder = self._int8_copy()
        output = encoder(input_ids=segments.input_ids, attention_mask=segments.attention_mask)
        z = self.pooler(output.last_hidden_state, segments.attention_mask, output,
                        segments=segments, piece_embeddings=self.encoder.get_input_embeddings(),
                        token_embeddings=self.decoder.get_input_embeddings())
        if not with_keys:
            return z
        return z, _retrieval_keys(output.last_hidden_state, segments.attention_mask)

    @torch.no_grad()
    def encode_with_keys(self, texts: Union[Texts, AlignedSegments]) -> tuple[Tensor, Tensor]:
        """(z (n, C), keys (n, H_enc)) from one encoder pass: the latents of ``encode`` and
        the retrieval keys of ``encode_keys`` for the same texts (the key is the masked
        mean of the states the latent was pooled from, so a whole-segment key costs no
        second pass; with ``int8_values`` both come from the int8 encoder). An aligned
        model also takes the texts' ``AlignedSegments``."""
        if self.aligned:
            if not isinstance(texts, AlignedSegments):
                texts = [texts] if isinstance(texts, str) else list(texts)
            return self._encode_aligned(texts, with_keys=True)
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self._encode_plain(texts, with_keys=True)

    def int8_values(self, enable: bool = True) -> None:
        """Encode values (``encode``, at inference) with a copy of the encoder whose linear
        layers run in int8 (``larimar_ext.int8_linear``: weights quantised once per output
        row, each input row as it comes; CPU only; ``encode_keys`` keeps the float encoder, so
        retrieval is unchanged). The decoder-aligned slots take their token code from the
        decoder's embeddings and only their context part from the encoder, so readouts
        stay exact where the encoder's states move a little (tests/test_default_model.py).
        This is the model-wide choice; ``precision`` overrides it for one block. Call again
        after the encoder's weights change (the copy is made now); False drops the copy."""
        if not enable:
            self.__dict__["_int8_default"] = False
            self.__dict__.pop("_int8_encoder", None)
            return
        self._int8_copy(fresh=True)
        self.__dict__["_int8_default"] = True

    def _int8_copy(self, fresh: bool = False) -> nn.Module:
        """The int8 copy of the encoder, made on first need (or ``fresh``)."""
        copy_ = self.__dict__.get("_int8_encoder")
        if copy_ is not None and not fresh:
            return copy_
        if _device(self.encoder).type != "cpu":
            raise ValueError("int8_values: the int8 encoder runs on the CPU only")
        return self._make_int8_copy(self.encoder, "_int8_encoder")

    def _make_int8_copy(self, module: nn.Module, key: str) -> nn.Module:
        """A float32 copy of ``module`` with every linear layer an ``Int8Linear``, kept as
        ``key`` out of the module tree: not a parameter, never saved, not moved by .to()."""
        import copy

        from ..int8_linear import int8_linears
        copy_ = int8_linears(copy.deepcopy(module).float().eval())
        self.__dict__[key] = copy_
        return copy_

    def bf16_answers(self, enable: bool = True) -> None:
        """Generate answers from readouts (the prefix path: ``complete``, ``complete_passages``,
        ``complete_each_passage``, ``generate``) with a bfloat16 copy of the decoder. On a CPU
        with AVX-512 BF16 a prefill and a step take about half the float32 time; the
        decoder's input (snapped slot tokens, template, question) is the same, but its
        logits move by bf16 rounding, so an answer can differ where two tokens are close:
        on RULER's development set the scores held and most answers were identical
        (docs/LONGCONTEXT.md, "Answers in bfloat16"). Training, encoding and the slot snap
        keep the float decoder. The copy follows the model to another device; call again
        after the decoder's weights change. This is the model-wide choice (it ends a
        model-wide ``int8_answers``: answers have one precision); ``precision`` overrides it
        for one block. False drops the copy."""
        self._set_answer_copy("bf16", enable)

    def int8_answers(self, enable: bool = True) -> None:
        """Generate answers from readouts (the prefix path, as ``bf16_answers``) with a copy
        of the decoder whose linear layers, the tied output head included, run in int8
        (``larimar_ext.int8_linear``; CPU only). A decode step streams every weight, so
        its time is the weights' bytes: a quarter of float32's, and no bf16 instructions
        needed (on AVX2 hosts ``bf16_answers`` does not pay). The input embeddings stay
        float32, so the decoder's input is the float one's; its logits move by the int8
        rounding, so an answer can differ where two tokens are close (docs/LONGCONTEXT.md,
        "Answers in int8"). Training, encoding and the slot snap keep the float decoder.
        This is the model-wide choice (it ends a model-wide ``bf16_answers``); ``precision``
        overrides it for one block. Call again after the decoder's weights change; False
        drops the copy."""
        self._set_answer_copy("int8", enable)

    def _set_answer_copy(self, kind: str, enable: bool) -> None:
        """The model-wide answer precision: ``kind``'s copy made afresh and on, the other
        off (answers have one precision); or ``kind`` off, its copy dropped."""
        copies = {"bf16": ("_bf16_default", "_bf16_decoder", self._bf16_copy),
                  "int8": ("_int8_answers_default", "_int8_decoder", self._int8_decoder_copy)}
        default_key, copy_key, make = copies[kind]
        if not enable:
            self.__dict__[default_key] = False
            self.__dict__.pop(copy_key, None)
            return
        make(fresh=True)
        for other, (key, _, _) in copies.items():
            self.__dict__[key] = other == kind

    def _int8_decoder_copy(self, fresh: bool = False) -> nn.Module:
        """The int8 copy of the decoder, made on first need (or ``fresh``)."""
        if self.prefix is None:
            raise ValueError("int8_answers: needs the prefix path (a model with slots)")
        if _device(self.decoder).type != "cpu":          # also when the model moved since
            raise ValueError("int8_answers: the int8 decoder runs on the CPU only")
        copy_ = self.__dict__.get("_int8_decoder")
        if copy_ is not None and not fresh:
            return copy_
        return self._make_int8_copy(self.decoder, "_int8_decoder")

    def _bf16_copy(self, fresh: bool = False) -> nn.Module:
        """The bfloat16 copy of the decoder on the decoder's device, made on first need,
        when the model moved since (or ``fresh``)."""
        copy_ = self.__dict__.get("_bf16_decoder")
        if copy_ is not None and not fresh and _device(copy_) == _device(self.decoder):
            return copy_
        if self.prefix is None:
            raise ValueError("bf16_answers: needs the prefix path (a model with slots)")
        import copy
        # kept out of the module tree: not a parameter, never saved, not moved by .to()
        copy_ = copy.deepcopy(self.decoder).to(torch.bfloat16).eval()
        self.__dict__["_bf16_decoder"] = copy_
        return copy_

    @contextlib.contextmanager
    def precision(self, *, int8_values: Optional[bool] = None,
                  bf16_answers: Optional[bool] = None,
                  int8_answers: Optional[bool] = None) -> Iterator[None]:
        """Within the block, and in this thread only: encode values with the int8 encoder
        (``int8_values=True``) or the float one (False), and generate answers with the
        bfloat16 decoder (``bf16_answers=True``) or the int8 one (``int8_answers=True``),
        whatever the model-wide ``int8_values()`` / ``bf16_answers()`` /
        ``int8_answers()`` say. False turns that copy off in the block (the float decoder,
        unless the other copy is on); None keeps the choice of the blocks around it, then
        the model-wide one. Answers have one precision: the innermost block that turns a
        copy on wins, and one block cannot turn on both. A copy asked for is made on entry
        (so a bad choice raises there) and kept for later blocks, but the model-wide
        choices do not change: two memories sharing a model (``LongContextMemory(
        int8_values=..., bf16_answers=..., int8_answers=...)``) each get theirs."""
        optional_flag(int8_values, "int8_values")
        optional_flag(bf16_answers, "bf16_answers")
        optional_flag(int8_answers, "int8_answers")
        if bf16_answers and int8_answers:
            raise ValueError("bf16_answers, int8_answers: answers have one precision; "
                             "expected at most one of them True")
        if int8_values:
            self._int8_copy()
        if bf16_answers:
            self._bf16_copy()
        if int8_answers:
            self._int8_decoder_copy()
        blocks = _PRECISION.__dict__.setdefault("blocks", [])
        blocks.append((self, int8_values, bf16_answers, int8_answers))
        try:
            yield
        finally:
            blocks.pop()

    def _choice(self, index: int, default_key: str) -> tuple[int, bool]:
        """(depth, value): the innermost ``precision`` choice of this thread for this model
        (index 1: int8_values, 2: bf16_answers, 3: int8_answers) and its block's depth, else
        the model-wide one at depth -1."""
        blocks = _PRECISION.__dict__.get("blocks", ())
        for depth in range(len(blocks) - 1, -1, -1):
            if blocks[depth][0] is self and blocks[depth][index] is not None:
                return depth, blocks[depth][index]
        return -1, bool(self.__dict__.get(default_key, False))

    def _chosen(self, index: int, default_key: str) -> bool:
        return self._choice(index, default_key)[1]

    def _answer_copy(self) -> Optional[str]:
        """The decoder copy answers are generated with here and now: "bf16", "int8" or None
        (the float decoder); the deeper of the two choices wins when both are on."""
        if self.training:
            return None
        bf16 = self._choice(2, "_bf16_default")
        int8 = self._choice(3, "_int8_answers_default")
        if bf16[1] and not (int8[1] and int8[0] > bf16[0]):
            return "bf16"
        return "int8" if int8[1] else None

    @property
    def values_in_int8(self) -> bool:
        """Whether ``encode`` uses the int8 encoder here and now (``int8_values``,
        ``precision``; never in training mode)."""
        return not self.training and self._chosen(1, "_int8_default")

    @property
    def answers_in_bf16(self) -> bool:
        """Whether answers are generated with the bfloat16 decoder here and now
        (``bf16_answers``, ``precision``; never in training mode)."""
        return self._answer_copy() == "bf16"

    @property
    def answers_in_int8(self) -> bool:
        """Whether answers are generated with the int8 decoder here and now
        (``int8_answers``, ``precision``; never in training mode)."""
        return self._answer_copy() == "int8"

    def _answer_decoder(self) -> nn.Module:
        """The decoder generation runs on: the bf16 or int8 copy where answers are in
        that precision, else the decoder."""
        kind = self._answer_copy()
        if kind == "bf16":
            return self._bf16_copy()
        return self._int8_decoder_copy() if kind == "int8" else self.decoder

    @torch.no_grad()
    def encode_keys(self, texts: Texts, batch_size: int = 64) -> Tensor:
        """Retrieval keys for texts: the L2-normalised masked mean of the encoder's last
        hidden states, (n, H_enc), on the encoder's device. This is the sentence-transformers
        embedding of the encoder (not z): the fixed-key memory of long contexts compares
        keys by cosine, and z is shaped for reconstruction, not similarity."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        dev = _device(self.encoder)
        out = []
        for i in range(0, len(texts), batch_size):
            ids, mask = self._tokenize(texts[i:i + batch_size], self.encoder_tokenizer)
            ids, mask = ids.to(dev), mask.to(dev)
            hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            out.append(_retrieval_keys(hidden, mask))
        return torch.cat(out) if out else torch.empty(0, self.encoder.config.hidden_size)

    def _latents(self, x: Union[Texts, Tensor], attention_mask: Optional[Tensor] = None) -> Tensor:
        if isinstance(x, (str, list, tuple, AlignedSegments)):
            return self.encode(x)
        if x.is_floating_point():
            return x
        return self.encode(x, attention_mask)

    # ------------------------------------------------------------------ memory

    def write_differentiable(self, Z: Tensor, noise: Optional[float] = None) -> Tensor:
        """Training write: Z (B, N, C) or (N, C) -> M (B, K, C) or (K, C), through torch_ops.
        W = (Z + sigma eps) M0^+, M = W^+ Z (ridge ``self.ridge``)."""
        sigma = self.observation_noise if noise is None else float(noise)
        prior = self.prior.to(Z.dtype)
        if Z.dim() == 3:
            prior = prior.expand(Z.shape[0], -1, -1).contiguous()
        z_xi = Z + sigma * torch.randn_like(Z) if sigma > 0 else Z
        W = torch_ops.pinv_address(z_xi, prior)
        return torch_ops.lstsq_write(W, Z, ridge=self.ridge)

    @staticmethod
    def read_differentiable(Zq: Tensor, M: Tensor) -> Tensor:
        """Training read: z_read = (Zq M^+) M, Zq (B, Q, C), M (B, K, C) (or unbatched)."""
        return torch_ops.read(torch_ops.pinv_address(Zq, M), M)

    def write(self, inputs: Union[Texts, Tensor], attention_mask: Optional[Tensor] = None,
              differentiable: bool = False):
        """Write an episode.

        ``differentiable=False`` (inference): latents, input_ids or texts of ONE episode
        (N segments) replace the contents of the host ``EpisodicMemory`` ``self.memory``
        (prior M0, addresses W = Z M0^+); returns that memory.
        ``differentiable=True`` (training): returns M = W^+ Z, (B, K, C) for latents
        (B, N, C) or input_ids (B, N, T), by torch_ops.
        """
        Z = self._latents(inputs, attention_mask)
        if differentiable:
            return self.write_differentiable(Z)
        if Z.dim() != 2:
            raise ValueError(f"the host memory takes one episode (N, C), got {tuple(Z.shape)}")
        prior = self.prior.detach().to("cpu", torch.float32).numpy()
        self.memory = EpisodicMemory(self.memory_size, self.code_size, prior=prior,
                                     ridge=self.inference_ridge, dtype=np.float32)
        self.memory.write(Z.detach().to("cpu", torch.float32).numpy())
        return self.memory

    def read(self, queries: Union[Texts, Tensor], memory: Optional[Tensor] = None,
             attention_mask: Optional[Tensor] = None) -> Tensor:
        """Readouts for queries (latents (..., C), input_ids or texts).

        With ``memory`` (a tensor M from ``write(..., differentiable=True)``) the read is the
        differentiable torch path; without it the host ``EpisodicMemory`` is read and the
        readouts are moved to the decoder's device (only latents cross devices)."""
        Zq = self._latents(queries, attention_mask)
        if memory is not None:
            return self.read_differentiable(Zq.to(memory.dtype), memory)
        if self.memory is None:
            raise RuntimeError("nothing written: call write() first")
        lead = Zq.shape[:-1]
        out = self.memory.read(
            Zq.detach().reshape(-1, self.code_size).to("cpu", torch.float32).numpy())
        z = torch.from_numpy(np.ascontiguousarray(out)).reshape(*lead, self.code_size)
        return z.to(_device(self.decoder))

    # ------------------------------------------------------------------ decoder

    @contextlib.contextmanager
    def conditioned(self, readout: Tensor):
        """While active, the decoder's input embeddings get the embedding-path shift of z."""
        if self.embedding_conditioner is None:
            yield
            return
        with self.embedding_conditioner.active(readout):
            yield

    def slot_cache(self, readout: Tensor):
        """The memory path: a length-1 DynamicCache built from readout (B, C), or None."""
        if self.memory_slot is None:
            return None
        dtype = self.decoder.get_input_embeddings().weight.dtype
        return self.memory_slot.cache(readout, dtype=dtype)

    def _slot_inputs(self, input_ids: Tensor, attention_mask: Optional[Tensor]):
        """Attention mask with the slot's leading 1 (when the memory path is on) and the
        matching position ids (slot at 0, first real token at 1)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(input_ids.device, torch.long)
        if self.memory_slot is None:
            pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            return attention_mask, pos
        full = torch.cat([attention_mask.new_ones(attention_mask.shape[0], 1), attention_mask], 1)
        pos = (full.cumsum(-1) - 1)[:, 1:]
        return full, pos

    def _question_turn(self, question: Optional[str]) -> str:
        """The template's text after the soft tokens, its ``{question}`` filled in."""
        return self.prompt_template[1].format(question=question or "Repeat the text.")

    def _template_ids(self, part: int, **fmt) -> list[int]:
        template = self.prompt_template or ("", "")
        text = template[part].format(**fmt) if fmt else template[part]
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _soft_tokens(self, readouts: Tensor, snap: bool) -> tuple[Tensor, Tensor]:
        """The prefix path's soft tokens (n, P, D) and live mask (n, P) of readouts (n, C),
        snapped to the nearest embedding rows when ``snap``; or of slot ids (n, P) from
        ``slot_ids``: the rows of those ids, live where id >= 0."""
        embed = self.decoder.get_input_embeddings()
        if not readouts.is_floating_point():
            ids = readouts.to(embed.weight.device, torch.long)
            return embed(ids.clamp(min=0)), ids >= 0
        return self.prefix(readouts.to(embed.weight.device), embed.weight if snap else None)

    def _check_readouts(self, readouts: Tensor, name: str = "readouts") -> None:
        """readouts: latents (n, C), or slot ids (n, P) (integers, -1 or a token id)."""
        ids = not readouts.is_floating_point()
        width = self.prefix.num_slots if ids and self.prefix is not None else self.code_size
        ok = readouts.dim() == 2 and readouts.shape[1] == width and readouts.shape[0] >= 1
        if ids:
            if self.prefix is None or not self.prefix_snap:
                raise ValueError(f"{name}: slot ids need the prefix path with prefix_snap")
            vocab = self.decoder.get_input_embeddings().num_embeddings
            ok = ok and bool(((readouts >= -1) & (readouts < vocab)).all())
        if not ok:
            what = (f"slot ids (n >= 1, {width}) in [-1, {vocab})" if ids
                    else f"(n >= 1, {self.code_size}) latents")
            raise ValueError(f"{name}: expected {what}, got {readouts.dtype} "
                             f"{tuple(readouts.shape)}")

    @torch.no_grad()
    def slot_ids(self, readouts: Tensor, hints: Optional[Tensor] = None) -> Tensor:
        """The decoder tokens readouts (n, C) stand for, as the prefix path reads them: ids
        (n, P) of each live slot's nearest embedding row (cosine), -1 for dead slots.

        With ``prefix_snap`` (the default model) the decoder's input from these ids is the
        input from the readouts, row for row: ``complete``, ``complete_passages`` and
        ``complete_each_passage`` take either. A value kept this way is P small integers
        instead of C floats (the long-context memory's ``values="tokens"``).

        hints (n, P): the decoder token each slot was aligned to (``AlignedSegments.
        target_ids`` of the texts the readouts encode), which the snap's search starts from;
        the ids do not depend on them, only the time."""
        if self.prefix is None:
            raise ValueError("readouts: slot ids need the prefix path")
        if hints is not None and (hints.is_floating_point() or tuple(hints.shape) !=
                                  (readouts.shape[0], self.prefix.num_slots)):
            raise ValueError(f"hints: expected integer token ids ({readouts.shape[0]}, "
                             f"{self.prefix.num_slots}), got {hints.dtype} {tuple(hints.shape)}")
        if not readouts.is_floating_point():
            raise ValueError(f"readouts: expected latents (n, {self.code_size}) of a float "
                             f"dtype, got {readouts.dtype}")
        self._check_readouts(readouts)
        embed = self.decoder.get_input_embeddings()
        readouts = readouts.to(embed.weight.device)
        live = self.prefix.live(readouts)
        ids = torch.full(live.shape, -1, dtype=torch.long, device=live.device)
        if live.any():   # the prefix's net for the live slots only
            guess = None if hints is None else hints.to(live.device)[live]
            ids[live] = self.prefix.nearest_ids(self.prefix.soft(readouts, live), embed.weight,
                                                guess)
        return ids

    def _prefix_inputs(self, input_ids: Tensor, readout: Tensor,
                       attention_mask: Optional[Tensor]) -> tuple[Tensor, Tensor, int]:
        """[template before][soft tokens of readout][input_ids] as embeddings (B, L, H),
        their mask (B, L) and the length of the part before input_ids."""
        embed = self.decoder.get_input_embeddings()
        b = input_ids.shape[0]
        before = torch.tensor(self._template_ids(0), dtype=torch.long, device=input_ids.device)
        soft, live = self._soft_tokens(readout, self.prefix_snap and not self.training)
        parts = [embed(before).unsqueeze(0).expand(b, -1, -1), soft.to(embed.weight.dtype),
                 embed(input_ids)]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = torch.cat([attention_mask.new_ones(b, before.numel()), live.to(attention_mask.dtype),
                          attention_mask.to(input_ids.device)], 1)
        return torch.cat(parts, 1), mask, before.numel() + soft.shape[1]

    def decode(self, input_ids: Tensor, readout: Tensor, attention_mask: Optional[Tensor] = None,
               labels: Optional[Tensor] = None, **kwargs):
        """Teacher-forced decoder pass conditioned on readout (B, C); input_ids (B, T).
        With the prefix path the logits cover [template][soft tokens][input_ids]."""
        dev = _device(self.decoder)
        if self.prefix is not None:
            input_ids = input_ids.to(dev)
            embeds, mask, lead = self._prefix_inputs(input_ids, readout.to(dev), attention_mask)
            if labels is not None:
                labels = torch.cat([labels.new_full((labels.shape[0], lead), -100),
                                    labels.to(dev)], 1)
            return self.decoder(inputs_embeds=embeds, attention_mask=mask, labels=labels, **kwargs)
        input_ids = input_ids.to(dev)
        readout = readout.to(dev)
        full_mask, pos = self._slot_inputs(input_ids, attention_mask)
        cache = self.slot_cache(readout)
        with self.conditioned(readout):
            return self.decoder(input_ids=input_ids, attention_mask=full_mask, position_ids=pos,
                                labels=labels, use_cache=cache is not None,
                                **{self._cache_kw: cache}, **kwargs)

    def _stop_at_first_line(self, gen_kwargs: dict, start: int) -> None:
        """Add ``_FirstLine`` (new text from id column ``start`` on) to generate's criteria."""
        if self.tokenizer is None:
            raise ValueError("first_line: needs a tokenizer: pass tokenizer= to LarimarModel")
        given = gen_kwargs.get("stopping_criteria") or []
        gen_kwargs["stopping_criteria"] = [*given, _FirstLine(self.tokenizer, start)]

    @torch.no_grad()
    def generate(self, prompt_ids: Tensor, readout: Tensor, attention_mask: Optional[Tensor] = None,
                 first_line: bool = False, **gen_kwargs) -> Tensor:
        """``decoder.generate`` conditioned on readout (B, C); prompt_ids (B, T) (left padded
        for batches). Returns the prompt plus the new tokens, (B, T + new), like HF.
        ``first_line``: each row stops once its new text holds a line and its line break (an
        answer is one line; the decoder writes on past it)."""
        dev = _device(self.decoder)
        prompt_ids = prompt_ids.to(dev)
        readout = readout.to(dev)
        if attention_mask is None:
            attention_mask = torch.ones_like(prompt_ids)
        attention_mask = attention_mask.to(dev, torch.long)
        gen_kwargs.setdefault("pad_token_id", self.dummy_token_id)
        if first_line:
            # the ids generate() checks: only the new ones from embeddings (prefix path),
            # else the prompt's too, after the memory slot's dummy token when it has one
            start = 0 if self.prefix is not None else prompt_ids.shape[1] + (
                self.memory_slot is not None)
            self._stop_at_first_line(gen_kwargs, start)
        if self.prefix is not None:
            embeds, mask, _ = self._prefix_inputs(prompt_ids, readout, attention_mask)
            dec = self._answer_decoder()
            new = dec.generate(inputs_embeds=embeds.to(dec.dtype), attention_mask=mask,
                               **gen_kwargs)
            # generate() from embeddings returns only new ids
            return torch.cat([prompt_ids, new], 1)
        if self.memory_slot is None:
            with self.conditioned(readout):
                return self.decoder.generate(input_ids=prompt_ids, attention_mask=attention_mask,
                                             **gen_kwargs)
        # generate() expects input_ids to cover the cached position: a dummy token stands for
        # the slot (it is never embedded: only tokens past the cache are run).
        # generate() repeats every row (repeat_interleave) num_beams times for beam search,
        # num_return_sequences times otherwise, but leaves a given cache alone: build the
        # slot for the expanded batch
        config = gen_kwargs.get("generation_config") or self.decoder.generation_config
        beams = int(gen_kwargs.get("num_beams", getattr(config, "num_beams", 1)) or 1)
        expand = beams if beams > 1 else int(gen_kwargs.get(
            "num_return_sequences", getattr(config, "num_return_sequences", 1)) or 1)
        b = prompt_ids.shape[0]
        ids = torch.cat([prompt_ids.new_full((b, 1), self.dummy_token_id), prompt_ids], 1)
        mask = torch.cat([attention_mask.new_ones(b, 1), attention_mask], 1)
        cache = self.slot_cache(readout.repeat_interleave(expand, dim=0) if expand > 1 else readout)
        with self.conditioned(readout):
            out = self.decoder.generate(input_ids=ids, attention_mask=mask, use_cache=True,
                                        **{self._cache_kw: cache}, **gen_kwargs)
        return out[:, 1:]

    @torch.no_grad()
    def complete(self, prompts: Texts, readouts: Tensor, max_new_tokens: int = 16,
                 questions: Optional[Union[str, Sequence[Optional[str]]]] = None,
                 first_line: bool = False) -> list[str]:
        """Greedy continuations of text prompts, prompt i conditioned on readouts[i] (n, C);
        returns only the new text of each (the prompt not repeated). With the prefix path,
        ``questions`` fill the template's ``{question}`` (default "Repeat the text.").
        ``first_line``: each stops after its first line of text and the line break."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if self.prefix is not None and self.prompt_template is not None:
            qs = ([questions] * len(prompts) if questions is None or isinstance(questions, str)
                  else list(questions))
            if len(qs) != len(prompts):
                raise ValueError(f"questions: expected {len(prompts)}, got {len(qs)}")
            prompts = [self._question_turn(q) + p for q, p in zip(qs, prompts)]
        if readouts.dim() == 1:
            readouts = readouts.unsqueeze(0)
        self._check_readouts(readouts)          # latents (n, C) or slot ids (n, P)
        if readouts.shape[0] != len(prompts):
            raise ValueError(f"readouts: expected one per prompt ({len(prompts)}), "
                             f"got {readouts.shape[0]}")
        tok = self.tokenizer
        if tok is None:
            raise ValueError("complete() needs a tokenizer: pass tokenizer= to LarimarModel")
        side = getattr(tok, "padding_side", "right")
        tok.padding_side = "left"              # generation continues from the last column
        try:
            batch = tok(prompts, padding=True, return_tensors="pt")
        finally:
            tok.padding_side = side
        out = self.generate(batch["input_ids"], readouts, attention_mask=batch["attention_mask"],
                            max_new_tokens=max_new_tokens, do_sample=False,
                            first_line=first_line)
        new = out[:, batch["input_ids"].shape[1]:]
        return tok.batch_decode(new, skip_special_tokens=True)

    def _text_ids(self, text: str) -> list[int]:
        """The decoder's token ids of a text (no special tokens)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _embed_text(self, text: str) -> Tensor:
        """The decoder's input embeddings (L, D) of a text (no special tokens)."""
        embed = self.decoder.get_input_embeddings()
        return embed(torch.tensor(self._text_ids(text), dtype=torch.long,
                                  device=embed.weight.device))

    def _passage_parts(self, prompt: str, readouts: Tensor, skip: Sequence[int],
                       joined: Sequence[bool], question: Optional[str]
                       ) -> tuple[Tensor, list[Tensor], Tensor, Optional[tuple]]:
        """(template head, one (n_j, D) soft-token block per passage, question turn +
        prompt) as decoder input embeddings, and with ``prefix_snap`` the same three as
        token ids (head, [block ids], tail): the snapped soft tokens are exactly those ids'
        embedding rows; else None. Readout i
        loses its first ``skip[i]`` live slots (the overlap with the window before it);
        ``joined[i]`` False starts a new passage."""
        if self.prefix is None:
            raise ValueError("readouts: several readouts at once need the prefix path")
        self._check_readouts(readouts)
        r = readouts.shape[0]
        skip = list(skip) or [0] * r
        joined = list(joined) or [False] * r
        if len(skip) != r or len(joined) != r:
            raise ValueError(f"skip, joined: expected {r} entries each")
        embed = self.decoder.get_input_embeddings()
        slot_ids: Optional[Tensor] = None
        if self.prefix_snap:
            # the snapped soft tokens are embedding rows: keep their ids (the same search
            # as the prefix's snap: the kernel's ids do not depend on the batch)
            slot_ids = (readouts.to(embed.weight.device, torch.long)
                        if not readouts.is_floating_point() else self.slot_ids(readouts))
            soft, live = embed(slot_ids.clamp(min=0)), slot_ids >= 0
        else:
            soft, live = self._soft_tokens(readouts, False)
        blocks: list[list[Tensor]] = []
        block_ids: list[list[Tensor]] = []
        for i in range(r):
            if i == 0 or not joined[i]:
                blocks.append([])
                block_ids.append([])
            blocks[-1].append(soft[i][live[i]][int(skip[i]):].to(embed.weight.dtype))
            if slot_ids is not None:
                block_ids[-1].append(slot_ids[i][live[i]][int(skip[i]):])
        head_ids = torch.tensor(self._template_ids(0), dtype=torch.long)
        after = self._question_turn(question) if self.prompt_template is not None else ""
        tail_ids = torch.tensor(self._text_ids(after + prompt), dtype=torch.long)
        ids = None
        if slot_ids is not None:
            ids = (head_ids, [torch.cat(b, 0).cpu() for b in block_ids], tail_ids)
        return (embed(head_ids.to(embed.weight.device)), [torch.cat(b, 0) for b in blocks],
                embed(tail_ids.to(embed.weight.device)), ids)

    @torch.no_grad()
    def complete_passages(self, prompt: str, readouts: Tensor, skip: Sequence[int] = (),
                          joined: Sequence[bool] = (), question: Optional[str] = None,
                          max_new_tokens: int = 16, separator: str = "\n",
                          first_line: bool = False) -> str:
        """Greedy continuation of one prompt conditioned on several readouts (r, C) at once
        (prefix path only): their soft tokens go to the decoder in the order given, readout i
        without its first ``skip[i]`` live slots (the overlap with the window before it) and,
        unless ``joined[i]`` (a later window of the same sentence), after ``separator``.
        The decoder's input grows with r, never with the context. ``first_line``: stop
        after the first line of text and its line break.

        With ``prefix_snap`` the whole input is token ids, and the decoder drafts from them
        (``prompt_lookup_tokens``): an answer copied from a passage is checked several tokens
        per forward pass instead of one, and greedy decoding gives the same tokens."""
        head, blocks, tail, ids = self._passage_parts(prompt, readouts, skip, joined, question)
        if ids is not None and self.prompt_lookup_tokens > 0:
            head_ids, block_ids, tail_ids = ids
            sep_ids = torch.tensor(self._text_ids(separator), dtype=torch.long)
            pieces = [head_ids]
            for j, b in enumerate(block_ids):
                pieces.extend([sep_ids, b] if j else [b])
            return self._generate_ids(torch.cat([*pieces, tail_ids]), max_new_tokens,
                                      first_line)
        sep = self._embed_text(separator)
        parts = [head]
        for j, b in enumerate(blocks):
            parts.extend([sep, b] if j else [b])
        return self._generate_embeds([torch.cat([*parts, tail], 0)], max_new_tokens,
                                     first_line)[0]

    def _generate_ids(self, ids: Tensor, max_new_tokens: int, first_line: bool) -> str:
        """Greedy continuation of one input of token ids (L,), the decoder drafting up to
        ``prompt_lookup_tokens`` tokens from the input (transformers' prompt lookup) and
        checking them in one pass. A pass may accept tokens past the line break that ends a
        ``first_line`` answer; they are cut where one token at a time would have stopped."""
        dev = _device(self.decoder)
        ids = ids.to(dev)[None]
        gen: dict = {}
        if first_line:
            self._stop_at_first_line(gen, ids.shape[1])
        out = self._answer_decoder().generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
            max_new_tokens=max_new_tokens, pad_token_id=self.dummy_token_id,
            prompt_lookup_num_tokens=self.prompt_lookup_tokens, **gen)
        new = out[0, ids.shape[1]:]
        if first_line:
            done = _FirstLine(self.tokenizer).text_done
            ids_new = new.tolist()
            n = next((n for n in range(1, len(ids_new) + 1) if done(ids_new[:n])), len(ids_new))
            new = new[:n]
        return self.tokenizer.decode(new, skip_special_tokens=True)

    @torch.no_grad()
    def complete_each_passage(self, prompt: str, readouts: Tensor, skip: Sequence[int] = (),
                              joined: Sequence[bool] = (), question: Optional[str] = None,
                              max_new_tokens: int = 16) -> list[str]:
        """``complete_passages`` with each passage (a readout and the ``joined`` ones after
        it) decoded on its own, all in one left-padded batch: one continuation per passage,
        in order. A question with several answers (several keys, or one key with several
        values) gets each from the passage that holds it. Each continuation stops after its
        first line of text (a passage holds one answer; the decoder, asked for "all the
        numbers", would list on).

        With ``prefix_snap`` (and ``prompt_lookup_tokens`` > 0) the rows are token ids and
        each drafts from its own input (``lookup_decoding.greedy_lookup``)."""
        head, blocks, tail, ids = self._passage_parts(prompt, readouts, skip, joined, question)
        if ids is not None and self.prompt_lookup_tokens > 0:
            head_ids, block_ids, tail_ids = ids
            dec = self._answer_decoder()
            eos = dec.generation_config.eos_token_id
            eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
            line = _FirstLine(self.tokenizer)
            new = greedy_lookup(dec, [torch.cat([head_ids, b, tail_ids]) for b in block_ids],
                                max_new_tokens, self.prompt_lookup_tokens,
                                self.dummy_token_id, eos, done=line.text_done)
            return [self.tokenizer.decode(n, skip_special_tokens=True) for n in new]
        return self._generate_embeds([torch.cat([head, b, tail], 0) for b in blocks],
                                     max_new_tokens, first_line=True)

    def _generate_embeds(self, inputs: Sequence[Tensor], max_new_tokens: int,
                         first_line: bool = False) -> list[str]:
        """Greedy continuations of (L_j, D) input embeddings, left-padded into one batch;
        with ``first_line`` each row stops once it has a line of text and its line break."""
        width = max(e.shape[0] for e in inputs)
        embed = self.decoder.get_input_embeddings()
        pad = embed.weight[self.dummy_token_id]
        rows, masks = [], []
        for e in inputs:
            n = width - e.shape[0]
            rows.append(torch.cat([pad.expand(n, -1), e], 0))
            masks.append(torch.cat([torch.zeros(n, dtype=torch.long, device=e.device),
                                    torch.ones(e.shape[0], dtype=torch.long, device=e.device)]))
        gen: dict = {}
        if first_line:
            self._stop_at_first_line(gen, 0)   # from embeddings generate() sees new ids only
        dec = self._answer_decoder()
        new = dec.generate(inputs_embeds=torch.stack(rows).to(dec.dtype),
                           attention_mask=torch.stack(masks), do_sample=False,
                           max_new_tokens=max_new_tokens, pad_token_id=self.dummy_token_id,
                           **gen)
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    # ------------------------------------------------------------------ training loss

    def _word_dropout(self, ids: Tensor, mask: Tensor) -> Tensor:
        if not self.training or self.word_dropout <= 0:
            return ids
        drop = torch.rand(ids.shape, device=ids.device) < self.word_dropout
        drop[..., 0] = False
        drop &= mask.bool()
        return ids.masked_fill(drop, self.word_dropout_token_id)

    def slot_loss(self, readout: Tensor, segments: AlignedSegments, negatives: int = 2048,
                  temperature: float = 0.05) -> Tensor:
        """Reconstruction loss of the prefix path: readouts (n, C) of n segments against the
        decoder tokens their slots stand for.

        For every live slot: cross-entropy of the cosine between its soft token and the
        decoder's input embeddings (the true token against the batch's other targets and
        ``negatives`` random vocabulary rows, at ``temperature``), plus the squared distance
        to the true token's embedding (a frozen decoder reads the soft token as that token
        only if it also has the embedding's scale)."""
        soft, _ = self.prefix(readout)
        live = segments.live.to(soft.device)
        targets = segments.target_ids.to(soft.device)[live]
        soft = soft[live].float()
        table = self.decoder.get_input_embeddings().weight.detach().float()
        pool = targets
        if negatives > 0:
            pool = torch.cat([targets, torch.randint(0, table.shape[0], (negatives,),
                                                     device=targets.device)])
        vocab, index = torch.unique(pool, return_inverse=True)
        logits = (torch.nn.functional.normalize(soft, dim=-1)
                  @ torch.nn.functional.normalize(table[vocab], dim=-1).T) / temperature
        ce = torch.nn.functional.cross_entropy(logits, index[:targets.numel()])
        mse = ((soft - table[targets]) ** 2).sum(-1).mean()
        return ce + mse

    @torch.no_grad()
    def slot_tokens(self, readout: Tensor) -> list[list[int]]:
        """The decoder tokens the live slots of readouts (n, C) stand for (nearest input
        embedding by cosine): the segment text a readout holds, without running the decoder."""
        return [row[row >= 0].tolist() for row in self.slot_ids(readout)]

    def forward_aligned(self, segments: AlignedSegments, episode_size: int) -> LarimarOutput:
        """Larimar loss of a prefix-path model on B episodes of ``episode_size`` segments
        (``segments`` holds B * N texts, episode by episode): write each episode to its own
        memory, read every segment back with its own latent as the query, reconstruction
        loss of the readouts (``slot_loss``)."""
        n = len(segments)
        if episode_size < 1 or n % episode_size:
            raise ValueError(f"episode_size: {episode_size} does not divide {n} segments")
        Z = self.encode(segments).reshape(n // episode_size, episode_size, self.code_size)
        # the least-squares memory runs in float32 even under bf16 autocast (pseudo-inverses
        # in bf16 lose the small singular values)
        with torch.autocast(Z.device.type, enabled=False):
            Z = Z.float()
            M = self.write_differentiable(Z)
            z_read = self.read_differentiable(Z, M)
        loss = self.slot_loss(z_read.reshape(n, self.code_size), segments)
        return LarimarOutput(loss=loss, logits=torch.empty(0), z=Z, z_read=z_read)

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None,
                encoder_input_ids: Optional[Tensor] = None,
                encoder_attention_mask: Optional[Tensor] = None,
                labels: Optional[Tensor] = None) -> LarimarOutput:
        """Larimar loss on a batch of episodes.

        input_ids (B, N, T): N decoder segments per episode (right padded; labels default to
        input_ids with padding at -100). encoder_input_ids (B, N, T'): the same segments in
        the encoder's tokenization (default: input_ids). Every episode is written to its own
        memory, each segment is read back with its own latent as the query and decoded from
        that readout; the loss is the mean token cross-entropy."""
        if input_ids.dim() != 3:
            raise ValueError(f"input_ids: expected (B, N, T), got {tuple(input_ids.shape)}")
        B, N, T = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if encoder_input_ids is None:
            encoder_input_ids, encoder_attention_mask = input_ids, attention_mask
        Z = self.encode(encoder_input_ids, encoder_attention_mask)           # (B, N, C)
        M = self.write_differentiable(Z)                                     # (B, K, C)
        z_read = self.read_differentiable(Z, M)                              # (B, N, C)

        dev = _device(self.decoder)
        ids = input_ids.reshape(B * N, T).to(dev)
        mask = attention_mask.reshape(B * N, T).to(dev)
        if labels is None:
            labels = ids.masked_fill(mask == 0, -100)
        else:
            labels = labels.reshape(B * N, T).to(dev)
        out = self.decode(self._word_dropout(ids, mask), z_read.reshape(B * N, -1), mask,
                          labels=labels)
        return LarimarOutput(loss=out.loss, logits=out.logits.reshape(B, N, T, -1), z=Z,
                             z_read=z_read)
