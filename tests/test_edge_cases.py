"""The edge cases users hit: fallbacks that must be exact, refusals before any work, and unusual but valid calls."""

import math

import pytest
import torch
from conftest import random_ids, tiny_llama
from kv_checks import check_kv, checked_generate, pruned_stats, recording
from transformers import DynamicCache, MistralConfig

import lazyllm
import lazyllm.compat

SCHEDULE = lazyllm.LazyConfig(prune_layers=(2, 4), keep_ratios=(0.5, 0.2), min_prompt_tokens=0)
KEEP_ALL = lazyllm.LazyConfig(prune_layers=(2, 4), keep_ratios=(1.0, 1.0), min_prompt_tokens=0)
STRICT = lazyllm.LazyConfig(prune_layers=(2, 4), keep_ratios=(0.5, 0.2), min_prompt_tokens=0, strict=True)
GREEDY = dict(do_sample=False)
CACHE_FIELD = "cache" if lazyllm.compat.CACHE_KWARG == "cache" else "past_key_values"  # of the outputs


def last_logits(model, ids, **kwargs):
    return model(ids, logits_to_keep=1, **kwargs).logits[:, -1]


# -- fallbacks: the unpruned forward runs, exactly, and the stats say why ---------------------------------------------
def test_training_mode_falls_back_exactly():
    model = tiny_llama("gqa").train()
    ids = random_ids(120)
    expected = last_logits(model, ids)
    lazyllm.patch(model, SCHEDULE)
    got = last_logits(model, ids)
    assert torch.equal(got, expected) and got.requires_grad
    assert lazyllm.stats(model).fallback_reason == "the model is in training mode"


def test_output_attentions_in_prefill_falls_back_exactly():
    model = tiny_llama("gqa", "eager")
    ids = random_ids(120)
    with torch.inference_mode():
        expected = model(ids, output_attentions=True, logits_to_keep=1)
        lazyllm.patch(model, SCHEDULE)
        got = model(ids, output_attentions=True, logits_to_keep=1)
    assert torch.equal(got.logits, expected.logits)
    assert all(torch.equal(a, b) for a, b in zip(got.attentions, expected.attentions, strict=True))
    assert "output_attentions" in lazyllm.stats(model).fallback_reason


def test_an_empty_schedule_falls_back_exactly():
    model = tiny_llama("gqa")
    ids = random_ids(120)
    with torch.inference_mode():
        expected = model.generate(ids, max_new_tokens=8, **GREEDY)
        lazyllm.patch(model, lazyllm.LazyConfig(min_prompt_tokens=0))
        got = model.generate(ids, max_new_tokens=8, **GREEDY)
    assert torch.equal(got, expected)
    assert lazyllm.stats(model).fallback_reason == "the schedule prunes no layer"


def test_use_cache_false_prunes_each_call_from_scratch():
    """Without a cache every generate() step is a whole-sequence forward: each is a pruned prefill of its own
    (so keep-all is the unpatched model), and the call returns no cache."""
    model = tiny_llama("gqa")
    ids = random_ids(120)
    with torch.inference_mode():
        expected = model.generate(ids, max_new_tokens=4, use_cache=False, **GREEDY)
        lazyllm.patch(model, KEEP_ALL)
        got = model.generate(ids, max_new_tokens=4, use_cache=False, **GREEDY)
        assert pruned_stats(model).prompt_tokens == [123] and lazyllm.stats(model).decode_steps == 0
        lazyllm.patch(model, SCHEDULE)
        uncached = model(ids, use_cache=False, logits_to_keep=1)
        pruned_stats(model)
        cached = last_logits(model, ids, use_cache=True)
    assert torch.equal(got, expected)
    assert getattr(uncached, CACHE_FIELD, None) is None and torch.equal(uncached.logits[:, -1], cached)


