"""Which calls of a patched model prune, which run the unpruned forward (and why), and which are refused.

Pruning serves a prefill whose caller needs the last position's logits only (what `generate()` asks for), and the
calls that follow it on the same cache. The causal LM's forward says whether its caller needs only the last logits
by passing `LAST_TOKEN_ONLY` down to the base model's forward (no state shared between the two). `decide` makes the
decision for one call of the base model's forward, in one place; `generate_problems` and `check_generate_options`
judge a `generate()` call's options before it starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn
from transformers import DynamicCache, GenerationConfig
from transformers.cache_utils import Cache

from lazyllm.cache import PrunedCache, check_cache, pruned
from lazyllm.config import LazyConfig
from lazyllm.errors import UnsupportedCacheError, UnsupportedModelError
from lazyllm.errors import UnsupportedCallError as UnsupportedCallError
from lazyllm.errors import UnsupportedGenerationError as UnsupportedGenerationError
from lazyllm.families import BaseModel, check_attention_backend, model_config

LAST_TOKEN_ONLY = "lazyllm_last_token_only"  # keyword the causal LM's forward passes to the base model's
# Transformers answers a right-padded row from its last slot, a pad (and warns that decoder-only models want left
# padding): pruning, which scores tokens with the row's query, cannot give that answer, so such calls run unpruned.
# Under torch.compile the pruned forward's shapes depend on the data (graph breaks, recompilations): a traced call runs
# the unpatched forward, whose graph is Transformers' own.
COMPILED = "torch.compile traces this call (pruning runs eagerly only)"
RIGHT_PADDED = "right-padded rows (pad on the left to prune: tokenizer.padding_side = 'left')"


@dataclass(frozen=True)
class Prefill:
    """Prune the call: a prefill on `cache` (empty; None: a new one) of rows with `lengths` real tokens."""

    cache: DynamicCache | None
    lengths: list[int]


@dataclass(frozen=True)
class Continue:
    """Continue a pruned cache (decoding steps, a new turn) with its own state, and so its prefill's config."""

    pruned: PrunedCache


@dataclass(frozen=True)
class Unpruned:
    """Run the unpatched forward, for `reason` (`lengths`, `cache_length`: the call's rows, its cache's tokens;
    not read for a traced call, `COMPILED`)."""

    reason: str
    lengths: list[int] = field(default_factory=list)
    cache_length: int = 0


Decision = Prefill | Continue | Unpruned


def decide(
    config: LazyConfig,
    base: BaseModel,
    cache: Cache | None,
    attention_mask: torch.Tensor | None,
    embedded: torch.Tensor,
    last_token_only: bool,
    kwargs: dict[str, Any],
) -> Decision:
    """What the patched forward does with one call of the base model (`config`: the model's; `embedded (B, q, ...)`:
    its input ids or embeddings), decided before any work, in this order:

    1. traced by torch.compile (not on a pruned cache): `Unpruned(COMPILED)`, before any data-dependent branch;
    2. what pruning cannot serve (`unservable_reason`): under `config.strict`, or on a pruned cache, it raises;
    3. a call on a pruned cache: `Continue` (`check_decode_call` raises for options it cannot serve);
    4. otherwise `Unpruned` with the first reason of 2 or `fallback_reason`, or a pruned `Prefill`.
    """
    held = pruned(cache)  # None for any cache but a pruned one
    if held is None and torch.compiler.is_compiling():
        return Unpruned(COMPILED)
    reason = unservable_reason(base, cache, attention_mask, strict=config.strict or held is not None)
    if held is not None:
        check_decode_call(kwargs)
        return Continue(held)
    lengths = prompt_lengths(attention_mask, embedded)
    cache_length = cache.get_seq_length() if cache is not None else 0
    reason = reason or fallback_reason(config, base, lengths, cache_length, last_token_only, kwargs)
    if reason is not None:
        return Unpruned(reason, lengths, cache_length)
    assert cache is None or isinstance(cache, DynamicCache)  # servable: check_cache let only a DynamicCache through
    return Prefill(cache, lengths)


