"""Tiny random-weight Llama models and prompts for unit tests, shared by tests/ and the rig's benchmarks/tests.

A plain module, not a fixture: tests/ finds it beside its conftest.py (pytest puts that folder on sys.path, with or
without pyproject.toml's `pythonpath`), benchmarks/tests through `pythonpath` (which names tests/).
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

# name -> LlamaConfig overrides. "xgen" is XGen-7B's shape scaled down: multi-head attention, 32 layers.
TINY_SHAPES = {
    "mha": dict(num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=4),
    "gqa": dict(num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2),
    "xgen": dict(
        num_hidden_layers=32, num_attention_heads=4, num_key_value_heads=4, hidden_size=32, intermediate_size=64
    ),
}


# The widths of every random-weight test model (each family adds its depth and heads).
SMALL_DIMS = dict(vocab_size=256, hidden_size=64, intermediate_size=128, max_position_embeddings=4096)


def tiny_llama(shape: str = "gqa", attn: str = "sdpa", seed: int = 0, **overrides: object) -> LlamaForCausalLM:
    """A random-weight Llama small enough for unit tests (fp32, eval mode)."""
    torch.manual_seed(seed)
    settings = dict(SMALL_DIMS, rope_theta=10000.0, attn_implementation=attn)
    settings.update(TINY_SHAPES[shape])
    settings.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**settings)).eval()


def random_ids(length: int, batch: int = 1, seed: int = 1, vocab: int = 256) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, length), generator=generator)
