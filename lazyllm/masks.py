"""Attention masks of the pruned forward, built from the original positions of queries and keys."""

from __future__ import annotations

import torch
from transformers import PretrainedConfig

from lazyllm.selection import lookup


def window_start(before: torch.Tensor, query_positions: torch.Tensor, window: int | None) -> int:
    """The first of a layer's entries `before (B, T0)` that some query (`query_positions (B, q)`) may attend
    through a sliding `window` (0 for full attention): every earlier entry lies outside each query's window.

    A sliding layer attends its entries from here on only, so that a decoding step's keys are the ones a window
    cache (Transformers' `DynamicSlidingWindowLayer`) holds, in the same order: the same sums as the unpatched
    model's, and no work on keys the mask would hide. One host sync.
    """
    if window is None or before.shape[1] == 0:
        return 0
    queries = query_positions.masked_fill(query_positions < 0, torch.iinfo(query_positions.dtype).max)
    oldest = queries.min(dim=1).values.to(before.device)  # (B,) each row's oldest query
    needed = ((before >= 0) & (before > oldest[:, None] - window)).any(dim=0)  # (T0,)
    first = torch.where(needed.any(), needed.int().argmax(), needed.shape[0])
    return int(first)


def attention_mask_for(
    model_config: PretrainedConfig,
    before: torch.Tensor,
    query_positions: torch.Tensor,
    chosen: torch.Tensor | None,
    dtype: torch.dtype,
    window: int | None,
    padded: bool,
) -> torch.Tensor | None:
    """The mask of one layer: every query attends the chosen keys at or before its own position (and after
    `position - window` in a sliding-window layer).

    Args:
        before: `(B, T0)` positions of the entries the layer held before this call.
        query_positions: `(B, q)` positions of the tokens it computes now (their keys are appended after `before`).
        chosen: `(B, width)` tokens the layer may attend, None for all.
        window: the layer's sliding window, None for full attention.
        padded: whether some row of the generation has empty slots.

    Returns:
        `(B, 1, q, T0 + q)`: bool for SDPA, additive float for eager; None where SDPA's own handling is exact
        (a causal prefill over sorted tokens, or one query that may see every key) and a sliding window hides
        nothing (the keys span fewer positions than the window, where Transformers' masks skip it too).
    """
    key_positions = torch.cat([before.to(query_positions.device), query_positions], dim=1)  # (B, T)
    sdpa = model_config._attn_implementation == "sdpa"
    if sdpa:
        # prefill without empty slots: keys are the queries, sorted, so is_causal is exact
        causal = before.shape[1] == 0 and bool((query_positions >= 0).all())
        # one row: it holds no empty slot (rows of a batch revive different counts, leaving some)
        single = query_positions.shape == (1, 1) and chosen is None and not padded
        if (causal or single) and (window is None or _reach(key_positions, query_positions) < window):
            return None
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


def _reach(key_positions: torch.Tensor, query_positions: torch.Tensor) -> int:
    """How many positions the keys span up to the newest query: 1 + newest query - oldest key (one host sync)."""
    oldest = key_positions.masked_fill(key_positions < 0, torch.iinfo(key_positions.dtype).max).min()
    return int(query_positions.max() - oldest) + 1
