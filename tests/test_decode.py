"""Decoding on a pruned cache: the decoding policies, their bookkeeping, and the paper's policy kept as it was."""

import pytest
import torch
from conftest import random_ids, tiny_llama
from kv_checks import held
from transformers import DynamicCache

import lazyllm
import lazyllm.pruned_pass
from lazyllm.cache import GrowingLayer
from lazyllm.state import Slots

# The library's decoding policies: the default (revive every parked token at step 1), the paper's, static pruning.
POLICIES = {"default": {}, "paper": dict(revive_all_at=None), "static": dict(revive=False)}

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
    return cache, held(cache), new


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


def test_revive_all_at_brings_every_parked_token_back_then_stops_choosing(monkeypatch):
    model = tiny_llama("gqa")
    lazyllm.patch(model, lazyllm.LazyConfig(**SCHEDULE, revive_all_at=3))
    selections = []
    choose = lazyllm.pruned_pass.LazyPass.choose
    monkeypatch.setattr(
        lazyllm.pruned_pass.LazyPass, "choose", lambda *args: selections.append(args[2]) or choose(*args)
    )
    length, steps = 240, 8
    cache, state, _ = generate_manually(model, random_ids(length), steps)
    assert len(selections) == 3 * len(SCHEDULE["prune_layers"]), "prefill and steps 1-2 choose; step 3 on do not"
    everything = list(range(length + steps))
    for layer, positions in enumerate(state.positions):
        assert sorted(positions[0].tolist()) == everything, f"layer {layer} holds every token, each once"
    assert all(int(aux.held()) == 0 for aux in state.aux)
    revived = lazyllm.stats(model).revived_per_step
    assert revived[2] > 0 and revived[3:] == [0] * (steps - 3), revived


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
        dict(revive_all_at=0),
        dict(revive_all_at=True),
        dict(revive_all_at=1.5),
    ],
)
def test_bad_decoding_options_are_refused(option):
    with pytest.raises(lazyllm.ConfigError):
        lazyllm.LazyConfig(**SCHEDULE, **option)


def test_revive_false_keeps_the_default_revive_all_at():
    assert lazyllm.LazyConfig(**SCHEDULE, revive=False).revive_all_at == 1, "nothing is parked: nothing to revive"


def decode_turns(model, ids, turn, before, after, config_between=None):
    """Prefill `ids`, `before` greedy steps, (re-patch with `config_between`), `after` steps, a second turn `turn`
    (several new tokens), then `after` steps again, all on one cache: (new tokens, the turn's logits, cache)."""
    cache = DynamicCache(config=model.config)
    tokens, length = [], ids.shape[1]

    def step(token):
        nonlocal length
        position = torch.arange(length, length + token.shape[1])[None, :]
        length += token.shape[1]
        return model(token, past_key_values=cache, use_cache=True, position_ids=position).logits[:, -1]

    with torch.inference_mode():
        logits = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        for count in (before, after):
            for _ in range(count):
                token = logits.argmax(dim=-1, keepdim=True)
                tokens.append(int(token))
                logits = step(token)
            if config_between is not None:
                lazyllm.patch(model, config_between)
                config_between = None
        turn_logits = logits = step(turn)
        for _ in range(after):
            token = logits.argmax(dim=-1, keepdim=True)
            tokens.append(int(token))
            logits = step(token)
    return tokens, turn_logits, cache


@pytest.mark.parametrize("order", ["wide_then_narrow", "narrow_then_wide"])
def test_repatching_between_calls_on_one_cache_follows_the_caches_own_config(order):
    """A pruned cache decodes, and takes a new turn, with the config its prefill ran with: re-patching the model
    between two calls on it (other cuts, another score window) changes only the next prefill's config."""
    wide = lazyllm.LazyConfig(**SCHEDULE, revive_all_at=None, score_window=8, score_pool=3)
    narrow = lazyllm.LazyConfig(prune_layers=(3,), keep_ratios=(0.3,), min_prompt_tokens=0, revive_all_at=None)
    own, other = (wide, narrow) if order == "wide_then_narrow" else (narrow, wide)
    ids, turn = random_ids(200), random_ids(5, seed=3)
    expected, expected_logits, _ = decode_turns(lazyllm.patch(tiny_llama("gqa"), own), ids, turn, 3, 4)
    model = lazyllm.patch(tiny_llama("gqa"), own)
    tokens, logits, cache = decode_turns(model, ids, turn, 3, 4, config_between=other)
    assert tokens == expected and torch.equal(logits, expected_logits)
    assert held(cache).state.config == own and lazyllm.stats(model).decode_steps == 11
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=2, do_sample=False)
    assert lazyllm.stats(model).schedule == other.describe(), "a new prefill runs the model's new config"
