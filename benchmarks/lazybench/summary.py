"""The tables of the report, computed from raw accuracy and kvpress records alone (pure functions, no torch).

Records of several runs can be pooled: a schedule's record is compared with the baseline record of the same run
(`run`) and sample (`id`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lazybench.profiles import BASELINE, length_label

Record = dict[str, Any]


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
    """Accuracy, the baseline's on the same samples, agreement with it, first-token figures and work done."""
    return {
        "n": len(rows),
        "accuracy": mean([r["score"] for r in rows]),
        "baseline_accuracy": mean([r["score"] for r in base]),
        "answer_agreement": mean([float(r["answer_agree"]) for r in rows]),
        "first_token_agreement": mean([float(r["first_token_agree"]) for r in rows]),
        "first_kl": mean([r["first_kl"] for r in rows]),
        "first_top5_overlap": mean([r["first_top5_overlap"] for r in rows]),
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
    """Per schedule, over every sample: `fidelity_figures`, the largest KL and the most recomputed token-layers."""
    out = {}
    for (schedule,), rows in group(records, "schedule").items():
        out[schedule] = fidelity_figures(rows, baseline_of(records, rows)) | {
            "first_kl_max": max((r["first_kl"] for r in rows), default=float("nan")),
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
