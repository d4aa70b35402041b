"""Drop-in conformance: every `generate()` option a user can pass (Transformers' documentation of `generate()`).

At keep 1.0 through the pruned path a patched model returns what the unpatched one returns (sequences equal,
scores close); with pruning on, each call either prunes (the stats say so) or runs unpruned with its reason
recorded. Llama, Qwen2 (another family, with its own attention bias) and Gemma 3 (hybrid sliding windows; from
Transformers 5 on). Options: greedy, sampling, beam search and
beam sample, assisted and prompt-lookup decoding, static cache, left and right padding, `return_dict_in_generate` with
scores / logits / attentions / hidden states, `num_return_sequences`, `generation_config` objects, stopping criteria
and stop strings; streamers, `inputs_embeds` and a `torch.compile`d forward in tests of their own. Also: later turns
and shared prefixes on one cache, deep copies of a pruned cache, beam search, right padding, and two threads on one
model.
"""

import contextlib
import copy
import threading
import warnings

import pytest
import torch
from conftest import SMALL_DIMS, random_ids, tiny_llama
from kv_checks import Held, check_kv, checked_generate, recording
from test_gemma import tiny_gemma3
from tokenizers import Tokenizer, decoders, models
from transformers import (
    DynamicCache,
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    StoppingCriteria,
)
from transformers.generation.streamers import BaseStreamer
from transformers.models.gemma3.modeling_gemma3 import Gemma3RotaryEmbedding

import lazyllm
from lazyllm.compat import GENERATE_CACHE_KWARG
from lazyllm.families import rope_takes_layer_type


def tiny_qwen2(attn: str = "sdpa", seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        **SMALL_DIMS, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2, attn_implementation=attn
    )
    return Qwen2ForCausalLM(config).eval()


MODELS = {"llama": lambda attn="sdpa": tiny_llama("gqa", attn), "qwen2": tiny_qwen2}
if rope_takes_layer_type(Gemma3RotaryEmbedding):  # lazyllm serves Gemma 3 from Transformers 5 on
    MODELS["gemma3"] = tiny_gemma3  # hybrid sliding-window attention, a window of 8
KEEP_ALL = lazyllm.LazyConfig(prune_layers=(5,), keep_ratios=(1.0,), min_prompt_tokens=0)
PRUNE = lazyllm.LazyConfig(prune_layers=(2, 4), keep_ratios=(0.5, 0.2), min_prompt_tokens=0)


class Collect(BaseStreamer):
    def __init__(self) -> None:
        self.tokens: list[int] = []

    def put(self, value: torch.Tensor) -> None:
        self.tokens += value.flatten().tolist()

    def end(self) -> None:
        pass


class StopAfter(StoppingCriteria):
    def __init__(self, length: int) -> None:
        self.length = length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: object) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.length, dtype=torch.bool)


def characters() -> PreTrainedTokenizerFast:
    """A tokenizer of the tiny models' 256 ids, one printable character each (stop strings need one)."""
    backend = Tokenizer(models.BPE({chr(0x21 + i): i for i in range(SMALL_DIMS["vocab_size"])}, merges=[]))
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend)


# Stop at any of a third of the vocabulary: within a few of the tiny models' tokens.
STOP_STRINGS = [chr(0x21 + i) for i in range(0, SMALL_DIMS["vocab_size"], 3)]


def left_padded(length: int = 120) -> dict[str, torch.Tensor]:
    ids = random_ids(length, batch=2)
    mask = torch.ones_like(ids)
    mask[0, :30] = 0
    return {"input_ids": ids, "attention_mask": mask}


def right_padded(length: int = 120) -> dict[str, torch.Tensor]:
    ids = random_ids(length, batch=2)
    mask = torch.ones_like(ids)
    mask[0, -30:] = 0
    return {"input_ids": ids, "attention_mask": mask}


