"""The in-context baseline: the decoder alone with the whole context in its prompt.

SmolLM2-135M-Instruct (``load_smollm2()``) by default, with its chat template: the context
and the question in the user turn, the assistant turn opened with the answer prefix (docs/DESIGN.md
section 7: it beat a plain prompt), greedy. A context longer than the window
(8192 positions for SmolLM2) is cut: its first tokens are kept, as many as fit with the
template, the question and the new tokens; the trial reports ``truncated: true`` and whether
the needle is still inside (``needle_in_window``) and is scored as it is.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional, Tuple

__all__ = ["InContextBaseline"]


class InContextBaseline:
    """A causal LM answering from the context in its prompt.

    Args:
        tokenizer, model: a Hugging Face tokenizer and causal LM; both None loads
            SmolLM2-135M-Instruct offline (``larimar_ext.model.offline.load_smollm2``).
        window: the most positions the model takes (default: the config's
            ``max_position_embeddings``).
        chat: use the tokenizer's chat template (default: when it has one).
    """

    def __init__(self, tokenizer: Any = None, model: Any = None, window: Optional[int] = None,
                 chat: Optional[bool] = None) -> None:
        if (tokenizer is None) != (model is None):
            raise ValueError("tokenizer: give both tokenizer and model, or neither (SmolLM2)")
        if tokenizer is None:
            from ..model.offline import load_smollm2
            tokenizer, model = load_smollm2()
        self.tokenizer, self.model = tokenizer, model
        model.eval()
        if window is None:
            window = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        if isinstance(window, bool) or not isinstance(window, int) or window < 16:
            raise ValueError(f"window: expected an integer >= 16, got {window!r}")
        self.window = window
        has_template = bool(getattr(tokenizer, "chat_template", None))
        self.chat = has_template if chat is None else bool(chat)
        if self.chat and not has_template:
            raise ValueError("chat: the tokenizer has no chat template")

    def _prompt(self, context: str, question: str, answer_prefix: str) -> str:
        # one newline: SmolLM2 answers " 86556." after "...\nWhat is the pass key?" but
        # " the pass key." after a blank line (3 of 3 keys at 1K, both ways)
        user = f"{context}\n{question}" if context else question
        if self.chat:
            head = self.tokenizer.apply_chat_template([{"role": "user", "content": user}],
                                                      tokenize=False, add_generation_prompt=True)
            return head + answer_prefix
        return f"{user}\n{answer_prefix}"

    def _ids(self, text: str) -> list:
        # the chat template already holds any special tokens the model expects
        return self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"]

    def ask(self, context: str, question: str, answer_prefix: str, max_new_tokens: int = 16,
            needle_span: Optional[Tuple[int, int]] = None) -> Dict[str, Any]:
        """Greedy answer: {"answer", "truncated", "needle_in_window" (whether the
        characters ``needle_span`` = (start, end) of the context survived the cut; None
        without it), "prompt_tokens", "context_chars_kept", "seconds"}."""
        import torch

        for name, v in (("context", context), ("question", question),
                        ("answer_prefix", answer_prefix)):
            if not isinstance(v, str):
                raise ValueError(f"{name}: expected a string, got {type(v).__name__}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
                or not 1 <= max_new_tokens < self.window:
            raise ValueError(f"max_new_tokens: expected an integer in [1, {self.window}), "
                             f"got {max_new_tokens!r}")
        t0 = time.perf_counter()
        budget = self.window - max_new_tokens
        kept, truncated = context, False
        ids = self._ids(self._prompt(kept, question, answer_prefix))
        if len(ids) > budget:
            truncated = True
            overhead = len(self._ids(self._prompt("", question, answer_prefix))) + 2
            enc = self.tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
            offsets = enc["offset_mapping"]
            n = max(0, budget - overhead)
            while True:
                kept = context[:offsets[n - 1][1]] if n > 0 else ""
                ids = self._ids(self._prompt(kept, question, answer_prefix))
                if len(ids) <= budget or n == 0:
                    break
                n = max(0, n - (len(ids) - budget))     # boundary effects: shave the excess
        if len(ids) > budget:
            raise ValueError(f"question: the prompt without context takes {len(ids)} tokens, "
                             f"over the window of {self.window}")
        input_ids = torch.tensor([ids], device=next(self.model.parameters()).device)
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(self.tokenizer, "eos_token_id", None)
        with torch.no_grad():
            out = self.model.generate(input_ids=input_ids,
                                      attention_mask=torch.ones_like(input_ids),
                                      max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=pad)
        answer = self.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip()
        inside = None if needle_span is None else bool(needle_span[1] <= len(kept))
        return {"answer": answer, "truncated": truncated, "needle_in_window": inside,
                "prompt_tokens": len(ids), "context_chars_kept": len(kept),
                "seconds": time.perf_counter() - t0}
