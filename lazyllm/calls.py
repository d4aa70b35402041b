"""Which calls of a patched model prune, which run the unpruned forward (and why), and which are refused.

Pruning serves a prefill whose caller needs the last position's logits only (what `generate()` asks for), and the
decoding steps that follow it on the same cache. The causal LM's forward says whether its caller needs only the
last logits by passing `LAST_TOKEN_ONLY` down to the base model's forward (no state shared between the two).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig

from lazyllm.cache import check_cache
from lazyllm.config import LazyConfig
from lazyllm.families import check_attention_backend

LAST_TOKEN_ONLY = "lazyllm_last_token_only"  # keyword the causal LM's forward passes to the base model's


class UnsupportedCallError(ValueError):
    """A call a patched model cannot serve correctly; raised before any work, the message says what to do."""


class UnsupportedGenerationError(ValueError):
    """A `generate()` option a patched model cannot serve; raised before any work."""


def prompt_lengths(attention_mask: torch.Tensor | None, embedded: torch.Tensor) -> list[int]:
    """Real (unpadded) tokens of each row of a call whose input is `embedded (B, q, ...)`."""
    if attention_mask is not None and attention_mask.dim() == 2:
        return [int(n) for n in attention_mask.sum(dim=1).tolist()]
    return [embedded.shape[1]] * embedded.shape[0]


def fallback_reason(
    config: LazyConfig,
    base: nn.Module,
    lengths: list[int],
    cache_length: int,
    last_token_only: bool,
    kwargs: dict[str, Any],
) -> str | None:
    """Why a call without a pruned cache should run the unpruned forward, or None when pruning can serve it."""
    if cache_length > 0:
        return "the cache holds tokens of an unpruned call"
    if not last_token_only:
        return "outputs of every position were requested (labels, logits_to_keep != 1, or a call of the base model)"
    if kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
        return "output_attentions / output_hidden_states were requested"
    if base.training:
        return "the model is in training mode"
    if not config.prune_layers:
        return "the schedule prunes no layer"
    if max(lengths) < config.min_prompt_tokens:
        return f"prompt of {max(lengths)} tokens is shorter than min_prompt_tokens={config.min_prompt_tokens}"
    return None


def check_decode_call(embedded: torch.Tensor, kwargs: dict[str, Any]) -> None:
    """Raise for decoding calls on a pruned cache that cannot be served exactly as asked."""
    if embedded.shape[1] != 1:
        raise UnsupportedCallError(
            f"a pruned cache can only be extended one token per call, got {embedded.shape[1]} tokens "
            "(chunked prefill, assisted decoding or reusing a cache for a new turn): start from a fresh cache."
        )
    if kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
        raise UnsupportedCallError(
            "output_attentions / output_hidden_states cannot be served on a pruned cache: "
            "ask for them from the prefill on (then pruning is skipped) or lazyllm.unpatch(model)."
        )


def check_prefill_mask(real: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
    """Raise for a prefill mask that pruning cannot serve: 4D, or padding in the last column."""
    if attention_mask is not None and attention_mask.dim() != 2:
        raise UnsupportedCallError("lazyllm needs a 2D attention_mask (batch, tokens), got a 4D mask.")
    if not bool(real[:, -1].all()):
        raise UnsupportedCallError(
            "the last column of attention_mask has padding: lazyllm needs left padding "
            "(tokenizer.padding_side = 'left'), so that every row's last token is the query."
        )


def check_generate_options(model: nn.Module, kwargs: dict[str, Any]) -> None:
    """Raise `UnsupportedGenerationError` for generation modes that would misuse a pruned cache."""
    config: GenerationConfig = kwargs.get("generation_config") or model.generation_config

    def option(name: str) -> Any:
        return kwargs.get(name, getattr(config, name, None))

    problems = []
    if (option("num_beams") or 1) > 1:
        problems.append("beam search (num_beams > 1) reorders the cache; use greedy or sampling")
    if option("assistant_model") is not None or option("prompt_lookup_num_tokens") is not None:
        problems.append("assisted / prompt-lookup decoding verifies several tokens per step")
    if option("prefill_chunk_size") is not None:
        problems.append("prefill_chunk_size splits the prompt, but pruning needs the whole prompt at once")
    if option("cache_implementation") not in (None, "dynamic"):
        problems.append(f"cache_implementation={option('cache_implementation')!r}: only the default dynamic cache")
    if problems:
        raise UnsupportedGenerationError(
            "lazyllm cannot serve this generate() call: "
            + "; ".join(problems)
            + ". Or run it with lazyllm.unpatch(model)."
        )
    check_cache(kwargs.get("cache", kwargs.get("past_key_values")), model.config)
    check_attention_backend(model)
