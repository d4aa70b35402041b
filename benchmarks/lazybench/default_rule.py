"""The rig's default-schedule rule and its speedup-vs-fidelity frontier, applied to speed and accuracy records.

Rule: among the candidate schedules whose fidelity holds -- first-token agreement with the baseline >= 95% over
every accuracy sample, and accuracy no more than 1 point below the baseline in every (task, length) cell where the
baseline is clearly above chance (>= 20%) -- choose the one with the best median TTFT speedup at 4k (the longest
timed length when 4k was not timed), and say whether the targets (>= 2.5x at 4k, >= 3x at 8k) were reached.

The fidelity frontier's rule, on whole answers of token-score variants, is `lazybench.choose`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lazybench.profiles import ALL_SCHEDULES, BASELINE, length_label
from lazybench.summary import accuracy_cells, fidelity_summary, mean

ACCURACY_TOLERANCE = 0.01  # "within 1 point" of the baseline, accuracy on a 0..1 scale
BASELINE_WORKS = 0.20  # cells where the baseline scores at least this are judged
FIRST_TOKEN_TARGET = 0.95
SPEEDUP_TARGETS = {"4k": 2.5, "8k": 3.0}
REFERENCE_LENGTH = "4k"

Record = dict[str, Any]


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


def check(name: str, cells: list[Record], first: float, speed: Sequence[Record], ref: str | None) -> Record:
    """Whether schedule `name` holds fidelity (first-token agreement `first`, its accuracy cells), and its speed."""
    judged = [c for c in cells if c["schedule"] == name and c["baseline_accuracy"] >= BASELINE_WORKS]
    failing = [
        f"{c['task']}@{c['label']}: {100 * c['accuracy']:.0f} vs {100 * c['baseline_accuracy']:.0f}"
        for c in judged
        if c["accuracy"] < c["baseline_accuracy"] - ACCURACY_TOLERANCE - 1e-9
    ]
    return {
        "schedule": name,
        "first_token_agreement": first,
        "first_token_ok": first >= FIRST_TOKEN_TARGET,
        "judged_cells": len(judged),
        "accuracy_ok": not failing,
        "accuracy_failures": failing,
        "speedup_ref": speedup_at(speed, name, ref) if ref else None,
        "speedup_4k": speedup_at(speed, name, "4k"),
        "speedup_8k": speedup_at(speed, name, "8k"),
        "passes": first >= FIRST_TOKEN_TARGET and not failing,
    }


def targets(checks: list[Record], speed: Sequence[Record]) -> dict[str, Any]:
    """Per target length: whether it was timed, which schedules reach the target, and which of them hold fidelity."""
    out = {}
    timed = {r["label"] for r in speed}
    for label, target in SPEEDUP_TARGETS.items():
        fast = [c for c in checks if c[f"speedup_{label}"] is not None and c[f"speedup_{label}"] >= target]
        out[label] = {
            "target": target,
            "measured": label in timed,
            "reached_by": [c["schedule"] for c in fast],
            "reached_with_fidelity_by": [c["schedule"] for c in fast if c["passes"]],
        }
    return out


def choose_default(
    speed: Sequence[Record], records: Sequence[Record], candidates: Sequence[str] = ALL_SCHEDULES
) -> dict[str, Any]:
    """The rule (module docstring) applied to speed and accuracy records: every candidate's check, the choice."""
    cells = accuracy_cells(records)
    fidelity = fidelity_summary(records)
    ref = reference_label(speed)
    checks = [
        check(name, cells, fidelity[name]["first_token_agreement"], speed, ref)
        for name in candidates
        if name in fidelity
    ]
    passing = [c for c in checks if c["passes"] and c["speedup_ref"] is not None]
    chosen = max(passing, key=lambda c: c["speedup_ref"]) if passing else None
    judged = [c for c in cells if c["schedule"] == BASELINE and c["baseline_accuracy"] >= BASELINE_WORKS]
    return {
        "rule": (
            f"among schedules with first-token agreement >= {100 * FIRST_TOKEN_TARGET:.0f}% and accuracy within "
            f"{100 * ACCURACY_TOLERANCE:.0f} point of the baseline on every cell where the baseline scores >= "
            f"{100 * BASELINE_WORKS:.0f}%, pick the best median TTFT speedup at {ref}"
        ),
        "reference_length": ref,
        "baseline_cells_judged": [f"{c['task']}@{c['label']}" for c in judged],
        "checks": checks,
        "chosen": chosen["schedule"] if chosen else None,
        "chosen_speedup": chosen["speedup_ref"] if chosen else None,
        "best_speedup_4k": max((c["speedup_4k"] for c in checks if c["speedup_4k"] is not None), default=None),
        "best_speedup_8k": max((c["speedup_8k"] for c in checks if c["speedup_8k"] is not None), default=None),
        "targets": targets(checks, speed),
    }


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
