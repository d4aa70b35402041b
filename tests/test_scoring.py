"""Token-scoring options: window scores from eager maps, head max, pooling, sinks/recent, mass budget, identity."""

import math

import pytest
import torch
from conftest import random_ids, tiny_llama
from kv_checks import checked_generate
from test_pruning import prefill

import lazyllm
import lazyllm.forward
from lazyllm.scoring import mass_budget, pool_neighbours

ALL_OPTIONS = dict(
    score_window=16, decode_window=True, score_pool=5, keep_sinks=4, keep_recent=8, head_reduce="max", keep_mass=0.9
)


def spy_scores(monkeypatch) -> list[torch.Tensor]:
    """Record every score tensor the forward computes."""
    seen, score = [], lazyllm.forward.attention_scores

    def spy(*args):
        seen.append(score(*args))
        return seen[-1]

    monkeypatch.setattr(lazyllm.forward, "attention_scores", spy)
    return seen


@pytest.mark.parametrize("shape", ["mha", "gqa"])
@pytest.mark.parametrize("head_reduce", ["mean", "max"])
@pytest.mark.parametrize("window", [1, 8])
def test_window_scores_equal_the_eager_attention_maps(shape, head_reduce, window, monkeypatch):
    """Per head, the mean attention row of the last `window` queries in the layer before the cut; then heads."""
    model = tiny_llama(shape, "eager")
    ids = random_ids(100)
    with torch.inference_mode():
        maps = model(ids, output_attentions=True).attentions  # per layer (B, H, N, N), causal
    seen = spy_scores(monkeypatch)
    config = lazyllm.LazyConfig(
        prune_layers=(3,), keep_ratios=(0.5,), min_prompt_tokens=0, score_window=window, head_reduce=head_reduce
    )
    lazyllm.patch(model, config)
    with torch.inference_mode():
        model(ids, logits_to_keep=1)
    per_head = maps[2][:, :, -window:].mean(dim=2)  # (B, H, N)
    expected = per_head.mean(dim=1) if head_reduce == "mean" else per_head.amax(dim=1)
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

    def peaked(queries, query_positions, keys, key_positions, allowed, scaling, head_reduce):
        scores = torch.full(allowed.shape, 1e-3) + 1e-6 * key_positions.float()  # later tokens win ties
        scores[key_positions == peak] = 1.0
        return scores.masked_fill(~allowed, 0.0)

    monkeypatch.setattr(lazyllm.forward, "attention_scores", peaked)
    config = lazyllm.LazyConfig(prune_layers=(3,), keep_ratios=(0.1,), min_prompt_tokens=0, score_pool=7)
    lazyllm.patch(model, config)
    with torch.inference_mode():
        _, _, state = prefill(model, random_ids(length))
    kept = set(state.positions[3][0].tolist())
    assert set(range(peak - 3, peak + 4)) <= kept and len(kept) == math.ceil(0.1 * length)


def test_sinks_and_recent_tokens_are_always_kept(monkeypatch):
    """Scores prefer the middle of the prompt, yet the first sinks and the last recent tokens go on."""
    model = tiny_llama("gqa")
    length = 200

    def middle(queries, query_positions, keys, key_positions, allowed, scaling, head_reduce):
        scores = 1.0 / (1.0 + (key_positions.float() - length / 2).abs())
        return scores.masked_fill(~allowed, 0.0)

    monkeypatch.setattr(lazyllm.forward, "attention_scores", middle)
    config = lazyllm.LazyConfig(
        prune_layers=(2, 4), keep_ratios=(0.3, 0.15), min_prompt_tokens=0, keep_sinks=4, keep_recent=6
    )
    lazyllm.patch(model, config)
    with torch.inference_mode():
        _, _, state = prefill(model, random_ids(length))
    for layer in (2, 4):
        kept = set(state.positions[layer][0].tolist())
        assert set(range(4)) | set(range(length - 6, length)) <= kept
        assert len(kept) == math.ceil(config.keep_ratios[layer // 2 - 1] * length)
    assert 0 not in set(state.aux[0].positions[0].tolist())


def test_mass_budget_counts_the_fewest_tokens_covering_the_mass():
    table = torch.tensor([[0.5, 0.3, 0.1, 0.05, 0.05], [0.2, 0.2, 0.2, 0.2, 0.2]])
    candidates = torch.ones_like(table, dtype=torch.bool)
    assert mass_budget(table, candidates, 0.75).tolist() == [2, 4]
    candidates[0, 0] = False  # a token that is no candidate does not count towards the mass
    assert mass_budget(table, candidates, 0.85).tolist()[0] == 3


def test_mass_budget_keeps_fewer_but_never_more_than_the_ratio(monkeypatch):
    model = tiny_llama("gqa")
    length = 200

    def peaked(queries, query_positions, keys, key_positions, allowed, scaling, head_reduce):
        scores = torch.where(key_positions % 20 == 0, 1.0, 1e-4)  # 10 tokens carry nearly all the mass
        return scores.masked_fill(~allowed, 0.0)

    monkeypatch.setattr(lazyllm.forward, "attention_scores", peaked)
    lazyllm.patch(model, lazyllm.LazyConfig(prune_layers=(3,), keep_ratios=(0.5,), min_prompt_tokens=0, keep_mass=0.9))
    with torch.inference_mode():
        _, _, state = prefill(model, random_ids(length))
    kept = state.positions[3][0].tolist()
    assert set(range(0, length, 20)) <= set(kept) and len(kept) <= 11  # the 10 peaks (+ the last token)
    lazyllm.patch(model, lazyllm.LazyConfig(prune_layers=(3,), keep_ratios=(0.02,), min_prompt_tokens=0, keep_mass=0.9))
    with torch.inference_mode():
        _, _, state = prefill(model, random_ids(length))
    assert state.positions[3].shape[1] == math.ceil(0.02 * length), "the keep ratio caps the adaptive budget"


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
        dict(decode_window=1),
        dict(score_layers=0),
        dict(score_pool=4),
        dict(score_pool=0),
        dict(keep_sinks=-1),
        dict(keep_recent=1.5),
        dict(head_reduce="sum"),
        dict(keep_mass=0.0),
        dict(keep_mass=1.2),
    ],
)
def test_bad_scoring_options_raise(options):
    with pytest.raises(lazyllm.ConfigError, match=next(iter(options))):
        lazyllm.LazyConfig(prune_layers=(2,), keep_ratios=(0.5,), **options)