# name -> (inputs, generate options); each compared unpatched vs patched.
OPTIONS = {
    "greedy": (lambda: {"input_ids": random_ids(120)}, {}),
    "sampling": (lambda: {"input_ids": random_ids(120)}, dict(do_sample=True, top_k=20, temperature=0.8)),
    "beam_search": (lambda: {"input_ids": random_ids(120)}, dict(num_beams=3, num_return_sequences=2)),
    "beam_sample": (lambda: {"input_ids": random_ids(120)}, dict(num_beams=2, do_sample=True)),
    "prompt_lookup": (lambda: {"input_ids": random_ids(120)}, dict(prompt_lookup_num_tokens=3)),
    "static_cache": (lambda: {"input_ids": random_ids(120)}, dict(cache_implementation="static")),
    "left_padding": (left_padded, {}),
    "right_padding": (right_padded, {}),
    "logits_to_keep_and_all_outputs": (
        lambda: {"input_ids": random_ids(120)},
        dict(return_dict_in_generate=True, output_scores=True, output_logits=True),
    ),
    "attentions_hidden_states": (
        lambda: {"input_ids": random_ids(120)},
        dict(return_dict_in_generate=True, output_attentions=True, output_hidden_states=True),
    ),
    "num_return_sequences": (lambda: {"input_ids": random_ids(120)}, dict(do_sample=True, num_return_sequences=3)),
    "generation_config": (
        lambda: {"input_ids": random_ids(120)},
        dict(generation_config=GenerationConfig(max_new_tokens=6, do_sample=False, repetition_penalty=1.3)),
    ),
    "stopping_criteria": (lambda: {"input_ids": random_ids(120)}, dict(stopping_criteria=[StopAfter(124)])),
    "stop_strings": (lambda: {"input_ids": random_ids(120)}, dict(stop_strings=STOP_STRINGS, tokenizer=characters())),
    "assisted_decoding": (lambda: {"input_ids": random_ids(120)}, dict(assistant_model=tiny_llama("gqa", seed=1))),
}
# with a warning, and its reason recorded
FALLS_BACK = ("prompt_lookup", "static_cache", "assisted_decoding", "right_padding")


def run(model, inputs, options, seed=0):
    torch.manual_seed(seed)
    options = dict(options)
    if "generation_config" not in options:
        options.setdefault("max_new_tokens", 8)
    with torch.inference_mode():
        return model.generate(**inputs, **options)


def sequences(output):
    return output if isinstance(output, torch.Tensor) else output.sequences


@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_keep_all_returns_what_the_unpatched_model_returns(family, name):
    make_inputs, options = OPTIONS[name]
    model = MODELS[family]("eager" if "attentions" in name else "sdpa")
    inputs = make_inputs()
    try:
        expected = run(model, inputs, options)
    except Exception as error:  # e.g. prompt lookup on a config without eos in Transformers 4.57: patched, the same
        with lazyllm.patched(model, KEEP_ALL), pytest.raises(type(error)):
            run(model, inputs, options)
        return
    with lazyllm.patched(model, KEEP_ALL):
        got = run(model, inputs, options)
        stats = lazyllm.stats(model)
    assert torch.equal(sequences(got), sequences(expected))
    for field in ("scores", "logits"):
        if getattr(expected, field, None) is not None:
            for a, b in zip(getattr(got, field), getattr(expected, field)):
                assert (a - b).abs().max().item() < 1e-4
    assert stats.pruned or stats.fallback_reason, "either pruned or a recorded reason"


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_with_pruning_a_call_prunes_or_records_why_not(name):
    make_inputs, options = OPTIONS[name]
    model = lazyllm.patch(tiny_llama("gqa", "eager" if "attentions" in name else "sdpa"), PRUNE)
    if name in FALLS_BACK:
        with pytest.warns(UserWarning, match="runs unpruned"):
            run(model, make_inputs(), options)
    else:
        run(model, make_inputs(), options)
    stats = lazyllm.stats(model)
    prunes = name not in (*FALLS_BACK, "attentions_hidden_states")
    assert stats.pruned == prunes, stats.fallback_reason
    assert prunes or stats.fallback_reason


def compiled_generate(model, inputs, options, config=None):
    """`generate()` with `model.forward = torch.compile(model.forward, fullgraph=True)` (the "eager" backend keeps
    the test seconds long: graph capture is Dynamo's, code generation is not lazyllm's), patched with `config`."""
    torch._dynamo.reset()  # Dynamo's caches live per code object, across tests: each test starts afresh
    with lazyllm.patched(model, config) if config else contextlib.nullcontext():
        forward = model.forward
        model.forward = torch.compile(forward, backend="eager", fullgraph=True)
        try:
            return run(model, inputs, options), lazyllm.stats(model) if config else None
        finally:
            model.forward = forward


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_a_compiled_forward_steps_aside_and_returns_what_the_unpatched_compiled_model_returns(cache):
    """Traced calls run the unpatched forward: no graph break (fullgraph), the same tokens, the reason in stats."""
    model, ids = tiny_llama("gqa"), random_ids(120)
    options = dict(max_new_tokens=3, cache_implementation=cache)
    expected, _ = compiled_generate(model, {"input_ids": ids}, options)
    for config in (KEEP_ALL, PRUNE):
        got, stats = compiled_generate(model, {"input_ids": ids}, options, config)
        assert torch.equal(got, expected)
        assert not stats.pruned and "torch.compile" in stats.fallback_reason


