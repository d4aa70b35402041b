"""Fidelity cells with intervals, and the rule that picks the default from the frontier records.

Reads the JSON lines of `lazybench.frontier` only. The rule (README, "Choosing the default token score and
schedule"): the candidate with the lowest prefill token fraction whose pooled whole-answer agreement with the
unpruned model is >= 0.90 and whose pooled accuracy, over the tasks where the baseline scores >= 0.20, is at most
0.02 below the baseline's; equal fractions go to the higher agreement.

    python -m lazybench.choose benchmarks/results/frontier-select.jsonl

With `--against NAME`, the rule for decoding policies (README, "Second rule for the default decoding policy"): a
candidate is eligible when it loses at most one whole answer that NAME keeps (prompt by prompt) and its mean token F1
against the unpruned model is at most 0.02 below NAME's.

    python -m lazybench.choose benchmarks/results/frontier-decode.jsonl --against paper@default

With `--schedule S` as well, only the candidates placed on schedule S (labels ending in `@S`) are judged: one preset's
decoding policies against that preset's reference (DECISIONS 15).

    python -m lazybench.choose benchmarks/results/frontier-stream-1.5b.jsonl \\
        --against window32+pool7+revive_all_at1@balanced --schedule balanced
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lazybench.fidelity import bootstrap_interval
from lazyllm.fidelity import wilson_interval

MIN_AGREEMENT = 0.90
MAX_ACCURACY_DROP = 0.02
BASELINE_WORKS = 0.20
MAX_ANSWERS_LOST = 1  # decoding policies, against the reference policy
MAX_F1_DROP = 0.02


def read_records(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Every fidelity record of the given JSON-lines files (the last one wins for a repeated key)."""
    records = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            record = json.loads(line) if line.strip() else None
            if record and record.get("kind") == "fidelity":
                key = tuple(record[k] for k in ("model", "split", "task", "length", "sample", "name", "max_new_tokens"))
                records[key] = record
    return list(records.values())


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """n, agreement with its Wilson 95% interval, mean F1 with a bootstrap interval, accuracies, token fraction."""
    n = len(records)
    agreed = sum(bool(r["agree"]) for r in records)
    f1 = [r["f1"] for r in records]
    return {
        "n": n,
        "agreement": agreed / n,
        "agreement_ci": wilson_interval(agreed, n),
        "f1": sum(f1) / n,
        "f1_ci": bootstrap_interval(f1),
        "accuracy": sum(r["correct"] for r in records) / n,
        "baseline_accuracy": sum(r["baseline_correct"] for r in records) / n,
        "prefill_token_fraction": sum(r["prefill_token_fraction"] for r in records) / n,
    }


def cells(records: Sequence[dict[str, Any]], by: Sequence[str] = ("model", "length", "task", "name")) -> list[dict]:
    """One summary per group of `by` (default: model, length, task, candidate), sorted by those fields."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[tuple(record[field] for field in by)].append(record)
    return [dict(zip(by, key), **summarize(group)) for key, group in sorted(groups.items(), key=lambda kv: str(kv[0]))]


def working_tasks(records: Sequence[dict[str, Any]]) -> set[str]:
    """Tasks where the baseline's accuracy is at least BASELINE_WORKS."""
    baseline = [r for r in records if r["name"] == "baseline"]
    return {c["task"] for c in cells(baseline, by=("task",)) if c["accuracy"] >= BASELINE_WORKS}


