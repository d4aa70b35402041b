"""Other Llama-like families: each is one adapter entry; keep-all must still reproduce the baseline exactly."""

import pytest
import torch
from conftest import SMALL_DIMS, random_ids
from kv_checks import checked_generate, pruned_stats
from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

import lazyllm
import lazyllm.pruned_pass

SMALL = dict(SMALL_DIMS, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
FAMILIES = {
    "mistral": (MistralForCausalLM, MistralConfig, dict(sliding_window=None)),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config, dict(use_sliding_window=False)),
    "qwen3": (Qwen3ForCausalLM, Qwen3Config, dict(head_dim=16, use_sliding_window=False)),
}


def build(family: str, **overrides) -> torch.nn.Module:
    model_class, config_class, extra = FAMILIES[family]
    torch.manual_seed(0)
    return model_class(config_class(**{**SMALL, **extra, **overrides})).eval()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_keep_all_is_exact_and_pruning_runs(family):
    model = build(family)
    ids = random_ids(180)
    with torch.inference_mode():
        base_logits = model(ids).logits[:, -1]
        base_text = model.generate(ids, max_new_tokens=24, do_sample=False)
        lazyllm.patch(model, lazyllm.LazyConfig(prune_layers=(2, 4), keep_ratios=(1.0, 1.0), min_prompt_tokens=0))
        logits = model(ids, logits_to_keep=1).logits[:, -1]
        pruned_stats(model)
        text = model.generate(ids, max_new_tokens=24, do_sample=False)
        pruned_stats(model)
        lazyllm.patch(model, lazyllm.LazyConfig(prune_layers=(2, 4), keep_ratios=(0.5, 0.2), min_prompt_tokens=0))
        _, stats, _ = checked_generate(model, ids, max_new_tokens=8, do_sample=False)
    assert (logits - base_logits).abs().max().item() < 1e-5
    assert torch.equal(text, base_text)
    assert stats.kept_per_layer == [180, 180, 90, 90, 36, 36]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_scores_are_the_eager_attention_maps(family, monkeypatch):
    """Eq. 1 for every family (Qwen3 normalises queries and keys per head): in prefill and in each decoding step,
    the scores are the newest token's attention row in the layer before the cut, mean over heads. Layers before
    the first cut hold every token, so the unpatched model's maps over the generated sequence are the reference."""
    model = build(family, attn_implementation="eager")
    ids = random_ids(60)
    seen, score = [], lazyllm.pruned_pass.attention_scores
    monkeypatch.setattr(lazyllm.pruned_pass, "attention_scores", lambda *args: seen.append(score(*args)) or seen[-1])
    paper = lazyllm.LazyConfig(prune_layers=(3,), keep_ratios=(0.3,), min_prompt_tokens=0, revive_all_at=None)
    lazyllm.patch(model, paper)  # the paper's policy scores at every decoding step
    with torch.inference_mode():
        sequence = model.generate(ids, max_new_tokens=4, do_sample=False)
        pruned_stats(model)
        lazyllm.unpatch(model)
        maps = model(sequence[:, :63], output_attentions=True).attentions[2]  # (B, H, 63, 63)
    assert len(seen) == 4, "the prefill and three decoding steps"
    for step, scores in enumerate(seen):  # step 0 scores with token 59, step t with token 59 + t
        query = 59 + step
        expected = maps[:, :, query, : query + 1].mean(dim=1)
        assert (scores - expected).abs().max().item() < 1e-6