def test_scoring_labels():
    assert lazyllm.LazyConfig().describe_scoring() == "paper"
    assert lazyllm.LazyConfig(**ALL_OPTIONS).describe_scoring() == "window16+slide+pool5+sinks4+recent8+headmax+mass0.9"


@pytest.mark.parametrize("window", [1, 8])
def test_a_sliding_window_scores_decoding_steps_like_the_eager_maps(window, monkeypatch):
    """With decode_window, step t scores with the newest `window` tokens' attention rows (prompt end included)."""
    model = tiny_llama("gqa", "eager")
    ids = random_ids(60)
    seen = spy_scores(monkeypatch)
    config = lazyllm.LazyConfig(
        prune_layers=(3,), keep_ratios=(1.0,), min_prompt_tokens=0, score_window=window, decode_window=True
    )
    lazyllm.patch(model, config)
    with torch.inference_mode():
        sequence = model.generate(ids, max_new_tokens=3, do_sample=False)
        lazyllm.unpatch(model)
        maps = model(sequence[:, :62], output_attentions=True).attentions[2]  # (B, H, 62, 62)
    for step, scores in enumerate(seen[1:], start=1):  # decoding step `step` computes token 59 + step
        last = 60 + step
        expected = maps[:, :, last - window : last, :last].mean(dim=2).mean(dim=1)
        assert (scores - expected).abs().max().item() < 1e-6


def test_a_window_of_one_slides_as_the_paper_decodes():
    model = tiny_llama("gqa")
    ids = random_ids(300)
    schedule = dict(prune_layers=(2, 4), keep_ratios=(0.5, 0.2), min_prompt_tokens=0)
    outputs = []
    for options in ({}, dict(decode_window=True)):
        lazyllm.patch(model, lazyllm.LazyConfig(**schedule, **options))
        with torch.inference_mode():
            outputs.append(checked_generate(model, ids, max_new_tokens=16, do_sample=False)[0])
        outputs.append(lazyllm.stats(model).revived_tokens)
    assert torch.equal(outputs[0], outputs[2]) and outputs[1] == outputs[3] > 0


def test_scores_of_several_layers_are_averaged(monkeypatch):
    """score_layers=3 at a cut of layer 4: the mean of layers 1-3's window scores, as the eager maps give them."""
    model = tiny_llama("gqa", "eager")
    ids = random_ids(100)
    with torch.inference_mode():
        maps = model(ids, output_attentions=True).attentions
    tables = []
    score_table = lazyllm.forward.score_table

    def spy(*args):
        tables.append(score_table(*args))
        return tables[-1]

    monkeypatch.setattr(lazyllm.forward, "score_table", spy)
    config = lazyllm.LazyConfig(
        prune_layers=(4,), keep_ratios=(0.5,), min_prompt_tokens=0, score_window=4, score_layers=3
    )
    lazyllm.patch(model, config)
    with torch.inference_mode():
        model(ids, logits_to_keep=1)
    assert len(tables) == 3
    for layer, table in zip((1, 2, 3), tables):
        expected = maps[layer][:, :, -4:].mean(dim=2).mean(dim=1)
        assert (table - expected).abs().max().item() < 1e-6


def test_scoring_layers_stay_after_the_previous_cut():
    config = lazyllm.LazyConfig(prune_layers=(2, 5), keep_ratios=(0.5, 0.2), score_layers=4)
    assert list(config.scoring_layers(2)) == [0, 1] and list(config.scoring_layers(5)) == [2, 3, 4]
    assert list(lazyllm.LazyConfig(prune_layers=(3,), keep_ratios=(0.5,)).scoring_layers(3)) == [2]
