"""What a pruned generation keeps beside its KV: `Slots` (positions in cache order) and the rows' `LazyState`.

The cache's layers hold both (`lazyllm.cache`): every layer the `Slots` of its KV entries, each pruning layer the
`Slots` of its Aux Cache, layer 0 the rows' `LazyState`. Words, here and in the forward: a *position* is a token's
original place in its row (its RoPE position); a layer's *entries* are the positions of the KV it holds, `(B, T)` in
cache order, -1 for an *empty slot*; a *table* is `(B, width)` values indexed by position (`selection.by_position`
writes one, `selection.lookup` reads one).
"""

from __future__ import annotations

import torch

from lazyllm.config import LazyConfig
from lazyllm.selection import gather_rows, pack
from lazyllm.stats import LazyStats


class Slots:
    """The growable record of a layer's entries, `(B, length)` positions in cache order (and, for an Aux Cache, the
    parked tokens' `(B, length, D)` hidden states).

    Appending writes in place into spare capacity and reallocates with room to spare when it runs out, so a decoding
    step costs O(tokens appended), not O(tokens held). The first append adopts its tensors as they are. Slots
    taken out are marked empty (-1) in place, and the record is compacted once half of it is empty.
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
        if self._hidden is not None and hidden is not None:
            self._hidden[:, self.length : self.length + added] = hidden
        self.length += added

    def take(self, wanted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Take the `wanted (B, length)` slots out: their hidden states `(B, r, D)` and positions `(B, r)`, sorted."""
        held, hidden = self.positions, self.hidden
        assert held is not None and hidden is not None, "take() is for a filled Aux Cache"
        index, positions = pack(held, wanted)
        taken = gather_rows(hidden, index)
        if positions.shape[1]:
            held.masked_fill_(wanted, -1)
            self.emptied += positions.shape[1]
            if 2 * self.emptied > self.length:
                self._compact()
        return taken, positions

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep rows `index (B',)` in that order (beam search reorders its rows at every step)."""
        if self._positions is not None:
            self._positions = self._positions.index_select(0, index.to(self._positions.device))
        if self._hidden is not None:
            self._hidden = self._hidden.index_select(0, index.to(self._hidden.device))

    def held(self) -> torch.Tensor:
        """`()` the number of non-empty slots, on the device (no host sync)."""
        positions = self.positions
        return (positions >= 0).sum() if positions is not None else torch.zeros((), dtype=torch.long)

    def bytes(self) -> int:
        hidden = self.hidden
        return 0 if hidden is None else hidden.numel() * hidden.element_size()

    def _reallocate(self, needed: int) -> None:
        assert self._positions is not None
        capacity = needed + needed // 8 + 64  # geometric growth: amortised O(1) per appended slot
        positions = self._positions.new_full((self._positions.shape[0], capacity), -1)
        positions[:, : self.length] = self._positions[:, : self.length]
        if self._hidden is not None:
            hidden = self._hidden.new_zeros((self._hidden.shape[0], capacity, self._hidden.shape[2]))
            hidden[:, : self.length] = self._hidden[:, : self.length]
            self._hidden = hidden
        self._positions = positions

    def _compact(self) -> None:
        held, hidden = self.positions, self.hidden
        assert held is not None and hidden is not None
        index, positions = pack(held, held >= 0)
        self._hidden = gather_rows(hidden, index)
        self._positions, self.length, self.emptied = positions, positions.shape[1], 0


class LazyState:
    """The rows of one pruned generation: their schedule, keep counts, prompt ends, decoding step and stats."""

    def __init__(
        self, config: LazyConfig, keep_counts: torch.Tensor, first_generated: torch.Tensor, stats: LazyStats
    ) -> None:
        self.config = config  # the schedule the prefill ran with: its decoding steps follow it
        self.keep_counts = keep_counts  # (B, pruning layers): prompt tokens each pruning layer keeps, per row
        self.first_generated = first_generated  # (B,): positions from here on are generated tokens
        self.stats = stats  # recorded by the forward; never read to decide anything
        self.padded = False  # whether some row has empty slots (then every mask is explicit)
        self.width = 0  # 1 + the largest position seen: the width of per-position tables
        self.step = 0  # decoding steps run on this cache so far (0 during prefill)

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep rows `index (B',)` in that order, as the cache's KV does (beam search)."""
        self.keep_counts = self.keep_counts.index_select(0, index.to(self.keep_counts.device))
        self.first_generated = self.first_generated.index_select(0, index.to(self.first_generated.device))

    def is_prompt(self, positions: torch.Tensor) -> torch.Tensor:
        """Whether each position is a prompt token (False for generated tokens and empty slots)."""
        return (positions >= 0) & (positions < self.first_generated.to(positions.device)[:, None])
