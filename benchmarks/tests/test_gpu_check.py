"""`benchmarks/gpu_check.py`: its `--smoke` run (tiny shapes on CPU, in-process) measures every cell, writes valid JSON
lines and a report rendered from them alone (also by `python -m lazybench report`); the budget and out-of-memory paths
skip cells and say so; without a CUDA GPU (and without --smoke) it refuses with a clear error."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from lazybench.cli import main as lazybench_main
from lazybench.gpu_report import KINDS, render, section

SCRIPT = Path(__file__).resolve().parents[1] / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


gpu_check = load_script()
SMOKE_LENGTHS = (64, 128)


def read_lines(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    assert lines and all(line.strip() for line in lines)
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(isinstance(r, dict) and r["kind"] in KINDS for r in records)
    return records


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("gpu")
    assert gpu_check.main(["--smoke", "--out", str(out)]) == 0
    return out, read_lines(out / "gpu-check.jsonl")


def positive(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_smoke_measures_every_cell(smoke):
    _, records = smoke
    ttft = {(r["model"], r["tokens"], r["schedule"]): r for r in records if r["kind"] == "ttft"}
    generation = {(r["model"], r["schedule"]): r for r in records if r["kind"] == "generation"}
    expected = {(m, n, s) for m in gpu_check.SHAPES for n in SMOKE_LENGTHS for s in gpu_check.SCHEDULES}
    assert set(ttft) == expected and len(ttft) == sum(r["kind"] == "ttft" for r in records)
    assert set(generation) == {(m, s) for m in gpu_check.SHAPES for s in gpu_check.SCHEDULES}
    for r in [*ttft.values(), *generation.values()]:
        assert len(r["seconds"]) == len(r["ratios"]) == 1 and all(positive(x) for x in r["seconds"] + r["ratios"])
        assert positive(r["speedup"]) and positive(r["median_s"])
        assert r["peak_bytes"] is None  # CPU: no CUDA allocator to ask
        assert r["prefill_token_fraction"] == 1.0 if r["schedule"] == "baseline" else r["prefill_token_fraction"] < 1
        assert r["smoke"] is True and {"date", "torch", "transformers"} <= set(r["machine"])
    assert all(r["tokens"] == 64 and r["new_tokens"] == 4 for r in generation.values())
    tests = [r for r in records if r["kind"] == "tests"]
    assert len(tests) == 1 and tests[0]["ran"] is False
    assert records[0]["kind"] == "gpu_check" and records[-1]["kind"] == "gpu_check_end"
    assert not [r for r in records if r["kind"] == "skipped"]


def test_smoke_report_is_rendered_from_the_records_alone(smoke):
    out, records = smoke
    markdown = (out / "gpu-check.md").read_text()
    assert markdown == render(records)
    for model in gpu_check.SHAPES:
        for schedule in gpu_check.SCHEDULES:
            for tokens in SMOKE_LENGTHS:
                assert f"| {model} | {tokens} | {schedule} |" in markdown
            assert f"| {model} | 64 + 4 | {schedule} |" in markdown
    assert "CUDA tests: not run" in markdown and "smoke run" in markdown and "Interrupted" not in markdown


def test_the_rig_report_renders_the_gpu_check_records(smoke, tmp_path, capsys):
    out, records = smoke
    assert lazybench_main(["report", str(out / "gpu-check.jsonl"), "--out", str(tmp_path), "--name", "rig"]) == 0
    assert "bench report: wrote" in capsys.readouterr().out
    markdown = (tmp_path / "rig.md").read_text()
    assert markdown.startswith("# LazyLLM benchmark report")
    assert "\n".join(section(records)) in markdown  # the GPU check's section, as gpu_report renders it
    assert "## GPU check" in markdown and f"### Run {records[0]['run']}" in markdown
    assert f"| {next(iter(gpu_check.SHAPES))} | 64 + 4 | baseline |" in markdown and "## Runs" not in markdown


def test_budget_skips_cells_and_records_them(tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path))  # the folder comes from $OUT when --out is not given
    assert gpu_check.main(["--smoke", "--budget-s", "0", "--shapes", "llama2-7b"]) == 0
    records = read_lines(tmp_path / "gpu-check.jsonl")
    skipped = [r for r in records if r["kind"] == "skipped"]
    settings = gpu_check.settings_of(gpu_check.parse_args(["--smoke"]))
    assert [r["cell"] for r in skipped] == [cell.name for cell in gpu_check.plan(settings)]
    assert all(r["reason"] == "budget" for r in skipped)
    assert not [r for r in records if r["kind"] in ("ttft", "generation")]
    assert "#### Skipped" in (tmp_path / "gpu-check.md").read_text()


def test_out_of_memory_skips_the_cell_and_continues(tmp_path, monkeypatch):
    real = gpu_check.run_cell

    def run_cell(model, cell, settings):
        if cell.tokens == 128:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real(model, cell, settings)

    monkeypatch.setattr(gpu_check, "run_cell", run_cell)
    assert gpu_check.main(["--smoke", "--shapes", "qwen2.5-7b", "--out", str(tmp_path)]) == 0
    records = read_lines(tmp_path / "gpu-check.jsonl")
    skipped = [r for r in records if r["kind"] == "skipped"]
    assert [(r["cell"], r["reason"]) for r in skipped] == [("ttft 128", "out of memory")]
    assert "Tried to allocate" in skipped[0]["detail"]
    assert {r["tokens"] for r in records if r["kind"] == "ttft"} == {64}
    assert len([r for r in records if r["kind"] == "generation"]) == 4  # the cells after it still ran


def test_without_cuda_it_refuses_clearly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_pytest_counts_come_from_the_last_summary_line():
    output = (
        "..s.F\nSKIPPED [1] tests/test_cuda.py:9: 2 passed elsewhere\n3 passed, 1 failed, 1 skipped, 2 errors in 4.2s"
    )
    assert gpu_check.parse_counts(output) == {"passed": 3, "failed": 1, "skipped": 1, "errors": 2}
    assert gpu_check.parse_counts("") == {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
