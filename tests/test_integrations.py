"""lazyllm under other Transformers / accelerate machinery: the text-generation pipeline on the real SmolLM2, and
accelerate's CPU + disk offload hooks on a tiny Llama."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from conftest import need, random_ids, tiny_llama
from kv_checks import check_kv, checked_generate, recording
from transformers import AutoModelForCausalLM

import lazyllm

# -- transformers.pipeline -------------------------------------------------------------------------------------------


def test_text_generation_pipeline_on_smollm2(smollm2) -> None:
    need("long_context_eval")
    from lazyllm.documents import long_document_question
    from lazyllm.generation import chat_prompt

    model, tokenizer = smollm2
    text, _ = long_document_question(tokenizer, length=650)
    prompt = chat_prompt(tokenizer, text)
    prompt_tokens = len(tokenizer(prompt).input_ids)
    assert 600 < prompt_tokens <= 650

    pipe = transformers.pipeline("text-generation", model=model, tokenizer=tokenizer)
    options = dict(max_new_tokens=3, do_sample=False, return_full_text=False)
    baseline = pipe(prompt, **options)[0]["generated_text"]

    layers = model.config.num_hidden_layers
    keep_all = lazyllm.LazyConfig.parse("8:1,15:1,22:1", layers, min_prompt_tokens=0)
    with lazyllm.patched(model, keep_all):
        same = pipe(prompt, **options)[0]["generated_text"]
        stats = lazyllm.stats(model)
        assert stats.pruned and stats.prompt_tokens == [prompt_tokens]
        assert stats.prefill_token_fraction == 1.0
    assert same == baseline and baseline.strip()

    default = lazyllm.LazyConfig.preset("default", layers, min_prompt_tokens=0)
    with lazyllm.patched(model, default), recording(model) as seen:  # the default schedule really drops tokens
        pruned = pipe(prompt, **options)[0]["generated_text"]
        stats = lazyllm.stats(model)
        assert stats.pruned and stats.fallback_reason is None
        assert stats.prefill_token_fraction < 0.95
        assert stats.decode_steps == 2
        assert stats.recomputed_token_layers == 0
        assert sum(check_kv(*seen[-1])) == stats.total_token_layers
    assert pruned.strip()
    assert not lazyllm.is_patched(model)


# -- accelerate offload ----------------------------------------------------------------------------------------------
SCHEDULE = lazyllm.LazyConfig(prune_layers=(2, 4), keep_ratios=(0.5, 0.2), min_prompt_tokens=64)
KEEP_ALL = lazyllm.LazyConfig(prune_layers=(2, 4), keep_ratios=(1.0, 1.0), min_prompt_tokens=64)
GENERATE = dict(max_new_tokens=8, do_sample=False)


@pytest.fixture(scope="module")
def reference_and_offloaded(tmp_path_factory: pytest.TempPathFactory):
    """A tiny Llama in memory, and the same checkpoint reloaded with layers 0-2 on CPU and 3-5 offloaded to disk."""
    folder: Path = tmp_path_factory.mktemp("offload")
    reference = tiny_llama("gqa")
    reference.save_pretrained(folder / "checkpoint")
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    device_map.update({f"model.layers.{i}": "cpu" if i < 3 else "disk" for i in range(6)})
    offloaded = AutoModelForCausalLM.from_pretrained(
        folder / "checkpoint", device_map=device_map, offload_folder=str(folder / "offload")
    ).eval()
    return reference, offloaded


def test_offload_really_offloads(reference_and_offloaded) -> None:
    _, offloaded = reference_and_offloaded
    assert hasattr(offloaded, "_hf_hook")
    assert offloaded.hf_device_map["model.layers.4"] == "disk"
    assert offloaded.model.layers[4].self_attn.q_proj.weight.device.type == "meta"  # loaded only inside its forward
    assert offloaded.model.layers[0].self_attn.q_proj.weight.device.type == "cpu"


def test_offloaded_model_keep_all_equals_unpatched(reference_and_offloaded) -> None:
    reference, offloaded = reference_and_offloaded
    ids = random_ids(200)
    with torch.inference_mode():
        expected = reference.generate(ids, **GENERATE)
        with lazyllm.patched(offloaded, KEEP_ALL):
            got = offloaded.generate(ids, **GENERATE)
            assert lazyllm.stats(offloaded).pruned
    assert torch.equal(got, expected)
    assert not lazyllm.is_patched(offloaded)


def test_offloaded_model_prunes_like_the_in_memory_one(reference_and_offloaded) -> None:
    reference, offloaded = reference_and_offloaded
    inputs = dict(input_ids=random_ids(200, batch=2), attention_mask=torch.ones(2, 200, dtype=torch.long))
    with torch.inference_mode():
        with lazyllm.patched(reference, SCHEDULE):
            expected = reference.generate(**inputs, **GENERATE)
            expected_stats = lazyllm.stats(reference).as_dict()
        with lazyllm.patched(offloaded, SCHEDULE):
            got, stats, _ = checked_generate(offloaded, **inputs, **GENERATE)
            got_stats = stats.as_dict()
        unpatched = offloaded.generate(**inputs, **GENERATE)
    assert torch.equal(got, expected)
    assert got_stats == expected_stats
    assert got_stats["kept_per_layer"] == [400, 400, 200, 200, 80, 80]
    assert torch.equal(unpatched, reference.generate(**inputs, **GENERATE))  # unpatch restored accelerate's forward


def test_unpatch_restores_accelerate_hooks(reference_and_offloaded) -> None:
    _, offloaded = reference_and_offloaded

    def forwards():
        return {name: (vars(m).get("_old_forward"), vars(m).get("forward")) for name, m in offloaded.named_modules()}

    before = forwards()
    lazyllm.patch(offloaded, SCHEDULE)
    assert forwards()["model"] != before["model"]  # the base model's forward (or accelerate's inner one) is lazyllm's
    lazyllm.unpatch(offloaded)
    assert forwards() == before