def test_a_compiled_generation_on_a_static_cache_compiles_no_more_than_the_unpatched_one():
    """Two generations of the same shapes compile no more graphs than the unpatched model's (Transformers 5: none
    for the second generation), and answer alike."""
    model, ids = tiny_llama("gqa"), random_ids(120)
    options = dict(max_new_tokens=3, cache_implementation="static")
    compiled, answers = {}, {}
    for config in (None, PRUNE):
        torch._dynamo.reset()
        graphs = []

        def counting(graph, example_inputs, graphs=graphs):
            graphs.append(graph)
            return graph.forward

        with lazyllm.patched(model, config) if config else contextlib.nullcontext():
            forward = model.forward
            model.forward = torch.compile(forward, backend=counting, fullgraph=True)
            try:
                first = run(model, {"input_ids": ids}, options)
                after_first = len(graphs)
                answers[config] = (first, run(model, {"input_ids": ids}, options))
                compiled[config] = (after_first, len(graphs))
            finally:
                model.forward = forward
    assert all(mine <= theirs for mine, theirs in zip(compiled[PRUNE], compiled[None])), compiled
    assert torch.equal(answers[PRUNE][0], answers[None][0]) and torch.equal(answers[PRUNE][1], answers[None][1])


def test_eager_calls_prune_again_after_compiled_ones():
    model, ids = lazyllm.patch(tiny_llama("gqa"), PRUNE), random_ids(120)
    torch._dynamo.reset()
    forward = model.forward
    model.forward = torch.compile(forward, backend="eager", fullgraph=True)
    run(model, {"input_ids": ids}, dict(max_new_tokens=3))
    model.forward = forward
    run(model, {"input_ids": ids}, dict(max_new_tokens=3))
    assert lazyllm.stats(model).pruned


def test_streamers_see_every_token_once():
    model = lazyllm.patch(tiny_llama("gqa"), PRUNE)
    ids, streamer = random_ids(120), Collect()
    out = run(model, {"input_ids": ids}, dict(streamer=streamer))
    assert streamer.tokens == out[0].tolist() and lazyllm.stats(model).pruned


def test_inputs_embeds_prune_like_input_ids():
    model = lazyllm.patch(tiny_llama("gqa"), PRUNE)
    ids = random_ids(120)
    with torch.inference_mode():
        by_ids = model.generate(ids, max_new_tokens=8, do_sample=False)
        by_embeds = model.generate(inputs_embeds=model.model.embed_tokens(ids), max_new_tokens=8, do_sample=False)
    assert torch.equal(by_ids[0, 120:], by_embeds[0]) and lazyllm.stats(model).pruned


def test_right_padded_calls_run_unpruned_with_one_warning_or_raise_under_strict():
    """Transformers answers a right-padded row from its last pad: pruning steps aside, so the answers are its own."""
    model, inputs = tiny_llama("gqa"), right_padded()
    expected = run(model, inputs, {})
    lazyllm.patch(model, PRUNE)
    with pytest.warns(UserWarning, match="right-padded rows") as caught:
        got = run(model, inputs, {})
    assert torch.equal(got, expected)
    assert {w.filename for w in caught if "right-padded" in str(w.message)} == {__file__}, "at the caller's line"
    assert lazyllm.stats(model).fallback_reason.startswith("right-padded rows")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per reason
        run(model, inputs, {})
    lazyllm.patch(model, lazyllm.LazyConfig(**{**_fields(PRUNE), "strict": True}))
    with pytest.raises(lazyllm.UnsupportedCallError, match="padding_side = 'left'"):
        run(model, inputs, {})


