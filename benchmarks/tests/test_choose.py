"""The default-choosing rule over frontier records: fastest candidate that keeps >= 90% of answers and accuracy."""

import json

from lazybench.choose import candidates_table, choose, policy_table, read_records

MACHINE = dict(
    cpu="cpu0", cores=2, device="cpu", torch="2.13.0", torch_threads=2, transformers="5.24.0", date="2026-11-30T12:00"
)


def records(name, fraction, agree, correct, baseline_correct=(1, 1, 1, 1, 1, 1, 1, 1, 1, 1), task="niah_single"):
    return [
        dict(
            kind="fidelity",
            model="m",
            split="select",
            task=task,
            length=2048,
            sample=i,
            name=name,
            max_new_tokens=12,
            agree=bool(a),
            f1=float(a),
            correct=c,
            baseline_correct=b,
            prefill_token_fraction=fraction,
            machine=MACHINE,
            command="python -m lazybench frontier --n 10",
        )
        for i, (a, c, b) in enumerate(zip(agree, correct, baseline_correct))
    ]


ALL = (1,) * 10
BASELINE = records("baseline", 1.0, ALL, ALL)


def test_the_fastest_candidate_that_keeps_answers_and_accuracy_wins():
    fast_but_unfaithful = records("fast", 0.4, (1,) * 8 + (0, 0), (1,) * 8 + (0, 0))  # agreement 0.8
    faithful = records("middle", 0.6, (1,) * 9 + (0,), ALL)  # agreement 0.9, accuracy kept
    slow = records("slow", 0.9, ALL, ALL)
    assert choose(BASELINE + fast_but_unfaithful + faithful + slow) == "middle"


def test_an_accuracy_drop_fails_the_rule_even_with_high_agreement():
    drops = records("drops", 0.5, (1,) * 9 + (0,), (1,) * 9 + (0,))  # the one changed answer was a correct one
    table = {row["name"]: row for row in candidates_table(BASELINE + drops)}
    assert table["drops"]["agreement"] == 0.9 and not table["drops"]["passes"]
    assert choose(BASELINE + drops) is None


def test_tasks_where_the_baseline_fails_do_not_count_for_accuracy():
    zeros = (0,) * 10
    baseline = records("baseline", 1.0, ALL, zeros, zeros, task="niah_multivalue")
    candidate = records("c", 0.5, (1,) * 9 + (0,), zeros, zeros, task="niah_multivalue")
    assert choose(baseline + candidate) == "c"


def test_read_records_keeps_the_last_of_a_repeated_key(tmp_path):
    path = tmp_path / "r.jsonl"
    first, second = records("c", 0.5, (1,), (1,), (1,)), records("c", 0.5, (0,), (1,), (1,))
    path.write_text("\n".join(json.dumps(r) for r in first + second + [{"kind": "speed"}]) + "\n")
    (record,) = read_records([path])
    assert record["agree"] is False


def test_a_candidate_that_answered_only_some_prompts_cannot_be_chosen():
    half_run = records("half", 0.5, (1,) * 3, (1,) * 3)  # perfect on the 3 prompts it reached, of 10
    table = {row["name"]: row for row in candidates_table(BASELINE + half_run)}
    assert not table["half"]["complete"] and not table["half"]["passes"]
    assert choose(BASELINE + half_run) is None


def test_a_decoding_policy_is_judged_prompt_by_prompt_against_the_reference_policy():
    reference = records("paper", 0.9, (1,) * 8 + (0, 0), ALL)
    swaps = records("swaps", 0.9, (0, 0) + (1,) * 8, ALL)  # as many answers kept, but two of the reference's lost
    one_lost = records("one_lost", 0.9, (0,) + (1,) * 7 + (0, 0), ALL)
    table = {row["name"]: row for row in policy_table(BASELINE + reference + swaps + one_lost, "paper")}
    assert set(table) == {"swaps", "one_lost"}
    assert table["swaps"]["lost"] == 2 and not table["swaps"]["eligible"], "paired, not pooled"
    assert table["swaps"]["gained"] == 2
    net = {row["name"]: row for row in policy_table(BASELINE + reference + swaps + one_lost, "paper", net=True)}
    assert net["swaps"]["eligible"], "the fourth rule: as many answers gained as lost"
    assert table["one_lost"]["lost"] == 1 and not table["one_lost"]["eligible"], "its F1 is 0.1 below"
    close = records("close", 0.9, (0,) + (1,) * 8 + (0,), ALL)
    for record in close[:1]:
        record["f1"] = 0.95  # the lost answer nearly matches
    (row,) = policy_table(BASELINE + reference + close, "paper")
    assert row["lost"] == 1 and row["eligible"]


def test_one_schedules_policies_are_judged_against_that_schedules_reference(tmp_path, capsys):
    from lazybench.choose import main

    rows = (
        BASELINE
        + records("shipped@balanced", 0.7, ALL, ALL)
        + records("static@balanced", 0.7, (0,) + (1,) * 9, ALL)
        + records("shipped@aggressive", 0.5, (0,) * 5 + (1,) * 5, ALL)
        + records("static@aggressive", 0.5, (0,) * 5 + (1,) * 5, ALL)
    )
    path = tmp_path / "stream.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    main([str(path), "--against", "shipped@balanced", "--schedule", "balanced"])
    text = capsys.readouterr().out
    assert "| static@balanced | 10 | 0.90 [0.60-0.98] | 1 | 0 |" in text
    assert "shipped@balanced: 10/10 whole answers kept, mean F1 1.000." in text, "the reference's own figures"
    assert "aggressive" not in text, "the other schedule's candidates are not judged against this one's reference"


def test_the_report_gives_each_length_task_cell_and_the_policy_verdict(tmp_path):
    from lazybench import report

    rows = (
        BASELINE
        + records("paper@default", 0.9, ALL, ALL)
        + records("paper+static@default", 0.9, (0,) * 2 + (1,) * 8, ALL)
    )
    for row in rows:
        row.update(split="decode", seed=3, scoring=row["name"].split("@")[0], schedule="default")
    # The rig's first records described the machine without date, CPU model or device.
    versions = dict(torch="2.13.0", transformers="5.24.0")
    rows[0]["machine"] = dict(processor="x86_64", cpu_count=2, torch_threads=2, versions=versions)
    path = tmp_path / "decode.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    text = report.render([path], tmp_path, "decode").read_text()
    assert "| paper+static@default | 0.80 [0.49-0.94] (10) |" in text, "its cell, with interval and n"
    assert "- Machine: cpu0, 2 cores, cpu, torch 2.13.0 (2 threads), transformers 5.24.0; 2026-11-30." in text
    old_machine = "x86_64, 2 cores, device not recorded, torch 2.13.0 (2 threads), transformers 5.24.0"
    assert f"- Machine: {old_machine}; date not recorded." in text
    assert "- Command: `python -m lazybench frontier --n 10`" in text
    assert "Decoding policies against paper@default, eligible with at most one answer lost" in text
    assert "| paper+static@default | 10 | 0.80 [0.49-0.94] | 2 | 0 |" in text
