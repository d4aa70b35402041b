"""The size ladder report (DECISIONS 13) from synthetic frontier records: matching by config, verdicts, outcome."""

import dataclasses
import json

from lazybench import cli, ladder
from lazyllm import LazyConfig

SMALL, LARGE = "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"
TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "qa_squad", "qa_hotpot")
MACHINE = dict(cpu="cpu0", cores=2, device="cpu", lazyllm="0.2.0", date="2026-12-06T06:00:00+00:00")
FRACTION = {"default": 0.9, "balanced": 0.73, "aggressive": 0.49}


def shipped_config(preset, model, **changes):
    config = dataclasses.asdict(LazyConfig.preset(preset, ladder.DEPTHS[model], min_prompt_tokens=0))
    return json.loads(json.dumps({**config, **changes}))


def records(model, name, config, n, lost=0, fraction=1.0, length=2048, **extra):
    """n prompts (tasks in turn); the first `lost` answers differ from the baseline's; every answer correct; TTFT
    in proportion to the prefill fraction, plus 10 ms on every other prompt."""
    return [
        dict(
            kind="fidelity",
            model=model,
            split="select",
            seed=1,
            n=12,
            length=length,
            task=TASKS[i % 5],
            sample=i // 5,
            max_new_tokens=12,
            name=name,
            config=config,
            agree=i >= lost,
            correct=1.0,
            baseline_correct=1.0,
            prefill_token_fraction=fraction,
            ttft_s=2.0 * fraction + 0.01 * (i % 2),
            machine=MACHINE,
            command=f"python -m lazybench frontier --model {model} --n 12",
            **extra,
        )
        for i in range(n)
    ]


def model_records(model, n, lost, dtype=None):
    """The baseline and the three presets as shipped, `lost[preset]` answers lost each."""
    extra = {"dtype": dtype} if dtype else {}
    rows = records(model, "baseline", None, n, **extra)
    for preset in ladder.PRESETS:
        config = shipped_config(preset, model)
        rows += records(model, f"shipped@{preset}", config, n, lost.get(preset, 0), FRACTION[preset], **extra)
    return rows


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_verdicts_follow_the_rule():
    ok = True
    assert ladder.verdict(60, 57, ok) == "yes"
    assert ladder.verdict(60, 57, False) == "no (accuracy)"
    assert ladder.verdict(60, 56, ok) == "no (point estimate)"  # Wilson upper bound above 0.95
    assert ladder.verdict(30, 25, ok) == "no"  # upper bound 0.93
    assert ladder.verdict(18, 18, ok) == "not yet (n<60)"
    assert ladder.verdict(18, 16, ok) == "not yet (n<60; fails so far)"
    assert ladder.verdict(8, 4, ok) == "no (lost 4 > 3 of 60)"  # too few prompts for Wilson, too many lost for 60


def test_a_record_is_a_preset_by_its_config_not_its_label(tmp_path):
    model = SMALL
    rows = records(model, "baseline", None, 5)
    rows += records(model, "my-label", shipped_config("balanced", model), 5, fraction=0.73)
    rows += records(model, "shipped@default", shipped_config("default", model, revive_all_at=2), 5, fraction=0.9)
    old = {k: v for k, v in shipped_config("aggressive", model).items() if k != "strict"}  # made before `strict`
    rows += records(model, "old@aggressive", old, 5, fraction=0.49)
    retired = shipped_config("aggressive", model, revive_steps=1, seed=0)  # retired options at today's behaviour
    rows += records(model, "retired@aggressive", retired, 5, fraction=0.49)
    rows += records(model, "spread@aggressive", shipped_config("aggressive", model, revive_steps=4), 5, fraction=0.49)
    built = ladder.build(ladder.read_records([write(tmp_path / "r.jsonl", rows)]))

    table = built.tables[("select", 2048, None)]
    assert {preset: c["labels"] for (_, preset, _), c in table.items()} == {
        "balanced": ["my-label"],
        "aggressive": ["retired@aggressive"],
    }
    assert {r["name"] for r in built.unmatched} == {"shipped@default", "old@aggressive", "spread@aggressive"}
    text = "\n".join(ladder.matching_section(built))
    assert "no preset in any decoding policy, not shown: `old@aggressive` (5), `shipped@default` (5)" in text
    # The same config on another depth is another schedule: on the 1.5B (28 layers) the 24-layer cuts match nothing.
    assert ladder.matches(rows[5], ladder.DEPTHS[LARGE]) is None


def test_the_depth_of_an_unknown_model_is_inferred_from_its_configs(tmp_path):
    config = json.loads(json.dumps(dataclasses.asdict(LazyConfig.preset("aggressive", 20, min_prompt_tokens=0))))
    rows = records("mystery", "baseline", None, 5) + records("mystery", "x", config, 5, fraction=0.49)
    built = ladder.build(ladder.read_records([write(tmp_path / "r.jsonl", rows)]), params={"mystery": 10**9})
    model = built.models[("mystery", "float32")]
    assert (model.depth, model.depth_inferred, model.params) == (20, True, 10**9)
    assert list(built.tables[("select", 2048, None)]) == [(("mystery", "float32"), "aggressive", "revive_all_at1")]


def render(tmp_path, rows, models=(SMALL, LARGE)):
    path = ladder.render([write(tmp_path / "ladder.jsonl", rows)], tmp_path / "out", "ladder", list(models))
    return path.read_text()


