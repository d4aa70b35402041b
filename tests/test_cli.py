"""The `lazyllm` command: help of every command, `generate` and `demo` end to end on a tiny saved Llama, and bad input
that ends in one `lazyllm: error:` line with exit status 2 (never a traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need, tiny_llama
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from lazyllm.cli import main
from lazyllm.config import LazyConfig, default_rule

REPO = Path(__file__).resolve().parents[1]
VOCAB = 256


def _tiny_tokenizer(vocab_size: int = VOCAB) -> PreTrainedTokenizerFast:
    words = ["<unk>", "<eos>"] + [f"w{i}" for i in range(vocab_size - 2)]
    backend = Tokenizer(WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-layer random Llama and a word-level tokenizer, as `save_pretrained` writes them."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama("gqa").save_pretrained(folder)
    _tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prompt") / "prompt.txt"
    path.write_text(" ".join(f"w{(7 * i) % (VOCAB - 2)}" for i in range(300)) + "\n", encoding="utf-8")
    return path


def assert_one_line_error(capsys: pytest.CaptureFixture[str], status: int, *fragments: str) -> str:
    captured = capsys.readouterr()
    assert status == 2
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    errors = [line for line in captured.err.splitlines() if line.startswith("lazyllm: error:")]
    assert len(errors) == 1, captured.err
    assert captured.err.rstrip().endswith(errors[0])  # the error is the last thing printed
    for fragment in fragments:
        assert fragment in errors[0]
    return errors[0]


# -- help ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv", [["--help"], ["demo", "--help"], ["generate", "--help"], ["calibrate", "--help"], ["info", "--help"]]
)
def test_help_of_every_command(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: lazyllm")
    if argv == ["--help"]:
        for command in ("demo", "generate", "calibrate", "info"):
            assert command in out
        assert "bench" not in out.split("options:")[0]  # no rig among the commands: its place is said in the epilog
        assert "python -m lazybench" in " ".join(out.split())


def test_the_library_never_imports_the_rig() -> None:
    """Importing every lazyllm module (the CLI included) leaves the benchmark rig unimported."""
    code = (
        "import importlib, pkgutil, sys, lazyllm\n"
        "for module in pkgutil.walk_packages(lazyllm.__path__, 'lazyllm.'):\n"
        "    importlib.import_module(module.name)\n"
        "rig = sorted(name for name in sys.modules if name.startswith(('lazybench', 'lazyllm.bench')))\n"
        "assert not rig, rig\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "lazyllm: error:" in capsys.readouterr().err


def test_info(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "LlamaForCausalLM" in out and "default" in out and "transformers" in out
    assert f"schedule of lazyllm.patch(model), by the model's size: {default_rule()}" in out


def test_python_dash_m_lazyllm() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-m", "lazyllm", "--help"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: lazyllm") and "generate" in result.stdout


# -- generate --------------------------------------------------------------------------------------------------------
def test_generate_prints_answer_and_stats(
    tiny_dir: Path, prompt_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", "--model", str(tiny_dir), "--prompt-file", str(prompt_file)]
    status = main([*argv, "--max-new-tokens", "5", "--min-prompt-tokens", "64", "--no-progress"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    answer, _, report = captured.out.partition("--- lazyllm stats")
    assert len(answer.split()) == 5 and all(word.startswith("w") or word == "<unk>" for word in answer.split())
    default = LazyConfig.preset("default", 6, min_prompt_tokens=64)
    kept = [300] * 6
    for cut, count in zip(default.prune_layers, default.keep_counts(300)):
        kept[cut:] = [count] * (6 - cut)
    assert f"prefill: pruned, schedule {default.describe()}" in report
    assert "schedule: preset 'default', the default for models under 1.54B" in report, "no --schedule: by size"
    assert "kept per layer: " + " ".join(map(str, kept)) in report
    assert "plain text" in captured.err


def test_generate_json_and_explicit_schedule(
    tiny_dir: Path, prompt_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", "--model", str(tiny_dir), "--prompt-file", str(prompt_file), "--no-chat", "--json"]
    assert main([*argv, "--schedule", "3:0.5", "--max-new-tokens", "3", "--min-prompt-tokens", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["stats"]["pruned"] is True
    assert result["stats"]["kept_per_layer"] == [300, 300, 300, 150, 150, 150]
    assert result["stats"]["prefill_token_fraction"] == pytest.approx(0.75)
    assert result["stats"]["decode_steps"] == 2 and result["answer"]


def test_generate_short_prompt_says_why_it_did_not_prune(
    tiny_dir: Path, prompt_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", "--model", str(tiny_dir), "--prompt-file", str(prompt_file), "--max-new-tokens", "2"]) == 0
    assert "not pruned (prompt of 300 tokens is shorter than min_prompt_tokens=2048)" in capsys.readouterr().out


# -- bad input -------------------------------------------------------------------------------------------------------
def test_missing_prompt_file(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["generate", "--model", str(tiny_dir), "--prompt-file", str(tmp_path / "nope.txt")])
    line = assert_one_line_error(capsys, status, "prompt file not found", "nope.txt")
    assert line.count("\n") == 0


def test_unknown_model_path(prompt_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["generate", "--model", str(tmp_path / "no-model"), "--prompt-file", str(prompt_file)])
    assert_one_line_error(capsys, status, "cannot load", "no-model")


def test_hub_id_is_not_downloaded(prompt_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["generate", "--model", "meta-llama/Llama-3.2-1B", "--prompt-file", str(prompt_file)])
    assert_one_line_error(capsys, status, "Hub ids are not downloaded")


@pytest.mark.parametrize(
    ("schedule", "fragment"),
    [("8:x", "bad schedule '8:x'"), ("fast", "bad schedule 'fast'"), ("3:0.2,2:0.1", "strictly increasing")],
)
def test_bad_schedule_fails_before_loading(
    schedule: str, fragment: str, tiny_dir: Path, prompt_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["generate", "--model", str(tiny_dir), "--prompt-file", str(prompt_file), "--schedule", schedule])
    assert_one_line_error(capsys, status, fragment)


def test_schedule_deeper_than_the_model(tiny_dir: Path, prompt_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["generate", "--model", str(tiny_dir), "--prompt-file", str(prompt_file), "--schedule", "8:0.5"])
    assert_one_line_error(capsys, status, "reach past the model's 6 layers")


def test_unsupported_model(tmp_path: Path, prompt_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=512)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    _tiny_tokenizer().save_pretrained(tmp_path)
    status = main(["generate", "--model", str(tmp_path), "--prompt-file", str(prompt_file)])
    assert_one_line_error(capsys, status, "cannot patch GPT2LMHeadModel")


def test_chat_without_template(tiny_dir: Path, prompt_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["generate", "--model", str(tiny_dir), "--prompt-file", str(prompt_file), "--chat"])
    assert_one_line_error(capsys, status, "no chat template", "--no-chat")


# -- demo ------------------------------------------------------------------------------------------------------------
def test_demo_end_to_end_on_a_tiny_model(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The whole demo (real long-document question, both generations, interleaved TTFT) with a tiny model."""
    need("long_context_eval")
    argv = ["demo", "--model", str(tiny_dir), "--length", "300", "--max-new-tokens", "2", "--repeats", "1"]
    status = main([*argv, "--min-prompt-tokens", "64", "--no-progress"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    out = captured.out
    for label in ("question:", "expected:", "baseline answer:", "lazyllm answer:", "speedup", "prefill_token_fraction"):
        assert label in out
    assert f"schedule:  {LazyConfig.preset('default', 6).describe()}" in out
    assert "prefill: pruned" in out


def test_demo_rejects_bad_input_before_loading(capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_line_error(capsys, main(["demo", "--schedule", "1:2"]), "keep_ratios must lie in (0, 1]")
    assert_one_line_error(capsys, main(["demo", "--length", "10"]), "--length")


def test_demo_on_smollm2(capsys: pytest.CaptureFixture[str]) -> None:
    """The real demo, shortened (a 600-token question; model and text cached)."""
    need("long_context_eval")
    argv = ["demo", "--length", "600", "--max-new-tokens", "4", "--repeats", "1", "--min-prompt-tokens", "0"]
    argv.append("--no-progress")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "SmolLM2-135M-Instruct (30 layers" in out
    assert f"schedule:  {LazyConfig.preset('default', 30).describe()} (min_prompt_tokens=0)" in out
    assert "expected:  " in out and "speedup" in out
    assert "prefill: pruned" in out and "prefill_token_fraction: 0.90" in out


# -- calibrate and --config ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    lines = [json.dumps(" ".join(f"w{(7 * i + k) % (VOCAB - 2)}" for i in range(200))) for k in range(8)]
    lines += [json.dumps({"prompt": " ".join(f"w{(3 * i) % (VOCAB - 2)}" for i in range(200))})]
    lines += [json.dumps({"input_ids": [(5 * i) % VOCAB for i in range(200)]})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_calibrate_saves_a_config_that_generate_uses(
    tiny_dir: Path, prompts_file: Path, prompt_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tiny.lazyllm.json"
    argv = ["calibrate", "--model", str(tiny_dir), "--prompts", str(prompts_file), "--out", str(out), "--no-chat"]
    options = ["--max-new-tokens", "3", "--min-prompt-tokens", "0", "--score-window", "4", "--score-pool", "3"]
    options += ["--min-agreement", "0.7"]  # a lower bound 10 prompts can reach (0.8 needs 16)
    assert main([*argv, *options, "--no-progress"]) == 0
    report = capsys.readouterr().out
    assert "calibrated on 10 prompts" in report and f"saved to {out}" in report
    saved = LazyConfig.load(out)
    assert saved.describe_scoring() == "window4+pool3"
    argv = ["generate", "--model", str(tiny_dir), "--prompt-file", str(prompt_file), "--no-chat", "--json"]
    assert main([*argv, "--config", str(out), "--max-new-tokens", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["stats"]["schedule"] == saved.describe()


def test_calibrate_refuses_too_few_prompts(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "few.jsonl"
    path.write_text(json.dumps("w1 w2 w3") + "\n", encoding="utf-8")
    argv = ["calibrate", "--model", str(tiny_dir), "--prompts", str(path), "--out", str(tmp_path / "c.json")]
    assert_one_line_error(capsys, main([*argv, "--min-prompt-tokens", "0"]), "needs at least 16 prompts")


def test_config_and_schedule_together_are_refused(
    prompt_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "generate",
        "--model",
        "x",
        "--prompt-file",
        str(prompt_file),
        "--config",
        "c.json",
        "--schedule",
        "aggressive",
    ]
    assert_one_line_error(capsys, main(argv), "either --config or --schedule")


def test_config_of_another_depth_is_refused(
    tiny_dir: Path, prompt_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "deep.json"
    LazyConfig(prune_layers=(8, 16), keep_ratios=(0.5, 0.2)).save(path, tiny_llama("xgen"))
    argv = ["generate", "--model", str(tiny_dir), "--prompt-file", str(prompt_file), "--config", str(path)]
    assert_one_line_error(capsys, main(argv), "32 layers; this model has 6")