def candidates_table(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per candidate, pooled over every prompt it answered: the figures the rule reads, and whether it passes.

    Accuracy is pooled over the working tasks only, on the prompts the candidate answered (so a partial sweep
    compares like with like). Only a candidate that answered every prompt the baseline answered can pass: a
    half-run cell decides nothing."""
    working = working_tasks(records)
    prompts = sum(r["name"] == "baseline" for r in records)
    rows = []
    for cell in cells(records, by=("name",)):
        mine = [r for r in records if r["name"] == cell["name"]]
        judged = [r for r in mine if r["task"] in working]
        accuracy = sum(r["correct"] for r in judged) / len(judged) if judged else float("nan")
        baseline = sum(r["baseline_correct"] for r in judged) / len(judged) if judged else float("nan")
        complete = cell["n"] >= prompts
        passes = complete and cell["agreement"] >= MIN_AGREEMENT and not accuracy < baseline - MAX_ACCURACY_DROP
        rows.append(dict(cell, working_accuracy=accuracy, working_baseline=baseline, complete=complete, passes=passes))
    return sorted(rows, key=lambda row: (row["prefill_token_fraction"], -row["agreement"]))


def choose(records: Sequence[dict[str, Any]]) -> str | None:
    """The name of the fastest candidate that passes the rule, or None."""
    passing = [row for row in candidates_table(records) if row["passes"] and row["name"] != "baseline"]
    return passing[0]["name"] if passing else None


def policy_table(records: Sequence[dict[str, Any]], against: str, net: bool = False) -> list[dict[str, Any]]:
    """Per candidate other than `against` and the baseline: answers it lost that `against` kept and answers it kept
    that `against` lost (paired by prompt), its mean F1 against the unpruned model beside `against`'s, and whether it
    is eligible: at most `MAX_ANSWERS_LOST` lost (README, second and third rules) or, with `net`, no more lost than
    gained (fourth rule); and F1 at most `MAX_F1_DROP` below."""
    prompt = ("model", "length", "task", "sample")
    reference = [r for r in records if r["name"] == against]
    if not reference:
        raise SystemExit(f"no records of {against!r} to judge the others against")
    kept = {tuple(r[k] for k in prompt): r["agree"] for r in reference}
    against_f1 = sum(r["f1"] for r in reference) / len(reference)
    against_kept = f"{sum(kept.values())}/{len(kept)}"
    rows = []
    for cell in cells(records, by=("name",)):
        if cell["name"] in (against, "baseline"):
            continue
        paired = [
            (kept[key], r["agree"])
            for r in records
            if r["name"] == cell["name"] and (key := tuple(r[k] for k in prompt)) in kept
        ]
        lost = sum(theirs and not mine for theirs, mine in paired)
        gained = sum(mine and not theirs for theirs, mine in paired)
        paired_ok = gained >= lost if net else lost <= MAX_ANSWERS_LOST
        eligible = cell["n"] >= len(reference) and paired_ok and cell["f1"] >= against_f1 - MAX_F1_DROP
        rows.append(
            dict(cell, lost=lost, gained=gained, against_f1=against_f1, against_kept=against_kept, eligible=eligible)
        )
    return rows


def render_policies(rows: Sequence[dict[str, Any]], against: str) -> str:
    lines = [
        f"| candidate | n | agreement [95% CI] | answers lost that {against} kept | answers kept that {against} lost "
        f"| F1 vs baseline ({against}) | eligible |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        low, high = row["agreement_ci"]
        lines.append(
            f"| {row['name']} | {row['n']} | {row['agreement']:.2f} [{low:.2f}-{high:.2f}] | {row['lost']} | "
            f"{row['gained']} | {row['f1']:.3f} ({row['against_f1']:.3f}) | {'yes' if row['eligible'] else 'no'} |"
        )
    if rows:
        lines.append(f"\n{against}: {rows[0]['against_kept']} whole answers kept, mean F1 {rows[0]['against_f1']:.3f}.")
    return "\n".join(lines)


def verdict(row: dict[str, Any]) -> str:
    return "yes" if row["passes"] else "no" if row["complete"] else "incomplete"


def render(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| candidate | n | prefill token fraction | agreement [95% CI] | F1 vs baseline | accuracy (working tasks) | passes |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        low, high = row["agreement_ci"]
        lines.append(
            f"| {row['name']} | {row['n']} | {row['prefill_token_fraction']:.3f} | {row['agreement']:.2f} "
            f"[{low:.2f}-{high:.2f}] | {row['f1']:.2f} | {row['working_accuracy']:.2f} "
            f"(baseline {row['working_baseline']:.2f}) | {verdict(row)} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lazybench choose", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+", help="frontier JSON-lines files")
    parser.add_argument("--against", metavar="NAME", help="judge decoding policies against this candidate")
    parser.add_argument("--net", action="store_true", help="with --against: the fourth rule (no net answer lost)")
    parser.add_argument("--schedule", metavar="S", help="only the candidates on schedule S (labels ending in @S)")
    args = parser.parse_args(argv)
    records = read_records(args.results)
    if args.schedule:
        records = [r for r in records if r["name"] == "baseline" or r["name"].endswith(f"@{args.schedule}")]
    if args.against:
        print(render_policies(policy_table(records, args.against, args.net), args.against))
        return 0
    print(render(candidates_table(records)))
    print(f"\nworking tasks (baseline accuracy >= {BASELINE_WORKS}): {', '.join(sorted(working_tasks(records)))}")
    print(f"chosen: {choose(records) or 'none passes: the default stays'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
