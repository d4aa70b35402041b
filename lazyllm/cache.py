"""The KV cache of a pruned generation: Transformers' `DynamicCache` with in-place layers that know their tokens.

A pruned prefill turns the cache's layers into `GrowingLayer`s. Pruned layers simply hold fewer entries; each
layer's `positions` says which token each entry belongs to, in the order the entries were appended (prefill in
position order, revived tokens appended later). Masks are built from these positions, so the order of entries never
matters. A pruning layer also holds `parked`, the Aux Cache of the tokens dropped there, and layer 0 the rows'
`LazyState` (see `lazyllm.state`), so that whatever follows the cache (a deep copy) follows its pruned state.
"""

from __future__ import annotations

from typing import cast

import torch
from transformers import DynamicCache, PretrainedConfig
from transformers.cache_utils import Cache, DynamicLayer, DynamicSlidingWindowLayer

from lazyllm.errors import UnsupportedCacheError as UnsupportedCacheError
from lazyllm.families import attention_windows
from lazyllm.state import LazyState, Slots


def check_cache(cache: Cache | None, model_config: PretrainedConfig) -> None:
    """Raise unless `cache` is None or a plain, non-offloading `DynamicCache` whose sliding-window layers (if any)
    belong to sliding-window attention layers of the model (`model_config`)."""
    if cache is None:
        return
    sliding = [i for i, layer in enumerate(cache.layers) if type(layer) is DynamicSlidingWindowLayer]
    if sliding:  # the model's config is read only for such a cache: most calls skip it
        windows = attention_windows(model_config)
        wrong = [i for i in sliding if not windows[i]]
        if wrong:
            raise UnsupportedCacheError(
                f"the cache has sliding-window layers at {wrong[:4]}, where the model attends fully: pass a cache "
                "made for this model (DynamicCache(config=model.config)) or none."
            )
    layer_types = (DynamicLayer, DynamicSlidingWindowLayer, GrowingLayer)
    plain = type(cache) is DynamicCache and all(type(layer) in layer_types for layer in cache.layers)
    if not plain or getattr(cache, "offloading", False):
        raise UnsupportedCacheError(
            f"lazyllm prunes the default DynamicCache only, got {type(cache).__name__}"
            f"{' with offloading' if plain else ''}: drop cache_implementation / past_key_values "
            "(static, offloaded and quantized caches are not supported), or lazyllm.unpatch(model)."
        )


def growing_layers(cache: DynamicCache) -> list[GrowingLayer]:
    """The layers of a pruned cache (`with_growing_layers` made each a `GrowingLayer`)."""
    return cast(list[GrowingLayer], cache.layers)


def with_growing_layers(cache: DynamicCache, num_layers: int) -> DynamicCache:
    """`cache` (empty, before a pruned prefill) with `num_layers` layers, each a `GrowingLayer`.

    A sliding-window layer keeps only its last `window - 1` entries in append order, but a pruned layer appends
    revived tokens after newer ones and LazyLLM resumes them there later, so a sliding layer keeps every entry it
    computed, like a full layer; the window is applied in the masks, by position (see `masks.attention_mask_for`).
    This costs memory next to the unpatched model: a sliding layer holds its kept tokens instead of one window.
    """
    cache.layers = [GrowingLayer() for _ in range(max(len(cache.layers), num_layers))]
    if cache.layer_class_to_replicate is not None:  # a cache made without the model's config adds layers lazily
        cache.layer_class_to_replicate = GrowingLayer
    return cache


