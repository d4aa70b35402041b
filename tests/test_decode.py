"""Decoding on a pruned cache: the revival policies, their bookkeeping, and the paper's policy kept as it was."""

import math

import pytest
import torch
from conftest import random_ids, tiny_llama
from transformers import DynamicCache

import lazyllm
import lazyllm.forward
from lazyllm.bench.decode import POLICIES  # the policies the rig measures
from lazyllm.cache import GrowingLayer, Slots

SCHEDULE = dict(prune_layers=(2, 4), keep_ratios=(0.5, 0.2), min_prompt_tokens=0)

# Greedy tokens and revivals of the paper's policy, recorded with the code before the decoding rework (main at
# db0115f): 200 random prompt tokens, 24 new tokens.
PAPER_REFERENCE = {
    "gqa": (
        dict(shape="gqa", attn="sdpa", config=dict(prune_layers=(2, 4), keep_ratios=(0.5, 0.2))),
        [58, 207, 112, 58, 207, 112, 58, 207, 112, 58, 207, 112, 58, 207, 112, 58, 207, 112, 62, 195, 58, 207, 112, 62],
        210,
    ),
    "mha_eager": (
        dict(shape="mha", attn="eager", config=dict(prune_layers=(3,), keep_ratios=(0.3,))),
        [37, 85, 0, 212, 238, 209, 0, 142, 4, 85, 4, 85, 111, 209, 0, 142, 125, 85, 0, 212, 85, 111, 209, 0],
        140,
    ),
    "window": (
        dict(
            shape="gqa",
            attn="sdpa",
            config=dict(prune_layers=(2, 4), keep_ratios=(0.5, 0.2), score_window=8, score_pool=3),
        ),
        [58, 207, 112, 58, 112, 58, 112, 58, 112, 62, 195, 58, 207, 112, 58, 207, 112, 62, 195, 58, 207, 112, 62, 195],
        201,
    ),
}


@pytest.mark.parametrize("case", sorted(PAPER_REFERENCE))
def test_paper_policy_reproduces_the_committed_outputs(case):
    setup, tokens, revived = PAPER_REFERENCE[case]
    model = tiny_llama(setup["shape"], setup["attn"])
    lazyllm.patch(model, lazyllm.LazyConfig(min_prompt_tokens=0, revive_all_at=None, **setup["config"]))
    with torch.inference_mode():
        out = model.generate(random_ids(200), max_new_tokens=24, do_sample=False)
    assert out[0, 200:].tolist() == tokens
    assert lazyllm.stats(model).revived_tokens == revived


def generate_manually(model, ids, steps):
    """Greedy prefill + `steps` decoding steps on a cache we hold: returns (cache, lazyllm's state, new tokens)."""
    cache = DynamicCache(config=model.config)
    new = []
    with torch.inference_mode():
        logits = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        for step in range(steps):
            token = logits.argmax(dim=-1, keepdim=True)
            new.append(int(token))
            position = torch.tensor([[ids.shape[1] + step]])
            logits = model(token, past_key_values=cache, use_cache=True, position_ids=position).logits[:, -1]
    return cache, model._lazyllm.states.get(cache), new


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_the_kv_cache_holds_each_token_at_most_once_per_layer(policy):
    model = tiny_llama("gqa")
    lazyllm.patch(model, lazyllm.LazyConfig(**SCHEDULE, **POLICIES[policy]))
    length, steps = 240, 30
    cache, state, _ = generate_manually(model, random_ids(length), steps)
    for layer, positions in enumerate(state.positions):
        assert cache.layers[layer].keys.shape[2] == positions.shape[1], "one recorded position per KV entry"
        assert positions.unique().numel() == positions.numel(), f"layer {layer} computed a token twice"
        assert set(range(length, length + steps)) <= set(positions[0].tolist()), "every new token, every layer"
    for cut, layer in enumerate(SCHEDULE["prune_layers"] if policy != "static" else ()):  # static: no Aux Cache
        held, before = set(state.positions[layer][0].tolist()), set(state.positions[layer - 1][0].tolist())
        parked = set(state.aux[cut].positions[0].tolist()) - {-1}
        assert not parked & held, "a token is either parked at the cut or computed past it"
        assert held | parked == before, "what the layer before computed is held here or parked"
    stats = lazyllm.stats(model)
    assert len(stats.revived_per_step) == steps and sum(stats.revived_per_step) == stats.revived_tokens
    if policy != "static":
        assert stats.revived_tokens > 0, "random weights shift attention between steps: the policy is exercised"


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_keep_all_is_the_unpruned_model_for_every_policy(policy, attn):
    model = tiny_llama("gqa", attn)
    ids = random_ids(150)
    with torch.inference_mode():
        base_logits = model(ids).logits[:, -1]
        base = model.generate(ids, max_new_tokens=32, do_sample=False)
        keep_all = dict(prune_layers=(2, 4), keep_ratios=(1.0, 1.0), min_prompt_tokens=0)
        lazyllm.patch(model, lazyllm.LazyConfig(**keep_all, **POLICIES[policy]))
        logits = model(ids, logits_to_keep=1).logits[:, -1]
        out = model.generate(ids, max_new_tokens=32, do_sample=False)
    stats = lazyllm.stats(model)
    assert stats.pruned and stats.revived_tokens == 0
    assert stats.whole_generation_token_fraction == 1.0
    assert (logits - base_logits).abs().max().item() < 1e-5
    assert torch.equal(out, base)


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_unpadded_batch_rows_decode_as_when_run_alone(policy):
    """Rows of one length revive different tokens, so some layers hold empty slots that no mask may let through."""
    model = tiny_llama("gqa")
    lazyllm.patch(model, lazyllm.LazyConfig(**SCHEDULE, **POLICIES[policy]))
    rows = torch.cat([random_ids(200, seed=3), random_ids(200, seed=4)])
    with torch.inference_mode():
        batched = model.generate(rows, attention_mask=torch.ones_like(rows), max_new_tokens=16, do_sample=False)
        for row, out in zip(rows, batched):
            alone = model.generate(row[None], max_new_tokens=16, do_sample=False)
            assert torch.equal(out, alone[0])


