"""What LazyLLM keeps beside the KV cache: each entry's position, and the Aux Cache of dropped tokens.

The KV itself stays in Transformers' own `DynamicCache`, which `generate()` creates and carries. Pruned layers
simply hold fewer entries; `LazyState.positions[l]` says which token each entry of layer `l` belongs to, in the
order the entries were appended (prefill in position order, revived tokens appended later). Masks are built from
these positions, so the order of entries never matters. Position tables and Aux Caches are preallocated `Slots`,
appended to in place, so that a decoding step's bookkeeping does not grow with the context; so are the KV entries
themselves (`GrowingLayer`), which `DynamicLayer` would copy whole at every step.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer, DynamicSlidingWindowLayer

from lazyllm.families import attention_windows
from lazyllm.selection import gather_rows, pack
from lazyllm.stats import LazyStats


class UnsupportedCacheError(TypeError):
    """The cache given to a patched model is not one lazyllm can prune; the message says what to use."""


def check_cache(cache: Cache | None, model_config: object) -> None:
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


def with_growing_layers(cache: DynamicCache) -> DynamicCache:
    """`cache` (empty, before a pruned prefill) with every layer a `GrowingLayer`.

    A sliding-window layer keeps only its last `window - 1` entries in append order, but a pruned layer appends
    revived tokens after newer ones and LazyLLM resumes them there later, so a sliding layer keeps every entry it
    computed, like a full layer; the window is applied in the masks, by position (see `forward.attention_mask_for`).
    This costs memory next to the unpatched model: a sliding layer holds its kept tokens instead of one window.
    """
    cache.layers = [GrowingLayer() for _ in cache.layers]
    if cache.layer_class_to_replicate is not None:  # a cache made without the model's config adds layers lazily
        cache.layer_class_to_replicate = GrowingLayer
    return cache


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` that appends in place into spare capacity instead of concatenating.

    `DynamicLayer.update` copies the layer's whole KV at every decoding step (`torch.cat`), which on CPU is a large
    share of a step at long contexts. Here the keys and values live in buffers with room to spare (12.5% + 64 slots
    on each growth: amortised O(1) per appended token, at most that much memory more) and `keys` / `values` are views
    of their filled part. If something else replaced `keys` (`crop`, a batch selection), the next update adopts it.
    """

    def __init__(self) -> None:
        super().__init__()
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None  # (B, H, capacity, d) keys, values
        self._view: torch.Tensor | None = None  # the `keys` view handed out last

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized or self.keys is not self._view:  # first call, or `keys` replaced since
            self._buffers = super().update(key_states, value_states, *args, **kwargs)
            self._view = self.keys
            return self.keys, self.values
        length, end = self.keys.shape[-2], self.keys.shape[-2] + key_states.shape[-2]
        if end > self._buffers[0].shape[-2]:
            self._buffers = tuple(_with_capacity(buffer, length, end + end // 8 + 64) for buffer in self._buffers)
        keys, values = self._buffers
        keys[..., length:end, :] = key_states
        values[..., length:end, :] = value_states
        self.keys, self.values = keys[..., :end, :], values[..., :end, :]
        self._view = self.keys
        return self.keys, self.values


def _with_capacity(buffer: torch.Tensor, length: int, capacity: int) -> torch.Tensor:
    """A `(B, H, capacity, d)` buffer holding the first `length` entries of `buffer`."""
    grown = buffer.new_empty((*buffer.shape[:-2], capacity, buffer.shape[-1]))
    grown[..., :length, :] = buffer[..., :length, :]
    return grown


class Slots:
    """A growable table of `(B, length)` positions (and, for an Aux Cache, `(B, length, D)` hidden states).

    Appending writes in place into spare capacity and reallocates with room to spare when it runs out, so a decoding
    step costs O(tokens appended), not O(tokens held). The first append adopts its tensors as they are. Slots
    taken out are marked empty (-1) in place, and the table is compacted once half of it is empty.
    """

    def __init__(self) -> None:
        self._positions: torch.Tensor | None = None  # (B, capacity), -1 for empty slots
        self._hidden: torch.Tensor | None = None  # (B, capacity, D), only for an Aux Cache
        self.length = 0  # slots in use (empty ones among them included)
        self.emptied = 0  # upper bound of the slots emptied per row since the last compaction

    @property
    def positions(self) -> torch.Tensor | None:
        """`(B, length)` positions of the slots in use (-1: empty), None before the first append."""
        return None if self._positions is None else self._positions[:, : self.length]

    @property
    def hidden(self) -> torch.Tensor | None:
        """`(B, length, D)` their hidden states (an Aux Cache), None otherwise."""
        return None if self._hidden is None else self._hidden[:, : self.length]

    def append(self, positions: torch.Tensor, hidden: torch.Tensor | None = None) -> None:
        """Append `(B, q)` positions (and their `(B, q, D)` hidden states)."""
        added = positions.shape[1]
        if self._positions is None:
            self._positions, self._hidden, self.length = positions, hidden, added
            return
        if self.length + added > self._positions.shape[1]:
            self._reallocate(self.length + added)
        self._positions[:, self.length : self.length + added] = positions
        if hidden is not None:
            self._hidden[:, self.length : self.length + added] = hidden
        self.length += added

    def take(self, wanted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Take the `wanted (B, length)` slots out: their hidden states `(B, r, D)` and positions `(B, r)`, sorted."""
        index, positions = pack(self.positions, wanted)
        hidden = gather_rows(self.hidden, index)
        if positions.shape[1]:
            self.positions.masked_fill_(wanted, -1)
            self.emptied += positions.shape[1]
            if 2 * self.emptied > self.length:
                self._compact()
        return hidden, positions

    def held(self) -> torch.Tensor:
        """`()` the number of non-empty slots, on the device (no host sync)."""
        positions = self.positions
        return (positions >= 0).sum() if positions is not None else torch.zeros((), dtype=torch.long)

    def _reallocate(self, needed: int) -> None:
        capacity = needed + needed // 8 + 64  # geometric growth: amortised O(1) per appended slot
        positions = self._positions.new_full((self._positions.shape[0], capacity), -1)
        positions[:, : self.length] = self.positions
        if self._hidden is not None:
            hidden = self._hidden.new_zeros((self._hidden.shape[0], capacity, self._hidden.shape[2]))
            hidden[:, : self.length] = self.hidden
            self._hidden = hidden
        self._positions = positions

    def _compact(self) -> None:
        index, positions = pack(self.positions, self.positions >= 0)
        self._hidden = gather_rows(self.hidden, index)
        self._positions, self.length, self.emptied = positions, positions.shape[1], 0


class LazyState:
    """Per-cache bookkeeping of one pruned `generate()` (or of a manual prefill + decode loop)."""

    def __init__(
        self,
        num_layers: int,
        keep_counts: torch.Tensor,
        first_generated: torch.Tensor,
        padded: bool,
        stats: LazyStats,
        generator: torch.Generator | None,
    ) -> None:
        self.tables = [Slots() for _ in range(num_layers)]  # positions of each layer's KV entries, in cache order
        self.aux = [Slots() for _ in range(keep_counts.shape[1])]  # Aux Cache of each pruning layer
        self.keep_counts = keep_counts  # (B, pruning layers): prompt tokens each pruning layer keeps, per row
        self.first_generated = first_generated  # (B,): positions from here on are generated tokens
        self.padded = padded  # whether some prompt row has padding (then every mask is explicit)
        self.stats = stats
        self.generator = generator  # for random selection only
        self.width = 0  # 1 + the largest position seen: the width of per-position tables
        # pruning layer index -> (B, width) tokens its layers attended at the last re-selection (reselect_every)
        self.chosen: dict[int, torch.Tensor] = {}

    @property
    def positions(self) -> list[torch.Tensor | None]:
        """`(B, T)` positions of each layer's KV entries (None before the layer first ran)."""
        return [table.positions for table in self.tables]

    def entries(self, layer: int) -> torch.Tensor:
        """`(B, T)` positions of the KV entries that `layer` holds (T = 0 before the layer first ran)."""
        positions = self.tables[layer].positions
        return positions if positions is not None else self.first_generated.new_empty((len(self.first_generated), 0))

    def record(self, layer: int, positions: torch.Tensor) -> None:
        """Note the positions of the KV entries `layer` just appended (-1 for empty slots)."""
        self.tables[layer].append(positions)

    def is_prompt(self, positions: torch.Tensor) -> torch.Tensor:
        """Whether each position is a prompt token (False for generated tokens and empty slots)."""
        return (positions >= 0) & (positions < self.first_generated.to(positions.device)[:, None])

    def aux_bytes(self) -> int:
        return sum(aux.hidden.numel() * aux.hidden.element_size() for aux in self.aux if aux.hidden is not None)

    def recomputed_token_layers(self) -> int:
        """How often a token was computed a second time in the same layer; LazyLLM's promise is 0."""
        repeats = 0
        for positions in self.positions:
            if positions is None:
                continue
            ordered = positions.sort(dim=1).values
            repeats += int(((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).sum())
        return repeats
