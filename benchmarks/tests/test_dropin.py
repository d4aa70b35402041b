"""`python -m lazybench.dropin` on the tiny random Llama: right-padded batches and beam search, patched calls prune,
records are written and resumed, and the table renders from them alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lazybench import dropin
from lazybench.cli import SUBCOMMANDS
from lazybench.tasks import TASKS


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], str]:
    out = tmp_path_factory.mktemp("dropin") / "dropin.jsonl"
    threads = torch.get_num_threads()
    argv = ["--model", "tiny", "--length", "64", "--n", "1", "--new-tokens", "4", "--threads", "1", "--out", str(out)]
    assert dropin.main(argv) == 0
    assert torch.get_num_threads() == threads  # the caller's thread count is restored
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return out, records, dropin.report([out])


def test_one_record_per_batch_or_prompt_mode_and_config(run: tuple[Path, list[dict], str]) -> None:
    _, records, _ = run
    names = {(r["mode"], r["name"]) for r in records}
    assert names == {
        ("right_padding", "unpatched_alone"),
        ("right_padding", "unpatched"),
        ("right_padding", "patched@default"),
        ("beam_search", "unpatched"),
        ("beam_search", "patched@default"),
    }
    assert len(records) == 5 * len(TASKS)
    assert all(r["seed"] == 7 and r["machine"]["torch"] and "--model tiny" in r["command"] for r in records)
    padded = [r for r in records if r["mode"] == "right_padding"]
    assert all(len(r["answers"]) == 2 and r["prompt_tokens"][0] > r["prompt_tokens"][1] for r in padded)
    assert {r["num_beams"] for r in records if r["mode"] == "beam_search"} == {2}


def test_patched_calls_pruned_and_are_judged_against_the_unpatched_model(run: tuple[Path, list[dict], str]) -> None:
    _, records, _ = run
    patched = [r for r in records if r["config"] is not None]
    assert len(patched) == 2 * len(TASKS)
    for r in patched:
        assert r["stats"]["pruned"] and 0 < r["prefill_token_fraction"] < 1
        assert r["config"]["min_prompt_tokens"] == 0
        assert r["ttft_ratio"] > 0 and len(r["agree"]) == len(r["f1"]) == len(r["answers"])
        reference = next(
            x for x in records if x["mode"] == r["mode"] and x["task"] == r["task"] and x["config"] is None
        )
        assert r["reference"] == reference["answers"]  # right padding: each row alone; beam search: unpatched
    assert {r["patched_first"] for r in patched} == {True, False}  # the order alternates


def test_the_table_renders_and_a_rerun_adds_nothing(run: tuple[Path, list[dict], str]) -> None:
    out, records, table = run
    assert "| right_padding | patched@default | tiny | 64 and 56 | 4 | 10 rows in 5 batches |" in table
    assert "| beam_search | patched@default | tiny | 64 | 4 | 5 prompts, 2 beams |" in table
    argv = ["--model", "tiny", "--length", "64", "--n", "1", "--new-tokens", "4", "--out", str(out)]
    assert dropin.main(argv) == 0
    assert len(out.read_text().splitlines()) == len(records)
    assert "dropin" in SUBCOMMANDS
