"""The benchmark rig's smoke profile: a tiny random-weight Llama through every code path that needs no real data.

Runs `python -m lazybench --profile smoke --no-kvpress` in-process (< 60 s on 2 CPU cores) and checks that the JSON-lines
records, the markdown report and the plots exist and hold sane numbers, and that `python -m lazybench report` renders the
same report from the records alone, merging runs of several files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lazybench import records as rig_records
from lazybench import timing
from lazybench.cli import main
from lazybench.profiles import BASELINE, PROFILES, RIVALS, RandomDrop, build_configs, token_fraction
from lazybench.report import decode_steps, render
from lazybench.summary import fidelity_summary, frontier_points, generation_table
from lazyllm.config import LazyConfig

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, rig_records.Run, str]:
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    assert main(["--profile", "smoke", "--out", str(out), "--no-kvpress"]) == 0
    assert torch.get_num_threads() == threads  # the rig restores the caller's thread count
    (run,) = rig_records.runs(rig_records.read([out / "smoke.jsonl"]))
    return out, run, (out / "smoke.md").read_text()


def test_files_exist(smoke: tuple[Path, rig_records.Run, str]) -> None:
    out, _, _ = smoke
    for name in ("smoke.jsonl", "smoke.md", "smoke_ttft.png", "smoke_decode.png", "smoke_frontier.png"):
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, name
    for name in ("smoke_ttft.png", "smoke_decode.png", "smoke_frontier.png"):
        assert (out / name).read_bytes()[:8] == PNG, name


def test_machine_command_and_seed_recorded(smoke: tuple[Path, rig_records.Run, str]) -> None:
    _, run, _ = smoke
    machine = run.header["machine"]
    for key in ("cpu", "cores", "torch", "transformers", "lazyllm", "device", "date", "torch_threads"):
        assert machine[key], key
    assert machine["device"] == "cpu"
    assert run.header["profile"]["name"] == "smoke"
    assert run.header["seed"] == 0
    assert run.header["command"].startswith("python -m lazybench --profile smoke")
    assert run.kvpress["status"] == "skipped"
    assert run.end is not None and run.end["elapsed_s"] > 0
    lines = [json.loads(line) for line in (smoke[0] / "smoke.jsonl").read_text().splitlines()]
    assert {line["run"] for line in lines} == {run.header["run"]}  # every record names its run
    assert [line["kind"] for line in lines][0] == "run" and lines[-1]["kind"] == "run_end"


def test_speed_numbers_are_sane(smoke: tuple[Path, rig_records.Run, str]) -> None:
    _, run, _ = smoke
    speed = run.speed
    profile = PROFILES["smoke"]
    baseline_kv = {r["length"]: r["kv_cache_bytes"] for r in speed if r["schedule"] == BASELINE}
    assert {r["length"] for r in speed} == set(profile.timing_lengths)
    for row in speed:
        assert row["ttft_s"]["n"] == profile.repeats == len(row["decode_step_runs_ms"])
        assert all(len(steps) == profile.decode_tokens - 1 for steps in row["decode_step_runs_ms"])
        assert all(ms > 0 for steps in row["decode_step_runs_ms"] for ms in steps)
        assert row["ttft_s"]["median"] > 0
        assert row["ttft_s"]["min"] <= row["ttft_s"]["median"] <= row["ttft_s"]["max"]
        assert row["decode_ms_per_token"]["median"] > 0
        assert row["speedup"]["median"] > 0
        assert 0 < row["prefill_token_fraction"] <= 1
        assert 0 < row["compute_bound"] <= 1
        assert row["attention_share"] is None or 0 <= row["attention_share"] <= 1
        # The KV cache holds one entry per token computed in each layer: its size follows the prefill's work.
        expected_kv = baseline_kv[row["length"]] * row["prefill_token_fraction"]
        assert row["kv_cache_bytes"] == pytest.approx(expected_kv, rel=1e-9)
        if row["schedule"] == BASELINE:
            assert row["prefill_token_fraction"] == 1.0
            assert row["speedup"]["median"] == pytest.approx(1.0)
        else:
            assert row["pruned"], row  # smoke prompts are >= min_prompt_tokens
            assert row["prefill_token_fraction"] < 1
            assert row["compute_bound"] <= row["prefill_token_fraction"] + 1e-9


def test_accuracy_and_fidelity_are_sane(smoke: tuple[Path, rig_records.Run, str]) -> None:
    _, run, _ = smoke
    records = run.accuracy
    assert records
    schedules = {r["schedule"] for r in records}
    assert BASELINE in schedules and "default" in schedules and set(RIVALS) <= schedules
    for r in records:
        assert 0 <= r["score"] <= 1
        assert 0 < r["prefill_token_fraction"] <= r["prompt_token_fraction_total"] <= 1
        assert r["recomputed_token_layers"] == 0  # LazyLLM's promise: each token once per layer
        if r["schedule"] == BASELINE:
            assert r["answer_agree"] and r["prefill_token_fraction"] == 1.0
        else:  # smoke prompts are >= min_prompt_tokens: every schedule drops tokens
            assert r["pruned"] and r["prefill_token_fraction"] < 1, r
        if r["revived_tokens"] > 0:
            assert r["prompt_token_fraction_total"] > r["prefill_token_fraction"]
        if r["schedule"] in ("no-revival", "random-drop", "static-15%"):
            assert r["revived_tokens"] == 0
            assert r["prompt_token_fraction_total"] == pytest.approx(r["prefill_token_fraction"])
    for name, f in fidelity_summary(records).items():
        assert 0 <= f["answer_agreement"] <= 1, name
        assert not any(key.startswith("first_") for key in f), "fidelity is judged on whole answers only"
    for row in generation_table(records):  # sums over the same samples, interleaved with the baseline's
        mine = [r for r in records if (r["length"], r["schedule"]) == (row["length"], row["schedule"])]
        base = [r for r in records if (r["length"], r["schedule"]) == (row["length"], BASELINE)]
        assert row["n"] == len(mine) == len(base)
        expected = sum(r["ttft_s"] for r in base) / sum(r["ttft_s"] for r in mine)
        assert row["ttft_speedup"] == pytest.approx(expected, rel=1e-9)
        assert 0 < row["prompt_token_fraction_total"] <= 1
    front = frontier_points(run.speed, records, generation_table(records))
    assert front["reference_length"] == "1k" and {p["schedule"] for p in front["pooled"]} == schedules


def test_report_has_the_tables(smoke: tuple[Path, rig_records.Run, str]) -> None:
    _, _, report = smoke
    assert report.splitlines()[2].startswith("> **Quick run.**")  # 1 sample per cell, said at the top
    for heading in (
        "## Runs",
        "## 1. TTFT and decoding vs prompt length",
        "## 2. Accuracy on the RULER-style tasks",
        "### Fidelity to the baseline",
        "## 3. Whole generation (the paper's Table 2)",
        "## 4. kvpress at the same KV budget",
        "## Frontier of the schedules",
    ):
        assert heading in report, heading
    assert "Default-schedule rule" not in report and "first-token" not in report.lower()
    assert "| length | schedule | tokens | TTFT s |" in report
    assert "| default |" in report
    assert "nan" not in report.lower()


def test_report_is_rendered_from_the_records_alone(smoke: tuple[Path, rig_records.Run, str], tmp_path: Path) -> None:
    out, run, report = smoke
    assert main(["report", str(out / "smoke.jsonl"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "smoke.md").read_text() == report
    assert (tmp_path / "smoke_ttft.png").read_bytes()[:8] == PNG


def test_report_merges_runs_of_several_files(smoke: tuple[Path, rig_records.Run, str], tmp_path: Path) -> None:
    out, run, _ = smoke
    # The same run, as if measured on a second machine, where "default" was not run.
    text = (out / "smoke.jsonl").read_text().replace(run.header["run"], "second-run")
    text = text.replace('"device": "cpu"', '"device": "cuda"')
    other = tmp_path / "gpu.jsonl"
    other.write_text("".join(line + "\n" for line in text.splitlines() if '"schedule": "default"' not in line))
    merged = render([out / "smoke.jsonl", other], tmp_path, "merged").read_text()
    assert merged.count("### Run ") == 2 and "### Run second-run" in merged
    n = len([r for r in run.accuracy if r["schedule"] == BASELINE])
    assert f"| aggressive | {2 * n} |" in merged and f"| default | {n} |" in merged  # pooled over both runs
    both = [r for each in rig_records.runs(rig_records.read([out / "smoke.jsonl", other])) for r in each.accuracy]
    pooled = {(g["length"], g["schedule"]): g["ttft_speedup"] for g in generation_table(both)}
    for g in generation_table(run.accuracy):  # each sample is compared with its own run's baseline
        assert pooled[g["length"], g["schedule"]] == pytest.approx(g["ttft_speedup"])


def test_report_rejects_what_is_not_records(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "speed", "run": "x"}\n')
    with pytest.raises(ValueError, match="before \\(or without\\) its 'run' line"):
        render([bad], tmp_path, "bad")
    bad.write_text("not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1 is not a JSON line"):
        render([bad], tmp_path, "bad")
    with pytest.raises(FileNotFoundError):
        render([tmp_path / "missing.jsonl"], tmp_path, "bad")


def test_rivals_match_the_default_budget() -> None:
    configs = build_configs(30)
    default = token_fraction(configs["default"], 30)
    for name in RIVALS:
        assert token_fraction(configs[name], 30) == pytest.approx(default, abs=0.01), name
        assert configs[name].revive is False
    assert isinstance(configs["random-drop"], RandomDrop)
    assert configs["static-15%"].prune_layers[0] <= 6
    assert token_fraction(None, 4) == 1.0


def test_compute_bound_and_summaries() -> None:
    assert timing.compute_bound([100, 100, 50, 50], 100, 0.0) == pytest.approx(0.75)
    assert timing.compute_bound([100, 100, 50, 50], 100, 1.0) == pytest.approx((1 + 1 + 0.25 + 0.25) / 4)
    summary = timing.summarize([3.0, 1.0, 2.0, 5.0, 4.0])
    assert summary["median"] == 3.0 and summary["min"] == 1.0 and summary["max"] == 5.0 and summary["n"] == 5
    assert math.isnan(timing.summarize([])["median"])


def test_the_report_gives_the_first_decoding_step_apart_from_the_later_ones() -> None:
    """The first step (the revival) and the mean of the later ones, each a median over rounds."""
    steps = {"decode_step_runs_ms": [[900.0, 10.0, 20.0], [1100.0, 30.0, 30.0], [1000.0, 12.0, 12.0]]}
    assert decode_steps(steps) == ("1000.0", "15.0")
    assert decode_steps({"decode_step_runs_ms": [], "decode_ms_per_token": {"median": 50.0}}) == ("–", "–")


def test_the_schedules_frontier_keeps_the_undominated() -> None:
    def speed(schedule: str, value: float) -> dict:
        return {"schedule": schedule, "label": "4k", "length": 4096, "speedup": {"median": value}}

    records = []
    for i in range(4):
        common = {"task": "niah_single", "length": 4096, "id": f"s{i}"}
        records.append({**common, "schedule": BASELINE, "score": 1.0, "answer_agree": True})
        records.append({**common, "schedule": "safe", "score": 1.0, "answer_agree": True})
        records.append({**common, "schedule": "fast", "score": float(i != 0), "answer_agree": i != 0})
        records.append({**common, "schedule": "slow-and-wrong", "score": 0.0, "answer_agree": False})
    front = frontier_points([speed("fast", 3.0), speed("safe", 1.5), speed("slow-and-wrong", 1.2)], records, [])
    pooled = {p["schedule"]: p for p in front["pooled"]}
    assert pooled["fast"]["agreed"] == 3 and pooled["fast"]["speedup"] == 3.0 and pooled[BASELINE]["speedup"] == 1.0
    assert front["tasks"]["niah_single"]["frontier_agreement"] == ["safe", "fast"]  # "safe" dominates the baseline
    assert "slow-and-wrong" not in front["tasks"]["niah_single"]["frontier_accuracy"]


def test_random_drop_ranks_at_random_reproducibly() -> None:
    config = RandomDrop(prune_layers=(2,), keep_ratios=(0.5,), seed=3)
    scores = torch.arange(12.0).reshape(2, 6)
    ranked = config.rank_tokens(scores)
    assert ranked.shape == scores.shape and torch.equal(ranked, config.rank_tokens(scores))
    assert not torch.equal(ranked.argsort(dim=1), scores.argsort(dim=1))
    assert not torch.equal(ranked, RandomDrop(prune_layers=(2,), keep_ratios=(0.5,), seed=4).rank_tokens(scores))


def test_a_saved_config_is_measured_beside_the_presets(tmp_path: Path) -> None:
    config = tmp_path / "mine.lazyllm.json"
    LazyConfig(prune_layers=(1,), keep_ratios=(0.4,), min_prompt_tokens=0).save(config)
    argv = ["--profile", "smoke", "--out", str(tmp_path), "--no-kvpress", "--skip-accuracy", "--config", str(config)]
    assert main(argv) == 0
    (run,) = rig_records.runs(rig_records.read([tmp_path / "smoke.jsonl"]))
    timed = {record["schedule"] for record in run.speed}
    assert "config" in timed and run.header["schedules"]["config"]["config"] == "1:0.4"


def test_lengths_replace_the_profiles_own(tmp_path: Path) -> None:
    argv = ["--profile", "smoke", "--out", str(tmp_path), "--no-kvpress", "--skip-accuracy", "--lengths", "384"]
    assert main(argv) == 0
    (run,) = rig_records.runs(rig_records.read([tmp_path / "smoke.jsonl"]))
    assert {record["length"] for record in run.speed} == {384}
    with pytest.raises(SystemExit):
        main(["--profile", "smoke", "--lengths", "8"])
