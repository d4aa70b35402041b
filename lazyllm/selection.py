"""Choosing which tokens go on: per-row top-k and packing of ragged per-row token sets into rectangles.

Token sets are kept as position tensors `(B, W)`: each entry is a token's original position in its row, and -1
marks an empty slot (padding, or a row that holds fewer tokens than the widest row). Packed sets are sorted by
position with the empty slots on the left, so the newest token of every row is always the last column.
"""

from __future__ import annotations

import torch


def top_k_per_row(scores: torch.Tensor, candidates: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """`(B, P)` bool: the `k[b]` best-scoring candidates of each row `b` (ties go to the earlier position)."""
    ranked = scores.masked_fill(~candidates, float("-inf"))
    order = ranked.argsort(dim=1, descending=True, stable=True)
    in_top_k = torch.arange(scores.shape[1], device=scores.device)[None, :] < k[:, None]
    return torch.zeros_like(candidates).scatter(1, order, in_top_k) & candidates


def pack(positions: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack the kept entries of each row into the narrowest rectangle.

    Args:
        positions: `(B, T)` positions, -1 for empty slots.
        keep: `(B, T)` which entries to keep (empty slots are never kept).

    Returns:
        `index (B, W)` into the T entries and their `positions (B, W)`, sorted by position, empty slots (-1)
        first; `W` is the largest number of kept entries in a row.
    """
    keep = keep & (positions >= 0)
    width = int(keep.sum(dim=1).max()) if keep.numel() else 0
    sorted_positions, order = positions.masked_fill(~keep, -1).sort(dim=1, stable=True)
    start = positions.shape[1] - width
    return order[:, start:], sorted_positions[:, start:]


def gather_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`values (B, T, D)` gathered along dim 1 at `index (B, W)` -> `(B, W, D)`."""
    return values.gather(1, index[..., None].expand(-1, -1, values.shape[-1]))


def lookup(table: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """`table (B, P)` read at `positions (B, T)`; empty slots (-1) read as False / 0."""
    values = table.gather(1, positions.clamp(min=0))
    return values & (positions >= 0) if values.dtype == torch.bool else values.masked_fill(positions < 0, 0)


def by_position(values: torch.Tensor, positions: torch.Tensor, width: int, fill: float | bool) -> torch.Tensor:
    """Scatter per-entry `values (B, T)` into a per-position table `(B, width)`; empty slots are dropped."""
    table = torch.full((values.shape[0], width + 1), fill, dtype=values.dtype, device=values.device)
    table.scatter_(1, positions.masked_fill(positions < 0, width), values)
    return table[:, :width]