class GrowingLayer(DynamicLayer):  # type: ignore[no-untyped-call]  # CacheLayerMixin.__init_subclass__
    """A `DynamicLayer` that appends in place into spare capacity instead of concatenating, and knows the position
    of each entry it holds (plus, where it applies, an Aux Cache and the rows' state).

    `DynamicLayer.update` copies the layer's whole KV at every decoding step (`torch.cat`), which on CPU is a large
    share of a step at long contexts. Here the keys and values live in buffers with room to spare (12.5% + 64 slots
    on each growth: amortised O(1) per appended token, at most that much memory more) and `keys` / `values` are views
    of their filled part. If something else replaced `keys` (`crop`, a batch selection), the next update adopts it.
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None  # (B, H, capacity, d) keys, values
        self._view: torch.Tensor | None = None  # the `keys` view handed out last
        self.positions = Slots()  # (B, entries): the position of each KV entry, -1 for an empty slot
        self.parked: Slots | None = None  # at a pruning layer: the Aux Cache of the tokens dropped there
        self.state: LazyState | None = None  # at layer 0: the rows' state
        self.attend_from = 0  # the first entry the next update's keys and values start at (a sliding window)
        self.holes = False  # whether a crop emptied entries before others (then every mask is explicit)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append `(B, H, q, d)` keys and values; returns the keys and values to attend, from `attend_from` on."""
        view, buffers = self._view, self._buffers  # both set from the first call on
        if not self.is_initialized or self.keys is not view or view is None or buffers is None:
            # first call, or `keys` replaced since
            self._buffers = super().update(key_states, value_states, *args, **kwargs)
            self._view = self.keys
            return self._attended()
        length, end = view.shape[-2], view.shape[-2] + key_states.shape[-2]
        if end > buffers[0].shape[-2]:
            capacity = end + end // 8 + 64
            buffers = _with_capacity(buffers[0], length, capacity), _with_capacity(buffers[1], length, capacity)
            self._buffers = buffers
        keys, values = buffers
        keys[..., length:end, :] = key_states
        values[..., length:end, :] = value_states
        self.keys, self.values = keys[..., :end, :], values[..., :end, :]
        self._view = self.keys
        return self._attended()

    def _attended(self) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys, self.values
        assert keys is not None and values is not None
        return keys[..., self.attend_from :, :], values[..., self.attend_from :, :]

    def crop(self, tokens_to_remove: int) -> None:
        """Remove the last `-tokens_to_remove` positions of each row (Transformers' convention: a negative count):
        their KV entries, their parked hidden states and, cropping into the prompt, the rows' prompt ends.

        Layer 0 holds every token in position order and so loses its last entries, as Transformers' layers do. A
        pruned layer may hold a removed token before kept ones (revival appends): those entries become empty slots.
        """
        held = self.positions.positions
        if held is None or tokens_to_remove >= 0:  # not a pruned layer, or nothing (or Transformers' error)
            super().crop(tokens_to_remove)
            return
        cutoff = held.max(dim=1, keepdim=True).values + 1 + tokens_to_remove  # (B, 1): the first position removed
        removed = held >= cutoff
        remaining = (held >= 0) & ~removed
        kept = int(remaining.any(dim=0).nonzero().max()) + 1 if bool(remaining.any()) else 0  # entries left
        self.holes |= bool(removed[:, :kept].any())
        held.masked_fill_(removed, -1)
        if kept < held.shape[1]:
            super().crop(kept - held.shape[1])
            self.positions.length = kept
        if self.parked is not None and self.parked.positions is not None:
            self.parked.take(self.parked.positions >= cutoff.to(self.parked.positions.device))
        if self.state is not None:
            self.state.first_generated = torch.minimum(self.state.first_generated, cutoff[:, 0])

    def reset(self) -> None:
        """Empty the layer: no KV, no positions, no Aux Cache, no state."""
        GrowingLayer.__init__(self)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: the rows' KV, positions, Aux Cache and state follow the beams."""
        super().reorder_cache(beam_idx)
        self.batch_select_indices(beam_idx, kv=False)

    def batch_select_indices(self, indices: torch.Tensor, kv: bool = True) -> None:
        """Keep rows `indices` of the KV (`kv`), the positions, the Aux Cache and the state."""
        if kv:
            super().batch_select_indices(indices)
        for table in (self.positions, self.parked, self.state):
            if table is not None:
                table.select_rows(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every row `repeats` times, with what the layer knows of it."""
        super().batch_repeat_interleave(repeats)
        rows = self.positions.positions.shape[0] if self.positions.positions is not None else 0
        self.batch_select_indices(torch.arange(rows).repeat_interleave(repeats), kv=False)


def _with_capacity(buffer: torch.Tensor, length: int, capacity: int) -> torch.Tensor:
    """A `(B, H, capacity, d)` buffer holding the first `length` entries of `buffer`."""
    grown = buffer.new_empty((*buffer.shape[:-2], capacity, buffer.shape[-1]))
    grown[..., :length, :] = buffer[..., :length, :]
    return grown


def recomputed_token_layers(tables: list[Slots]) -> int:
    """How often a token was computed a second time in the same layer (`tables`: each layer's positions, e.g.
    `layer.positions` of a pruned cache's layers); LazyLLM's promise is 0."""
    repeats = 0
    for table in tables:
        positions = table.positions
        if positions is None:
            continue
        ordered = positions.sort(dim=1).values
        repeats += int(((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).sum())
    return repeats
