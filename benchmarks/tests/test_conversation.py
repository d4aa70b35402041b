"""The conversation benchmark on a tiny random Llama with a chat template: records, pruning, resuming, tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lazybench import conversation
from lazybench.prompts import tiny_model_and_tokenizer
from lazybench.tasks import build_samples

TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }}[EOS] {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory `lazyllm.models.load_model` reads: the smoke profile's tiny Llama and its tokenizer, templated."""
    model, tokenizer = tiny_model_and_tokenizer("cpu")
    tokenizer.chat_template = TEMPLATE
    folder = tmp_path_factory.mktemp("tiny-chat")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_conversations_are_recorded_pruned_resumed_and_rendered(
    tiny_chat_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "conversation.jsonl"
    argv = ["--model", str(tiny_chat_model), "--length", "400", "--n", "2", "--max-new-tokens", "4", "--out", str(out)]
    assert conversation.main(argv) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["task"], r["sample"]) for r in records] == [("niah_multikey", 0), ("qa_squad", 0)]
    for record in records:
        assert record["seed"] == 6 and record["machine"]["device"] == "cpu"
        assert record["command"].startswith("python -m lazybench.conversation --model")
        assert record["baseline"]["turn1"]["stats"] is None
        one, two = record["patched"]["turn1"], record["patched"]["turn2"]
        assert one["stats"]["pruned"] and one["stats"]["prefill_token_fraction"] < 1.0
        assert two["stats"]["aux_cache_tokens"] == 0, "no parked tokens after turn 2"
        assert two["cached_tokens"] == one["input_tokens"] + one["new_tokens"] - 1, "turn 2 continues turn 1's cache"
        assert two["stats"]["turn_tokens"] == two["input_tokens"] - two["cached_tokens"]
        assert record["baseline"]["same_turn1_text"] and record["patched"]["same_turn1_text"]
        assert record["turn1_agree"] == (one["answer"].split() == record["baseline"]["turn1"]["answer"].split())
        assert record["gold_2"] != record["gold_1"]
    table = out.with_suffix(".md").read_text()
    assert "| all | 2 |" in table and "turn 2 agree (turn 1 agreed)" in table
    assert capsys.readouterr().out.endswith(table)

    assert conversation.main(argv) == 0, "a rerun adds nothing"
    assert len(out.read_text().splitlines()) == 2
    capsys.readouterr()
    assert conversation.main(["--report", str(out)]) == 0
    assert capsys.readouterr().out == table


def test_the_second_question_asks_another_needle_of_the_same_document(tiny_chat_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model)
    ((_, first, second),) = conversation.conversations(tokenizer, ["niah_multikey"], 400, 1)
    assert first == build_samples("niah_multikey", tokenizer, 400, [conversation.depth(0)], seed=6)[0]
    assert second.evidence[0] in first.prompt and second.evidence[0] not in first.evidence
    assert second.answers[0] in second.evidence[0] and second.answers != first.answers
    key = second.evidence[0].split(" for ")[1].split(" is:")[0]
    assert second.prompt == f"What is the special magic number for {key} mentioned in the provided text?"


def test_turn_two_revives_what_turn_one_left_parked(tiny_chat_model: Path, tmp_path: Path) -> None:
    """The paper's decoding policy leaves tokens parked after turn 1; turn 2 revives them all before its tokens."""
    out = tmp_path / "paper.jsonl"
    argv = ["--model", str(tiny_chat_model), "--length", "400", "--n", "1", "--max-new-tokens", "3", "--out", str(out)]
    assert conversation.main([*argv, "--policy", "paper"]) == 0
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    one, two = record["patched"]["turn1"]["stats"], record["patched"]["turn2"]["stats"]
    assert record["schedule"] == "default+paper" and record["config"]["revive_all_at"] is None
    assert one["aux_cache_tokens"] > 0 and two["aux_cache_tokens"] == 0
    assert two["revived_tokens"] >= one["revived_tokens"] + one["aux_cache_tokens"]
    assert two["recomputed_token_layers"] == 0
