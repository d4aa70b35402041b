"""The pruned forward of a Llama-like base model: one function for prefill and for decoding steps.

A call runs the decoder layers on a changing set of tokens (`Tokens`):
- prefill starts with every prompt token; decoding starts with the one new token;
- at each pruning layer the set is chosen anew: the last token's attention in the previous layer scores every
  token that layer attended, the top `keep_counts` prompt tokens of each row go on (with the last token and all
  generated tokens), the others are parked in that layer's Aux Cache. In decoding, parked tokens that are chosen
  again come back from the Aux Cache and are computed from the layer where they stopped (never from the start);
- every layer appends the KV of the tokens it computed to Transformers' `DynamicCache` and attends only the
  chosen tokens, through a mask built from original positions (RoPE positions never change).

Sliding-window layers (Gemma 3's local layers, Mistral/Qwen2 with `sliding_window`) attend, of the chosen tokens,
those within the window of each query's position; their cache keeps every entry they computed (see
`cache.with_growing_layers`). Scores at a cut come from the layer before it whatever its type, over every entry that
layer holds: a sliding layer's queries and keys score tokens outside its window too (else every cut after a sliding
layer would keep just the last window).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast

from lazyllm.cache import LazyState, check_cache, with_growing_layers
from lazyllm.compat import CACHE_KWARG, cache_argument, model_output
from lazyllm.families import FamilyAdapter, check_attention_backend
from lazyllm.scoring import attention_scores, pool_neighbours, random_scores
from lazyllm.selection import gather_rows, lookup, pack, to_table, top_k_per_row
from lazyllm.spans import span
from lazyllm.stats import LazyStats

if TYPE_CHECKING:
    from lazyllm.patching import LazyRuntime


class UnsupportedCallError(ValueError):
    """A call a patched model cannot serve correctly; raised before any work, the message says what to do."""


@dataclass
class Tokens:
    """The tokens a layer computes: hidden states and original positions, -1 marking empty slots."""

    hidden: torch.Tensor  # (B, q, D)
    positions: torch.Tensor  # (B, q), sorted per row, empty slots first, newest token last


class PositionEmbeddings:
    """RoPE `(cos, sin)`, each `(B, q, head_dim)`, of one token set, computed once per RoPE kind (Gemma 3 has two)."""

    def __init__(self, adapter: FamilyAdapter, base: nn.Module, tokens: Tokens) -> None:
        self.adapter, self.base, self.tokens = adapter, base, tokens
        self.computed: dict[str | None, tuple[torch.Tensor, torch.Tensor]] = {}

    def of(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The `(cos, sin)` that decoder layer `layer` applies."""
        kind = self.adapter.rope_kind(self.base.config, layer)
        if kind not in self.computed:
            positions = self.tokens.positions.clamp(min=0)
            self.computed[kind] = self.adapter.rotary(self.base, self.tokens.hidden, positions, kind)
        return self.computed[kind]


def lazy_forward(
    runtime: LazyRuntime,
    base: nn.Module,
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
    check_attention_backend(base)
    check_cache(cache, base.config)
    state = runtime.states.get(cache) if cache is not None else None
    call = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache=cache,
        inputs_embeds=inputs_embeds,
        use_cache=use_cache,
    )
    if state is not None and cache.get_seq_length() > 0:
        check_decode_call(call, kwargs)
        return decode_step(runtime, base, state, **call)
    reason = fallback_reason(runtime, base, call, kwargs)
    if reason is not None:
        runtime.note_unpruned(reason, base, call)
        original = {key: value for key, value in call.items() if key != "cache"}
        return original_forward(**original, **{CACHE_KWARG: cache}, **kwargs)
    return prefill(runtime, base, **call)


def fallback_reason(runtime: LazyRuntime, base: nn.Module, call: dict[str, Any], kwargs: dict[str, Any]) -> str | None:
    """Why this call should run the unpruned forward, or None when pruning can serve it."""
    cache = call["cache"]
    if cache is not None and cache.get_seq_length() > 0:
        return "the cache holds tokens of an unpruned call"
    if not runtime.last_token_only:
        return "outputs of every position were requested (labels, logits_to_keep != 1, or a call of the base model)"
    if kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
        return "output_attentions / output_hidden_states were requested"
    if base.training:
        return "the model is in training mode"
    if not runtime.config.prune_layers:
        return "the schedule prunes no layer"
    lengths = prompt_lengths(call)
    if max(lengths) < runtime.config.min_prompt_tokens:
        return f"prompt of {max(lengths)} tokens is shorter than min_prompt_tokens={runtime.config.min_prompt_tokens}"
    return None


