"""One call of the pruned forward over the decoder layers: the paper's steps as the methods of `LazyPass`.

    for each decoder layer:
        at a pruning layer (a cut):  scores = score(...)      the attention the query paid each token, layer before
                                     chosen = choose(...)     top share of each row's prompt + last + generated tokens
                                     park_and_revive(...)     unchosen tokens wait in the Aux Cache; chosen parked
                                                              tokens come back, computed on from where they stopped
                                     a new `Segment`          the layers up to the next cut share its tokens
        mask(...)                    the chosen keys at or before each query's position (within a sliding window)
        run the layer                its KV is appended to the cache, with the tokens' positions

Prefill starts with every prompt token; a decoding step with its new token. Shapes: B rows, q tokens in a pass,
T entries a layer holds, `width` = 1 + the largest position (per-position tables), D hidden size. The words
(position, entries, empty slot, table) are `lazyllm.state`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from lazyllm.cache import PrunedCache
from lazyllm.compat import CACHE_KWARG
from lazyllm.families import BaseModel, FamilyAdapter, decoder_layer_attention
from lazyllm.masks import attention_mask_for, window_start
from lazyllm.scoring import attention_scores
from lazyllm.selection import by_position, gather_rows, lookup, pack, top_k_per_row
from lazyllm.spans import span

# What the cuts of a pass do: choose tokens (prefill, the paper's decoding), bring every parked token back (the step
# `revive_all_at`), or leave the tokens as they are (static pruning's steps, the steps after `revive_all_at`).
Mode = Literal["choose", "revive_all", "static"]
Mask = tuple[int, torch.Tensor | None]  # the first entry a layer attends, and its attention mask from there


@dataclass
class Tokens:
    """The tokens a layer computes: hidden states and original positions, -1 marking empty slots."""

    hidden: torch.Tensor  # (B, q, D)
    positions: torch.Tensor  # (B, q), sorted per row, empty slots first, newest token last


class PositionEmbeddings:
    """RoPE `(cos, sin)`, each `(B, q, head_dim)`, of one token set, computed once per RoPE kind (Gemma 3 has two)."""

    def __init__(self, adapter: FamilyAdapter, base: BaseModel, tokens: Tokens) -> None:
        self.adapter, self.base, self.tokens = adapter, base, tokens
        self.computed: dict[str | None, tuple[torch.Tensor, torch.Tensor]] = {}

    def of(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The `(cos, sin)` that decoder layer `layer` applies."""
        kind = self.adapter.rope_kind(self.base.config, layer)
        if kind not in self.computed:
            positions = self.tokens.positions.clamp(min=0)
            self.computed[kind] = self.adapter.rotary(self.base, self.tokens.hidden, positions, kind)
        return self.computed[kind]


@dataclass
class Segment:
    """What the layers from one cut to the next share: which tokens they attend, their tokens' RoPE, and one mask
    per attention window (built on first use)."""

    chosen: torch.Tensor | None  # (B, width): the tokens these layers may attend; None: every token they hold
    embeddings: PositionEmbeddings
    count: torch.Tensor  # (): the tokens each of these layers computes
    masks: dict[int | None, Mask] = field(default_factory=dict)  # window -> its mask

    def attends(self, entries: torch.Tensor) -> torch.Tensor:
        """`(B, T)` which of `entries` these layers may attend."""
        return entries >= 0 if self.chosen is None else lookup(self.chosen, entries)


_CURRENT: ContextVar[LazyPass | None] = ContextVar("lazyllm_pass", default=None)  # the pass running in this thread


