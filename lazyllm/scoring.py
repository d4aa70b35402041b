"""Importance scores: how much the last token(s) attend to each cached token (Eq. 1 of the paper, and options).

The paper scores token i at a cut by the attention probability that the last token paid it in the layer before,
averaged over the query heads. The options of `LazyConfig` change that score: a window of the last W tokens as
queries (`score_window`) and max-pooling over neighbouring positions (`score_pool`). With the defaults the score is
the paper's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_scores(
    queries: torch.Tensor,
    query_positions: torch.Tensor,
    keys: torch.Tensor,
    key_positions: torch.Tensor,
    allowed: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """Attention probabilities of a few query tokens over the keys of one layer, reduced to one score per key.

    Args:
        queries: `(B, H, w, d)` the queries of the last `w` tokens, RoPE applied.
        query_positions: `(B, w)` their positions; -1 marks an empty slot (a row with fewer than `w` tokens).
        keys: `(B, KVH, T, d)` the layer's cached keys (RoPE applied); with grouped-query attention each key
            head serves `H // KVH` query heads, handled by a reshape, never by repeating the keys.
        key_positions: `(B, T)` positions of the cached keys.
        allowed: `(B, T)` the keys the queries attended in that layer.
        scaling: the layer's softmax scale.

    Returns:
        `(B, T)` float32 scores, 0 where not allowed: per head, the mean over the window's queries of their
        attention probabilities (each query attends causally), then averaged over heads. Only `w` query rows are
        computed, never the T x T map; `w = 1` is the paper's score exactly.
    """
    batch, heads, window, head_dim = queries.shape
    kv_heads = keys.shape[1]
    grouped = queries.to(keys.dtype).reshape(batch, kv_heads, heads // kv_heads * window, head_dim)
    logits = torch.matmul(grouped, keys.transpose(-1, -2)).float() * scaling  # (B, KVH, G * w, T)
    logits = logits.reshape(batch, kv_heads, heads // kv_heads, window, -1)  # (B, KVH, G, w, T)
    causal = key_positions[:, None, :] <= query_positions[:, :, None]  # (B, w, T)
    visible = (allowed[:, None, :] & causal)[:, None, None]  # (B, 1, 1, w, T)
    probabilities = logits.masked_fill(~visible, float("-inf")).softmax(dim=-1).nan_to_num(0.0)
    real_queries = (query_positions >= 0).float()  # (B, w): empty slots do not vote
    per_head = (
        torch.einsum("bkgwt,bw->bkgt", probabilities, real_queries) / real_queries.sum(dim=1)[:, None, None, None]
    )
    per_head = per_head.flatten(1, 2)  # (B, H, T)
    return per_head.mean(dim=1)


def pool_neighbours(table: torch.Tensor, kernel: int) -> torch.Tensor:
    """`(B, P)` per-position scores max-pooled over `kernel` neighbouring positions (odd; 1 returns the table)."""
    if kernel == 1:
        return table
    return F.max_pool1d(table[:, None], kernel, stride=1, padding=kernel // 2)[:, 0]