def prompt_lengths(call: dict[str, Any]) -> list[int]:
    """Real (unpadded) tokens of each row of a prefill call."""
    mask = call["attention_mask"]
    if mask is not None and mask.dim() == 2:
        return mask.sum(dim=1).tolist()
    embedded = call["input_ids"] if call["input_ids"] is not None else call["inputs_embeds"]
    return [embedded.shape[1]] * embedded.shape[0]


def check_decode_call(call: dict[str, Any], kwargs: dict[str, Any]) -> None:
    """Raise for decoding calls on a pruned cache that cannot be served exactly as asked."""
    embedded = call["input_ids"] if call["input_ids"] is not None else call["inputs_embeds"]
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


def prefill(
    runtime: LazyRuntime,
    base: nn.Module,
    input_ids: torch.LongTensor | None,
    attention_mask: torch.Tensor | None,
    position_ids: torch.LongTensor | None,
    cache: DynamicCache | None,
    inputs_embeds: torch.Tensor | None,
    use_cache: bool | None,
) -> BaseModelOutputWithPast:
    """Pruned prefill: the first segment sees every token, each pruning layer keeps fewer."""
    config = runtime.config
    hidden = inputs_embeds if inputs_embeds is not None else base.embed_tokens(input_ids)
    batch, length = hidden.shape[:2]
    if attention_mask is not None and attention_mask.dim() != 2:
        raise UnsupportedCallError("lazyllm needs a 2D attention_mask (batch, tokens), got a 4D mask.")
    real = attention_mask.bool() if attention_mask is not None else hidden.new_ones((batch, length), dtype=torch.bool)
    if not bool(real[:, -1].all()):
        raise UnsupportedCallError(
            "the last column of attention_mask has padding: lazyllm needs left padding "
            "(tokenizer.padding_side = 'left'), so that every row's last token is the query."
        )
    if position_ids is None:
        position_ids = torch.arange(length, device=hidden.device)[None, :]
    positions = position_ids.expand(batch, length).masked_fill(~real, -1)

    lengths = real.sum(dim=1).tolist()
    keep_counts = torch.tensor([config.keep_counts(n) for n in lengths], dtype=torch.long, device=hidden.device)
    cache = with_growing_layers(cache if cache is not None else DynamicCache(config=base.config))
    generator = None
    if config.selection == "random":
        generator = torch.Generator(device=hidden.device).manual_seed(config.seed)
    stats = LazyStats(pruned=True, schedule=config.describe(), num_layers=len(base.layers), prompt_tokens=lengths)
    first_generated = positions.max(dim=1).values + 1
    state = LazyState(len(base.layers), keep_counts, first_generated, not bool(real.all()), stats, generator)
    runtime.begin(cache, state)

    last_hidden = run_layers(runtime, base, state, cache, Tokens(hidden, positions), prefill=True)
    use_cache = use_cache if use_cache is not None else base.config.use_cache
    return model_output(last_hidden, cache if use_cache else None)


def decode_step(
    runtime: LazyRuntime,
    base: nn.Module,
    state: LazyState,
    input_ids: torch.LongTensor | None,
    attention_mask: torch.Tensor | None,
    position_ids: torch.LongTensor | None,
    cache: DynamicCache,
    inputs_embeds: torch.Tensor | None,
    use_cache: bool | None,
) -> BaseModelOutputWithPast:
    """One decoding step on a pruned cache: the new token, plus the tokens its attention revives."""
    hidden = inputs_embeds if inputs_embeds is not None else base.embed_tokens(input_ids)
    batch = hidden.shape[0]
    if position_ids is None:
        position_ids = torch.arange(1, device=hidden.device)[None, :] + cache.get_seq_length()
    state.stats.decode_steps += 1
    tokens = Tokens(hidden, position_ids.expand(batch, 1))
    last_hidden = run_layers(runtime, base, state, cache, tokens, prefill=False)
    return model_output(last_hidden, cache)


