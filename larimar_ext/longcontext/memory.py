"""LongContextMemory: a context far longer than the decoder's window, held in host memory.

The context is split into segments (``Segmenter``: one sentence each, long sentences as
overlapping windows of at most ``max_tokens`` decoder tokens); segment i's value z_i =
``model.encode(segment i)`` (C) is a row of a host ``KeyValueMemory``. Two modes:

- ``mode="recall"`` (default): every distinct segment has a row of its own (only identical
  texts share one), keyed by its whole-segment encoding (the masked mean of the encoder
  states its latent came from: no second pass) and indexed lexically (``LexicalIndex``:
  IDF-weighted coverage of rare terms, names, codes, numbers, uuids). A question is
  retrieved by the question and its answer prefix together: the dense top candidates and
  the lexical ones are fused (mean of cosine and coverage), the rows within ``margin`` of
  the best (at most ``max_readouts``) are read back by id, each widened to its sentence
  (neighbouring windows, stitched without their overlap, up to ``context_tokens``), and
  go to the decoder together in document order, each as its own readout
  (``model.complete_passages``). The fused score of the best row is the answer's
  confidence; below ``threshold`` the answer says the context does not hold it.
- ``mode="paper"``: Nelson et al.'s configuration: key r_i = ``model.encode_keys(first
  prefix_words words of segment i)``; segments sharing a key text share a row (the mean of
  their values); the question is the answer prefix cut the same way; one readout (k = 1) or
  the Gaussian-weighted values of the top k.

Only the encoder runs on the model's device, in batches; each finished batch of keys and
values is copied to the host and written by a background thread while the next batch
encodes, so the full context never sits on the device. Only readouts cross to the
decoder's device.

Ingest cost is kept down three ways:
- identical segments are encoded once (a segment seen before only raises its count; the
  passkey filler is five sentences, so a 1M-token passkey context encodes a handful);
- (paper mode) identical key texts are encoded once, and every segment with that key text
  is written with the very same key vector, which ``KeyValueMemory`` merges into one row;
- new segments are sorted by encoder-token length and batched by a padded-token budget
  (6% padding on the essays, 28% for batches of 64 sorted by characters).

Collisions in paper mode (documented behaviour): distinct segments with the same first
``prefix_words`` words (with an uncased encoder such as MiniLM, the same words up to case)
share one row holding the mean of their values; ``rows_shared`` in the stats counts such
rows. In recall mode no two distinct segments ever share a row.

This module is the memory itself; its parts have modules of their own, re-exported here:
the encoding cache (``cache.py``), the ingest statistics (``stats.py``), the writer thread
(``writer.py``) and the answer types (``answer.py``: ``Answer``, ``Source``, ``NOT_FOUND``).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ContextManager, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch

from .. import _persist
from .._arrays import gaussian_alpha, optional_flag
from .._profiling import PREFIX, profiled
from ..kv_memory import KeyValueMemory
# Re-exported here (``__all__``): the answer types, the cache, the stats and the writer have
# modules of their own; users import them from this module.
from .answer import NOT_FOUND, Answer, Source
from .cache import EncodingCache
from .grounding import continuation, snap_codes, support, swapped_term
from .lexical import LexicalIndex, terms
from .segment import Segmenter, prefix_text
from .segments_table import SegmentTable
from .stats import IngestStats
from .writer import _Writer

__all__ = ["LongContextMemory", "IngestStats", "Answer", "Source", "EncodingCache", "MODES",
           "NOT_FOUND"]

_KIND = "larimar_ext.LongContextMemory"
MODES = ("recall", "paper")
VALUES = ("auto", "latent", "tokens")
KEYS = ("auto", "float", "int8")
DEFAULT_PREFIX_WORDS = 4
DEFAULT_MAX_TOKENS = 64
# Confidence threshold of "found", set between what was measured (benchmarks/RESULTS.md
# section 7): answers present, RULER development set and the recall cases, 0.54-0.93;
# questions without an answer that no swapped term gives away, 0.31-0.42. Questions whose
# passage states the fact about another name are withheld by the swap check, not by this.
DEFAULT_THRESHOLD = 0.45


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) \
            or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")
    return float(value)


def _takes(method: Any, name: str) -> bool:
    """Whether a model method (duck-typed models may lack options) has parameter ``name``."""
    try:
        return name in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def _first_line(method: Any) -> Dict[str, Any]:
    """``first_line=True`` for a model method that takes it: an answer is one line, and
    generation stops there instead of writing on to the token limit."""
    return {"first_line": True} if _takes(method, "first_line") else {}


def _clean(answer: str) -> str:
    """A decoded answer without surrounding space, and without the replacement characters
    of a multi-byte character the token limit cut in two."""
    return answer.strip().rstrip("\ufffd").rstrip()


class _Stages:
    """Wall seconds per named stage of one call, each also a ``torch.profiler`` range named
    "larimar_ext.<prefix>.<stage>" (record_function does nothing while no profiler runs)."""

    def __init__(self, prefix: str = "ask") -> None:
        self.prefix = prefix
        self.seconds: Dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        with torch.profiler.record_function(f"{PREFIX}{self.prefix}.{name}"):
            yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


_BULLET = re.compile(r"^(?:[-*\u2022]|\d{1,2}[.)])\s+")


def _first_item(answer: str) -> str:
    """The first line of an answer, without a list bullet ("- ", "1. "): what one passage
    of several answers (the decoder, asked for "all the numbers", lists on past it)."""
    for line in answer.lstrip(" :").splitlines():
        line = _BULLET.sub("", line.strip())
        if line:
            return line
    return answer.strip()


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _host(x: torch.Tensor) -> np.ndarray:
    """(n, d) tensor on any device -> C-contiguous float32 numpy array on the host."""
    return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())


class LongContextMemory:
    """A long context in a host fixed-key memory, answered by a Larimar decoder.

    Args:
        model: a ``LarimarModel`` (or anything with ``encode(texts) -> (n, C)``,
            ``encode_keys(texts) -> (n, H)``, ``complete(prompts, readouts, max_new_tokens)``,
            ``tokenizer`` (the decoder's) and ``code_size``; ``encode_with_keys`` and
            ``complete_passages`` are used when present). It is put in eval mode.
        mode: "recall" (default) or "paper" (module docstring).
        prefix_words: (paper mode) words of a segment's start that make its key (default 4:
            every answer prefix of 4 or more words matches its segment's key text exactly).
        prefix_keys: (paper mode) False keys each segment by its whole text (the paper's
            "no prefix" ablation); the query is then the whole answer prefix.
        max_tokens: the largest segment in decoder tokens (longer sentences become
            overlapping windows); default: the model's slot count for a model with
            decoder-aligned slots (a longer segment would not fit its latent), else 64.
        max_readouts: (recall) the most retrieved rows read per question.
        margin: (recall) only rows whose fused score is at least ``margin`` times the best
            one's are read (``_select`` picks among them: a four-value or four-key question
            has four rows of comparable score).
        context_tokens: (recall) a row that is a window of a longer sentence brings the
            sentence's neighbouring windows, up to this many decoder tokens in all.
        threshold: (recall) confidence below which ``ask`` answers ``NOT_FOUND``; 0 never
            withholds.
        batch_size: the most segments in one encoder batch.
        batch_tokens: padded encoder tokens per batch (segments are sorted by their encoder
            token count, so a batch of short segments holds more of them).
        block: distinct new segments gathered before they are sorted by length and encoded.
        metric: the KeyValueMemory metric ("cosine"; keys are unit vectors, so "ip" ranks
            the same).
        cache: an ``EncodingCache`` to share between memories (benchmark trials); it holds
            one encoder's encodings, so a memory that encodes with the other one (its
            ``int8_values``) is refused it (ValueError naming cache).
        progress: show tqdm progress bars by default.
        pass_question: give ``ask``'s question to the decoder's prompt when the model takes
            one.
        int8_values: True: encode values with the model's int8 encoder
            (``LarimarModel.int8_values``): faster ingest on the CPU (paper mode keys stay
            float; recall mode keys come from the same int8 pass). False: with the float
            encoder. None (default): as the model-wide ``int8_values()`` says. The choice
            is this memory's (``LarimarModel.precision``): other memories of the model keep
            theirs.
        bf16_answers: True: generate answers with the model's bfloat16 decoder copy
            (``LarimarModel.bf16_answers``): about half the answer time on a CPU with
            AVX-512 BF16; an answer may differ where two tokens are close. False: with the
            float decoder. None (default): as the model-wide ``bf16_answers()`` says; this
            memory's choice, like ``int8_values``.
        int8_answers: True: generate answers with the model's int8 decoder copy
            (``LarimarModel.int8_answers``): a decode step streams a quarter of the float
            weights' bytes, on any CPU; an answer may differ where two tokens are close.
            False / None: as ``bf16_answers``. At most one of the two may be True.
        values: what a row keeps of its segment's latent. "latent": the latent itself (C
            floats, 28 KB with the default model). "tokens": the decoder tokens the latent
            stands for (``model.slot_ids``: one id per slot, -1 for a dead one; 128 bytes),
            which with a snapping prefix path (``prefix_snap``) give the decoder the same
            input; recall mode only (paper mode may mix several rows' latents). "auto"
            (default): "tokens" where the model and mode allow it, else "latent".
        keys: how the store keeps a row's key. "float": as encoded (4 bytes a number).
            "int8": as 7-bit codes with a scale of its own (``KeyValueMemory(key_codes=
            "int8-only")``: 408 bytes a 384-number key, not 1,540), each key then its codes'
            decoding, searched exactly. "auto" (default): "int8" in recall mode, whose rows
            are found by the search's ranking and fused with the lexical index's, "float"
            in paper mode, whose rows merge on bitwise identical keys.
    """

    def __init__(self, model: Any, *, mode: str = "recall",
                 prefix_words: int = DEFAULT_PREFIX_WORDS,
                 prefix_keys: bool = True, max_tokens: Optional[int] = None,
                 max_readouts: int = 6, margin: float = 0.7, context_tokens: int = 128,
                 threshold: float = DEFAULT_THRESHOLD,
                 batch_size: int = 256, batch_tokens: int = 2048, block: int = 2048,
                 metric: str = "cosine",
                 cache: Optional[EncodingCache] = None, progress: bool = False,
                 pass_question: bool = True, int8_values: Optional[bool] = None,
                 bf16_answers: Optional[bool] = None, int8_answers: Optional[bool] = None,
                 values: str = "auto",
                 keys: str = "auto") -> None:
        for attr in ("encode", "encode_keys", "complete"):
            if not callable(getattr(model, attr, None)):
                raise ValueError(f"model: expected a LarimarModel with {attr}(), got "
                                 f"{type(model).__name__}")
        if getattr(model, "tokenizer", None) is None:
            raise ValueError("model: needs its decoder tokenizer (LarimarModel(tokenizer=...)); "
                             "segment sizes and token counts are in decoder tokens")
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if not isinstance(prefix_keys, bool):
            raise ValueError(f"prefix_keys: expected True or False, got {prefix_keys!r}")
        if metric not in ("cosine", "ip", "l2"):
            raise ValueError(f"metric: expected 'cosine', 'ip' or 'l2', got {metric!r}")
        if cache is not None and not isinstance(cache, EncodingCache):
            raise ValueError(f"cache: expected an EncodingCache, got {type(cache).__name__}")
        if values not in VALUES:
            raise ValueError(f"values: expected one of {VALUES}, got {values!r}")
        if keys not in KEYS:
            raise ValueError(f"keys: expected one of {KEYS}, got {keys!r}")
        self.model = model
        if hasattr(model, "eval"):
            model.eval()
        self.int8_values = optional_flag(int8_values, "int8_values")
        self.bf16_answers = optional_flag(bf16_answers, "bf16_answers")
        self.int8_answers = optional_flag(int8_answers, "int8_answers")
        self._choose = getattr(model, "precision", None)
        if not callable(self._choose):
            self._choose = None
            for name, value in (("int8_values", int8_values), ("bf16_answers", bf16_answers),
                                ("int8_answers", int8_answers)):
                if value:
                    raise ValueError(f"{name}: the model has no precision() (a LarimarModel's "
                                     "int8 encoder and bfloat16 / int8 decoder copies)")
        else:
            # makes the copies asked for now, so that a bad choice (both answer copies, one
            # the model cannot make) raises here
            with self._choose(int8_values=int8_values, bf16_answers=bf16_answers,
                              int8_answers=int8_answers):
                pass
        self.mode = mode
        self.values = self._value_kind(values, mode)
        if keys == "int8" and mode != "recall":
            raise ValueError("keys: 'int8' needs recall mode (paper mode merges rows on "
                             "bitwise identical keys, which a key's codes are not)")
        self.keys = ("int8" if mode == "recall" else "float") if keys == "auto" else keys
        self.prefix_words = _positive_int(prefix_words, "prefix_words")
        self.prefix_keys = prefix_keys
        slots = getattr(getattr(model, "aligner", None), "num_slots", None)
        if max_tokens is None:
            max_tokens = slots or DEFAULT_MAX_TOKENS
        self.max_tokens = _positive_int(max_tokens, "max_tokens")
        if slots is not None and self.max_tokens > slots:
            raise ValueError(f"max_tokens: {self.max_tokens} is more than the model's "
                             f"{slots} slots per segment")
        self.max_readouts = _positive_int(max_readouts, "max_readouts")
        self.margin = _fraction(margin, "margin")
        self.context_tokens = _positive_int(context_tokens, "context_tokens")
        self.threshold = _fraction(threshold, "threshold")
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.batch_tokens = _positive_int(batch_tokens, "batch_tokens")
        self.block = _positive_int(block, "block")
        self.metric = metric
        self.progress = bool(progress)
        self.pass_question = bool(pass_question)
        self._complete_takes_questions = _takes(model.complete, "questions")
        if cache is not None:
            if cache.model_id not in (None, id(model)):
                raise ValueError("cache: holds encodings of another model")
            if cache.keep_values and cache.value_kind not in (None, self.values):
                raise ValueError(f"cache: holds {cache.value_kind} values, this memory keeps "
                                 f"{self.values}")
            if int8_values is not None:
                self._check_cache_encoder(cache, "int8" if int8_values else "float")
            cache.model_id = id(model)
        self.cache = cache if cache is not None else EncodingCache()
        self._shared_cache = cache is not None   # checked for its encoder at each ingest
        self.cache.model_id = id(model)
        self.cache.value_kind = self.values
        self.segmenter = Segmenter(model.tokenizer, self.max_tokens, block=self.block)
        self._reset()

    def _reset(self) -> None:
        self.store: Optional[KeyValueMemory] = None
        self.lexical = LexicalIndex()
        self.segments = SegmentTable()
        self._lock = threading.Lock()
        self.totals = IngestStats()
        self.last: Optional[IngestStats] = None

    @property
    def recall(self) -> bool:
        return self.mode == "recall"

    def _value_kind(self, values: str, mode: str) -> str:
        """``values`` resolved for this model in ``mode`` ("latent" or "tokens")."""
        model = self.model
        recall = mode == "recall"
        takes_ids = (callable(getattr(model, "slot_ids", None))
                     and getattr(model, "prefix", None) is not None
                     and bool(getattr(model, "prefix_snap", False)))
        if values == "auto":
            return "tokens" if takes_ids and recall else "latent"
        if values == "tokens" and not (takes_ids and recall):
            raise ValueError("values: 'tokens' needs recall mode and a model whose decoder "
                             "reads its slots as snapped tokens (slot_ids, prefix_snap)")
        return values

    def _value_width(self, values: str) -> int:
        """Numbers in a stored value: the code size, or one per slot (``values="tokens"``)."""
        if values == "tokens":
            return int(self.model.prefix.num_slots)
        return int(getattr(self.model, "code_size", 0))

    # ------------------------------------------------------------------ helpers

    def key_text(self, text: str) -> str:
        """The text a segment (or an answer prefix) is keyed by: in paper mode its first
        ``prefix_words`` words, or all of it without prefix keys; in recall mode all of it."""
        if self.recall:
            return text
        return prefix_text(text, self.prefix_words if self.prefix_keys else None)

    def _store_for(self, key_dim: int, value_dim: int) -> KeyValueMemory:
        if self.store is None:
            self.store = KeyValueMemory(key_dim, value_dim, metric=self.metric,
                                        merge_identical=not self.recall,
                                        key_codes="int8-only" if self.keys == "int8" else None)
        return self.store

    def _record(self, rows: np.ndarray, texts: List[str]) -> None:
        with self._lock:
            for r, t in zip(rows.tolist(), texts):
                self.segments.store(r, t)
                if self.recall:
                    self.lexical.add(r, t)

    def _lengths(self, texts: List[str]) -> List[int]:
        """Encoder tokens of each text (one batched tokenizer call, no padding); character
        counts when the model has no encoder tokenizer."""
        tok = getattr(self.model, "encoder_tokenizer", None)
        if tok is None:
            return [len(t) // 4 + 1 for t in texts]
        return [len(x) for x in tok(texts)["input_ids"]]

    def _batches(self, texts: List[str]) -> Iterator[List[str]]:
        """Batches of texts sorted by encoder-token length, each at most ``batch_size``
        texts and ``batch_tokens`` padded tokens (sorted by characters, the essays' batches
        of 64 were 28% padding; by tokens, 6-9%)."""
        if not texts:
            return
        lengths = self._lengths(texts)
        order = sorted(range(len(texts)), key=lengths.__getitem__)
        batch: List[str] = []
        for i in order:
            # sorted ascending: the newest text is the longest, so it sets the padded width
            if batch and (len(batch) >= self.batch_size
                          or (len(batch) + 1) * lengths[i] > self.batch_tokens):
                yield batch
                batch = []
            batch.append(texts[i])
        yield batch

    @torch.no_grad()
    def _encode_keys(self, texts: List[str]) -> Dict[str, np.ndarray]:
        out: Dict[str, np.ndarray] = {}
        for batch in self._batches(texts):
            k = _host(self.model.encode_keys(batch, batch_size=len(batch)))
            out.update(zip(batch, k))
        return out

    def _stored(self, z: torch.Tensor) -> np.ndarray:
        """What rows keep of latents z (n, C): z, or its slot ids (n, P) as float32 (exact
        for ids below 2**24)."""
        if self.values == "tokens":
            return _host(self.model.slot_ids(z))
        return _host(z)

    def _encoder(self) -> str:
        """The encoder this memory's ingest uses now: "int8" or "float"."""
        with self._precision(int8_values=self.int8_values):
            return "int8" if getattr(self.model, "values_in_int8", False) else "float"

    @staticmethod
    def _check_cache_encoder(cache: EncodingCache, encoder: str) -> None:
        """A shared cache holds one encoder's encodings (a memory's own cache is its own
        business: in paper mode its prefix keys must stay those of its stored rows)."""
        if cache.encoder not in (None, encoder) and (cache.keys or cache.values):
            raise ValueError(f"cache: holds encodings of the {cache.encoder} encoder, this "
                             f"memory encodes with the {encoder} one (int8_values); give it "
                             f"a cache of its own")

    def _precision(self, **choice: Optional[bool]) -> ContextManager[None]:
        """This memory's ``int8_values`` / ``bf16_answers`` / ``int8_answers`` choice for the
        model's calls in the block (``LarimarModel.precision``)."""
        return contextlib.nullcontext() if self._choose is None else self._choose(**choice)

    @torch.no_grad()
    def _encode_values(self, texts: List[str]) -> np.ndarray:
        with self._precision(int8_values=self.int8_values):
            return self._stored(self.model.encode(list(texts)))

    @torch.no_grad()
    def _encode_values_and_keys(self, texts: List[str]) -> Tuple[np.ndarray, np.ndarray]:
        """(z (n, C), whole-segment keys (n, H)), from one encoder pass when the model can.
        Slot ids of an aligned model are snapped with the texts' aligned tokens as hints."""
        both = getattr(self.model, "encode_with_keys", None)
        aligner = getattr(self.model, "aligner", None)
        if callable(both) and self.values == "tokens" and getattr(self.model, "aligned", False):
            segments = aligner(list(texts))
            with self._precision(int8_values=self.int8_values):
                z, keys = both(segments)
            return _host(self.model.slot_ids(z, hints=segments.target_ids)), _host(keys)
        if callable(both):
            with self._precision(int8_values=self.int8_values):
                z, keys = both(list(texts))
            return self._stored(z), _host(keys)
        return (self._encode_values(texts),
                _host(self.model.encode_keys(list(texts), batch_size=len(texts))))

    # ------------------------------------------------------------------ ingest

    @profiled
    def ingest(self, texts: Union[str, Iterable[str]], progress: Optional[bool] = None,
               leave: bool = True, separator: str = "") -> IngestStats:
        """Add a text, or an iterable of texts, to the memory. Returns this call's
        ``IngestStats``; ``stats`` holds the running totals.

        An iterable is one stream, consumed once, block by block: its texts are joined with
        ``separator`` (default "": a file read in pieces is segmented exactly as the whole
        file; give "\n\n" to keep documents apart, a blank line ends a sentence).
        ``progress``: a tqdm bar in decoder tokens (default: the memory's ``progress``);
        ``leave``: keep the bar on screen when done."""
        if not isinstance(separator, str):
            raise ValueError(f"separator: expected a string, got {type(separator).__name__}")
        if isinstance(texts, str):
            texts = [texts]
        elif isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Iterable):
            raise ValueError(f"texts: expected a string or an iterable of strings, got "
                             f"{type(texts).__name__}")
        if self._shared_cache:
            encoder = self._encoder()
            self._check_cache_encoder(self.cache, encoder)
            self.cache.encoder = encoder
        show = self.progress if progress is None else bool(progress)
        st = IngestStats()
        t0 = time.perf_counter()
        bar = None
        if show:
            from tqdm.auto import tqdm
            bar = tqdm(desc="ingest", unit="tok", unit_scale=True, dynamic_ncols=True, leave=leave)

        def counted(it: Iterable[str]) -> Iterator[str]:
            for t in it:
                if not isinstance(t, str):
                    raise ValueError(f"texts: expected strings, got {type(t).__name__}")
                st.texts += 1
                yield t

        writer = _Writer(self)
        pending: List[str] = []
        pending_tokens = 0
        flushing = 0.0                   # caller-thread time in _flush (encoding, hand-off)
        try:
            for piece in self.segmenter.segments(counted(texts), separator):
                seg = piece.text
                st.segments += 1
                st.tokens += piece.tokens
                pending_tokens += piece.tokens
                if not self.segments.see(seg, self.totals.segments + st.segments - 1,
                                         piece.overlap, piece.continues):
                    continue
                pending.append(seg)
                if len(pending) >= self.block:
                    t1 = time.perf_counter()
                    self._flush(pending, writer, st)
                    flushing += time.perf_counter() - t1
                    pending = []
                    if bar is not None:
                        bar.update(pending_tokens)
                        pending_tokens = 0
            if pending:
                t1 = time.perf_counter()
                self._flush(pending, writer, st)
                flushing += time.perf_counter() - t1
            st.segment_seconds = time.perf_counter() - t0 - flushing
        except BaseException:
            try:
                writer.close()
            except BaseException:
                pass
            raise
        finally:
            if bar is not None:
                bar.update(pending_tokens)
                bar.close()
        writer.close()
        st.write_seconds = writer.seconds
        st.seconds = time.perf_counter() - t0
        st.tokens_per_s = st.tokens / st.seconds if st.seconds > 0 else 0.0
        st.rows = len(self.store) if self.store is not None else 0
        st.host_bytes = self.store.nbytes if self.store is not None else 0
        st.split_sentences = self.segmenter.split_sentences
        t = self.totals
        for name in ("texts", "segments", "new_segments", "encoded_keys", "encoded_values",
                     "tokens", "seconds", "segment_seconds", "encode_seconds", "write_seconds"):
            setattr(t, name, getattr(t, name) + getattr(st, name))
        t.tokens_per_s = t.tokens / t.seconds if t.seconds > 0 else 0.0
        t.rows, t.host_bytes, t.split_sentences = st.rows, st.host_bytes, st.split_sentences
        self.last = st
        return st

    def _flush(self, segs: List[str], writer: _Writer, st: IngestStats) -> None:
        """Encode a block of distinct new segments and hand its batches to the writer."""
        st.new_segments += len(segs)
        cache = self.cache
        # recall mode: a segment's key comes out of its value's encoder pass; paper mode:
        # the keys of the block's distinct key texts are encoded first, apart
        key_texts = {s: self.key_text(s) for s in segs}
        block_keys: Dict[str, np.ndarray] = {}
        if not self.recall:
            need = [kt for kt in dict.fromkeys(key_texts.values()) if kt not in cache.keys]
            t1 = time.perf_counter()
            block_keys = self._encode_keys(need)
            st.encode_seconds += time.perf_counter() - t1
            if self.prefix_keys or cache.keep_values:
                # whole-segment keys repeat only with their segment, which is never encoded
                # twice, so a memory of its own keeps only prefix keys
                cache.keys.update(block_keys)
            st.encoded_keys += len(need)
        for batch in self._batches(segs):
            todo = [s for s in batch if s not in cache.values]
            fresh: Dict[str, np.ndarray] = {}
            if todo:
                t1 = time.perf_counter()
                if self.recall:
                    z, k = self._encode_values_and_keys(todo)
                    block_keys.update(zip(todo, k))
                    st.encoded_keys += len(todo)
                    if cache.keep_values:
                        cache.keys.update(zip(todo, k))
                else:
                    z = self._encode_values(todo)
                st.encode_seconds += time.perf_counter() - t1
                st.encoded_values += len(todo)
                fresh = dict(zip(todo, z))
                if cache.keep_values:
                    cache.values.update(fresh)
            values = np.stack([fresh[s] if s in fresh else cache.values[s] for s in batch])
            keys = np.stack([block_keys[kt] if kt in block_keys else cache.keys[kt]
                             for kt in (key_texts[s] for s in batch)])
            writer.put(keys, values, batch)

    # ------------------------------------------------------------------ read

    def _check_ready(self, answer_prefix: str) -> None:
        if not isinstance(answer_prefix, str) or not answer_prefix.strip():
            raise ValueError(f"answer_prefix: expected a non-empty string, got {answer_prefix!r}")
        if self.store is None or len(self.store) == 0:
            raise RuntimeError("nothing ingested: call ingest() first")

    def _query_text(self, answer_prefix: str, question: Optional[str]) -> str:
        """Recall mode retrieves by the question and the answer prefix together; paper mode
        by the answer prefix's key text."""
        prefix = " ".join(answer_prefix.split())
        if not self.recall:
            return self.key_text(prefix)
        return f"{' '.join(question.split())} {prefix}" if question else prefix

    def _query(self, text: str) -> np.ndarray:
        """The retrieval key (1, H) of a query text (``_query_text``)."""
        with torch.no_grad():
            return _host(self.model.encode_keys([text]))

    @profiled
    def retrieve(self, answer_prefix: str, k: int = 1,
                 question: Optional[str] = None) -> Tuple[List[int], List[float]]:
        """The top-k memory rows for a question and their scores (best first): in recall
        mode by the fused dense + lexical score, in paper mode by the key's cosine."""
        k = _positive_int(k, "k")
        self._check_ready(answer_prefix)
        if k > len(self.store):
            raise ValueError(f"k: expected at most the {len(self.store)} stored rows, got {k}")
        if self.recall:
            ranked = self._ranked(answer_prefix, question, max(k, 64))
            return [s.row for s in ranked[:k]], [s.score for s in ranked[:k]]
        rows, scores = self.store.search(self._query(self._query_text(answer_prefix, None)), k)
        return rows[0].tolist(), scores[0].tolist()

    def _ranked(self, answer_prefix: str, question: Optional[str], depth: int = 64,
                q: Optional[np.ndarray] = None) -> List[Source]:
        """Candidates of both views, fused: score = (dense cosine + lexical coverage) / 2.
        A lexical candidate outside the dense top ``depth`` gets the depth-th cosine (an
        upper bound of its own). ``q``: the query's key (1, H), when already encoded."""
        text = self._query_text(answer_prefix, question)
        if q is None:
            q = self._query(text)
        depth = min(depth, len(self.store))
        ids, cos = self.store.search(q, depth)
        dense = dict(zip(ids[0].tolist(), cos[0].tolist()))
        floor = float(cos[0, -1])
        lex_rows, lex_cov = self.lexical.search(text, depth)
        lexical = dict(zip(lex_rows.tolist(), lex_cov.tolist()))
        out = []
        for r in dict.fromkeys([*dense, *lexical]):
            d, lx = dense.get(r, floor), lexical.get(r, 0.0)
            text_r = self.segments.row_texts(r)[0]
            out.append(Source(row=r, text=text_r, score=0.5 * (d + lx), dense=d, lexical=lx,
                              position=self.segments.place(text_r).position))
        out.sort(key=lambda s: (-s.score, s.row))
        return out

    def _widen(self, text: str) -> List[str]:
        """A segment and the neighbouring windows of its sentence (a long sentence is
        several windows), up to ``context_tokens`` decoder tokens, in document order."""
        count = self.segmenter.counter.count
        table = self.segments
        budget = self.context_tokens - count(text)
        before: List[str] = []
        after: List[str] = []
        cur_back, cur_fwd = text, text
        while budget > 0:
            grew = False
            place = table.place(cur_back)
            if place.continues and table.row_of(place.prev) is not None:
                # cur_back repeats the end of place.prev: the new tokens are the rest
                budget -= count(place.prev) - place.overlap
                cur_back = place.prev
                before.append(cur_back)
                grew = True
            nxt = table.next_of(cur_fwd)
            nxt_place = table.place(nxt)
            if budget > 0 and nxt_place.continues and table.row_of(nxt) is not None:
                cur_fwd = nxt
                after.append(cur_fwd)
                budget -= count(cur_fwd) - nxt_place.overlap
                grew = True
            if not grew:
                break
        return [*reversed(before), text, *after]

    def _passages(self, chosen: List[Source]) -> List[List[str]]:
        """The chosen segments widened to their sentences, merged where they meet, in
        document order: a list of passages, each a list of consecutive windows."""
        groups: List[List[str]] = []
        seen: Dict[str, int] = {}
        for s in chosen:
            group = [t for t in self._widen(s.text) if t not in seen]
            if not group:
                continue
            for t in group:
                seen[t] = len(groups)
            groups.append(group)
        groups.sort(key=lambda g: self.segments.place(g[0]).position)
        merged: List[List[str]] = []
        for g in groups:
            place = self.segments.place(g[0])
            if merged and place.continues and place.prev == merged[-1][-1]:
                merged[-1].extend(g)          # continues the passage before it
            else:
                merged.append(list(g))
        return merged

    def segments_of(self, row: int) -> List[str]:
        """The distinct segment texts stored in a memory row."""
        return self.segments.row_texts(row)

    def row_of(self, segment: str) -> Optional[int]:
        """The memory row holding a segment text (None when it was never ingested)."""
        return self.segments.row_of(segment)

    def readout_of(self, segment: str) -> np.ndarray:
        """The stored value of the row holding ``segment`` (its latent (C,), or its slot ids
        (P,) with ``values="tokens"``): what the decoder gets when retrieval finds that
        segment (used to score decoding apart from retrieval)."""
        row = self.segments.row_of(segment)
        if row is None:
            raise ValueError(f"segment: not in the memory: {segment[:80]!r}")
        return self.store.reconstruct(np.array([row]))[0]

    def _to_decoder(self, readout: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
        r = torch.as_tensor(np.asarray(readout, dtype=np.float32))
        if self.values == "tokens":
            r = r.to(torch.long)                        # slot ids, stored exactly as floats
        if isinstance(self.model, torch.nn.Module) and hasattr(self.model, "decoder"):
            r = r.to(_device(self.model.decoder))       # only z_read crosses to the device
        return r

    def decode(self, answer_prefix: str, readout: Union[np.ndarray, torch.Tensor],
               max_new_tokens: int = 16, question: Optional[str] = None) -> str:
        """The decoder's continuation of ``answer_prefix`` conditioned on readout (C,).
        ``question`` goes to ``model.complete(questions=...)`` when the model takes one (a
        prompt template with a question slot) and ``pass_question`` is on."""
        max_new_tokens = _positive_int(max_new_tokens, "max_new_tokens")
        r = self._to_decoder(readout).reshape(1, -1)
        kw: Dict[str, Any] = {}
        if question is not None and self.pass_question and self._complete_takes_questions:
            kw["questions"] = [question]
        with self._precision(bf16_answers=self.bf16_answers, int8_answers=self.int8_answers):
            out = self.model.complete([answer_prefix], r, max_new_tokens=max_new_tokens, **kw,
                                      **_first_line(self.model.complete))
        return _clean(out[0])

    def decode_passages(self, answer_prefix: str, passages: List[List[str]],
                        max_new_tokens: int = 16, question: Optional[str] = None,
                        readouts: Optional[Tuple[np.ndarray, List[int], List[bool]]] = None
                        ) -> str:
        """The decoder's continuation of ``answer_prefix`` conditioned on the stored values
        of the passages' segments (read by row id; ``readouts``: ``_readouts_of(passages)``
        when already read), each passage after a line break, the windows of one passage
        stitched without their overlap. A model without ``complete_passages`` gets the
        first segment's readout alone."""
        max_new_tokens = _positive_int(max_new_tokens, "max_new_tokens")
        values, skip, joined = readouts or self._readouts_of(passages)
        if not callable(getattr(self.model, "complete_passages", None)) \
                or getattr(self.model, "prefix", None) is None:
            return self.decode(answer_prefix, values[0], max_new_tokens, question)
        q = question if self.pass_question else None
        with self._precision(bf16_answers=self.bf16_answers, int8_answers=self.int8_answers):
            return _clean(self.model.complete_passages(
                answer_prefix, self._to_decoder(values), skip, joined, q, max_new_tokens,
                **_first_line(self.model.complete_passages)))

    def _readouts_of(self, passages: List[List[str]]
                     ) -> Tuple[np.ndarray, List[int], List[bool]]:
        """The stored values (r, C) of the passages' segments (read by row id), each
        window's overlap with the one before it, and whether it continues a passage."""
        texts = [t for p in passages for t in p]
        values = self.store.reconstruct(np.array([self.segments.row_of(t) for t in texts],
                                                 np.int64))
        skip, joined = [], []
        for p in passages:
            for j, t in enumerate(p):
                skip.append(self.segments.place(t).overlap if j else 0)
                joined.append(j > 0)
        return values, skip, joined

    def decode_each_passage(self, answer_prefix: str, passages: List[List[str]],
                            max_new_tokens: int = 16, question: Optional[str] = None,
                            readouts: Optional[Tuple[np.ndarray, List[int], List[bool]]] = None
                            ) -> List[str]:
        """``decode_passages`` with each passage decoded on its own (one batch): one
        continuation per passage, in the order given. A model without
        ``complete_each_passage`` decodes them one by one."""
        if not callable(getattr(self.model, "complete_each_passage", None)) \
                or getattr(self.model, "prefix", None) is None:
            return [self.decode_passages(answer_prefix, [p], max_new_tokens, question)
                    for p in passages]
        max_new_tokens = _positive_int(max_new_tokens, "max_new_tokens")
        values, skip, joined = readouts or self._readouts_of(passages)
        q = question if self.pass_question else None
        with self._precision(bf16_answers=self.bf16_answers, int8_answers=self.int8_answers):
            return [_clean(a) for a in self.model.complete_each_passage(
                answer_prefix, self._to_decoder(values), skip, joined, q, max_new_tokens)]

    @profiled
    def ask_trace(self, answer_prefix: str, question: Optional[str] = None, *,
                  k: Optional[int] = None, alpha: Optional[float] = None,
                  max_new_tokens: int = 16) -> Answer:
        """``ask`` with its sources, confidence, passages and the rows and scores it read.

        Recall mode: ``k`` caps the rows read (default ``max_readouts``). Paper mode: k = 1
        (default) reads the best row's value; k > 1 the Gaussian-weighted values of the top
        k (``alpha``, default 1e-3 as in Larimar; alpha -> 0 is the one-hot limit)."""
        if question is not None and not isinstance(question, str):
            raise ValueError(f"question: expected a string or None, got {type(question).__name__}")
        self._check_ready(answer_prefix)
        if k is None:
            k = min(self.max_readouts, len(self)) if self.recall else 1
        k = _positive_int(k, "k")
        if k > len(self.store):
            raise ValueError(f"k: expected at most the {len(self.store)} stored rows, got {k}")
        alpha = gaussian_alpha(alpha)  # the kernel's one check
        max_new_tokens = _positive_int(max_new_tokens, "max_new_tokens")
        if self.recall:
            return self._ask_recall(answer_prefix, question, k, max_new_tokens)
        q = self._query(self._query_text(answer_prefix, question))
        if k == 1:
            rows, scores, values = self.store.search_and_reconstruct(q, 1)
            readout = values[0, 0]
        else:
            rows, scores = self.store.search(q, k)
            readout = self.store.read(q, k, 1e-3 if alpha is None else float(alpha))[0]
        answer = self.decode(answer_prefix, readout, max_new_tokens, question)
        top = int(rows[0, 0])
        segs = self.segments_of(top)
        src = Source(row=top, text=segs[0], score=float(scores[0, 0]),
                     dense=float(scores[0, 0]), lexical=0.0,
                     position=self.segments.place(segs[0]).position)
        return Answer(answer=answer, answer_prefix=answer_prefix, question=question,
                      rows=rows[0].tolist(), scores=scores[0].tolist(), segments=segs,
                      readout=readout, confidence=src.score, found=True, guess=answer,
                      sources=[src], passages=[" ".join(segs)], answers=[answer])

    def _select(self, ranked: List[Source], query: str, k: int
                ) -> Tuple[List[Source], float]:
        """(rows to read, the share of the query's IDF mass they cover together). The rows:
        the best one, then (in rank order, within ``margin`` of its
        score, at most k) each row that covers every informative query term the best one
        covers (another passage on the same thing: a key's second value), or covers terms
        no chosen row does, weighing at least half of what sets the best row apart from it
        (another part of the question: a second key). A row that only repeats part of what
        the chosen ones cover (a needle of another key) is left out. A best row that holds
        no informative query term is read alone: nothing tells its rivals apart."""
        best = ranked[0]
        idf = dict(self.lexical.weights(query))

        def covers(s: Source) -> set:
            return {t for t in terms(s.text) if t in idf}

        first = covers(best)
        have = set(first)
        chosen = [best]
        for s in ranked[1:k] if first else ():
            if s.score < self.margin * best.score:
                break
            c = covers(s)
            gain = sum(idf[t] for t in c - have)
            if c >= first or gain >= 0.5 * sum(idf[t] for t in first - c):
                chosen.append(s)
                have |= c
        total = sum(idf.values())
        return chosen, (sum(idf[t] for t in have) / total if total else 0.0)

    def _grounded(self, answer: str, passages: List[str], asked: str, answer_prefix: str
                  ) -> Tuple[str, bool]:
        """(answer, extracted): the decoder's answer with its codes snapped to the passages'
        (``grounding.snap_codes``) when at least half its terms come from them and not from
        the question; else the first passage's words after the answer prefix, or that
        passage itself (extracted=True)."""
        snapped = snap_codes(_clean(answer), passages)
        if support(snapped, passages, asked) >= 0.5:
            return snapped, False
        return continuation(answer_prefix, passages[0]) or passages[0], True

    def _ask_recall(self, answer_prefix: str, question: Optional[str], k: int,
                    max_new_tokens: int) -> Answer:
        clock = _Stages()
        with clock("encode_query"):
            query = self._query_text(answer_prefix, question)
            q = self._query(query)
        with clock("search"):
            ranked = self._ranked(answer_prefix, question, q=q)
            chosen, coverage = self._select(ranked, query, k)
        # the fused score of what is read: a four-key question's rows each cover a quarter
        # of its rare terms, together all of them
        confidence = 0.5 * (ranked[0].dense + coverage)
        with clock("readout"):
            passages = self._passages(chosen)
            texts = [self._stitch(p) for p in passages]
            readouts = self._readouts_of(passages)
            read = [t for p in passages for t in p]        # readouts[0]'s rows, in order
        with clock("decode"):
            if len(passages) == 1:
                raw = [self.decode_passages(answer_prefix, passages, max_new_tokens, question,
                                            readouts=readouts)]
            else:
                # the answer's token budget shared by its passages: each holds one part
                each = max(16, -(-max_new_tokens // len(passages)))
                raw = [_first_item(a) for a in self.decode_each_passage(
                    answer_prefix, passages, each, question, readouts=readouts)]
        with clock("check"):
            # each passage's answer checked against that passage; one per distinct value
            answers, extracted, told = [], False, set()
            for a, t in zip(raw, texts):
                a, ex = self._grounded(a, [t], query, answer_prefix)
                extracted |= ex
                value = a.strip(" \n:;,.")
                if value.lower() not in told:       # "86556." and "86556" are one value
                    told.add(value.lower())
                    answers.append(a)
            guess = answers[0] if len(answers) == 1 else ", ".join(
                a.strip(" \n:;,.") for a in answers)
            best_text = next(t for p, t in zip(passages, texts) if ranked[0].text in p)
            swap = swapped_term(answer_prefix, best_text, self.lexical.holds)
        found = confidence >= self.threshold and swap is None
        top = ranked[0].row
        return Answer(answer=guess if found else NOT_FOUND, answer_prefix=answer_prefix,
                      question=question, rows=[s.row for s in ranked[:k]],
                      scores=[s.score for s in ranked[:k]],
                      segments=self.segments_of(top),
                      readout=readouts[0][read.index(ranked[0].text)],
                      confidence=confidence, found=found, guess=guess, sources=chosen,
                      passages=texts, answers=answers, extracted=extracted, swapped=swap,
                      seconds=clock.seconds)

    def _stitch(self, passage: List[str]) -> str:
        """A passage's text, each window after the first without the tokens it repeats."""
        offsets = self.segmenter.counter.offsets(passage[1:])
        parts = [passage[0]]
        for t, offs in zip(passage[1:], offsets):
            skip = self.segments.place(t).overlap
            if skip < len(offs):
                at = offs[skip][0]
                parts.append((" " if at and t[at - 1].isspace() else "") + t[at:])
        return "".join(parts)

    def ask(self, answer_prefix: str, question: Optional[str] = None, *,
            k: Optional[int] = None, alpha: Optional[float] = None,
            max_new_tokens: int = 16) -> str:
        """Answer from memory: the decoder's greedy continuation of ``answer_prefix`` (e.g.
        "The pass key is") conditioned on what the question retrieves (``ask_trace`` gives
        the sources and confidence; below the threshold this is ``NOT_FOUND``).

        Recall mode retrieves by the question and the answer prefix together; paper mode
        keys on the answer prefix only. ``question`` is handed to the decoder's prompt when
        the model takes one and ``pass_question`` is on."""
        return self.ask_trace(answer_prefix, question, k=k, alpha=alpha,
                              max_new_tokens=max_new_tokens).answer

    # ------------------------------------------------------------------ stats, persistence

    @property
    def stats(self) -> Dict[str, Any]:
        """Running totals: segments, distinct segments, rows, rows shared by distinct
        segments (paper mode only), decoder tokens, host bytes, ingest seconds and tokens/s."""
        t = self.totals
        return {"segments": t.segments, "unique_segments": len(self.segments),
                "rows": len(self.store) if self.store is not None else 0,
                "rows_shared": self.segments.rows_shared(),
                "tokens": t.tokens,
                "host_bytes": self.store.nbytes if self.store is not None else 0,
                "reserved_host_bytes": (self.store.reserved_nbytes if self.store is not None
                                        else 0),
                "ingest_seconds": t.seconds, "ingest_tokens_per_s": t.tokens_per_s,
                "encoded_keys": t.encoded_keys, "encoded_values": t.encoded_values,
                "split_sentences": self.segmenter.split_sentences,
                "prefix_words": (self.prefix_words if self.prefix_keys and not self.recall
                                 else None),
                "max_tokens": self.max_tokens, "mode": self.mode, "values": self.values,
                "keys": self.keys}

    def __len__(self) -> int:
        return len(self.store) if self.store is not None else 0

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the ingested memory to the folder ``path``: ``memory.safetensors`` (the
        KeyValueMemory) and ``segments.safetensors`` (the segment texts of every row, their
        counts, where each first occurs and what precedes it, and this memory's
        configuration). Each file is written atomically."""
        if self.store is None:
            raise ValueError("path: nothing to save, call ingest() first")
        folder = Path(path)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"path: {str(path)!r} exists and is not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            arrays = self.segments.saved()
        config = {"mode": self.mode, "values": self.values, "prefix_words": self.prefix_words,
                  "prefix_keys": self.prefix_keys,
                  "max_tokens": self.max_tokens, "metric": self.metric,
                  "rows": len(self.store), "texts": len(arrays["text_rows"]),
                  "totals": self.totals.as_dict()}
        self.store.save(folder / "memory.safetensors")
        _persist.save(folder / "segments.safetensors", _KIND, config, arrays)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], model: Any, **options: Any
             ) -> "LongContextMemory":
        """A memory read from a folder written by ``save``, answered by ``model`` (the
        model that encoded it, or one with the same code size), as ``KeyValueMemory.load``
        and ``EpisodicMemory.load`` are classmethods. The saved configuration (mode,
        prefix words, prefix keys, max tokens, metric) is adopted; ``options`` are the
        constructor's other keywords (threshold, max_readouts, ...)."""
        return cls(model, **options)._restore(path)

    def _restore(self, path: Union[str, os.PathLike]) -> "LongContextMemory":
        folder = Path(path)
        if not folder.is_dir():
            raise ValueError(f"path: not a folder written by LongContextMemory.save: {str(path)!r}")
        config, arrays = _persist.load(folder / "segments.safetensors", _KIND)
        store = KeyValueMemory.load(folder / "memory.safetensors")
        try:
            n_rows, n_texts = int(config["rows"]), int(config["texts"])
            offsets, blob = arrays["text_offsets"], arrays["text_bytes"]
            rows, counts = arrays["text_rows"], arrays["text_counts"]
            ok = (len(store) == n_rows and offsets.shape == (n_texts + 1,)
                  and rows.shape == counts.shape == (n_texts,) and offsets[0] == 0
                  and offsets[-1] == blob.size and np.all(np.diff(offsets) >= 0)
                  and (n_texts == 0 or (rows.min() >= 0 and rows.max() < n_rows)))
            prefix_words = _positive_int(config["prefix_words"], "prefix_words")
            max_tokens = _positive_int(config["max_tokens"], "max_tokens")
            mode = config.get("mode", "paper")      # files from before the recall mode
            if mode not in MODES:
                raise ValueError(f"mode {mode!r}")
            values = config.get("values", "latent")  # files from before slot-id values
            if values not in VALUES[1:]:
                raise ValueError(f"values {values!r}")
            links = [arrays.get(k, np.zeros(n_texts, np.int64) - (k in ("text_prev", "text_next")))
                     for k in ("text_positions", "text_prev", "text_next", "text_overlap",
                               "text_continues")]
            ok = ok and all(x.shape == (n_texts,) for x in links) and all(
                np.all((x >= -1) & (x < n_texts)) for x in links[1:3])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"path: {str(path)!r} has an invalid segments file ({exc})") from exc
        if not ok:
            raise ValueError(f"path: {str(path)!r}: segments file and memory do not match")
        try:
            values = self._value_kind(values, mode)
        except ValueError as exc:
            raise ValueError(f"path: {str(path)!r} holds {values} values ({exc})") from exc
        width = self._value_width(values)
        if store.value_dim != (width or store.value_dim):
            raise ValueError(f"path: {str(path)!r} holds values of size {store.value_dim}, "
                             f"the model's {values} values have {width}")
        data = blob.tobytes()
        texts = [data[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_texts)]
        try:
            table = SegmentTable.from_saved(texts, rows, counts, *links)
        except ValueError as exc:   # rows out of order
            raise ValueError(f"path: {str(path)!r} has an invalid segments file ({exc})") from exc
        if table.rows != n_rows:
            raise ValueError(f"path: {str(path)!r}: segments file and memory do not match")
        self._reset()
        self.mode, self.values = mode, values
        self.keys = "int8" if store.key_codes == "int8-only" else "float"
        self.prefix_words, self.prefix_keys = prefix_words, bool(config["prefix_keys"])
        self.max_tokens, self.metric = max_tokens, store.metric
        self.segmenter = Segmenter(self.model.tokenizer, self.max_tokens, block=self.block)
        self.store = store
        self.segments = table
        if self.recall:
            for r, t in zip(rows.tolist(), texts):
                self.lexical.add(r, t)
        # the keys of the stored prefixes, bitwise as stored: a new segment with a known
        # prefix must land in the same row
        self.cache = EncodingCache(self.cache.keep_values)
        self._shared_cache = False
        self.cache.model_id = id(self.model)
        self.cache.value_kind = self.values
        if n_rows and not self.recall:
            keys = store.keys
            for r in range(table.rows):
                for t in table.row_texts(r):
                    self.cache.keys.setdefault(self.key_text(t), keys[r])
        totals = config.get("totals") or {}
        self.totals = IngestStats(**{k: v for k, v in totals.items()
                                     if k in IngestStats.__dataclass_fields__})
        self.last = None
        return self

    def __repr__(self) -> str:
        mode = "mode='recall'" if self.recall else (
            f"mode='paper', prefix_words={self.prefix_words}" if self.prefix_keys
            else "mode='paper', prefix_keys=False")
        return (f"LongContextMemory({mode}, max_tokens={self.max_tokens}, rows={len(self)}, "
                f"segments={self.totals.segments}, tokens={self.totals.tokens})")
