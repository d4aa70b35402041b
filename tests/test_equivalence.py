"""With every keep ratio at 1.0 the patched model must be the unpatched model: same logits, same greedy text."""

import pytest
import torch
from conftest import random_ids, tiny_llama
from kv_checks import pruned_stats

import lazyllm

KEEP_ALL = dict(keep_ratios=(1.0, 1.0, 1.0), min_prompt_tokens=0)


def keep_all(num_layers: int) -> lazyllm.LazyConfig:
    third = num_layers // 3
    return lazyllm.LazyConfig(prune_layers=(third, 2 * third, num_layers - 1), **KEEP_ALL)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("shape", ["mha", "gqa", "xgen"])
def test_keep_all_matches_baseline_logits_and_greedy(shape, attn):
    model = tiny_llama(shape, attn)
    ids = random_ids(160)
    with torch.inference_mode():
        base_logits = model(ids).logits[:, -1]
        base_text = model.generate(ids, max_new_tokens=64, do_sample=False)
        lazyllm.patch(model, keep_all(model.config.num_hidden_layers))
        logits = model(ids, logits_to_keep=1).logits[:, -1]
        pruned_stats(model)  # the pruned path must run (not fall back) for this regression to mean anything
        text = model.generate(ids, max_new_tokens=64, do_sample=False)
    assert pruned_stats(model).decode_steps == 63
    assert (logits - base_logits).abs().max().item() < 1e-5
    assert torch.equal(text, base_text)


def test_keep_all_matches_baseline_with_left_padding():
    model = tiny_llama("gqa")
    ids = random_ids(120, batch=2)
    mask = torch.ones_like(ids)
    mask[0, :40] = 0  # row 0 is a shorter, left-padded prompt
    with torch.inference_mode():
        base = model.generate(ids, attention_mask=mask, max_new_tokens=32, do_sample=False)
        base_logits = model(ids, attention_mask=mask).logits[:, -1]
        lazyllm.patch(model, keep_all(6))
        out = model.generate(ids, attention_mask=mask, max_new_tokens=32, do_sample=False)
        pruned_stats(model)
        logits = model(ids, attention_mask=mask, logits_to_keep=1).logits[:, -1]
    assert pruned_stats(model).prompt_tokens == [80, 120]
    assert (logits - base_logits).abs().max().item() < 1e-5
    assert torch.equal(out, base)


def test_keep_all_matches_baseline_on_smollm2_real_text(smollm2, long_prompt_ids, long_prompt_logits):
    model, _ = smollm2
    ids, _ = long_prompt_ids
    base_logits = long_prompt_logits  # the unpatched model's
    with torch.inference_mode():
        base_text = model.generate(ids, max_new_tokens=64, do_sample=False)
        with lazyllm.patched(model, keep_all(30)):
            logits = model(ids, logits_to_keep=1).logits[:, -1]
            pruned_stats(model)
            text = model.generate(ids, max_new_tokens=64, do_sample=False)
            pruned_stats(model)
    assert (logits - base_logits).abs().max().item() < 1e-5
    assert torch.equal(text, base_text)