def test_fewer_than_60_prompts_leave_the_outcome_undecided(tmp_path):
    rows = model_records(SMALL, 59, {"aggressive": 20}) + model_records(LARGE, 60, {"aggressive": 20}, "bfloat16")
    text = render(tmp_path, rows)
    assert "| qwen2.5-coder-0.5b (494M, float32) | balanced | as shipped | shipped@balanced | 59 |" in text
    assert "| qwen2.5-coder-1.5b (1.54B, bfloat16) | balanced | as shipped | shipped@balanced | 60 |" in text
    assert "59/59 = 1.00" in text and "not yet (n<60)" in text
    outcome = text.split("## Rule 13 outcome")[1].split("##")[0]
    assert "**Undecided**: qwen2.5-coder-0.5b balanced (59/59" in outcome
    assert "Decided" not in outcome


def test_60_prompts_decide_the_smallest_size_that_holds(tmp_path):
    rows = model_records(SMALL, 60, {"balanced": 3, "aggressive": 20})  # balanced 57/60 holds
    rows += model_records(LARGE, 60, {"balanced": 1, "aggressive": 20}, "bfloat16")
    text = render(tmp_path, rows)
    assert "57/60 = 0.95 [0.86-0.98] | 1.00 (1.00) | 1.37x [1.37-1.37] | yes |" in text, "2.00 / 1.46, 2.01 / 1.47"
    assert "**Decided: S = 494M** (qwen2.5-coder-0.5b)" in text
    assert "qwen2.5-coder-0.5b: `balanced`, qwen2.5-coder-1.5b: `balanced`" in text
    assert (tmp_path / "out" / "ladder.png").stat().st_size > 10_000


def test_a_preset_that_fails_on_the_larger_model_moves_s_up_or_keeps_default(tmp_path):
    rows = model_records(SMALL, 60, {"balanced": 1, "aggressive": 20})
    rows += model_records(LARGE, 60, {"balanced": 4, "aggressive": 20})  # balanced 56/60 fails on the larger model
    text = render(tmp_path, rows)
    assert "**Decided: no S**" in text and "`default` stays for every model" in text


def test_the_rule_text_rules_out_the_small_models_and_the_cli_writes_both_files(tmp_path):
    rows = model_records(SMALL, 60, {"aggressive": 20}) + model_records(LARGE, 60, {"aggressive": 20})
    rows += records("smollm2", "baseline", None, 30)
    config = shipped_config("balanced", SMALL) | {"prune_layers": [18, 24]}  # balanced on SmolLM2's 30 layers
    rows += records("smollm2", "window32+pool7+revive_all_at1@balanced", config, 30, lost=5, fraction=0.74)
    source = write(tmp_path / "all.jsonl", rows)
    assert cli.main(["ladder", str(source), "--out", str(tmp_path / "cli"), "--name", "ladder"]) == 0
    text = (tmp_path / "cli" / "ladder.md").read_text()
    assert (tmp_path / "cli" / "ladder.png").exists()
    assert "| smollm2 (135M, float32) | balanced | as shipped | window32+pool7+revive_all_at1@balanced | 30 |" in text
    assert "smollm2 balanced: ruled out by the rule's text" in text and "records as shipped: 25/30" in text
    assert "gemma3 balanced: ruled out by the rule's text" in text and "no input record is this preset" in text
    # Every cheaper preset is settled (gemma3 and smollm2 by the rule's text): balanced from the 0.5B on.
    assert "**Decided: S = 494M**" in text
    assert f"`{source}`: " in text and "python -m lazybench frontier --model qwen2.5-coder-0.5b --n 12" in text


def test_a_held_apart_split_reports_without_the_rule_s_verdicts(tmp_path):
    rows = [dict(r, split="report", seed=0) for r in model_records(LARGE, 30, {"aggressive": 8}, "bfloat16")]
    text = render(tmp_path, rows)
    assert "## report split, 2048 tokens" in text and "22/30 = 0.73" in text
    assert "holds" not in text.split("## Sources")[0].lower()
    assert "## Rule 13 outcome" not in text and "docs/DECISIONS.md, section 13" in text


def test_another_decoding_policy_is_its_own_row_and_never_decides(tmp_path):
    rows = model_records(SMALL, 60, {"balanced": 1, "aggressive": 20})
    rows += model_records(LARGE, 60, {"balanced": 1, "aggressive": 20})
    for model in (SMALL, LARGE):  # the paper's decoding loses no answer: were it counted, aggressive would hold
        for preset in ("balanced", "aggressive"):
            config = shipped_config(preset, model, revive_all_at=None)
            rows += records(model, f"window32+pool7@{preset}", config, 60, fraction=FRACTION[preset])
    text = render(tmp_path, rows)
    assert "| qwen2.5-coder-0.5b (494M, float32) | aggressive | paper's | window32+pool7@aggressive | 60 |" in text
    assert "| qwen2.5-coder-0.5b (494M, float32) | aggressive | as shipped | shipped@aggressive | 60 |" in text
    assert "qwen2.5-coder-0.5b: `balanced`, qwen2.5-coder-1.5b: `balanced`" in text
    assert "`window32+pool7@aggressive` (60, paper's decoding)" in text
