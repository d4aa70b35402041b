"""What LazyLLM keeps beside the KV cache: each entry's position, and the Aux Cache of dropped tokens.

The KV itself stays in Transformers' own `DynamicCache`, which `generate()` creates and carries. Pruned layers
simply hold fewer entries; `LazyState.positions[l]` says which token each entry of layer `l` belongs to, in the
order the entries were appended (prefill in position order, revived tokens appended later). Masks are built from
these positions, so the order of entries never matters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer, DynamicSlidingWindowLayer

from lazyllm.stats import LazyStats


class UnsupportedCacheError(TypeError):
    """The cache given to a patched model is not one lazyllm can prune; the message says what to use."""


def check_cache(cache: Cache | None) -> None:
    """Raise unless `cache` is None or a plain, non-offloading `DynamicCache` (full or sliding-window layers)."""
    if cache is None:
        return
    layer_types = (DynamicLayer, DynamicSlidingWindowLayer)
    plain = type(cache) is DynamicCache and all(type(layer) in layer_types for layer in cache.layers)
    if not plain or getattr(cache, "offloading", False):
        raise UnsupportedCacheError(
            f"lazyllm prunes the default DynamicCache only, got {type(cache).__name__}"
            f"{' with offloading' if plain else ''}: drop cache_implementation / past_key_values "
            "(static, offloaded and quantized caches are not supported), or lazyllm.unpatch(model)."
        )


def with_full_layers(cache: DynamicCache) -> DynamicCache:
    """`cache` (empty, before a pruned prefill) with its sliding-window layers swapped for full `DynamicLayer`s.

    A sliding-window layer keeps only its last `window - 1` entries in append order, but a pruned layer appends
    revived tokens after newer ones and LazyLLM resumes them there later, so a sliding layer keeps every entry it
    computed, like a full layer; the window is applied in the masks, by position (see `forward.attention_mask_for`).
    This costs memory next to the unpatched model: a sliding layer holds its kept tokens instead of one window.
    """
    cache.layers = [layer if type(layer) is DynamicLayer else DynamicLayer() for layer in cache.layers]
    return cache


@dataclass
class AuxCache:
    """Tokens whose computation stopped just before one pruning layer, ready to resume there."""

    hidden: torch.Tensor  # (B, M, D) their input hidden states of the pruning layer
    positions: torch.Tensor  # (B, M) their positions, -1 for empty slots


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
        self.positions: list[torch.Tensor | None] = [None] * num_layers
        self.aux: list[AuxCache | None] = [None] * keep_counts.shape[1]
        self.keep_counts = keep_counts  # (B, pruning layers): prompt tokens each pruning layer keeps, per row
        self.first_generated = first_generated  # (B,): positions from here on are generated tokens
        self.padded = padded  # whether some prompt row has padding (then every mask is explicit)
        self.stats = stats
        self.generator = generator  # for random selection only
        # layer -> (queries (B, H, w, d) with RoPE, positions (B, w)): the scoring window of that layer, kept
        # between decoding steps when the window slides (LazyConfig.decode_window)
        self.windows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def entries(self, layer: int) -> torch.Tensor:
        """`(B, T)` positions of the KV entries that `layer` holds (T = 0 before the layer first ran)."""
        positions = self.positions[layer]
        return positions if positions is not None else self.first_generated.new_empty((len(self.first_generated), 0))

    def record(self, layer: int, positions: torch.Tensor) -> None:
        """Note the positions of the KV entries `layer` just appended (-1 for empty slots)."""
        self.positions[layer] = torch.cat([self.entries(layer).to(positions.device), positions], dim=1)

    def is_prompt(self, positions: torch.Tensor) -> torch.Tensor:
        """Whether each position is a prompt token (False for generated tokens and empty slots)."""
        return (positions >= 0) & (positions < self.first_generated.to(positions.device)[:, None])

    def aux_bytes(self) -> int:
        return sum(aux.hidden.numel() * aux.hidden.element_size() for aux in self.aux if aux is not None)

    def recomputed_token_layers(self) -> int:
        """How often a token was computed a second time in the same layer; LazyLLM's promise is 0."""
        repeats = 0
        for positions in self.positions:
            if positions is None:
                continue
            ordered = positions.sort(dim=1).values
            repeats += int(((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).sum())
        return repeats
