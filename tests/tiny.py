"""Tiny random-weight Llama models and prompts for unit tests, shared by tests/ and the rig's benchmarks/tests.

A plain module, not a fixture: tests/ finds it beside its conftest.py (pytest puts that folder on sys.path, with or
without pyproject.toml's `pythonpath`), benchmarks/tests through `pythonpath` (which names tests/).
"""

from __future__ import annotations

from pathlib import Path

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


def write_tiny_gguf(path: Path, arch: str, tokens: list[str], merges: list[str]) -> None:
    """Write a one-layer float32 GGUF of `arch` with random weights (seed 0) and a byte-level BPE vocabulary: `tokens`
    (the first three: unk, bos, eos) and `merges`. "llama": an untied head; "qwen2": q/k/v biases, a tied head, the
    qwen2 pre-tokenizer, pad = bos."""
    import gguf
    import numpy as np

    qwen2 = arch == "qwen2"
    vocab, hidden, ffn, heads, kv_heads = len(tokens), 16, 32, 2, 1
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6 if qwen2 else 1e-5)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    if qwen2:
        writer.add_tokenizer_pre("qwen2")
        writer.add_pad_token_id(1)
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (vocab - 3))  # 3: control, 1: normal
    writer.add_token_merges(merges)  # Transformers 4.x reads a one-element list as a string
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)

    rng = np.random.default_rng(0)
    kv_width = kv_heads * hidden // heads
    shapes = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,)}
    shapes |= {} if qwen2 else {"output.weight": (vocab, hidden)}
    shapes |= {"blk.0.attn_norm.weight": (hidden,), "blk.0.ffn_norm.weight": (hidden,)}
    for name, rows in (("q", hidden), ("k", kv_width), ("v", kv_width)):
        shapes[f"blk.0.attn_{name}.weight"] = (rows, hidden)
        shapes |= {f"blk.0.attn_{name}.bias": (rows,)} if qwen2 else {}
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
