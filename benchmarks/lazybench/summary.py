"""The tables of the report, computed from raw speed, accuracy and kvpress records alone (pure functions, no torch),
and the schedules' frontier: TTFT speedup against whole-answer agreement and accuracy.

Records of several runs can be pooled: a schedule's record is compared with the baseline record of the same run
(`run`) and sample (`id`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lazybench.profiles import BASELINE, length_label

Record = dict[str, Any]
REFERENCE_LENGTH = "4k"  # the frontier's speedups are read at this length when it was timed


def mean(values: Sequence[float]) -> float:
    """Mean of the values that are not NaN (NaN when none is)."""
    values = [v for v in values if v == v]
    return sum(values) / len(values) if values else float("nan")


def sample_key(record: Record) -> tuple[Any, str]:
    return record.get("run"), record["id"]


def baseline_of(records: Sequence[Record], rows: Sequence[Record]) -> list[Record]:
    """The baseline records of the samples that `rows` answered."""
    keys = {sample_key(r) for r in rows}
    return [r for r in records if r["schedule"] == BASELINE and sample_key(r) in keys]


def fidelity_figures(rows: Sequence[Record], base: Sequence[Record]) -> dict[str, Any]:
    """Accuracy, the baseline's on the same samples, whole-answer agreement with it and work done."""
    return {
        "n": len(rows),
        "accuracy": mean([r["score"] for r in rows]),
        "baseline_accuracy": mean([r["score"] for r in base]),
        "answer_agreement": mean([float(r["answer_agree"]) for r in rows]),
        "prefill_token_fraction": mean([r["prefill_token_fraction"] for r in rows]),
        "prompt_token_fraction_total": mean([r["prompt_token_fraction_total"] for r in rows]),
    }


def group(records: Sequence[Record], *fields: str) -> dict[tuple, list[Record]]:
    """Records by the values of `fields`, in order of first appearance."""
    groups: dict[tuple, list[Record]] = {}
    for r in records:
        groups.setdefault(tuple(r[f] for f in fields), []).append(r)
    return groups


def accuracy_cells(records: Sequence[Record]) -> list[dict[str, Any]]:
    """Per (task, length, schedule): `fidelity_figures` over its samples."""
    cells = []
    for (task, length, schedule), rows in group(records, "task", "length", "schedule").items():
        cell = {"task": task, "length": length, "label": length_label(length), "schedule": schedule}
        cells.append(cell | fidelity_figures(rows, baseline_of(records, rows)))
    return cells


def fidelity_summary(records: Sequence[Record]) -> dict[str, dict[str, Any]]:
    """Per schedule, over every sample: `fidelity_figures` and the most recomputed token-layers."""
    out = {}
    for (schedule,), rows in group(records, "schedule").items():
        out[schedule] = fidelity_figures(rows, baseline_of(records, rows)) | {
            "recomputed_token_layers_max": max((r["recomputed_token_layers"] or 0 for r in rows), default=0),
        }
    return out


def time_ratio(top: Sequence[Record], bottom: Sequence[Record], field: str) -> float:
    """Summed `field` (a time) of `top` / that of `bottom`, over the same samples (each with its real length)."""
    return sum(r[field] for r in top) / max(sum(r[field] for r in bottom), 1e-12)


def generation_table(records: Sequence[Record]) -> list[dict[str, Any]]:
    """The paper's Table 2 per (length, schedule): whole-generation speedup and prompt tokens ever computed."""
    rows = []
    for (length, schedule), mine in group(records, "length", "schedule").items():
        if schedule == BASELINE:
            continue
        base = baseline_of(records, mine)
        rows.append(
            {
                "length": length,
                "label": length_label(length),
                "schedule": schedule,
                "n": len(mine),
                "ttft_speedup": time_ratio(base, mine, "ttft_s"),
                "generation_speedup": time_ratio(base, mine, "total_s"),
                "mean_new_tokens": mean([r["new_tokens"] for r in mine]),
                "baseline_mean_new_tokens": mean([r["new_tokens"] for r in base]),
                "prefill_token_fraction": mean([r["prefill_token_fraction"] for r in mine]),
                "prompt_token_fraction_total": mean([r["prompt_token_fraction_total"] for r in mine]),
                "revived_tokens_mean": mean([r["revived_tokens"] for r in mine]),
            }
        )
    return sorted(rows, key=lambda r: (r["length"], r["schedule"]))


