"""Importance scores: how much the last token attends to each cached token (Eq. 1 of the paper)."""

from __future__ import annotations

import torch


def last_token_attention(
    query: torch.Tensor, keys: torch.Tensor, allowed: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Attention probabilities of the last token over the keys of one layer, averaged over all query heads.

    Args:
        query: `(B, H, d)` the last token's query, RoPE applied.
        keys: `(B, KVH, T, d)` the layer's cached keys (RoPE applied); with grouped-query attention each key
            head serves `H // KVH` query heads, handled by a reshape, never by repeating the keys.
        allowed: `(B, T)` the keys the last token attended in that layer.
        scaling: the layer's softmax scale.

    Returns:
        `(B, T)` float32 scores, 0 where not allowed. Only one query row is computed, never the T x T map.
    """
    batch, heads, head_dim = query.shape
    kv_heads = keys.shape[1]
    grouped = query.to(keys.dtype).reshape(batch, kv_heads, heads // kv_heads, head_dim)  # (B, KVH, G, d)
    logits = torch.matmul(grouped, keys.transpose(-1, -2)).float() * scaling  # (B, KVH, G, T)
    logits = logits.masked_fill(~allowed[:, None, None, :], float("-inf"))
    return logits.softmax(dim=-1).mean(dim=(1, 2))


def random_scores(allowed: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform random scores `(B, T)`: the paper's random token-drop baseline at the same budget."""
    scores = torch.rand(allowed.shape, generator=generator, device=generator.device)
    return scores.to(allowed.device).masked_fill(~allowed, 0.0)