def run_layers(
    runtime: LazyRuntime, base: nn.Module, state: LazyState, cache: DynamicCache, tokens: Tokens, prefill: bool
) -> torch.Tensor:
    """Run every decoder layer on `tokens`, re-choosing them at pruning layers; returns the final-normed last token.

    Nothing in the loop waits for the device, except `pack` once per pruning layer (how many tokens go on).
    """
    config = runtime.config
    layers = base.layers[: base.config.num_hidden_layers]
    step = state.stats.decode_steps  # 0 in prefill
    # After `revive_all_at` every layer holds every token: nothing is left to choose.
    revived_all = not prefill and config.revive_all_at is not None and step > config.revive_all_at
    segment_starts = set(config.prune_layers)
    with span("bookkeeping"):
        # Positions index the per-row tables below: the widest is 1 + the largest position (one host sync per call).
        state.width = max(state.width, int(tokens.positions.max()) + 1)
        reselects = prefill or (config.revive and (step - 1) % config.reselect_every == 0)
    chosen: torch.Tensor | None = None  # (B, width): tokens the current layer may attend; None = all
    revived: list[torch.Tensor] = []
    computed: list[torch.Tensor] = []  # tokens computed per layer
    # The layers of a segment (up to the next cut) compute the same tokens and hold the same entries: they share
    # the RoPE of the tokens, one mask per attention window, and the count of tokens computed.
    embeddings = PositionEmbeddings(runtime.adapter, base, tokens)
    masks: dict[int | None, torch.Tensor | None] = {}  # window -> mask
    count = (tokens.positions >= 0).sum()  # ()
    runtime.capturing = True
    try:
        for index, layer in enumerate(layers):
            if index in segment_starts:
                if not revived_all:
                    tokens, chosen, revived_here = cut_at(
                        runtime, state, cache, layers, index, tokens, chosen, embeddings, reselects, prefill
                    )
                    revived.append(revived_here)
                    embeddings = PositionEmbeddings(runtime.adapter, base, tokens)
                    count = (tokens.positions >= 0).sum()
                masks = {}  # even without a cut: each segment holds its entries in an order of its own
            window = runtime.windows[index]
            if window not in masks:
                with span("mask"):
                    before = state.entries(index)
                    dtype = tokens.hidden.dtype
                    masks[window] = attention_mask_for(base, state, before, tokens.positions, chosen, dtype, window)
            with span("layers" if tokens.positions.shape[1] == 1 else "layers_revived"):
                hidden = layer(
                    tokens.hidden,
                    attention_mask=masks[window],
                    position_ids=tokens.positions.clamp(min=0),
                    use_cache=True,
                    **{CACHE_KWARG: cache},
                    position_embeddings=embeddings.of(index),
                )
            with span("bookkeeping"):
                state.record(index, tokens.positions)
                computed.append(count)
            tokens = Tokens(hidden, tokens.positions)
    finally:
        runtime.capturing = False
        runtime.captured.clear()
    with span("bookkeeping"):
        record_stats(state, computed, revived, prefill)
    return base.norm(tokens.hidden[:, -1:])


def cut_at(
    runtime: LazyRuntime,
    state: LazyState,
    cache: DynamicCache,
    layers: nn.ModuleList,
    index: int,
    tokens: Tokens,
    chosen: torch.Tensor | None,
    embeddings: PositionEmbeddings,
    reselects: bool,
    prefill: bool,
) -> tuple[Tokens, torch.Tensor | None, torch.Tensor]:
    """At pruning layer `index`: the tokens that go on, the `(B, width)` table the following layers attend (None:
    all they hold), and how many parked tokens were revived.

    A step that does not re-select (static pruning, or between re-selections: `reselect_every`) attends what the last
    re-selection chose, plus every generated token, and revives nothing. The step `revive_all_at` revives every
    parked token and attends everything.
    """
    config = runtime.config
    cut = config.prune_layers.index(index)
    if not prefill and state.stats.decode_steps == config.revive_all_at:
        everything = torch.ones_like(tokens.positions[:, :1], dtype=torch.bool).expand(-1, state.width)  # (B, width)
        with span("revival"):
            tokens, revived = move_tokens(state, cut, tokens, everything, everything, keep_aux=False)
        return tokens, None, revived
    attend_all = not prefill and (config.decode_attend == "held" or not config.revive)
    if not reselects:
        previous = state.chosen[cut]
        attend = None if attend_all else F.pad(previous, (0, state.width - previous.shape[1]), value=True)
        return tokens, attend, torch.zeros((), dtype=torch.long, device=tokens.hidden.device)
    with span("scoring"):
        chosen, revive = select(runtime, state, cache, layers, index, cut, tokens, chosen, embeddings, prefill)
    with span("revival"):
        tokens, revived = move_tokens(state, cut, tokens, chosen, revive, config.revive)
    state.chosen[cut] = chosen
    return tokens, None if attend_all else chosen, revived


