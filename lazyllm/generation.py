"""Prompts in, greedy answers out: the one encoding and the one greedy `generate()` that lazyllm's tools share.

ids = encode(tokenizer, "a long prompt ...")                     # (1, N) token ids
ids = encode(tokenizer, [{"role": "user", "content": "..."}])    # chat messages: the tokenizer's template
output = greedy(model, ids, max_new_tokens=32)                   # (1, N + new) ids, greedy, pad token set
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lazyllm.config import ConfigError

# A prompt as the tools take it: text, chat messages ({"role", "content"} dicts) or token ids.
Prompt = str | Sequence[dict[str, str]] | Sequence[int] | torch.Tensor


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def chat_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    """`text` as one user turn in the tokenizer's chat template, ready for the assistant's answer (the generation
    prompt added); the text itself when the tokenizer has no template."""
    if not has_chat_template(tokenizer):
        return text
    return _template(tokenizer, [{"role": "user", "content": text}])


def _template(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]]) -> str:
    return str(tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False))


def encode(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, chat: bool = False) -> torch.Tensor:
    """`(1, N)` token ids of a prompt given as text, chat messages or ids.

    Text is tokenized as it is (with the tokenizer's special tokens), or with `chat=True` first wrapped by
    `chat_prompt`; chat messages always go through the template. A templated prompt gets no special tokens from
    the tokenizer: the template writes its own (bos included).
    """
    if isinstance(prompt, torch.Tensor):
        return prompt.reshape(1, -1).long()
    if isinstance(prompt, str):
        if chat and has_chat_template(tokenizer):
            return _tokenize(tokenizer, chat_prompt(tokenizer, prompt), special_tokens=False)
        return _tokenize(tokenizer, prompt, special_tokens=True)
    if prompt and all(isinstance(message, dict) for message in prompt):
        return _tokenize(tokenizer, _template(tokenizer, prompt), special_tokens=False)  # type: ignore[arg-type]
    if prompt and all(isinstance(token, int) for token in prompt):
        return torch.tensor([list(prompt)], dtype=torch.long)
    raise ConfigError(f"a prompt must be a string, a list of chat messages or a list of token ids, got {prompt!r:.80}.")


def _tokenize(tokenizer: PreTrainedTokenizerBase, text: str, special_tokens: bool) -> torch.Tensor:
    ids: torch.Tensor = tokenizer(text, return_tensors="pt", add_special_tokens=special_tokens).input_ids
    return ids


def model_inputs(ids: torch.Tensor, device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
    """`input_ids` and an all-ones `attention_mask` of one unpadded prompt, on `device` (default: where `ids` is)."""
    ids = ids.to(device) if device is not None else ids
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def pad_token_id(model: PreTrainedModel) -> int | None:
    """The model's pad token, or its (first) end-of-sequence token where it has none."""
    generation_config = model.generation_config
    pad: int | list[int] | None = generation_config.pad_token_id
    if pad is None:
        pad = generation_config.eos_token_id
    return pad[0] if isinstance(pad, list) else pad


def greedy(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 32,
    **generate_kwargs: Any,
) -> Any:
    """`model.generate()` greedy (no sampling) under inference mode, with a pad token (the model's, else its
    end-of-sequence token) and, when none is given, an all-ones attention mask. Returns what `generate()` returns:
    `(B, N + new)` ids, or its output object when `return_dict_in_generate=True`."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    generate_kwargs.setdefault("pad_token_id", pad_token_id(model))
    with torch.inference_mode():
        return model.generate(  # type: ignore[operator]
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            **generate_kwargs,
        )