@pytest.mark.skipif(GENERATE_CACHE_KWARG == "past_key_values", reason="generate() takes `cache` from 5.25 only")
def test_generate_s_deprecated_cache_name_warns_at_the_callers_line():
    model = lazyllm.patch(tiny_llama("gqa"), PRUNE)
    with pytest.warns(FutureWarning, match="use `cache`") as caught, torch.inference_mode():
        model.generate(random_ids(120), max_new_tokens=2, past_key_values=DynamicCache(config=model.config))
    assert {w.filename for w in caught if "use `cache`" in str(w.message)} == {__file__}
    assert lazyllm.stats(model).pruned


def test_left_padded_rows_prune_as_when_run_alone():
    model = lazyllm.patch(tiny_llama("gqa"), PRUNE)
    inputs = left_padded()
    with torch.inference_mode():
        batched, stats, _ = checked_generate(model, **inputs, max_new_tokens=8, do_sample=False)
        for row in range(2):
            real = inputs["attention_mask"][row].bool()
            alone = model.generate(inputs["input_ids"][row, real][None], max_new_tokens=8, do_sample=False)
            assert batched[row, -8:].tolist() == alone[0, -8:].tolist()
    assert stats.prompt_tokens == [90, 120]


def test_beam_search_prunes_and_keeps_the_cache_consistent():
    model = lazyllm.patch(tiny_llama("gqa"), PRUNE)
    with torch.inference_mode():
        checked_generate(model, random_ids(120), max_new_tokens=8, num_beams=3, do_sample=False)


def two_turns(model, first, second, cache, **options):
    """A first answer, then a second question on the same cache: (first turn's output, second turn's output)."""
    with torch.inference_mode():
        one = model.generate(**first, past_key_values=cache, max_new_tokens=6, do_sample=False, **options)
        ids = torch.cat([one, second], dim=1)
        mask = torch.cat([first["attention_mask"], torch.ones_like(ids[:, first["input_ids"].shape[1] :])], dim=1)
        two = model.generate(ids, attention_mask=mask, past_key_values=cache, max_new_tokens=6, do_sample=False)
    return one, two


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_second_turn_on_the_same_cache_equals_the_unpatched_model(attn):
    model = tiny_llama("gqa", attn)
    first, second = left_padded(), random_ids(20, batch=2, seed=7)
    expected = two_turns(model, first, second, DynamicCache(config=model.config))
    with lazyllm.patched(model, KEEP_ALL):
        got = two_turns(model, first, second, DynamicCache(config=model.config))
        stats = lazyllm.stats(model)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert stats.pruned and stats.turn_tokens > 0


def test_a_second_turn_revives_every_parked_token_first():
    model = lazyllm.patch(tiny_llama("gqa"), lazyllm.LazyConfig(**_fields(PRUNE), revive_all_at=None))
    cache = DynamicCache(config=model.config)
    two_turns(
        model,
        {"input_ids": random_ids(120), "attention_mask": torch.ones(1, 120, dtype=torch.long)},
        random_ids(20, seed=7),
        cache,
    )
    stats = lazyllm.stats(model)
    assert stats.pruned and stats.aux_cache_tokens == 0 and stats.recomputed_token_layers == 0


def _fields(config):
    return dict(prune_layers=config.prune_layers, keep_ratios=config.keep_ratios, min_prompt_tokens=0)


def shared_prefix(model, prefix, questions):
    """The Transformers prefix-reuse recipe: one prefix cache, a deep copy of it per question."""
    cache = DynamicCache(config=model.config)
    answers = []
    with torch.inference_mode():
        model(prefix, past_key_values=cache, use_cache=True, logits_to_keep=1)
        for question in questions:
            ids = torch.cat([prefix, question], dim=1)
            out = model.generate(ids, past_key_values=copy.deepcopy(cache), max_new_tokens=6, do_sample=False)
            answers.append(out[0, ids.shape[1] :].tolist())
    return answers, cache


def test_shared_prefix_copies_equal_the_unpatched_model_and_do_not_mix():
    model = tiny_llama("gqa")
    prefix, questions = random_ids(120), [random_ids(10, seed=s) for s in (7, 8, 7)]
    expected, _ = shared_prefix(model, prefix, questions)
    with lazyllm.patched(model, KEEP_ALL):
        got, _ = shared_prefix(model, prefix, questions)
    assert got == expected
    with lazyllm.patched(model, PRUNE):
        pruned, cache = shared_prefix(model, prefix, questions)
        assert pruned[0] == pruned[2], "the same question on two copies: the same answer"
        assert cache.get_seq_length() == 120 and cache.layers[0].state.step == 0, "the prefix cache is untouched"


