"""The decode benchmark times every step, splits a step into the forward's named ranges, and times a stream token by token."""

import pytest
import torch
from tiny import random_ids, tiny_llama  # tests/tiny.py (pyproject.toml's pytest `pythonpath` names tests/)

import lazyllm
from lazybench.decode import breakdown, configurations, stream_table, summary, timed_generation
from lazybench.profiles import apply


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


class Words:
    """A tokenizer as far as a streamer needs one."""

    def decode(self, ids, **kwargs):
        return " ".join(f"w{int(i)}" for i in ids)


def test_the_stream_notes_every_token_and_the_table_names_the_stall():
    model = tiny_llama()
    ids = random_ids(200)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    configs = configurations(["2:0.3"], ["revive_all_at1", "paper"], 6, ["paper", "window32+pool7"])
    assert set(configs) == {
        "baseline",
        "2:0.3+revive_all_at1",
        "2:0.3+revive_all_at1+window32+pool7",
        "2:0.3",
        "2:0.3+window32+pool7",
    }
    runs = {}
    for name, config in configs.items():
        apply(model, config)
        runs[name] = [timed_generation(model, inputs, new_tokens=20, device="cpu", tokenizer=Words())]
        run = runs[name][0]
        assert len(run.token_s) == 20 and run.token_s == sorted(run.token_s)
        assert run.ttft_s <= run.token_s[0] <= run.total_s
    revived = runs["2:0.3+revive_all_at1"][0].stats["revived_per_step"]
    assert revived[0] > 0 and not any(revived[1:]), "every parked token at the first step: the stall"
    rows = {name: summary(found, runs["baseline"], 20) for name, found in runs.items()}
    rendered = stream_table(rows)
    assert rendered.count("\n") == 1 + len(configs) and "ITL p99" in rendered
    stall = rows["2:0.3+revive_all_at1"]["stream"]
    assert stall["second_s"] - stall["first_s"] == pytest.approx(stall["stall_ms"] / 1000, rel=1e-6)