def test_reselect_every_revives_only_on_reselection_steps():
    model = tiny_llama("gqa")
    lazyllm.patch(model, lazyllm.LazyConfig(**SCHEDULE, reselect_every=4, revive_all_at=None))
    generate_manually(model, random_ids(240), 13)
    revived = lazyllm.stats(model).revived_per_step
    assert revived[0] > 0
    assert all(n == 0 for step, n in enumerate(revived) if step % 4), revived


def test_revive_all_at_brings_every_parked_token_back_then_stops_choosing(monkeypatch):
    model = tiny_llama("gqa")
    lazyllm.patch(model, lazyllm.LazyConfig(**SCHEDULE, revive_all_at=3))
    selections = []
    select = lazyllm.forward.select
    monkeypatch.setattr(lazyllm.forward, "select", lambda *args: selections.append(args[4]) or select(*args))
    length, steps = 240, 8
    cache, state, _ = generate_manually(model, random_ids(length), steps)
    assert len(selections) == 3 * len(SCHEDULE["prune_layers"]), "prefill and steps 1-2 choose; step 3 on do not"
    everything = list(range(length + steps))
    for layer, positions in enumerate(state.positions):
        assert sorted(positions[0].tolist()) == everything, f"layer {layer} holds every token, each once"
    assert all(int(aux.held()) == 0 for aux in state.aux)
    revived = lazyllm.stats(model).revived_per_step
    assert revived[2] > 0 and revived[3:] == [0] * (steps - 3), revived


def positional_scores(prefer):
    """A stand-in scorer: late (or early) entries score highest (entries in position order: one unpadded row)."""

    def scores(queries, query_positions, keys, key_positions, allowed, scaling):
        order = torch.arange(keys.shape[2], dtype=torch.float32)
        return (order if prefer["late"] else -order)[None].expand(allowed.shape).masked_fill(~allowed, 0.0).clone()

    return scores


def next_logits_after_turnaround(monkeypatch, **policy):
    """Prefill keeps the latest quarter; the first decoding step's scores prefer the earliest tokens."""
    model = tiny_llama("gqa")
    length = 200
    config = lazyllm.LazyConfig(
        prune_layers=(3,), keep_ratios=(0.25,), min_prompt_tokens=0, revive_all_at=None, **policy
    )
    lazyllm.patch(model, config)
    prefer = {"late": True}
    monkeypatch.setattr(lazyllm.forward, "attention_scores", positional_scores(prefer))
    ids = random_ids(length)
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        prefer["late"] = False
        out = model(ids[:, -1:], past_key_values=cache, use_cache=True, position_ids=torch.tensor([[length]]))
    return out.logits[:, -1], lazyllm.stats(model).revived_tokens


def test_beat_weakest_revives_only_tokens_above_what_the_layer_holds(monkeypatch):
    """The early tokens chosen now score below nothing the layer holds and would attend: none beats the weakest."""
    _, paper_revived = next_logits_after_turnaround(monkeypatch)
    _, revived = next_logits_after_turnaround(monkeypatch, revival="beat_weakest")
    assert paper_revived == math.ceil(0.25 * 200)
    assert revived == 0


def test_held_attends_every_entry_the_layer_holds(monkeypatch):
    """Nothing revived and every held entry attended: exactly static pruning; the paper attends other tokens."""
    held, _ = next_logits_after_turnaround(monkeypatch, revival="beat_weakest", decode_attend="held")
    static, _ = next_logits_after_turnaround(monkeypatch, revive=False)
    selected, _ = next_logits_after_turnaround(monkeypatch, revival="beat_weakest")
    assert torch.equal(held, static)
    assert not torch.allclose(held, selected)


