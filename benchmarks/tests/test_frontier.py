"""The frontier runner on a tiny model: candidates by name or saved file, one record each, resumable."""

import json
from types import SimpleNamespace

import pytest
import torch

import lazyllm
from lazybench import frontier
from lazybench.prompts import fake_samples, tiny_model_and_tokenizer
from lazyllm.config import ConfigError

WHERE = dict(kind="fidelity", model="tiny", split="select", seed=1, sample=0)


def test_each_candidate_answers_once_against_the_baseline_and_a_rerun_adds_nothing(tmp_path):
    model, tokenizer = tiny_model_and_tokenizer("cpu")
    sample = fake_samples([256], [0.5], seed=0)[0]
    layers = model.config.num_hidden_layers
    candidates = [frontier.candidate("paper", "aggressive", layers), frontier.candidate("pool7", "0.5:0.5", layers)]
    path = tmp_path / "frontier.jsonl"

    assert frontier.run_prompt(model, tokenizer, sample, WHERE, candidates, frontier.Records(path)) == 3
    assert frontier.run_prompt(model, tokenizer, sample, WHERE, candidates, frontier.Records(path)) == 0

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["name"] for r in rows] == ["baseline", "paper@aggressive", "pool7@0.5:0.5"]
    assert all(r["reference"] == rows[0]["answer"] for r in rows)
    assert all(r["agree"] == (r["answer"] == rows[0]["answer"]) for r in rows)
    assert rows[0]["prefill_token_fraction"] == 1.0 > rows[1]["prefill_token_fraction"] > 0
    assert not lazyllm.is_patched(model), "each candidate is unpatched after its answer"


def test_answer_tokens_makes_every_answer_that_long_even_past_end_of_sequence(tmp_path):
    model, tokenizer = tiny_model_and_tokenizer("cpu")
    sample = fake_samples([256], [0.5], seed=0)[0]
    ids = tokenizer(frontier.chat_prompt(tokenizer, sample, answer_prefix=True), return_tensors="pt").input_ids
    with torch.inference_mode():
        first = model.generate(ids, max_new_tokens=1, do_sample=False)[0, -1].item()
    model.generation_config.eos_token_id = first  # the baseline would stop after one token
    candidates = [frontier.candidate("paper", "aggressive", model.config.num_hidden_layers)]
    path = tmp_path / "frontier.jsonl"
    frontier.run_prompt(model, tokenizer, sample, WHERE, candidates, frontier.Records(path), answer_tokens=6)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["new_tokens"], r["max_new_tokens"], r["exact"]) for r in rows] == [(6, 6, True)] * 2


def test_a_saved_config_is_a_candidate_named_after_its_file_and_prunes_at_every_length(tmp_path):
    model, _ = tiny_model_and_tokenizer("cpu")
    lazyllm.LazyConfig.preset("balanced", 8, score_window=8).save(tmp_path / "mine.json", model)
    found = frontier.saved_candidate(tmp_path / "mine.json", model)
    assert found.name == f"mine@{found.config.describe()}"
    assert found.config.min_prompt_tokens == 0 and found.config.score_window == 8

    deeper = SimpleNamespace(config=SimpleNamespace(num_hidden_layers=12, name_or_path="deeper"))
    lazyllm.LazyConfig.preset("balanced", 12).save(tmp_path / "deeper.json", deeper)
    with pytest.raises(ConfigError, match="layers"):
        frontier.saved_candidate(tmp_path / "deeper.json", model)


def test_configs_alone_need_no_schedule_but_something_must_be_measured(tmp_path):
    args = frontier.parse_args(["--schedules", "--configs", str(tmp_path / "mine.json")])
    assert args.schedules == [] and args.configs == [tmp_path / "mine.json"]
    with pytest.raises(SystemExit):
        frontier.parse_args(["--schedules"])


def test_an_unknown_token_score_is_refused():
    with pytest.raises(SystemExit, match="unknown scoring"):
        frontier.candidate("nope", "default", 8)


def test_resuming_records_made_with_another_n_is_refused(tmp_path):
    """Sample numbers name other prompts (other depths) under another --n."""
    path = tmp_path / "frontier.jsonl"
    old = dict(WHERE, task="niah_single", length=2048, name="baseline", max_new_tokens=12, command="x --n 10")
    path.write_text(json.dumps(old) + "\n")
    records = frontier.Records(path)
    frontier.check_same_prompts(records, dict(WHERE, n=10), [2048])
    frontier.check_same_prompts(records, dict(WHERE, n=24), [4096])  # another length: other prompts anyway
    with pytest.raises(SystemExit, match="--n 10"):
        frontier.check_same_prompts(records, dict(WHERE, n=24), [2048])


def test_shipped_takes_each_preset_as_lazyllm_patch_applies_it():
    for name in lazyllm.PRESETS:
        shipped = frontier.candidate("shipped", name, 24)
        assert shipped.name == f"shipped@{name}"
        assert shipped.config == lazyllm.LazyConfig.preset(name, 24, min_prompt_tokens=0)
    with pytest.raises(SystemExit, match="preset names only"):
        frontier.candidate("shipped", "0.5:0.5", 24)


def test_records_without_a_dtype_are_float32_and_another_dtype_is_another_key(tmp_path):
    path = tmp_path / "frontier.jsonl"
    old = dict(WHERE, task="niah_single", length=2048, sample=0, name="baseline", max_new_tokens=12)
    path.write_text(json.dumps(old) + "\n")
    records = frontier.Records(path)
    assert records.key(dict(old, dtype="float32")) in records.done
    assert records.key(dict(old, dtype="bfloat16")) not in records.done
