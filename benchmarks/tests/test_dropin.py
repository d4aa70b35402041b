"""`python -m lazybench.dropin` on the tiny random Llama: beam search, patched calls prune, records are written and
resumed, and the table renders from them alone (the committed records too, old right_padding ones included)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lazybench import dropin
from lazybench.cli import SUBCOMMANDS
from lazybench.tasks import TASKS

COMMITTED = Path(__file__).resolve().parents[1] / "results" / "dropin.jsonl"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], str]:
    out = tmp_path_factory.mktemp("dropin") / "dropin.jsonl"
    threads = torch.get_num_threads()
    argv = ["--model", "tiny", "--length", "64", "--n", "1", "--new-tokens", "4", "--threads", "1", "--out", str(out)]
    assert dropin.main(argv) == 0
    assert torch.get_num_threads() == threads  # the caller's thread count is restored
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return out, records, dropin.report([out])


def test_one_record_per_prompt_and_config(run: tuple[Path, list[dict], str]) -> None:
    out, records, _ = run
    assert {(r["mode"], r["name"]) for r in records} == {
        ("beam_search", name) for name in ("unpatched", "patched@default")
    }
    assert len(records) == len(dropin.DropinRecords(out).done) == 2 * len(TASKS)  # one record per key
    assert {r["task"] for r in records} == set(TASKS)
    assert all(r["seed"] == 7 and r["machine"]["torch"] and "--model tiny" in r["command"] for r in records)
    assert all(r["num_beams"] == 2 and len(r["answers"]) == len(r["prompt_tokens"]) == 1 for r in records)


def test_patched_calls_pruned_and_are_judged_against_the_unpatched_model(run: tuple[Path, list[dict], str]) -> None:
    _, records, _ = run
    patched = [r for r in records if r["config"] is not None]
    assert len(patched) == len(TASKS)
    for r in patched:
        assert r["stats"]["pruned"] and 0 < r["prefill_token_fraction"] < 1
        assert r["config"]["min_prompt_tokens"] == 0
        assert r["ttft_ratio"] > 0 and len(r["agree"]) == len(r["f1"]) == len(r["answers"]) == 1
        reference = next(x for x in records if x["task"] == r["task"] and x["config"] is None)
        assert r["reference"] == reference["answers"]
        assert r["baseline_ttft_s"] == reference["ttft_s"]
    assert {r["patched_first"] for r in patched} == {True, False}  # the order alternates


def test_the_table_renders_and_a_rerun_adds_nothing(run: tuple[Path, list[dict], str]) -> None:
    out, records, table = run
    assert "| beam_search | patched@default | tiny | 64 | 4 | 5 answers in 5 calls of 2 beams |" in table
    argv = ["--model", "tiny", "--length", "64", "--n", "1", "--new-tokens", "4", "--out", str(out)]
    assert dropin.main(argv) == 0
    assert len(out.read_text().splitlines()) == len(records)
    assert "dropin" in SUBCOMMANDS


def test_the_committed_records_render_old_right_padding_ones_included(capsys: pytest.CaptureFixture[str]) -> None:
    assert dropin.main(["--report", str(COMMITTED)]) == 0
    table = capsys.readouterr().out
    assert "| beam_search | patched@default | smollm2 | 2048 | 16 | 25 answers in 25 calls of 2 beams |" in table
    assert "| right_padding | patched@default | smollm2 | 2048 | 16 | 30 answers in 15 calls |" in table