def test_two_threads_on_one_patched_model_get_their_own_answers():
    model = lazyllm.patch(tiny_llama("gqa"), PRUNE)
    prompts = [random_ids(160, seed=s) for s in (1, 2)]
    with torch.inference_mode():
        alone = [model.generate(p, max_new_tokens=12, do_sample=False) for p in prompts]
    results: dict[int, torch.Tensor] = {}

    def work(index: int) -> None:
        with torch.inference_mode():
            for _ in range(3):
                results[index] = model.generate(prompts[index], max_new_tokens=12, do_sample=False)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(torch.equal(results[i], alone[i]) for i in range(2))


def test_stats_and_the_self_check_follow_the_copy_a_generation_runs_on():
    model = lazyllm.patch(tiny_llama("gqa"), PRUNE)
    _, prefix_cache = shared_prefix(model, random_ids(120), [random_ids(10, seed=7)])
    stats = lazyllm.stats(model)
    assert stats.turn_tokens == 10 and stats.decode_steps == 5, "the copy's question and answer, not the prefix"
    assert stats.recomputed_token_layers == 0
    assert prefix_cache.layers[0].state.stats.decode_steps == 0, "the prefix's own figures are untouched"


def crop_and_continue(model, remove, config=None):
    """Generate 6 tokens on a cache, crop its last `remove` tokens, then ask a new question on it."""
    cache, ids = DynamicCache(config=model.config), random_ids(120)
    with lazyllm.patched(model, config) if config else contextlib.nullcontext(), torch.inference_mode():
        one = model.generate(ids, past_key_values=cache, max_new_tokens=6, do_sample=False)
        cache.crop(-remove)
        if config is not None and config.revive_all_at is None:  # revived tokens sit among the removed ones
            assert any(layer.holes for layer in cache.layers)
        held = cache.get_seq_length()
        follow = torch.cat([one[:, :held], random_ids(10, seed=7)], dim=1)
        if config:
            with recording(model) as seen:
                two = model.generate(follow, past_key_values=cache, max_new_tokens=6, do_sample=False)
            check_kv(cache, Held(cache))
            assert [c for c, _ in seen] == [cache] and lazyllm.stats(model).recomputed_token_layers == 0
        else:
            two = model.generate(follow, past_key_values=cache, max_new_tokens=6, do_sample=False)
    return held, one, two


@pytest.mark.parametrize("remove", [3, 20])  # generated tokens only; into the prompt
def test_a_cropped_cache_continues_as_the_unpatched_model_and_stays_consistent(remove):
    model = tiny_llama("gqa")
    expected = crop_and_continue(model, remove)
    assert expected[0] == 125 - remove
    got = crop_and_continue(model, remove, KEEP_ALL)
    assert got[0] == expected[0] and torch.equal(got[1], expected[1]) and torch.equal(got[2], expected[2])
    crop_and_continue(model, remove, lazyllm.LazyConfig(**_fields(PRUNE), revive_all_at=None))  # holes: checked


def test_a_reset_cache_prunes_a_new_prompt_as_a_fresh_cache_does():
    model, ids = lazyllm.patch(tiny_llama("gqa"), PRUNE), random_ids(120)
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model.generate(random_ids(130, seed=5), past_key_values=cache, max_new_tokens=4, do_sample=False)
        cache.reset()
        assert cache.get_seq_length() == 0
        again = model.generate(ids, past_key_values=cache, max_new_tokens=6, do_sample=False)
        fresh = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(again, fresh) and lazyllm.stats(model).pruned


@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("padding", [None, left_padded, right_padded])
def test_a_pruned_call_and_an_unpruned_call_of_one_model_agree(family, padding):
    """At keep 1.0 the same patched model answers alike whether a call prunes (`logits_to_keep=1`, a dynamic cache)
    or not (every position's logits, a static cache)."""
    model = lazyllm.patch(MODELS[family](), KEEP_ALL)
    inputs = padding() if padding else {"input_ids": random_ids(120)}
    with torch.inference_mode():
        last = model(**inputs, logits_to_keep=1).logits[:, -1]
        every = model(**inputs).logits[:, -1]
        dynamic = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        static = model.generate(**inputs, max_new_tokens=6, do_sample=False, cache_implementation="static")
    assert (last - every).abs().max().item() < 1e-5
    assert torch.equal(dynamic, static)
