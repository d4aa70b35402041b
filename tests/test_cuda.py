"""The same guarantees on a CUDA device (skipped where no GPU is present, as in CI)."""

import pytest
import torch
from conftest import random_ids, tiny_llama
from kv_checks import checked_generate

import lazyllm

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
KEEP_ALL = lazyllm.LazyConfig(prune_layers=(2, 4), keep_ratios=(1.0, 1.0), min_prompt_tokens=0)
PRUNE = lazyllm.LazyConfig(prune_layers=(2, 4), keep_ratios=(0.5, 0.2), min_prompt_tokens=0)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cuda_keep_all_matches_baseline(attn):
    model = tiny_llama("gqa", attn).cuda()
    ids = random_ids(400).cuda()
    with torch.inference_mode():
        base_logits = model(ids).logits[:, -1]
        base_text = model.generate(ids, max_new_tokens=64, do_sample=False)
        lazyllm.patch(model, KEEP_ALL)
        logits = model(ids, logits_to_keep=1).logits[:, -1]
        text = model.generate(ids, max_new_tokens=64, do_sample=False)
    assert lazyllm.stats(model).pruned
    assert (logits - base_logits).abs().max().item() < 1e-4  # TF32/cuDNN kernels differ from CPU's
    assert torch.equal(text, base_text)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_pruning_batches_and_never_recomputes(dtype):
    model = lazyllm.patch(tiny_llama("gqa").to("cuda", dtype), PRUNE)
    rows = [random_ids(300, seed=3)[0], random_ids(220, seed=4)[0]]
    ids = torch.zeros(2, 300, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, 300 - len(row) :], mask[i, 300 - len(row) :] = row, 1
    with torch.inference_mode():
        batched, stats, _ = checked_generate(
            model, ids.cuda(), attention_mask=mask.cuda(), max_new_tokens=32, do_sample=False
        )
        alone = model.generate(rows[1][None].cuda(), max_new_tokens=32, do_sample=False)
    assert stats.revived_tokens > 0
    assert stats.kept_per_layer == [520, 520, 260, 260, 104, 104]
    if dtype == torch.float32:
        assert torch.equal(batched[1, 300:], alone[0, 220:])
    assert batched.device.type == "cuda"