# -- refusals before any work ----------------------------------------------------------------------------------------
def sliding_window_cache() -> DynamicCache:
    shape = dict(num_hidden_layers=6, hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    return DynamicCache(config=MistralConfig(sliding_window=64, **shape))


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(assistant_model="tiny"), "assisted"),
        (dict(cache_implementation="offloaded"), "cache_implementation='offloaded'"),
        (dict(cache_implementation="quantized"), "cache_implementation='quantized'"),
        (dict(cache_implementation="sliding_window"), "cache_implementation='sliding_window'"),
        (dict(past_key_values="sliding"), "sliding-window"),
    ],
)
def test_strict_refuses_unprunable_generate_options_before_any_work(options, message):
    model = lazyllm.patch(tiny_llama("gqa"), STRICT)
    if options.get("assistant_model"):
        options["assistant_model"] = tiny_llama("gqa", seed=1)
    if options.get("past_key_values"):
        options["past_key_values"] = sliding_window_cache()
    calls = []
    model.model.register_forward_pre_hook(lambda *args: calls.append(1))
    with pytest.raises((lazyllm.UnsupportedGenerationError, lazyllm.UnsupportedCacheError), match=message):
        model.generate(random_ids(120), max_new_tokens=4, **options)
    assert calls == [], "nothing ran before the error"


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("cache_implementation", "offloaded", "cache_implementation"),
        ("prompt_lookup_num_tokens", 3, "prompt-lookup"),
        ("prefill_chunk_size", 32, "prefill_chunk_size"),
    ],
)
def test_strict_refuses_options_set_in_the_models_generation_config(option, value, message):
    model = lazyllm.patch(tiny_llama("gqa"), STRICT)
    setattr(model.generation_config, option, value)
    calls = []
    model.model.register_forward_pre_hook(lambda *args: calls.append(1))
    with pytest.raises(lazyllm.UnsupportedGenerationError, match=message):
        model.generate(random_ids(120), max_new_tokens=4)
    assert calls == []


def test_strict_refuses_forward_calls_that_cannot_be_pruned_before_the_layers_run():
    model = lazyllm.patch(tiny_llama("gqa"), STRICT)
    ids = random_ids(120)
    calls = []
    model.model.layers[0].register_forward_pre_hook(lambda *args: calls.append(1))
    with torch.inference_mode():
        with pytest.raises(lazyllm.UnsupportedCallError, match="2D attention_mask"):
            model(ids, attention_mask=torch.ones(1, 1, 120, 120, dtype=torch.bool).tril(), logits_to_keep=1)
        with pytest.raises(lazyllm.UnsupportedCacheError, match="sliding-window"):
            model(ids, past_key_values=sliding_window_cache(), use_cache=True, logits_to_keep=1)
    assert calls == []


# -- unusual but valid calls -----------------------------------------------------------------------------------------
def test_a_prompt_of_exactly_min_prompt_tokens_is_pruned():
    threshold = 101
    config = lazyllm.LazyConfig(prune_layers=(2,), keep_ratios=(0.5,), min_prompt_tokens=threshold)
    model = lazyllm.patch(tiny_llama("gqa"), config)
    with torch.inference_mode():
        model(random_ids(threshold), logits_to_keep=1)
        assert pruned_stats(model).kept_per_layer == [threshold] * 2 + [math.ceil(threshold / 2)] * 4
        model(random_ids(threshold - 1), logits_to_keep=1)
        assert f"min_prompt_tokens={threshold}" in lazyllm.stats(model).fallback_reason
        ids = random_ids(threshold, batch=2)
        mask = torch.ones_like(ids)
        mask[1, 0] = 0  # a batch prunes its long rows and keeps every token of the short ones
        _, stats, _ = checked_generate(model, ids, attention_mask=mask, max_new_tokens=3, **GREEDY)
    assert stats.kept_per_layer == [2 * threshold - 1] * 2 + [math.ceil(threshold / 2) + threshold - 1] * 4


def test_keep_counts_of_one_keep_only_the_last_token():
    config = lazyllm.LazyConfig(prune_layers=(3,), keep_ratios=(0.001,), min_prompt_tokens=0)
    model = lazyllm.patch(tiny_llama("gqa"), config)
    ids = random_ids(150, batch=2)
    with torch.inference_mode():
        _, stats, counts = checked_generate(model, ids, max_new_tokens=6, **GREEDY)
    assert stats.kept_per_layer == [300] * 3 + [2] * 3
    assert counts[3] == 2 + 2 * 5 + stats.revived_tokens


def test_inputs_embeds_prune_like_input_ids():
    model = tiny_llama("gqa")
    ids = random_ids(150)
    with torch.inference_mode():
        embeds = model.model.embed_tokens(ids)
        expected = model.generate(inputs_embeds=embeds, max_new_tokens=6, **GREEDY)
        lazyllm.patch(model, KEEP_ALL)
        same = model.generate(inputs_embeds=embeds, max_new_tokens=6, **GREEDY)
        pruned_stats(model)
        lazyllm.patch(model, SCHEDULE)
        from_ids, stats_ids, _ = checked_generate(model, ids, max_new_tokens=6, **GREEDY)
        from_embeds, stats_embeds, _ = checked_generate(model, inputs_embeds=embeds, max_new_tokens=6, **GREEDY)
    assert torch.equal(same, expected)
    assert torch.equal(from_embeds, from_ids[:, 150:])
    assert stats_embeds.as_dict() == stats_ids.as_dict()