def test_whole_generation_token_fraction_counts_prefill_and_decoding():
    model = tiny_llama("gqa")
    lazyllm.patch(model, lazyllm.LazyConfig(**SCHEDULE, revive_all_at=None))  # the paper's policy
    generate_manually(model, random_ids(240), 10)
    stats = lazyllm.stats(model)
    assert stats.whole_generation_token_fraction == pytest.approx(stats.total_token_layers / ((240 + 10) * 6))
    assert stats.prefill_token_fraction < stats.whole_generation_token_fraction < 1.0
    lazyllm.patch(model, lazyllm.LazyConfig(**SCHEDULE))  # the default revives every parked token at step 1
    generate_manually(model, random_ids(240), 10)
    assert lazyllm.stats(model).whole_generation_token_fraction == 1.0


def test_slots_append_in_place_take_and_compact():
    slots = Slots()
    slots.append(torch.tensor([[5, 1, 3]]), torch.tensor([[[5.0], [1.0], [3.0]]]))
    for position in (7, 9, 11):  # reallocates once, then writes into spare capacity
        slots.append(torch.tensor([[position]]), torch.tensor([[[float(position)]]]))
    assert slots.positions.tolist() == [[5, 1, 3, 7, 9, 11]]
    hidden, positions = slots.take(torch.tensor([[True, False, False, False, True, False]]))
    assert positions.tolist() == [[5, 9]] and hidden[0, :, 0].tolist() == [5.0, 9.0]
    assert slots.positions.tolist() == [[-1, 1, 3, 7, -1, 11]] and int(slots.held()) == 4
    slots.take(slots.positions == 7)
    slots.take(slots.positions == 1)  # more than half empty: compacted
    assert slots.positions.tolist() == [[3, 11]] and slots.hidden[0, :, 0].tolist() == [3.0, 11.0]


def test_growing_layer_appends_in_place_and_holds_what_concatenation_would():
    layer, parts = GrowingLayer(), [torch.randn(2, 3, n, 4) for n in (5, 1, 1, 70, 1)]
    for index, part in enumerate(parts):
        keys, values = layer.update(part, -part)
        if index == 2:
            buffer = keys.data_ptr()
    expected = torch.cat(parts, dim=2)
    assert torch.equal(keys, expected) and torch.equal(values, -expected) and layer.get_seq_length() == 78
    assert keys.data_ptr() != buffer, "70 entries did not fit: the buffer grew"
    before = keys.data_ptr()
    layer.update(parts[1], parts[1])  # room to spare since the growth: written in place
    assert layer.keys.data_ptr() == before and torch.equal(layer.keys[:, :, -1:], parts[1])
    layer.crop(-10)  # DynamicLayer's crop replaces `keys`: the next update starts from what is left
    keys, _ = layer.update(parts[0], parts[0])
    assert torch.equal(keys, torch.cat([expected[:, :, :69], parts[0]], dim=2))


@pytest.mark.parametrize(
    "option",
    [
        dict(revival="top"),
        dict(reselect_every=0),
        dict(reselect_every=True),
        dict(decode_attend="all"),
        dict(revive_all_at=0),
        dict(reselect_every=4),  # options of the steps before revive_all_at, whose default (1) leaves none
        dict(revival="beat_weakest", revive_all_at=1),
    ],
)
def test_bad_decoding_options_are_refused(option):
    with pytest.raises(lazyllm.ConfigError):
        lazyllm.LazyConfig(**SCHEDULE, **option)


def test_paper_options_work_with_a_later_revive_all_at_and_revive_false():
    assert lazyllm.LazyConfig(**SCHEDULE, reselect_every=4, revive_all_at=3).reselect_every == 4
    assert lazyllm.LazyConfig(**SCHEDULE, revive=False).revive_all_at == 1, "nothing is parked: nothing to revive"


def test_the_decode_bench_times_every_step_and_splits_a_step_into_ranges():
    from lazyllm.bench.decode import breakdown, timed_generation

    model = tiny_llama("gqa")
    inputs = {"input_ids": random_ids(200), "attention_mask": torch.ones(1, 200, dtype=torch.long)}
    lazyllm.patch(
        model, lazyllm.LazyConfig(prune_layers=(2,), keep_ratios=(0.3,), min_prompt_tokens=0, revive_all_at=None)
    )
    run = timed_generation(model, inputs, new_tokens=6, device="cpu")
    assert len(run.step_ms) == 5 and run.stats["pruned"] and run.stats["decode_steps"] == 5
    assert run.ttft_s <= run.whole_s(6) <= run.total_s
    ranges = breakdown(model, inputs, new_tokens=6, device="cpu")
    assert {"layers", "scoring", "mask", "bookkeeping"} <= set(ranges)
