"""Tiny randomly initialised Hugging Face models and word-level tokenizers for the model
tests (nothing downloaded): a 2-layer BertModel encoder (hidden 32) and a 2-layer
LlamaForCausalLM decoder (hidden 64, 4 query / 2 key-value heads: grouped-query attention,
rotary embeddings). Import after ``pytest.importorskip("transformers")``."""
from __future__ import annotations

import tokenizers
import torch
import transformers

from larimar_ext.model import LarimarModel

PAD, UNK, BOS, EOS = 0, 1, 2, 3


def word_tokenizer(words, pre_tokenizer) -> transformers.PreTrainedTokenizerFast:
    """A fast word-level tokenizer: [PAD] [UNK] [BOS] [EOS], then ``words`` (sorted)."""
    vocab = {"[PAD]": PAD, "[UNK]": UNK, "[BOS]": BOS, "[EOS]": EOS,
             **{w: i + 4 for i, w in enumerate(sorted(words))}}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizer
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]",
        eos_token="[EOS]")


def tiny_larimar(tok, memory_size: int = 16, code_size: int = 32, seed: int = 0,
                 max_positions: int = 64, **kw) -> LarimarModel:
    """A LarimarModel around a tiny encoder and decoder sized to ``tok``'s vocabulary."""
    torch.manual_seed(seed)
    V = len(tok)
    enc = transformers.BertModel(transformers.BertConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64), add_pooling_layer=False)
    dec = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=max_positions,
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS))
    return LarimarModel(enc, dec, memory_size, code_size, tokenizer=tok, **kw)
