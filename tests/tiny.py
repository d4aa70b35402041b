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


def write_gguf_layer(writer, vocab: int, hidden: int, ffn: int, kv_width: int, *, bias: bool, output: bool) -> None:
    """Write one decoder block's random float32 tensors (seed 0), with the embeddings, final norm and (`output`) an
    untied head; `bias`: q/k/v biases (Qwen2). Then write the file and close `writer` (a `gguf.GGUFWriter` whose
    metadata is set)."""
    import numpy as np

    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,)}
    shapes |= {"output.weight": (vocab, hidden)} if output else {}
    shapes |= {"blk.0.attn_norm.weight": (hidden,), "blk.0.ffn_norm.weight": (hidden,)}
    for name, rows in (("q", hidden), ("k", kv_width), ("v", kv_width)):
        shapes[f"blk.0.attn_{name}.weight"] = (rows, hidden)
        shapes |= {f"blk.0.attn_{name}.bias": (rows,)} if bias else {}
    shapes |= {
        "blk.0.attn_output.weight": (hidden, hidden),
        "blk.0.ffn_gate.weight": (ffn, hidden),
        "blk.0.ffn_up.weight": (ffn, hidden),
        "blk.0.ffn_down.weight": (hidden, ffn),
    }
    for name, shape in shapes.items():
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