def prompt_lengths(attention_mask: torch.Tensor | None, embedded: torch.Tensor) -> list[int]:
    """Real (unpadded) tokens of each row of a call whose input is `embedded (B, q, ...)`."""
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
        return [int(n) for n in attention_mask.sum(dim=1).tolist()]
    return [embedded.shape[1]] * embedded.shape[0]


def fallback_reason(
    config: LazyConfig,
    base: BaseModel,
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


def check_decode_call(kwargs: dict[str, Any]) -> None:
    """Raise for calls on a pruned cache that cannot be served exactly as asked."""
    if kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
        raise UnsupportedCallError(
            "output_attentions / output_hidden_states cannot be served on a pruned cache: "
            "ask for them from the prefill on (then pruning is skipped) or lazyllm.unpatch(model)."
        )


def generate_problems(model: nn.Module, kwargs: dict[str, Any]) -> list[str]:
    """The options of a `generate()` call that pruning cannot serve (the call then runs unpruned)."""
    config: GenerationConfig = kwargs.get("generation_config") or cast(GenerationConfig, model.generation_config)

    def option(name: str) -> object:
        return kwargs.get(name, getattr(config, name, None))

    problems = []
    if option("assistant_model") is not None or option("prompt_lookup_num_tokens") is not None:
        problems.append("assisted / prompt-lookup decoding (it verifies and crops several tokens per step)")
    if option("prefill_chunk_size") is not None:
        problems.append("prefill_chunk_size (pruning needs the whole prompt at once)")
    if option("cache_implementation") not in (None, "dynamic"):
        problems.append(f"cache_implementation={option('cache_implementation')!r} (only the dynamic cache prunes)")
    return problems


def check_generate_options(model: nn.Module, kwargs: dict[str, Any], problems: list[str]) -> None:
    """`strict=True`: raise `UnsupportedGenerationError` (or the cache's or backend's error) before any work for a
    `generate()` call that pruning cannot serve; `problems` are the call's `generate_problems`."""
    if problems:
        raise UnsupportedGenerationError(
            "lazyllm cannot prune this generate() call: " + "; ".join(problems) + ". Run it with "
            "lazyllm.unpatch(model), or without strict=True to run it unpruned."
        )
    check_cache(kwargs.get("cache", kwargs.get("past_key_values")), model_config(model))
    check_attention_backend(model_config(model))


_UNPRUNED: ContextVar[str | None] = ContextVar("lazyllm_unpruned", default=None)  # per thread


@contextmanager
def running_unpruned(reason: str) -> Iterator[None]:
    """Inside the block, this thread's calls of the patched model run unpruned, for `reason`."""
    token = _UNPRUNED.set(reason)
    try:
        yield
    finally:
        _UNPRUNED.reset(token)


def unservable_reason(
    base: BaseModel, cache: Cache | None, attention_mask: torch.Tensor | None, *, strict: bool = False
) -> str | None:
    """Why pruning cannot serve a call that the unpruned forward serves (a `generate()` option, a cache other than
    the dynamic one, an attention backend, a 4D mask, right padding), or None.

    `strict` (`strict=True`, or a call on a pruned cache): raise instead for what the call itself brings (the
    backend's or the cache's error, or `UnsupportedCallError` for a prepared mask); the reason of an enclosing
    `running_unpruned` (a `generate()` option, which `strict=True` refused before the call) is still returned.
    """
    try:
        check_attention_backend(base.config)
        check_cache(cache, base.config)
    except (UnsupportedModelError, UnsupportedCacheError) as error:
        if strict:
            raise
        return str(error)
    if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2):
        if strict:
            raise UnsupportedCallError("lazyllm needs a 2D attention_mask (batch, tokens), got a prepared (4D) mask.")
        return "a prepared (4D or per-layer) attention mask (lazyllm builds its masks from a 2D one)"
    if attention_mask is not None and not bool(attention_mask[:, -1].all()):
        if strict:
            raise UnsupportedCallError(f"lazyllm cannot prune {RIGHT_PADDED}, or run it without strict=True.")
        return RIGHT_PADDED
    return _UNPRUNED.get()