def kvpress_summary(rows: Sequence[Record]) -> dict[str, dict[str, Any]]:
    """Per press ("none" is kvpress's own unpruned run): accuracy, agreement, KV kept, time ratios to "none"."""
    base = [r for r in rows if r["press"] == "none"]
    summary = {}
    for (press,), mine in group(rows, "press").items():
        by_task = {task: mean([r["score"] for r in these]) for (task,), these in group(mine, "task").items()}
        summary[press] = {
            "n": len(mine),
            "accuracy": mean([r["score"] for r in mine]),
            "accuracy_by_task": by_task,
            "answer_agreement": mean([float(r["answer_agree"]) for r in mine]),
            "answer_agreement_lazyllm_baseline": mean([float(r["answer_agree_lazyllm_baseline"]) for r in mine]),
            "kv_fraction": mean([r["kv_fraction"] for r in mine]),
            "ttft_ratio": time_ratio(mine, base, "prefill_s"),
            "generation_ratio": time_ratio(mine, base, "total_s"),
        }
    return summary


def speedup_at(speed: Sequence[Record], schedule: str, label: str) -> float | None:
    """The median TTFT speedup of `schedule` at length `label`, None when it was not timed there."""
    for row in speed:
        if row["schedule"] == schedule and row["label"] == label:
            return row["speedup"]["median"]
    return None


def reference_label(speed: Sequence[Record]) -> str | None:
    """'4k' when timed, else the longest timed length."""
    labels = [r["label"] for r in sorted(speed, key=lambda r: r["length"])]
    if REFERENCE_LENGTH in labels:
        return REFERENCE_LENGTH
    return labels[-1] if labels else None


def frontier(points: Sequence[Record], x: str, y: str) -> list[str]:
    """Names of the points not dominated in (higher x, higher y)."""
    usable = [p for p in points if p[x] is not None and p[y] == p[y]]
    return [
        p["schedule"]
        for p in usable
        if not any(q[x] >= p[x] and q[y] >= p[y] and (q[x] > p[x] or q[y] > p[y]) for q in usable)
    ]


def schedule_speedup(name: str, speed: Sequence[Record], generation: Sequence[Record]) -> tuple[float | None, str]:
    """TTFT speedup of `name` at the reference length (speed section), else from its accuracy runs at the longest
    accuracy length; and where it came from."""
    ref = reference_label(speed)
    if name == BASELINE:
        return 1.0, "baseline"
    timed = speedup_at(speed, name, ref) if ref else None
    if timed is not None:
        return timed, f"speed section @{ref}"
    longest = max((g["length"] for g in generation), default=None)
    match = [g for g in generation if g["schedule"] == name and g["length"] == longest]
    return (match[0]["ttft_speedup"], f"accuracy runs @{length_label(longest)}") if match else (None, "n/a")


def frontier_points(speed: Sequence[Record], records: Sequence[Record], generation: Sequence[Record]) -> Record:
    """Per schedule (pooled over tasks) and per task: TTFT speedup against accuracy and answer agreement, and the
    non-dominated schedules of each task."""
    schedules = list(dict.fromkeys(r["schedule"] for r in records))
    speedups = {name: schedule_speedup(name, speed, generation) for name in schedules}

    def points(rows: Sequence[Record]) -> list[Record]:
        out = []
        for name in schedules:
            mine = [r for r in rows if r["schedule"] == name]
            out.append(
                {
                    "schedule": name,
                    "speedup": speedups[name][0],
                    "speedup_source": speedups[name][1],
                    "n": len(mine),
                    "agreed": sum(bool(r["answer_agree"]) for r in mine),
                    "accuracy": mean([r["score"] for r in mine]),
                    "answer_agreement": mean([float(r["answer_agree"]) for r in mine]),
                }
            )
        return out

    per_task = {}
    for task in dict.fromkeys(r["task"] for r in records):
        here = points([r for r in records if r["task"] == task])
        per_task[task] = {
            "frontier_accuracy": frontier(here, "speedup", "accuracy"),
            "frontier_agreement": frontier(here, "speedup", "answer_agreement"),
        }
    return {"reference_length": reference_label(speed), "pooled": points(records), "tasks": per_task}
