"""The KV cache of a pruned generation: Transformers' `DynamicCache` with in-place layers that know their tokens.

A pruned prefill (`start_pruned`) gives the cache one layer class per role, and each says what it holds:
- `GrowingLayer`, every layer: its KV entries and `slots`, the position of each entry in the order the entries were
  appended (prefill in position order, revived tokens appended later). Masks are built from these positions, so the
  order of entries never matters. Pruned layers simply hold fewer entries.
- `CutLayer`, each pruning layer: also `parked`, the Aux Cache of the tokens dropped there.
- `FirstLayer`, layer 0: also `state`, the rows' `LazyState` (see `lazyllm.state`).

Every method Transformers calls on a layer to change its rows or its sequence (`crop`, `reset`, `reorder_cache`,
`batch_select_indices`, `batch_repeat_interleave`) keeps what the layer holds consistent, and a `copy.deepcopy` of
the cache copies all of it: whatever follows the cache follows its pruned state. `pruned(cache)` reads it back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, PretrainedConfig
from transformers.cache_utils import Cache, DynamicLayer, DynamicSlidingWindowLayer

from lazyllm.errors import UnsupportedCacheError as UnsupportedCacheError
from lazyllm.families import attention_windows
from lazyllm.state import LazyState, Slots


@dataclass(frozen=True)
class PrunedCache:
    """A cache that a pruned prefill made, as the forward reads it: the `DynamicCache` itself, its `layers`, the
    rows' `state` (layer 0's) and the Aux Cache of each cut (`aux[i]`: pruning layer `state.config.prune_layers[i]`)."""

    cache: DynamicCache
    layers: list[GrowingLayer]
    state: LazyState
    aux: list[Slots]


def pruned(cache: Cache | None) -> PrunedCache | None:
    """What a pruned prefill left in `cache`, None for any other cache (or none, or a reset one)."""
    layers = getattr(cache, "layers", None)
    first = layers[0] if layers else None
    if not isinstance(cache, DynamicCache) or not isinstance(first, FirstLayer) or first.state is None:
        return None
    growing = [layer for layer in cache.layers if isinstance(layer, GrowingLayer)]
    cuts = [cache.layers[index] for index in first.state.config.prune_layers]
    aux = [layer.parked for layer in cuts if isinstance(layer, CutLayer)]
    assert len(growing) == len(cache.layers) and len(aux) == len(cuts), "start_pruned made every layer"
    return PrunedCache(cache, growing, first.state, aux)


def start_pruned(cache: DynamicCache, num_layers: int, state: LazyState) -> PrunedCache:
    """`cache` (empty, before a pruned prefill) with `num_layers` layers for `state`'s schedule: `FirstLayer` holding
    `state`, a `CutLayer` at every pruning layer, a `GrowingLayer` elsewhere.

    A sliding-window layer keeps only its last `window - 1` entries in append order, but a pruned layer appends
    revived tokens after newer ones and LazyLLM resumes them there later, so a sliding layer keeps every entry it
    computed, like a full layer; the window is applied by position (`masks.window_start`, `masks.attention_mask_for`).
    This costs memory next to the unpatched model: a sliding layer holds its kept tokens instead of one window.
    """
    cuts = state.config.prune_layers
    layers: list[GrowingLayer] = [FirstLayer(state)]
    layers += [
        CutLayer() if index in cuts else GrowingLayer() for index in range(1, max(len(cache.layers), num_layers))
    ]
    cache.layers = list(layers)
    if cache.layer_class_to_replicate is not None:  # a cache made without the model's config adds layers lazily
        cache.layer_class_to_replicate = GrowingLayer
    result = pruned(cache)
    assert result is not None
    return result


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
    layer_types = (DynamicLayer, DynamicSlidingWindowLayer, GrowingLayer, CutLayer, FirstLayer)
    plain = type(cache) is DynamicCache and all(type(layer) in layer_types for layer in cache.layers)
    if not plain or getattr(cache, "offloading", False):
        raise UnsupportedCacheError(
            f"lazyllm prunes the default DynamicCache only, got {type(cache).__name__}"
            f"{' with offloading' if plain else ''}: drop cache_implementation / past_key_values "
            "(static, offloaded and quantized caches are not supported), or lazyllm.unpatch(model)."
        )


class GrowingLayer(DynamicLayer):  # type: ignore[no-untyped-call]  # CacheLayerMixin.__init_subclass__
    """A `DynamicLayer` that appends in place into spare capacity instead of concatenating, and knows the position
    of each entry it holds (`slots`).

    `DynamicLayer.update` copies the layer's whole KV at every decoding step (`torch.cat`), which on CPU is a large
    share of a step at long contexts. Here the keys and values live in buffers with room to spare (12.5% + 64 slots
    on each growth: amortised O(1) per appended token, at most that much memory more) and `keys` / `values` are views
    of their filled part. If something else replaced `keys` (`crop`, a batch selection), the next update adopts it.
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None  # (B, H, capacity, d) keys, values
        self._view: torch.Tensor | None = None  # the `keys` view handed out last
        self.slots = Slots()  # (B, entries): the position of each KV entry, -1 for an empty slot
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
        """Remove the last `-tokens_to_remove` positions of each row (Transformers' convention: a negative count).

        Layer 0 holds every token in position order and so loses its last entries, as Transformers' layers do. A
        pruned layer may hold a removed token before kept ones (revival appends): those entries become empty slots.
        """
        held = self.slots.positions
        if held is None or tokens_to_remove >= 0:  # not a pruned layer, or nothing (or Transformers' error)
            super().crop(tokens_to_remove)
            return
        self.remove_from(held.max(dim=1).values + 1 + tokens_to_remove)

    def remove_from(self, cutoff: torch.Tensor) -> None:
        """Remove every entry of row `b` at position `cutoff[b]` or later (`cutoff (B,)`)."""
        held = self.slots.positions
        assert held is not None
        removed = held >= cutoff[:, None]
        remaining = (held >= 0) & ~removed
        kept = int(remaining.any(dim=0).nonzero().max()) + 1 if bool(remaining.any()) else 0  # entries left
        self.holes |= bool(removed[:, :kept].any())
        held.masked_fill_(removed, -1)
        if kept < held.shape[1]:
            super().crop(kept - held.shape[1])
            self.slots.length = kept

    def reset(self) -> None:
        """Empty the layer: no KV, no positions (and no Aux Cache, no state)."""
        GrowingLayer.__init__(self)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: the rows' KV and what the layer knows of them follow the beams."""
        super().reorder_cache(beam_idx)
        self.select_rows(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep rows `indices` of the KV and of what the layer knows of them."""
        super().batch_select_indices(indices)
        self.select_rows(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every row `repeats` times, with what the layer knows of it."""
        super().batch_repeat_interleave(repeats)
        rows = self.slots.positions.shape[0] if self.slots.positions is not None else 0
        self.select_rows(torch.arange(rows).repeat_interleave(repeats))

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep rows `index (B',)` of what the layer knows of its rows (its KV aside), in that order."""
        self.slots.select_rows(index)


class CutLayer(GrowingLayer):  # type: ignore[no-untyped-call]  # as GrowingLayer
    """The cache layer of a pruning layer: a `GrowingLayer` that also holds `parked`, the Aux Cache of the tokens
    dropped there (their hidden states as they entered the layer, and positions)."""

    def __init__(self) -> None:
        super().__init__()
        self.parked = Slots()

    def remove_from(self, cutoff: torch.Tensor) -> None:
        super().remove_from(cutoff)
        parked = self.parked.positions
        if parked is not None:
            self.parked.take(parked >= cutoff.to(parked.device)[:, None])

    def reset(self) -> None:
        CutLayer.__init__(self)

    def select_rows(self, index: torch.Tensor) -> None:
        super().select_rows(index)
        self.parked.select_rows(index)


class FirstLayer(GrowingLayer):  # type: ignore[no-untyped-call]  # as GrowingLayer
    """The cache layer of decoder layer 0: a `GrowingLayer` that also holds `state`, the rows' `LazyState` (None once
    `reset`: the cache then holds no pruned generation)."""

    def __init__(self, state: LazyState | None) -> None:
        super().__init__()
        self.state = state

    def remove_from(self, cutoff: torch.Tensor) -> None:
        super().remove_from(cutoff)
        if self.state is not None:  # cropping into the prompt moves the rows' prompt ends
            self.state.first_generated = torch.minimum(self.state.first_generated, cutoff)

    def reset(self) -> None:
        FirstLayer.__init__(self, None)

    def select_rows(self, index: torch.Tensor) -> None:
        super().select_rows(index)
        if self.state is not None:
            self.state.select_rows(index)


def _with_capacity(buffer: torch.Tensor, length: int, capacity: int) -> torch.Tensor:
    """A `(B, H, capacity, d)` buffer holding the first `length` entries of `buffer`."""
    grown = buffer.new_empty((*buffer.shape[:-2], capacity, buffer.shape[-1]))
    grown[..., :length, :] = buffer[..., :length, :]
    return grown


def recomputed_token_layers(tables: list[Slots]) -> int:
    """How often a token was computed a second time in the same layer (`tables`: each layer's `slots`); LazyLLM's
    promise is 0."""
    repeats = 0
    for table in tables:
        positions = table.positions
        if positions is None:
            continue
        ordered = positions.sort(dim=1).values
        repeats += int(((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).sum())
    return repeats