def query_hook(adapter: FamilyAdapter, layer: int) -> Callable[[nn.Module, tuple[object, ...], torch.Tensor], None]:
    """A forward hook on the query module of decoder layer `layer`. Where the pass running in this thread scores a
    cut with that layer (`LazyPass.scored_layers`, from the pass's own config), it keeps the last `score_window`
    tokens' queries (before RoPE) for that pass; otherwise it does nothing (a context-variable read and a set
    lookup)."""

    def hook(module: nn.Module, args: tuple[object, ...], output: torch.Tensor) -> None:
        if torch.compiler.is_compiling():  # a traced call never prunes (`calls.COMPILED`)
            return
        current = _CURRENT.get()
        if current is not None and layer in current.scored_layers:
            current.queries[layer] = adapter.last_queries(output, current.config.score_window).detach()

    return hook


class LazyPass:
    """One prefill or decoding step of a pruned generation (its cache, `pruned`) through `base`'s layers."""

    def __init__(
        self,
        adapter: FamilyAdapter,
        windows: list[int | None],
        base: BaseModel,
        pruned: PrunedCache,
        prefill: bool,
        extend: bool = False,
    ) -> None:
        self.adapter, self.windows, self.base, self.pruned = adapter, windows, base, pruned
        self.state, self.config = pruned.state, pruned.state.config
        self.prefill = prefill
        self.extend = extend  # several new tokens on a pruned cache: every parked token comes back first
        self.layers = base.layers[: base.config.num_hidden_layers]
        self.mode = self._mode()
        # The layers whose queries this pass scores a cut with (the layer before each cut, where the cuts choose).
        scored = {cut - 1 for cut in self.config.prune_layers} if self.mode == "choose" else set()
        self.scored_layers = frozenset(scored)
        self.queries: dict[int, torch.Tensor] = {}  # layer -> (B, w, ...) queries before RoPE, from `query_hook`

    def _mode(self) -> Mode:
        step, revive_all_at = self.state.step, self.config.revive_all_at
        if self.prefill:
            return "choose"
        if self.extend:
            return "revive_all"
        if revive_all_at is not None and step >= revive_all_at:
            return "revive_all" if step == revive_all_at else "static"
        return "choose" if self.config.revive else "static"

    # -- the layer loop ----------------------------------------------------------------------------------------
    def run(self, tokens: Tokens) -> torch.Tensor:
        """Every decoder layer on `tokens`, re-chosen at pruning layers; returns the final-normed last token
        `(B, 1, D)` (of a call that adds q tokens: the last q, `(B, q, D)`). Nothing waits for the device but
        `pack`, once per cut (how many tokens go on)."""
        returned = tokens.positions.shape[1] if self.extend else 1
        batch = tokens.positions.shape[0]
        new_count = int((tokens.positions >= 0).sum()) if self.extend else batch  # one per row in a decoding step
        with span("bookkeeping"):  # positions index per-row tables: one host sync per call
            self.state.width = max(self.state.width, int(tokens.positions.max()) + 1)
        revived: list[torch.Tensor] = []  # per cut: tokens brought back from its Aux Cache
        computed: list[torch.Tensor] = []  # per layer: tokens computed
        segment = self.segment(tokens, chosen=None)
        context = _CURRENT.set(self)
        try:
            for index, layer in enumerate(self.layers):
                if index in self.config.prune_layers:
                    if self.mode == "static":  # the same tokens on, held in another order from here
                        segment = Segment(segment.chosen, segment.embeddings, segment.count)
                    else:
                        tokens, segment, revived_here = self.cut(index, tokens, segment)
                        revived.append(revived_here)
                window = self.windows[index]
                if window not in segment.masks:
                    with span("mask"):
                        segment.masks[window] = self.mask(index, tokens, segment.chosen, window)
                tokens = self.compute(index, layer, tokens, segment)
                computed.append(segment.count)
        finally:
            _CURRENT.reset(context)
        with span("bookkeeping"):
            self.record_stats(computed, revived, new_count)
        normed: torch.Tensor = self.base.norm(tokens.hidden[:, -returned:])
        return normed

    def segment(self, tokens: Tokens, chosen: torch.Tensor | None) -> Segment:
        """The segment that starts with `tokens`, attending `chosen`."""
        return Segment(chosen, PositionEmbeddings(self.adapter, self.base, tokens), (tokens.positions >= 0).sum())

    def compute(self, index: int, layer: nn.Module, tokens: Tokens, segment: Segment) -> Tokens:
        """Decoder layer `index` on `tokens` with the segment's mask for its window; its KV and their positions are
        appended to the cache."""
        cache_layer = self.pruned.layers[index]
        cache_layer.attend_from, attention = segment.masks[self.windows[index]]
        with span("layers" if tokens.positions.shape[1] == 1 else "layers_revived"):
            hidden = layer(
                tokens.hidden,
                attention_mask=attention,
                position_ids=tokens.positions.clamp(min=0),
                use_cache=True,
                **{CACHE_KWARG: self.pruned.cache},
                position_embeddings=segment.embeddings.of(index),
            )
        with span("bookkeeping"):
            cache_layer.slots.append(tokens.positions)
        return Tokens(hidden, tokens.positions)

    # -- the paper's steps at a cut ----------------------------------------------------------------------------
    def cut(self, index: int, tokens: Tokens, before: Segment) -> tuple[Tokens, Segment, torch.Tensor]:
        """At pruning layer `index`, after the segment `before`: the tokens that go on, the segment they start, and
        `()` how many parked tokens came back."""
        cut = self.config.prune_layers.index(index)
        if self.mode == "revive_all":
            everything = torch.ones_like(tokens.positions[:, :1], dtype=torch.bool).expand(-1, self.state.width)
            with span("revival"):
                tokens, revived = self.park_and_revive(cut, tokens, everything, keep_aux=False)
            return tokens, self.segment(tokens, chosen=None), revived
        with span("scoring"):
            entries = self.entries(index - 1).to(tokens.hidden.device)  # the tokens the layer before holds
            attended = before.attends(entries)
            scores = self.score(index, tokens, before, entries, attended)
            chosen = self.choose(scores, cut, tokens, entries, attended)
        with span("revival"):
            tokens, revived = self.park_and_revive(cut, tokens, chosen, keep_aux=self.config.revive)
        return tokens, self.segment(tokens, chosen), revived

    def score(
        self, index: int, tokens: Tokens, before: Segment, entries: torch.Tensor, attended: torch.Tensor
    ) -> torch.Tensor:
        """`(B, width)` the attention that the query paid each position in the layer before `index` (0 where it
        holds no entry), over its `entries (B, T)`, of which the query `attended` some. The query: the last
        `score_window` prompt tokens in prefill, the new token in decoding."""
        previous = index - 1
        window = self.config.score_window if self.prefill else 1
        cos, sin = (part[:, -window:] for part in before.embeddings.of(previous))  # (B, w, d)
        captured = self.queries[previous][:, -window:].to(tokens.hidden.device)
        queries = self.adapter.queries(captured, self.layers[previous], cos, sin)  # (B, H, w, d)
        keys = self.pruned.layers[previous].keys
        assert keys is not None  # the layer before ran: it holds keys
        scaling = decoder_layer_attention(self.layers[previous]).scaling
        scores = attention_scores(
            queries, tokens.positions[:, -window:], keys.to(tokens.hidden.device), entries, attended, scaling
        )
        return by_position(scores, entries, self.state.width, 0.0)

    def choose(
        self, scores: torch.Tensor, cut: int, tokens: Tokens, entries: torch.Tensor, attended: torch.Tensor
    ) -> torch.Tensor:
        """`(B, width)` the tokens that go on past cut `cut`: of the `attended` `entries` of the layer before, the
        top `keep_counts` of each row's prompt by `config.rank_tokens(scores)`, the last token, and every generated
        token."""
        ranked = self.config.rank_tokens(scores)  # (B, width)
        is_prompt = self.state.is_prompt(entries)
        candidates = by_position(attended & is_prompt, entries, self.state.width, False)
        if self.prefill:  # the last token is the query of the next token: it is never dropped
            ranked.scatter_(1, tokens.positions[:, -1:], float("inf"))
        chosen = top_k_per_row(ranked, candidates, self.state.keep_counts[:, cut].to(scores.device))
        return chosen | by_position(attended & ~is_prompt, entries, self.state.width, False)

    def park_and_revive(
        self, cut: int, tokens: Tokens, chosen: torch.Tensor, keep_aux: bool
    ) -> tuple[Tokens, torch.Tensor]:
        """The tokens that go on past cut `cut`: those of `tokens` that are `chosen`, and the parked ones `chosen`
        again; the others of `tokens` are parked in the cut's Aux Cache (when `keep_aux`). Returns them (sorted by
        position, empty slots first) and `()` how many were revived."""
        aux = self.pruned.aux[cut]
        device = tokens.hidden.device
        goes_on = lookup(chosen, tokens.positions)
        index_on, positions_on = pack(tokens.positions, goes_on)
        going_on = Tokens(gather_rows(tokens.hidden, index_on), positions_on)
        revived = torch.zeros((), dtype=torch.long, device=device)
        if aux.positions is not None:
            back = lookup(chosen, aux.positions.to(device))  # (B, M)
            revived = back.sum()
            hidden_back, positions_back = aux.take(back)
            if positions_back.shape[1]:
                positions = torch.cat([positions_on, positions_back.to(device)], dim=1)
                order, positions = pack(positions, positions >= 0)
                hidden = torch.cat([going_on.hidden, hidden_back.to(device)], dim=1)
                going_on = Tokens(gather_rows(hidden, order), positions)
        if keep_aux:
            index_off, positions_off = pack(tokens.positions, ~goes_on)
            if positions_off.shape[1]:
                aux.append(positions_off, gather_rows(tokens.hidden, index_off))
        return going_on, revived

    def mask(self, index: int, tokens: Tokens, chosen: torch.Tensor | None, window: int | None) -> Mask:
        """The first entry layer `index` attends (`masks.window_start`) and its attention mask for `tokens`, which
        attend `chosen`, over the entries from there on (`masks.attention_mask_for`)."""
        entries = self.entries(index)
        start = window_start(entries, tokens.positions, window)
        mask = attention_mask_for(
            self.base.config,
            entries[:, start:],
            tokens.positions,
            chosen,
            tokens.hidden.dtype,
            window,
            self.state.padded or self.pruned.layers[index].holes,
        )
        return start, mask

    def entries(self, layer: int) -> torch.Tensor:
        """`(B, T)` positions of the KV entries that `layer` holds (T = 0 before the layer first ran)."""
        positions = self.pruned.layers[layer].slots.positions
        rows = self.state.first_generated
        return positions if positions is not None else rows.new_empty((len(rows), 0))

    def record_stats(self, computed: list[torch.Tensor], revived: list[torch.Tensor], new_count: int) -> None:
        """Fold this pass's counts into the stats (`new_count`: the call's real new tokens), reading them from the
        device in one go."""
        device = computed[0].device
        parked = [aux.held() for aux in self.pruned.aux]
        figures = torch.stack([t.to(device) for t in (*computed, *revived, *parked)]).tolist()
        per_layer = [int(n) for n in figures[: len(computed)]]
        revived_count = int(sum(figures[len(computed) : len(computed) + len(revived)]))
        stats = self.state.stats
        if self.prefill:
            stats.kept_per_layer = per_layer
        else:
            new_tokens = new_count * len(per_layer)  # the call's new tokens, in each layer
            stats.turn_tokens += new_count if self.extend else 0
            stats.decode_token_layers += sum(per_layer)
            stats.revived_tokens += revived_count
            stats.revived_per_step.append(revived_count)
            stats.revived_token_layers += sum(per_layer) - new_tokens
        stats.aux_cache_tokens = int(sum(figures[len(computed) + len(revived) :]))
        stats.aux_cache_bytes = sum(aux.bytes() for aux in self.pruned.aux)
