"""The decode benchmark times every step and splits a step into the forward's named ranges."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import lazyllm
from lazybench.decode import breakdown, timed_generation


def test_the_decode_bench_times_every_step_and_splits_a_step_into_ranges():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
    )
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(3, 256, (1, 200), generator=torch.Generator().manual_seed(1))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    paper = lazyllm.LazyConfig(prune_layers=(2,), keep_ratios=(0.3,), min_prompt_tokens=0, revive_all_at=None)
    lazyllm.patch(model, paper)
    run = timed_generation(model, inputs, new_tokens=6, device="cpu")
    assert len(run.step_ms) == 5 and run.stats["pruned"] and run.stats["decode_steps"] == 5
    assert run.ttft_s <= run.whole_s(6) <= run.total_s
    ranges = breakdown(model, inputs, new_tokens=6, device="cpu")
    assert {"layers", "scoring", "mask", "bookkeeping"} <= set(ranges)
