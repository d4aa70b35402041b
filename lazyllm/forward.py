"""The pruned forward of a Llama-like base model (LazyLLM, arXiv 2407.14057, Sec. 3 and Fig. 4).

`lazy_forward` replaces the base model's `forward` and routes each call on `calls.decide`: the unpatched forward (with
the reason in the stats), a pruned prefill, or a call that continues a pruned cache. A pruned call runs one
`pruned_pass.LazyPass` over the decoder layers on a changing set of tokens (`Tokens`), whose methods are the paper's steps:
- prefill starts with every prompt token; a decoding step with its new token;
- at each pruning layer the tokens are chosen anew (`LazyPass.cut`): `score` (the attention the last token paid each token in the
  layer before), `choose` (the top share of each row's prompt, plus the last token and every generated token), then
  `park_and_revive` (the others wait in that layer's Aux Cache; parked tokens chosen again come back and are computed
  from the layer where they stopped, never from the start);
- every layer appends the KV of the tokens it computed to the cache and attends only the chosen tokens, through a
  `mask` built from original positions (RoPE positions never change).

Sliding-window layers (Gemma 3's local layers, Mistral/Qwen2 with `sliding_window`) attend, of the chosen tokens,
those within the window of each query's position; their cache keeps every entry they computed (see
`cache.start_pruned`). Scores at a cut come from the layer before it whatever its type, over every entry that
layer holds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast

from lazyllm.cache import PrunedCache, start_pruned
from lazyllm.calls import COMPILED, LAST_TOKEN_ONLY, RIGHT_PADDED, Continue, Unpruned, decide
from lazyllm.compat import CACHE_KWARG, cache_argument, model_output
from lazyllm.config import LazyConfig
from lazyllm.families import BaseModel, FamilyAdapter
from lazyllm.pruned_pass import LazyPass, Tokens
from lazyllm.state import LazyState
from lazyllm.stats import LazyStats


class Host(Protocol):
    """What the patched model gives the forward: its family, schedule and windows, and where stats go."""

    adapter: FamilyAdapter
    config: LazyConfig
    schedule_source: str  # why the model has this schedule (`LazyStats.schedule_source`)
    windows: list[int | None]  # per decoder layer: its sliding window, None for full attention

    def record(self, stats: LazyStats, pruned: PrunedCache | None) -> None: ...

    def record_unpruned_step(self, rows: int, layers: int) -> None: ...

    def warn_once(self, reason: str) -> None: ...


def lazy_forward(
    host: Host,
    base: BaseModel,
    original_forward: Callable[..., Any],
    input_ids: torch.LongTensor | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.LongTensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    use_cache: bool | None = None,
    **kwargs: Any,
) -> BaseModelOutputWithPast:
    """Drop-in replacement of the base model's `forward` (e.g. `LlamaModel.forward`).

    The KV cache comes as `cache` (Transformers >= 5.24) or `past_key_values` (earlier releases).
    """
    cache = cache_argument(kwargs)
    last_token_only = bool(kwargs.pop(LAST_TOKEN_ONLY, False))
    embedded = inputs_embeds if inputs_embeds is not None else input_ids
    assert embedded is not None, "give input_ids or inputs_embeds"
    decision = decide(host.config, base, cache, attention_mask, embedded, last_token_only, kwargs)
    if isinstance(decision, Unpruned):
        note_unpruned(host, base, decision)
        return unpruned(
            original_forward, input_ids, attention_mask, position_ids, inputs_embeds, use_cache, cache, kwargs
        )
    hidden = embed(base, input_ids, inputs_embeds)
    if isinstance(decision, Continue):
        return decode_step(host, base, decision.pruned, hidden, attention_mask, position_ids)
    pruned, last_hidden = prefill(host, base, hidden, attention_mask, position_ids, decision.lengths, decision.cache)
    return model_output(
        last_hidden, pruned if (use_cache if use_cache is not None else base.config.use_cache) else None
    )


def unpruned(
    original_forward: Callable[..., Any],
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    use_cache: bool | None,
    cache: Cache | None,
    kwargs: dict[str, Any],
) -> BaseModelOutputWithPast:
    """The unpatched base model's forward on the call's arguments (the cache under the release's own name)."""
    call = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    output: BaseModelOutputWithPast = original_forward(
        **call, inputs_embeds=inputs_embeds, use_cache=use_cache, **{CACHE_KWARG: cache}, **kwargs
    )
    return output


def embed(base: BaseModel, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> torch.Tensor:
    """`(B, q, D)` the input tokens' embeddings."""
    if inputs_embeds is not None:
        return inputs_embeds
    embedded: torch.Tensor = base.embed_tokens(input_ids)
    return embedded


def note_unpruned(host: Host, base: BaseModel, decision: Unpruned) -> None:
    """An unpruned call: a prefill starts a fresh record, a decoding step is counted in the current one (a traced
    call's record says only why: its lengths are not read)."""
    reason, lengths = decision.reason, decision.lengths
    if reason == COMPILED:
        host.record(
            LazyStats(fallback_reason=COMPILED, schedule=host.config.describe(), schedule_source=host.schedule_source),
            None,
        )
        return
    if reason == RIGHT_PADDED:
        host.warn_once(reason)
    if decision.cache_length > 0:
        host.record_unpruned_step(len(lengths), len(base.layers))
        return
    stats = LazyStats(
        pruned=False,
        fallback_reason=reason,
        schedule=host.config.describe(),
        schedule_source=host.schedule_source,
        num_layers=len(base.layers),
        prompt_tokens=lengths,
        kept_per_layer=[sum(lengths)] * len(base.layers),
    )
    host.record(stats, None)


def prefill(
    host: Host,
    base: BaseModel,
    hidden: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    lengths: list[int],
    cache: DynamicCache | None,
) -> tuple[DynamicCache, torch.Tensor]:
    """Pruned prefill of `hidden (B, N, D)`: the first segment sees every token, each pruning layer keeps fewer."""
    config = host.config
    batch, length = hidden.shape[:2]
    real = attention_mask.bool() if attention_mask is not None else hidden.new_ones((batch, length), dtype=torch.bool)
    if position_ids is None:
        position_ids = torch.arange(length, device=hidden.device)[None, :]
    positions = position_ids.expand(batch, length).masked_fill(~real, -1)  # left padding: empty slots first
    num_layers = len(base.layers)
    keep_counts = torch.tensor([config.keep_counts(n) for n in lengths], dtype=torch.long, device=hidden.device)
    stats = LazyStats(
        pruned=True,
        schedule=config.describe(),
        schedule_source=host.schedule_source,
        num_layers=num_layers,
        prompt_tokens=lengths,
    )
    state = LazyState(config, keep_counts, positions.max(dim=1).values + 1, stats)
    state.padded = not bool(real.all())
    pruned = start_pruned(cache if cache is not None else DynamicCache(config=base.config), num_layers, state)
    host.record(stats, pruned)
    lazy = LazyPass(host.adapter, host.windows, base, pruned, prefill=True)
    return pruned.cache, lazy.run(Tokens(hidden, positions))  # (B, 1, D): the final-normed last token


def decode_step(
    host: Host,
    base: BaseModel,
    pruned: PrunedCache,
    hidden: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
) -> BaseModelOutputWithPast:
    """A call on a pruned cache: one decoding step (`hidden (B, 1, D)`, the new token, plus the tokens it revives),
    or several new tokens (a new turn, a shared prefix's question), which revive every parked token first and are
    themselves computed in every layer. Returns the new tokens' final-normed hidden states `(B, q, D)`."""
    state, (batch, count) = pruned.state, hidden.shape[:2]
    if position_ids is None:
        position_ids = torch.arange(count, device=hidden.device)[None, :] + pruned.cache.get_seq_length()
    positions = position_ids.expand(batch, count)
    if count > 1 and attention_mask is not None and attention_mask.dim() == 2:
        real = attention_mask[:, -count:].bool()
        positions = positions.masked_fill(~real, -1)  # a shorter row of the new segment is left-padded
        state.padded |= not bool(real.all())
    state.step += 1
    host.record(state.stats, pruned)  # this cache may be a copy of the one the prefill made
    if count == 1:
        state.stats.decode_steps += 1
    lazy = LazyPass(host.adapter, host.windows, base, pruned, prefill=False, extend=count > 1)
    return model_output(lazy.run(Tokens(hidden, positions)), pruned.cache)
