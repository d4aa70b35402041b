"""The decode benchmark times every step and splits a step into the forward's named ranges."""

import torch
from tiny import random_ids, tiny_llama  # tests/tiny.py (pyproject.toml's pytest `pythonpath` names tests/)

import lazyllm
from lazybench.decode import breakdown, timed_generation


def test_the_decode_bench_times_every_step_and_splits_a_step_into_ranges():
    model = tiny_llama()  # 6 layers, grouped-query attention
    ids = random_ids(200)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    paper = lazyllm.LazyConfig(prune_layers=(2,), keep_ratios=(0.3,), min_prompt_tokens=0, revive_all_at=None)
    lazyllm.patch(model, paper)
    run = timed_generation(model, inputs, new_tokens=6, device="cpu")
    assert len(run.step_ms) == 5 and run.stats["pruned"] and run.stats["decode_steps"] == 5
    assert run.ttft_s <= run.whole_s(6) <= run.total_s
    ranges = breakdown(model, inputs, new_tokens=6, device="cpu")
    assert {"layers", "scoring", "mask", "bookkeeping"} <= set(ranges)
