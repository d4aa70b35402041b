"""Token-scoring options: window scores from eager maps, pooling, layer averages, identity at keep 1.0."""

import math

import pytest
import torch
from conftest import random_ids, tiny_llama
from kv_checks import checked_generate
from test_pruning import prefill

import lazyllm
import lazyllm.pruned_pass
from lazyllm.scoring import pool_neighbours

ALL_OPTIONS = dict(score_window=16, score_pool=5)


def spy_scores(monkeypatch) -> list[torch.Tensor]:
    """Record every score tensor the forward computes."""
    seen, score = [], lazyllm.pruned_pass.attention_scores

    def spy(*args):
        seen.append(score(*args))
        return seen[-1]

    monkeypatch.setattr(lazyllm.pruned_pass, "attention_scores", spy)
    return seen


@pytest.mark.parametrize("shape", ["mha", "gqa"])
@pytest.mark.parametrize("window", [1, 8])
def test_window_scores_equal_the_eager_attention_maps(shape, window, monkeypatch):
    """Per head, the mean attention row of the last `window` queries in the layer before the cut; then heads."""
    model = tiny_llama(shape, "eager")
    ids = random_ids(100)
    with torch.inference_mode():
        maps = model(ids, output_attentions=True).attentions  # per layer (B, H, N, N), causal
    seen = spy_scores(monkeypatch)
    config = lazyllm.LazyConfig(prune_layers=(3,), keep_ratios=(0.5,), min_prompt_tokens=0, score_window=window)
    lazyllm.patch(model, config)
    with torch.inference_mode():
        model(ids, logits_to_keep=1)
    expected = maps[2][:, :, -window:].mean(dim=2).mean(dim=1)  # (B, N)
    assert (seen[0] - expected).abs().max().item() < 1e-6


def test_window_scores_ignore_empty_query_slots_of_padded_rows(monkeypatch):
    """A left-padded row shorter than the window: its empty slots do not vote, so it scores as when run alone."""
    model = tiny_llama("gqa", "eager")
    ids = random_ids(40, batch=2)
    mask = torch.ones_like(ids)
    mask[0, :30] = 0  # row 0 holds 10 real tokens, fewer than the window
    seen = spy_scores(monkeypatch)
    lazyllm.patch(
        model, lazyllm.LazyConfig(prune_layers=(3,), keep_ratios=(0.5,), min_prompt_tokens=0, score_window=16)
    )
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    with torch.inference_mode():
        model(ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
        model(ids[:1, 30:], logits_to_keep=1)
    batched, alone = seen[0][0], seen[1][0]
    assert (batched[30:] - alone).abs().max().item() < 1e-5 and batched[:30].abs().max().item() == 0


def test_pooling_keeps_the_neighbours_of_a_peak():
    table = torch.zeros(1, 12)
    table[0, 6] = 1.0
    assert pool_neighbours(table, 5)[0].nonzero().flatten().tolist() == [4, 5, 6, 7, 8]
    assert torch.equal(pool_neighbours(table, 1), table)


def test_pooled_spans_go_on_whole(monkeypatch):
    """With one token scoring high, a pooled cut keeps it with its neighbours (a number or name stays whole)."""
    model = tiny_llama("gqa")
    length, peak = 200, 77

    def peaked(queries, query_positions, keys, key_positions, allowed, scaling):
        scores = torch.full(allowed.shape, 1e-3) + 1e-6 * key_positions.float()  # later tokens win ties
        scores[key_positions == peak] = 1.0
        return scores.masked_fill(~allowed, 0.0)

    monkeypatch.setattr(lazyllm.pruned_pass, "attention_scores", peaked)
    config = lazyllm.LazyConfig(prune_layers=(3,), keep_ratios=(0.1,), min_prompt_tokens=0, score_pool=7)
    lazyllm.patch(model, config)
    with torch.inference_mode():
        _, _, state = prefill(model, random_ids(length))
    kept = set(state.positions[3][0].tolist())
    assert set(range(peak - 3, peak + 4)) <= kept and len(kept) == math.ceil(0.1 * length)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_keep_all_with_every_scoring_option_is_the_baseline(attn):
    model = tiny_llama("gqa", attn)
    ids = random_ids(160)
    with torch.inference_mode():
        base_logits = model(ids).logits[:, -1]
        base_text = model.generate(ids, max_new_tokens=32, do_sample=False)
        lazyllm.patch(
            model, lazyllm.LazyConfig(prune_layers=(2, 4), keep_ratios=(1.0, 1.0), min_prompt_tokens=0, **ALL_OPTIONS)
        )
        logits = model(ids, logits_to_keep=1).logits[:, -1]
        assert lazyllm.stats(model).pruned
        text = model.generate(ids, max_new_tokens=32, do_sample=False)
    assert lazyllm.stats(model).pruned and lazyllm.stats(model).revived_tokens == 0
    assert (logits - base_logits).abs().max().item() < 1e-5
    assert torch.equal(text, base_text)


def test_scoring_options_prune_and_decode_with_revival_once():
    """Every option at once under real pruning: generation runs, prunes, and never recomputes a token in a layer."""
    model = tiny_llama("gqa")
    lazyllm.patch(
        model, lazyllm.LazyConfig(prune_layers=(2, 4), keep_ratios=(0.5, 0.2), min_prompt_tokens=0, **ALL_OPTIONS)
    )
    with torch.inference_mode():
        _, stats, _ = checked_generate(model, random_ids(300, batch=2), max_new_tokens=24, do_sample=False)
    assert stats.prefill_token_fraction < 0.9 and stats.decode_steps == 23


@pytest.mark.parametrize(
    "options",
    [
        dict(score_window=0),
        dict(score_pool=4),
        dict(score_pool=0),
    ],
)
def test_bad_scoring_options_raise(options):
    with pytest.raises(lazyllm.ConfigError, match=next(iter(options))):
        lazyllm.LazyConfig(prune_layers=(2,), keep_ratios=(0.5,), **options)


def test_scoring_labels():
    assert lazyllm.LazyConfig().describe_scoring() == "paper"
    assert lazyllm.LazyConfig(**ALL_OPTIONS).describe_scoring() == "window16+pool5"