def test_a_row_that_ends_early_leaves_the_other_rows_as_when_run_alone():
    model = lazyllm.patch(tiny_llama("gqa"), SCHEDULE)
    rows = [random_ids(200, seed=3)[0], random_ids(150, seed=4)[0]]
    options = dict(max_new_tokens=10, pad_token_id=0, **GREEDY)
    with torch.inference_mode():
        eos = int(model.generate(rows[0][None], **options)[0, 202])  # row 0 ends with its third token
        alone = [model.generate(row[None], eos_token_id=eos, **options)[0, len(row) :] for row in rows]
        ids = torch.zeros(2, 200, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, 200 - len(row) :], mask[i, 200 - len(row) :] = row, 1
        batched, _, _ = checked_generate(model, ids, attention_mask=mask, eos_token_id=eos, **options)
    assert alone[0].tolist()[-1] == eos and len(alone[0]) == 3 and len(alone[1]) == 10
    assert torch.equal(batched[0, 200:203], alone[0]) and batched[0, 203:].eq(0).all()
    assert torch.equal(batched[1, 200:], alone[1])


def test_one_new_token_is_the_pruned_prefills_choice():
    model = lazyllm.patch(tiny_llama("gqa"), SCHEDULE)
    ids = random_ids(150)
    with torch.inference_mode():
        token = last_logits(model, ids).argmax(-1)
        out, stats, _ = checked_generate(model, ids, max_new_tokens=1, **GREEDY)
    assert out.shape == (1, 151) and out[0, -1] == token
    assert stats.decode_steps == 0 and stats.decode_token_layers == 0


def test_cuts_at_layer_one_and_at_the_last_layer():
    model = tiny_llama("gqa")
    ids = random_ids(160, batch=2)
    edges = dict(prune_layers=(1, 5), min_prompt_tokens=0)
    with torch.inference_mode():
        expected = model.generate(ids, max_new_tokens=8, **GREEDY)
        lazyllm.patch(model, lazyllm.LazyConfig(keep_ratios=(1.0, 1.0), **edges))
        assert torch.equal(model.generate(ids, max_new_tokens=8, **GREEDY), expected)
        pruned_stats(model)
        lazyllm.patch(model, lazyllm.LazyConfig(keep_ratios=(0.4, 0.1), **edges))
        _, stats, counts = checked_generate(model, ids, max_new_tokens=16, **GREEDY)
    assert stats.kept_per_layer == [320] + [128] * 4 + [32]
    assert stats.revived_tokens > 0 and counts[5] > 32 + 2 * 15


def manual_greedy(model, ids, steps, explicit_positions):
    """Prefill and `steps` decoding calls by hand, with or without position_ids; returns the tokens and the
    cache check."""
    cache = DynamicCache(config=model.config)
    with recording(model) as seen:
        token = last_logits(model, ids, past_key_values=cache, use_cache=True).argmax(-1, keepdim=True)
        tokens = [token]
        for step in range(steps):
            positions = {"position_ids": torch.tensor([[ids.shape[1] + step]])} if explicit_positions else {}
            token = last_logits(model, token, past_key_values=cache, use_cache=True, **positions).argmax(
                -1, keepdim=True
            )
            tokens.append(token)
    assert pruned_stats(model).decode_steps == steps
    return torch.cat(tokens, dim=1), check_kv(*seen[0])


def test_a_manual_decode_loop_with_and_without_position_ids_is_generate():
    model = lazyllm.patch(tiny_llama("gqa"), SCHEDULE)
    ids = random_ids(150)
    with torch.inference_mode():
        expected, _, expected_counts = checked_generate(model, ids, max_new_tokens=9, **GREEDY)
        explicit, explicit_counts = manual_greedy(model, ids, 8, explicit_positions=True)
        implicit, implicit_counts = manual_greedy(model, ids, 8, explicit_positions=False)
    assert torch.equal(explicit, expected[:, 150:]) and torch.equal(implicit, expected[:, 150:])
    assert explicit_counts == implicit_counts == expected_counts


def test_a_prompt_up_to_max_position_embeddings():
    model = tiny_llama("gqa", max_position_embeddings=256)
    ids = random_ids(250)
    with torch.inference_mode():
        expected = model.generate(ids, max_new_tokens=6, **GREEDY)
        lazyllm.patch(model, KEEP_ALL)
        assert torch.equal(model.generate(ids, max_new_tokens=6, **GREEDY), expected)
        pruned_stats(model)
        lazyllm.patch(model, SCHEDULE)
        out, _, counts = checked_generate(model, ids, max_new_tokens=6, **GREEDY)
    assert out.shape == (1, 256) and counts[0] == 255