def select(
    runtime: LazyRuntime,
    state: LazyState,
    cache: DynamicCache,
    layers: nn.ModuleList,
    index: int,
    cut: int,
    tokens: Tokens,
    chosen: torch.Tensor | None,
    embeddings: PositionEmbeddings,
    prefill: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose at pruning layer `index` (the `cut`-th): `(B, width)` the tokens to attend and the parked tokens that
    come back (the paper: every chosen one; "beat_weakest": those scoring above every token the layer would
    attend without them)."""
    config = runtime.config
    device = tokens.hidden.device
    width = state.width
    entries = state.entries(index - 1).to(device)  # (B, T): the tokens the layer before holds
    attended = entries >= 0 if chosen is None else lookup(chosen, entries)
    sources = config.scoring_layers(index)
    table = sum(
        score_table(runtime, state, cache, layers, source, tokens, chosen, width, embeddings, prefill)
        for source in sources
    ) / len(sources)
    table = pool_neighbours(table, config.score_pool)  # (B, width) score per position
    is_prompt = state.is_prompt(entries)
    candidates = to_table(attended & is_prompt, entries, width, False)
    if prefill:  # the last token is the query of the next token: it is never dropped
        table.scatter_(1, tokens.positions[:, -1:], float("inf"))
    chosen = top_k_per_row(table, candidates, state.keep_counts[:, cut].to(device))
    chosen |= to_table(attended & ~is_prompt, entries, width, False)  # generated tokens are never pruned
    revive = chosen
    if config.revival == "beat_weakest" and not prefill:
        own = state.entries(index).to(device)  # (B, T'): the tokens this layer holds
        held = to_table(own >= 0, own, width, False)
        weakest = table.masked_fill(~(chosen & held & candidates), float("inf")).amin(dim=1, keepdim=True)  # (B, 1)
        revive = chosen & ((table > weakest) | held)
    return chosen, revive


def move_tokens(
    state: LazyState, cut: int, tokens: Tokens, chosen: torch.Tensor, revive: torch.Tensor, keep_aux: bool
) -> tuple[Tokens, torch.Tensor]:
    """Tokens that go on past cut `cut`: those of `tokens` that are `chosen`, and the parked ones to `revive`;
    the others of `tokens` are parked in the cut's Aux Cache (when `keep_aux`). Returns them (sorted by position,
    empty slots first) and how many were revived."""
    aux = state.aux[cut]
    device = tokens.hidden.device
    goes_on = lookup(chosen, tokens.positions)
    index_on, positions_on = pack(tokens.positions, goes_on)
    going_on = Tokens(gather_rows(tokens.hidden, index_on), positions_on)
    revived = torch.zeros((), dtype=torch.long, device=device)
    if aux.positions is not None:
        back = lookup(revive, aux.positions.to(device))  # (B, M)
        revived = back.sum()
        hidden_back, positions_back = aux.take(back)
        if positions_back.shape[1]:
            positions = torch.cat([positions_on, positions_back.to(device)], dim=1)
            order, positions = pack(positions, positions >= 0)
            going_on = Tokens(
                gather_rows(torch.cat([going_on.hidden, hidden_back.to(device)], dim=1), order), positions
            )
    if keep_aux:
        index_off, positions_off = pack(tokens.positions, ~goes_on)
        if positions_off.shape[1]:
            aux.append(positions_off, gather_rows(tokens.hidden, index_off))
    return going_on, revived


def score_table(
    runtime: LazyRuntime,
    state: LazyState,
    cache: DynamicCache,
    layers: nn.ModuleList,
    source: int,
    tokens: Tokens,
    chosen: torch.Tensor | None,
    width: int,
    embeddings: PositionEmbeddings,
    prefill: bool,
) -> torch.Tensor:
    """`(B, width)` scores by position, from the attention in layer `source` (0 where it holds no entry)."""
    entries = state.entries(source).to(tokens.hidden.device)  # (B, T)
    attended = entries >= 0 if chosen is None else lookup(chosen, entries)
    scores = token_scores(runtime, state, cache, layers, source, tokens, entries, attended, embeddings, prefill)
    return to_table(scores, entries, width, 0.0)


def token_scores(
    runtime: LazyRuntime,
    state: LazyState,
    cache: DynamicCache,
    layers: nn.ModuleList,
    previous: int,
    tokens: Tokens,
    entries: torch.Tensor,
    attended: torch.Tensor,
    embeddings: PositionEmbeddings,
    prefill: bool,
) -> torch.Tensor:
    """`(B, T)` scores of the entries that layer `previous` holds, from the queries it computed last.

    Prefill scores with the last `score_window` tokens (the prompt's end, where the question usually is);
    a decoding step with its new token (the token whose next token is being computed).
    """
    config = runtime.config
    if config.selection == "random":
        return random_scores(attended, state.generator)
    device = entries.device
    window = config.score_window if prefill else 1
    cos, sin = (part[:, -window:] for part in embeddings.of(previous))  # (B, w, d)
    captured = runtime.captured[previous][:, -window:].to(device)
    queries = runtime.adapter.queries(captured, layers[previous], cos, sin)  # (B, H, w, d)
    query_positions = tokens.positions[:, -window:]
    keys = cache.layers[previous].keys.to(device)
    scaling = layers[previous].self_attn.scaling
    return attention_scores(queries, query_positions, keys, entries, attended, scaling)


def attention_mask_for(
    base: nn.Module,
    state: LazyState,
    before: torch.Tensor,
    query_positions: torch.Tensor,
    chosen: torch.Tensor | None,
    dtype: torch.dtype,
    window: int | None = None,
) -> torch.Tensor | None:
    """The mask of one layer: every query attends the chosen keys at or before its own position (and after
    `position - window` in a sliding-window layer).

    Args:
        before: `(B, T0)` positions of the entries the layer held before this call.
        query_positions: `(B, q)` positions of the tokens it computes now (their keys are appended after `before`).
        chosen: `(B, width)` tokens the layer may attend, None for all.
        window: the layer's sliding window, None for full attention.

    Returns:
        `(B, 1, q, T0 + q)`: bool for SDPA, additive float for eager; None where SDPA's own handling is exact
        (a causal prefill over sorted tokens, or one query that may see every key).
    """
    sdpa = base.config._attn_implementation == "sdpa"
    if sdpa and window is None:
        if before.shape[1] == 0 and bool((query_positions >= 0).all()):
            return None  # prefill without empty slots: keys are the queries, sorted, so is_causal is exact
        if query_positions.shape == (1, 1) and chosen is None and not state.padded:
            return None  # one row: it holds no empty slot (rows of a batch revive different counts, leaving some)
    key_positions = torch.cat([before.to(query_positions.device), query_positions], dim=1)  # (B, T)
    key_allowed = key_positions >= 0 if chosen is None else lookup(chosen, key_positions)
    distance = query_positions[:, :, None] - key_positions[:, None, :]  # (B, q, T)
    allowed = key_allowed[:, None, :] & (distance >= 0)
    if window is not None:
        allowed &= distance < window
    # An empty slot attends only its own key, so that no softmax row is empty (SDPA would return NaN).
    query_count = query_positions.shape[1]
    own = torch.eye(query_count, dtype=torch.bool, device=allowed.device)[None] & (query_positions < 0)[:, :, None]
    allowed[:, :, before.shape[1] :] |= own
    mask = allowed[:, None]
    if sdpa:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def record_stats(state: LazyState, computed: list[torch.Tensor], revived: list[torch.Tensor], prefill: bool) -> None:
    """Fold one call's counts into `state.stats`, reading them from the device in one go."""
    device = computed[0].device
    parked = [aux.held() for aux in state.aux]
    figures = torch.stack([t.to(device) for t in (*computed, *revived, *parked)]).tolist()
    per_layer = [int(n) for n in figures[: len(computed)]]
    revived_count = int(sum(figures[len(computed) : len(computed) + len(revived)]))
    stats = state.stats
    if prefill:
        stats.kept_per_layer = per_layer
    else:
        new_tokens = state.first_generated.numel() * len(per_layer)  # every row's new token, in every layer
        stats.decode_token_layers += sum(per_layer)
        stats.revived_tokens += revived_count
        stats.revived_per_step.append(revived_count)
        stats.revived_token_layers += sum(per_layer) - new_tokens
    stats.aux_cache_tokens = int(sum(figures[len(computed) + len(revived) :]))
    stats.aux_cache_bytes = state.aux_bytes()
