"""The size ladder (docs/DECISIONS.md, section 13): does a preset cheaper than `default` hold as the model grows?

Reads frontier records (`python -m lazybench frontier`, kind "fidelity") of several models and writes, from the
records alone, `<out>/<name>.md` (one table per split x prompt length: model x preset, answers kept with Wilson 95%
intervals, accuracy on working tasks, and on the rule's split whether the preset holds and the rule's outcome; then
which records count as which preset, and where the records come from) and `<out>/<name>.png` (answers kept against
prefill token fraction). A preset is also shown with another decoding policy (`lazybench.decode.POLICIES`, e.g. the
paper's token-by-token revival) where records hold it: the rule decides on the presets as shipped only.

    python -m lazybench ladder benchmarks/results/frontier-ladder-select.jsonl \\
        benchmarks/results/frontier-select.jsonl benchmarks/results/frontier-gemma3-select.jsonl --out /tmp/ladder

A record is "preset P as shipped" when its config equals `LazyConfig.preset(P, depth, min_prompt_tokens=0)` on its
model's depth, whatever its label ("P with decoding policy D" when it equals that config with D's fields): fields of
retired options count only at the value that behaves as today (`lazyllm.config.RETIRED_FIELDS`, plus
`revive_steps=1`), and a field the record lacks is never filled in (it was made before that option existed, with
whatever the library did then).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import re
import shlex
import statistics
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lazybench.choose import BASELINE_WORKS, MAX_ACCURACY_DROP
from lazybench.decode import POLICIES
from lazyllm import PRESETS, LazyConfig
from lazyllm.config import RETIRED_FIELDS
from lazyllm.fidelity import wilson_interval

Record = dict[str, Any]

# Parameter counts (`model.num_parameters()`, embeddings included, rounded) and decoder depths of the ladder's models.
PARAMS = {
    "smollm2": 135_000_000,
    "gemma3": 268_000_000,
    "qwen2.5-coder-0.5b": 494_000_000,
    "qwen2.5-coder-1.5b": 1_540_000_000,
}
DEPTHS = {"smollm2": 30, "gemma3": 18, "qwen2.5-coder-0.5b": 24, "qwen2.5-coder-1.5b": 28}
# The rule's prompts (DECISIONS 13): the selection split, 2,048 tokens, 60 prompts per model and preset.
RULE_SPLIT, RULE_LENGTH, MIN_PROMPTS = "select", 2048, 60
MIN_KEPT = 0.95  # share of the unpruned model's whole answers (57 of 60)
EARLIER_MIN_PROMPTS = 10  # an earlier measurement with a Wilson upper bound below MIN_KEPT rules a preset out
# Presets the rule's text rules out by an earlier selection measurement (DECISIONS 13, "A preset holds on a model").
RULE_EXCLUSIONS = {
    ("smollm2", "balanced"): "25/30 (DECISIONS 11)",
    ("smollm2", "aggressive"): "17/30 (DECISIONS 11)",
    ("gemma3", "balanced"): "5/10 (frontier-gemma3-select.md, 4k)",
    ("gemma3", "aggressive"): "1/10 (frontier-gemma3-select.md, 4k)",
}
# Options retired after records were made with them: the value that behaves as today (None: any value does).
RETIRED = {
    **{name: neutral for name, (neutral, _) in RETIRED_FIELDS.items()},
    "revive_steps": 1,  # DECISIONS 12: the revival spread over k steps; 1 = today's revival (commit 130236a)
}
MARKERS = {"default": "o", "balanced": "s", "aggressive": "^"}
# The decoding policy each preset ships with (`LazyConfig.revive_all_at=1`); the others are drawn dashed and hollow.
SHIPPED_POLICY = "revive_all_at1"
POLICY_NAMES = {SHIPPED_POLICY: "as shipped", "paper": "paper's", "static": "static"}
DODGE = 0.011  # sideways shift between models' points (prefill token fraction units)


def params_label(params: int | None) -> str:
    if params is None:
        return "? params"
    return f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.0f}M"


# ----------------------------------------------------------------------------------------------------- records


def read_records(paths: Iterable[Path]) -> list[Record]:
    """Every fidelity record of the files, each with `_source` (its file) and `_base_ttft` (the unpruned model's
    TTFT on its prompt in the same run, if that run timed it); a repeated key: the last one wins."""
    records: dict[tuple, Record] = {}
    base_ttft: dict[tuple, float] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            record = json.loads(line) if line.strip() else None
            if record and record.get("kind") == "fidelity":
                record = dict(record, dtype=record.get("dtype", "float32"), _source=str(path))
                run = (*prompt_key(record), record["model"], record["dtype"], record.get("command"), run_start(record))
                if record["name"] == "baseline":
                    base_ttft[run] = record["ttft_s"]
                record["_base_ttft"] = base_ttft.get(run)
                records[(*prompt_key(record), record["model"], record["dtype"], record["name"])] = record
    return list(records.values())


def run_start(record: Record) -> str | None:
    """When the run that made a record started (its machine's date)."""
    return (record.get("machine") or {}).get("date")


def prompts_per_cell(record: Record) -> int | None:
    """The --n a record was made with (it sets the prompts' depths): the record's, or its command's."""
    found = re.search(r"--n (\d+)", record.get("command", ""))
    return record.get("n") or (int(found.group(1)) if found else None)


def prompt_key(record: Record) -> tuple:
    """Which prompt a record answers: split, seed, --n, length, task, sample, answer length."""
    fields = ("split", "seed", "length", "task", "sample", "max_new_tokens")
    return (*(record.get(f) for f in fields), prompts_per_cell(record), bool(record.get("exact")))


def normalized(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The config without retired fields at their neutral value (JSON types), and the names of those dropped."""
    config = json.loads(json.dumps(config))
    dropped = [k for k in config if k in RETIRED and RETIRED[k] in (None, config[k])]
    return {k: v for k, v in config.items() if k not in dropped}, dropped


def shipped(preset: str, depth: int) -> dict[str, Any]:
    """The preset's config as the frontier's `shipped@P` records it (JSON types)."""
    config = LazyConfig.preset(preset, depth, min_prompt_tokens=0)
    return json.loads(json.dumps(dataclasses.asdict(config)))


def matches(record: Record, depth: int) -> tuple[str, str] | None:
    """The (preset, decoding policy) whose config `record`'s equals on a model of `depth` layers, or None."""
    if not record.get("config"):
        return None
    config, _ = normalized(record["config"])
    variants = ((p, d, {**shipped(p, depth), **POLICIES[d]}) for d in POLICY_NAMES for p in PRESETS)
    return next(((p, d) for p, d, target in variants if config == target), None)


def infer_depth(records: Sequence[Record]) -> int | None:
    """The depth on which most of a model's configs equal a preset (none: None)."""
    counts = {depth: sum(matches(r, depth) is not None for r in records) for depth in range(2, 129)}
    best = max(counts, key=lambda d: (counts[d], -d))
    return best if counts[best] else None


def difference(record_config: dict[str, Any], target: dict[str, Any]) -> list[str]:
    """What differs between a record's config and a preset's, in words."""
    config, _ = normalized(record_config)
    lines = []
    for key in target:
        if key not in config:
            lines.append(f"{key} absent (shipped: {target[key]})")
        elif config[key] != target[key]:
            lines.append(f"{key} {config[key]} (shipped: {target[key]})")
    lines += [f"{key}={config[key]} (an option the preset lacks)" for key in config if key not in target]
    return lines


@dataclasses.dataclass
class Model:
    """One model of the ladder as the records hold it: name, dtype, parameter count, depth."""

    name: str
    dtype: str
    params: int | None
    depth: int | None
    depth_inferred: bool

    @property
    def label(self) -> str:
        return f"{self.name} ({params_label(self.params)}, {self.dtype})"

    @property
    def order(self) -> tuple:
        return (self.params is None, self.params or 0, self.name, self.dtype)


def models_of(records: Sequence[Record], params: dict[str, int], depths: dict[str, int]) -> dict[tuple, Model]:
    found = {}
    for name, dtype in sorted({(r["model"], r["dtype"]) for r in records}):
        depth = depths.get(name)
        inferred = depth is None
        if inferred:
            depth = infer_depth([r for r in records if r["model"] == name and r["name"] != "baseline"])
        found[(name, dtype)] = Model(name, dtype, params.get(name), depth, inferred)
    return found


# ------------------------------------------------------------------------------------------------------- cells


def verdict(n: int, kept: int, accuracy_ok: bool) -> str:
    """Whether a preset holds on a model (DECISIONS 13), from its answers kept and its accuracy.

    "yes": at least MIN_KEPT of MIN_PROMPTS or more prompts kept, accuracy at most 0.02 below the baseline's;
    "no": the Wilson upper bound is below MIN_KEPT (with at least 10 prompts, as the rule's earlier measurements);
    "no (lost N > M of 60)": more answers lost than 60 prompts allow; "no (point estimate)" / "no (accuracy)": 60
    prompts or more and the share or the accuracy fails; "not yet (n<60)": the point estimate passes on fewer than
    60 prompts; "not yet (n<60; fails so far)": it fails so far but the remaining prompts could still make it pass."""
    share_ok = kept >= MIN_KEPT * n - 1e-9
    allowed = MIN_PROMPTS - int(MIN_KEPT * MIN_PROMPTS + 1e-9)
    if n >= EARLIER_MIN_PROMPTS and wilson_interval(kept, n)[1] < MIN_KEPT:
        return "no"
    if n >= MIN_PROMPTS:
        return "yes" if share_ok and accuracy_ok else "no (point estimate)" if not share_ok else "no (accuracy)"
    if n - kept > allowed:
        return f"no (lost {n - kept} > {allowed} of {MIN_PROMPTS})"
    return "not yet (n<60)" if share_ok and accuracy_ok else "not yet (n<60; fails so far)"


def settled(label: str) -> bool | None:
    """True / False for a final verdict, None while more prompts could change it."""
    return True if label == "yes" else False if label == "no" or label.startswith("no (") else None


def working_tasks(records: Sequence[Record]) -> set[str]:
    """Tasks where the unpruned model's accuracy is at least BASELINE_WORKS."""
    scores: dict[str, list[float]] = defaultdict(list)
    for record in records:
        if record["name"] == "baseline":
            scores[record["task"]].append(record["correct"])
    return {task for task, values in scores.items() if sum(values) / len(values) >= BASELINE_WORKS}


def cell(records: Sequence[Record], working: set[str]) -> dict[str, Any]:
    """A preset's figures on one model, split and length: records are one per prompt (TTFT ratios paired with the
    unpruned model's on the same prompt in the same run)."""
    n = len(records)
    ratios = sorted(r["_base_ttft"] / r["ttft_s"] for r in records if r.get("_base_ttft"))
    kept = sum(bool(r["agree"]) for r in records)
    judged = [r for r in records if r["task"] in working]
    accuracy = sum(r["correct"] for r in judged) / len(judged) if judged else None
    baseline = sum(r["baseline_correct"] for r in judged) / len(judged) if judged else None
    accuracy_ok = accuracy is None or accuracy >= baseline - MAX_ACCURACY_DROP - 1e-9
    return {
        "n": n,
        "kept": kept,
        "share": kept / n,
        "ci": wilson_interval(kept, n),
        "fraction": sum(r["prefill_token_fraction"] for r in records) / n,
        "accuracy": accuracy,
        "baseline_accuracy": baseline,
        "holds": verdict(n, kept, accuracy_ok),
        "ttft_ratio": statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else None,
        "labels": sorted({r["name"] for r in records}),
    }


@dataclasses.dataclass
class Ladder:
    """Records sorted into tables: (split, length, exact answer tokens) -> (model key, preset, policy) -> cell."""

    records: list[Record]
    models: dict[tuple, Model]
    tables: dict[tuple, dict[tuple, dict[str, Any]]]
    working: dict[tuple, set[str]]  # (table key, model key) -> working tasks
    unmatched: list[Record]  # candidate records equal to no preset


def table_key(record: Record) -> tuple:
    return (record["split"], record["length"], record["max_new_tokens"] if record.get("exact") else None)


def build(records: list[Record], params: dict[str, int] | None = None, depths: dict[str, int] | None = None) -> Ladder:
    models = models_of(records, {**PARAMS, **(params or {})}, {**DEPTHS, **(depths or {})})
    grouped: dict[tuple, dict[tuple, dict[tuple, Record]]] = defaultdict(lambda: defaultdict(dict))
    baselines: dict[tuple, list[Record]] = defaultdict(list)
    unmatched = []
    for record in records:
        model_key = (record["model"], record["dtype"])
        if record["name"] == "baseline":
            baselines[(table_key(record), model_key)].append(record)
            continue
        depth = models[model_key].depth
        found = matches(record, depth) if depth else None
        if found is None:
            unmatched.append(record)
            continue
        # Two labels of one preset on the same prompt are one answer (the later file's).
        grouped[table_key(record)][(model_key, *found)][prompt_key(record)] = record
    working = {key: working_tasks(group) for key, group in baselines.items()}
    tables = {
        key: {
            row: cell(list(prompts.values()), working.get((key, row[0]), set()))
            for row, prompts in sorted(rows.items(), key=lambda kv: (models[kv[0][0]].order, row_rank(kv[0])))
        }
        for key, rows in sorted(
            grouped.items(), key=lambda kv: (kv[0][0] != RULE_SPLIT, kv[0][0], kv[0][1], str(kv[0][2]))
        )
    }
    return Ladder(records, models, tables, working, unmatched)


def preset_rank(preset: str) -> int:
    return list(PRESETS).index(preset)


def row_rank(row: tuple) -> tuple[int, int]:
    """A table row's order within its model: by preset, then by policy (as shipped first)."""
    _, preset, policy = row
    return preset_rank(preset), policy_rank(policy)


def policy_rank(policy: str) -> int:
    return list(POLICY_NAMES).index(policy)


def nominal_fraction(preset: str, depth: int) -> float:
    """The prefill token fraction a preset's schedule computes on `depth` layers (every prompt pruned)."""
    config = LazyConfig.preset(preset, depth, min_prompt_tokens=0)
    bounds = [*config.prune_layers, depth]
    computed = config.prune_layers[0] + sum(k * (b - a) for k, a, b in zip(config.keep_ratios, bounds, bounds[1:]))
    return computed / depth


# ----------------------------------------------------------------------------------------------------- outcome


def outcome_of(holds: dict[tuple[str, str], bool], sizes: dict[str, int], cheaper: Sequence[str]) -> dict[str, str]:
    """DECISIONS 13's outcome: each model's preset, given whether each cheaper preset holds on each model.

    `sizes`: model -> parameter count; `cheaper`: the presets cheaper than default, cheapest first."""
    ladder = sorted(sizes, key=lambda m: sizes[m])
    for start, model in enumerate(ladder):
        upper = ladder[start:]
        holding = [p for p in cheaper if all(holds[(m, p)] for m in upper)]
        if holding:
            return {m: holding[0] if sizes[m] >= sizes[model] else "default" for m in ladder}
    return {m: "default" for m in ladder}


@dataclasses.dataclass
class Status:
    """Whether a cheaper preset holds on a model of the ladder, and why."""

    holds: bool | None  # None: not settled
    why: str


def statuses(ladder: Ladder, names: Sequence[str]) -> dict[tuple[str, str], Status]:
    """For each ladder model and preset cheaper than default: settled yes / no or pending, and why."""
    rule = [key for key in ladder.tables if key[:2] == (RULE_SPLIT, RULE_LENGTH) and key[2] is None]
    rows = ladder.tables[rule[0]] if rule else {}
    found: dict[tuple[str, str], Status] = {}
    for name in names:
        for preset in cheaper_presets():
            measured = [
                (ladder.models[k], c) for (k, p, d), c in rows.items() if (k[0], p, d) == (name, preset, SHIPPED_POLICY)
            ]
            earlier = [
                (key, c)
                for key, table in ladder.tables.items()
                if key[0] == RULE_SPLIT and key not in rule
                for (k, p, d), c in table.items()
                if (k[0], p, d) == (name, preset, SHIPPED_POLICY) and c["holds"] == "no"
            ]
            records = f"{measured[-1][1]['kept']}/{measured[-1][1]['n']}" if measured else None
            if earlier and not records:
                (split, length, _), c = earlier[0]
                records = f"{c['kept']}/{c['n']} at {length} tokens"
            if (name, preset) in RULE_EXCLUSIONS:
                confirmed = f"records as shipped: {records}" if records else "no input record is this preset as shipped"
                why = f"ruled out by the rule's text, earlier {RULE_EXCLUSIONS[(name, preset)]}; {confirmed}"
                found[(name, preset)] = Status(False, why)
            elif measured:
                c = measured[-1][1]
                found[(name, preset)] = Status(settled(c["holds"]), f"{c['kept']}/{c['n']}, {c['holds']}")
            elif earlier:
                found[(name, preset)] = Status(False, f"no: earlier {RULE_SPLIT} measurement {records}")
            else:
                found[(name, preset)] = Status(None, f"0/{MIN_PROMPTS} prompts")
    return found


def cheaper_presets() -> list[str]:
    """The presets with a lower prefill fraction than default (on a deep model), cheapest first."""
    cost = {p: nominal_fraction(p, 96) for p in PRESETS}
    return sorted((p for p in PRESETS if cost[p] < cost["default"]), key=cost.get)


def decide(found: dict[tuple[str, str], Status], sizes: dict[str, int]) -> tuple[dict[str, str] | None, list]:
    """The outcome when every way the pending cells could end gives the same one (else None), and the pending
    cells that could change it."""
    pending = sorted(key for key, status in found.items() if status.holds is None)
    known = {key: bool(status.holds) for key, status in found.items() if status.holds is not None}
    if len(pending) > 16:
        return None, pending
    outcomes = {}
    for values in itertools.product((False, True), repeat=len(pending)):
        holds = {**known, **dict(zip(pending, values))}
        outcomes[values] = outcome_of(holds, sizes, cheaper_presets())
    distinct = {json.dumps(o, sort_keys=True) for o in outcomes.values()}
    if len(distinct) == 1:
        return next(iter(outcomes.values())), []
    matter = [
        key
        for i, key in enumerate(pending)
        if any(outcomes[v] != outcomes[(*v[:i], not v[i], *v[i + 1 :])] for v in outcomes)
    ]
    return None, matter


def outcome_section(ladder: Ladder, names: Sequence[str], sizes: dict[str, int]) -> list[str]:
    found = statuses(ladder, names)
    decided, matter = decide(found, sizes)
    ladder_text = ", ".join(f"{m} ({params_label(sizes[m])})" for m in names)
    lines = [
        "## Rule 13 outcome",
        "",
        f"On the rule's prompts ({RULE_SPLIT} split, {RULE_LENGTH} tokens, {MIN_PROMPTS} per model and preset) over "
        f"the ladder {ladder_text}; presets cheaper than default, cheapest first: {', '.join(cheaper_presets())}.",
        "",
        *(f"- {m} {p}: {s.why}" for (m, p), s in found.items()),
        "",
    ]
    if decided is None:
        why = "; ".join(f"{m} {p} ({found[(m, p)].why})" for m, p in matter)
        lines.append(
            f"**Undecided**: {why} could still change the outcome (fewer than {MIN_PROMPTS} selection prompts and "
            "no settled verdict)."
        )
        return lines
    chosen = [m for m in names if decided[m] != "default"]
    if not chosen:
        lines.append(
            "**Decided: no S** (no cheaper preset holds on a model and every larger one): `default` stays "
            "for every model."
        )
    else:
        first = min(chosen, key=lambda m: sizes[m])
        per_size = ", ".join(f"{m}: `{decided[m]}`" for m in names)
        lines.append(
            f"**Decided: S = {params_label(sizes[first])}** ({first}): models of at least {params_label(sizes[first])}"
            f" parameters get `{decided[first]}`, smaller ones keep `default` ({per_size})."
        )
    return lines


# ------------------------------------------------------------------------------------------------------ render


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def ratio_text(quartiles: list[float] | None) -> str:
    return "–" if quartiles is None else f"{quartiles[1]:.2f}x [{quartiles[0]:.2f}-{quartiles[2]:.2f}]"


def table_title(key: tuple) -> str:
    split, length, exact = key
    answers = f", answers of exactly {exact} tokens" if exact else ""
    return f"{split} split, {length} tokens{answers}"


def table_section(ladder: Ladder, key: tuple) -> list[str]:
    """One table; the *holds* column only on the rule's split (a held-apart split reports, it does not decide)."""
    rule = key[0] == RULE_SPLIT
    head = (
        "| model (params, dtype) | preset | decoding | records' label | n prompts | prefill token fraction | "
        "answers kept [95% CI] | accuracy, working tasks (baseline) | TTFT ratio, median [quartiles] |"
        + (" holds |" if rule else "")
    )
    lines = [f"## {table_title(key)}", "", head, "|---" * (10 if rule else 9) + "|"]
    for (model_key, preset, policy), c in ladder.tables[key].items():
        low, high = c["ci"]
        lines.append(
            f"| {ladder.models[model_key].label} | {preset} | {POLICY_NAMES[policy]} | {', '.join(c['labels'])} | "
            f"{c['n']} | {c['fraction']:.3f} | {c['kept']}/{c['n']} = {c['share']:.2f} [{low:.2f}-{high:.2f}] | "
            f"{fmt(c['accuracy'])} ({fmt(c['baseline_accuracy'])}) | {ratio_text(c['ttft_ratio'])} |"
            + (f" {c['holds']} |" if rule else "")
        )
    tasks = [
        f"{ladder.models[m].label}: {', '.join(sorted(ladder.working.get((key, m), set()))) or 'none'}"
        for m in sorted({row[0] for row in ladder.tables[key]}, key=lambda m: ladder.models[m].order)
    ]
    lines += ["", f"Working tasks (unpruned accuracy >= {BASELINE_WORKS}): " + "; ".join(tasks) + "."]
    measured = {row[0] for row in ladder.tables[key]}
    missing = [
        f"{ladder.models[m].label} {p}"
        for m in sorted(measured, key=lambda m: ladder.models[m].order)
        for p in PRESETS
        if (m, p, SHIPPED_POLICY) not in ladder.tables[key]
    ]
    if missing:
        lines += ["", f'No record as shipped here: {", ".join(missing)} (see "Which records are the presets").']
    return lines


def matching_section(ladder: Ladder) -> list[str]:
    """Per model: its depth, which labels count as which preset, and for presets with no match the nearest label."""
    lines = [
        "## Which records are the presets as shipped",
        "",
        "A record counts as preset P when its config equals `LazyConfig.preset(P, depth, min_prompt_tokens=0)` "
        "(retired options only at the value that behaves as today; a field the record lacks is not filled in), and "
        "as P with another decoding policy when it equals that config with the policy's fields "
        f"({'; '.join(f'{POLICY_NAMES[d]}: {POLICIES[d]}' for d in POLICY_NAMES if d != SHIPPED_POLICY)}).",
        "",
    ]
    for key, model in sorted(ladder.models.items(), key=lambda kv: kv[1].order):
        mine = [r for r in ladder.records if (r["model"], r["dtype"]) == key and r["name"] != "baseline"]
        depth = f"{model.depth} layers" + (" (inferred from the configs)" if model.depth_inferred else "")
        lines.append(f"- **{model.label}**, {depth}:")
        if model.depth is None:
            lines.append("  no config equals a preset on any depth: give `--depth NAME=LAYERS`.")
            continue
        found_by_record = [(record, matches(record, model.depth)) for record in mine]
        for preset in PRESETS:
            target = shipped(preset, model.depth)
            labels: dict[tuple[str, str], int] = defaultdict(int)
            dropped: set[str] = set()
            for record, found in found_by_record:
                if found and found[0] == preset:
                    labels[(record["name"], found[1])] += 1
                    dropped |= {f"{k}={record['config'][k]}" for k in normalized(record["config"])[1]}
            if any(policy == SHIPPED_POLICY for _, policy in labels):
                also = f"; retired options at today's behaviour: {', '.join(sorted(dropped))}" if dropped else ""
                text = ", ".join(
                    f"`{name}` ({count}{'' if policy == SHIPPED_POLICY else f', {POLICY_NAMES[policy]} decoding'})"
                    for (name, policy), count in sorted(labels.items())
                )
                lines.append(f"  - {preset}: {text}{also}")
                continue
            near, labels_with_cuts = nearest([r for r in mine if r.get("config")], target)
            if near is None:
                lines.append(f"  - {preset}: no record with its cuts")
            else:
                versions = sorted({lazyllm_version(r) for r in mine if r["name"] == near["name"]})
                others = f" (of {labels_with_cuts} labels with its cuts)" if labels_with_cuts > 1 else ""
                lines.append(
                    f"  - {preset}: no record as shipped; nearest{others} `{near['name']}` (lazyllm "
                    f"{', '.join(versions)}): " + "; ".join(difference(near["config"], target))
                )
        other = Counter(r["name"] for r in ladder.unmatched if (r["model"], r["dtype"]) == key)
        if other:
            text = ", ".join(f"`{name}` ({count})" for name, count in sorted(other.items()))
            lines.append(f"  - no preset in any decoding policy, not shown: {text}")
    return lines


def nearest(records: Sequence[Record], target: dict[str, Any]) -> tuple[Record | None, int]:
    """Of the records with the preset's cuts, the one whose config differs from it in the fewest fields (newest
    lazyllm first at a tie), and how many labels have these cuts."""
    same_cuts = [
        r
        for r in records
        if r["config"].get("prune_layers") == target["prune_layers"]
        and r["config"].get("keep_ratios") == target["keep_ratios"]
    ]
    labels = len({r["name"] for r in same_cuts})
    best = min(
        same_cuts,
        key=lambda r: (
            len(difference(r["config"], target)),
            [-int(x) for x in re.findall(r"\d+", lazyllm_version(r))],
            r["name"],
        ),
        default=None,
    )
    return best, labels


def lazyllm_version(record: Record) -> str:
    machine = record.get("machine") or {}
    return str(machine.get("lazyllm") or (machine.get("versions") or {}).get("lazyllm") or "?")


def machine_text(machine: dict[str, Any]) -> str:
    where = machine.get("gpu") or machine.get("cpu") or machine.get("processor") or "?"
    cores = machine.get("cores") or machine.get("cpu_count")
    threads = machine.get("torch_threads")
    busy = ", busy at start" if machine.get("load_warning") else ""
    return (
        f"{where}{f', {cores} cores' if cores else ''}{f', {threads} torch threads' if threads else ''}, "
        f"{machine.get('device', 'cpu')}, lazyllm {lazyllm_version({'machine': machine})}{busy}"
    )


def sources_section(records: Sequence[Record]) -> list[str]:
    lines = ["## Sources", ""]
    by_source: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_source[record["_source"]].append(record)
    for source, mine in by_source.items():
        models = ", ".join(sorted({f"{r['model']} ({r['dtype']})" for r in mine}))
        lines.append(f"- `{source}`: {len(mine)} records of {models}, run by:")
        runs: dict[tuple, list[Record]] = defaultdict(list)
        for record in mine:
            runs[(record.get("command", "?"), machine_text(record.get("machine") or {}))].append(record)
        for (command, machine), run in runs.items():
            dates = sorted({(r.get("machine") or {}).get("date", "")[:16] for r in run} - {""})
            when = f", {dates[0]}" + (f" to {dates[-1]}" if len(dates) > 1 else "") if dates else ""
            lines.append(f"  - `{command}` on {machine}{when} ({len(run)} records)")
    return lines


def plot(ladder: Ladder, path: Path) -> None:
    """Answers kept (Wilson 95% bars) against prefill token fraction: one panel per table, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    keys = list(ladder.tables) or [(RULE_SPLIT, RULE_LENGTH, None)]
    figure, axes = plt.subplots(len(keys), 1, figsize=(15, 5.6 * len(keys)), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    order = sorted(ladder.models, key=lambda m: ladder.models[m].order)
    for axis, key in zip(axes[:, 0], keys):
        rows, rule = ladder.tables.get(key, {}), key[0] == RULE_SPLIT
        lines = sorted({(k, d) for k, _, d in rows}, key=lambda kd: (order.index(kd[0]), policy_rank(kd[1])))
        where = positions(rows, order)
        shifted = max((abs(where[row] - c["fraction"]) for row, c in rows.items()), default=0.0)
        for model_key, policy in lines:
            points = sorted(((c["fraction"], p, c) for (k, p, d), c in rows.items() if (k, d) == (model_key, policy)))
            colour = colours[order.index(model_key) % len(colours)]
            as_shipped = policy == SHIPPED_POLICY
            x = [where[(model_key, p, policy)] for _, p, _ in points]
            y = [c["share"] for _, _, c in points]
            counts = sorted({c["n"] for _, _, c in points})
            n_text = f"n={counts[0]}" if len(counts) == 1 else f"n={counts[0]}-{counts[-1]}"
            label = ladder.models[model_key].label + ("" if as_shipped else f", {POLICY_NAMES[policy]} decoding")
            style = "-" if as_shipped else "--"
            axis.plot(x, y, color=colour, alpha=0.6, linestyle=style, label=f"{label}, {n_text}")
            for xi, (_, preset, c) in zip(x, points):
                low, high = c["ci"]
                full = as_shipped and (c["n"] >= MIN_PROMPTS or not rule)
                axis.errorbar(
                    xi,
                    c["share"],
                    yerr=[[max(c["share"] - low, 0.0)], [max(high - c["share"], 0.0)]],
                    color=colour,
                    capsize=3,
                    marker=MARKERS.get(preset, "o"),
                    markersize=7,
                    markerfacecolor=colour if full else "white",
                    linestyle="none",
                )
                below = low > 0.15  # k/n written upright under the bar (over it near the floor)
                axis.annotate(
                    f"{c['kept']}/{c['n']}",
                    (xi, low if below else high),
                    textcoords="offset points",
                    xytext=(0, -4 if below else 4),
                    ha="center",
                    va="top" if below else "bottom",
                    rotation=90,
                    fontsize=7,
                    color=colour,
                )
        axis.axhline(MIN_KEPT, color="grey", linestyle="--", linewidth=1)
        axis.text(
            0.01,
            MIN_KEPT - 0.045,
            f"rule: kept >= {MIN_KEPT} of {MIN_PROMPTS} prompts"
            if rule
            else f"{MIN_KEPT}: the rule's bound (the rule decides on the {RULE_SPLIT} split)",
            color="grey",
            fontsize=8,
            transform=axis.get_yaxis_transform(),
        )
        axis.set_ylim(-0.02, 1.05)
        axis.set_xlim(min([0.4, *(c["fraction"] - 0.05 for c in rows.values())]), 1.02)
        axis.set_ylabel("whole answers kept (share of the unpruned model's)")
        axis.set_xlabel(
            "prefill token fraction (lower is faster)"
            + (
                f"\npoints of one preset drawn side by side, at most {shifted:.3f} off their fraction "
                "(exact fractions: the table)"
                if shifted > 1e-9
                else ""
            )
        )
        others = sorted({POLICY_NAMES[d] for _, _, d in rows} - {POLICY_NAMES[SHIPPED_POLICY]})
        axis.set_title(
            f"Size ladder, presets as shipped: {table_title(key)}\nbars: Wilson 95% CI"
            + (f"; hollow markers: fewer than {MIN_PROMPTS} prompts" if rule else " (held-apart prompts)")
            + (f"; dashed, hollow: {' / '.join(others)} decoding" if others else ""),
            fontsize=10,
        )
        axis.grid(alpha=0.3)
        # Both legends beside the panel, where no point can hide behind them; the wider one (the models') last, as
        # the axis's own legend, so that the saved figure's bounds take it in.
        shown = sorted({row[1] for row in rows}, key=preset_rank)
        handles = [Line2D([], [], color="black", marker=MARKERS.get(p, "o"), linestyle="none", label=p) for p in shown]
        axis.add_artist(
            axis.legend(
                handles=handles,
                fontsize=8,
                loc="lower left",
                bbox_to_anchor=(1.01, 0.0),
                title="preset",
                title_fontsize=8,
            )
        )
        axis.legend(
            fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="model (params, dtype)", title_fontsize=8
        )
    figure.tight_layout()
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def positions(rows: dict[tuple, dict[str, Any]], models: Sequence[tuple]) -> dict[tuple, float]:
    """Where each (model, preset, policy) point is drawn: its prefill token fraction, except that the points of one
    preset closer than DODGE to each other are spread side by side, DODGE apart in model and policy order, around
    their mean."""
    where = {row: c["fraction"] for row, c in rows.items()}
    for preset in PRESETS:
        group = [(m, preset, d) for m in models for d in POLICY_NAMES if (m, preset, d) in rows]
        xs = sorted(where[row] for row in group)
        if len(group) > 1 and any(b - a < DODGE for a, b in zip(xs, xs[1:])):
            centre = sum(xs) / len(xs)
            for rank, row in enumerate(group):
                where[row] = centre + DODGE * (rank - (len(group) - 1) / 2)
    return where


def render(
    paths: Sequence[Path],
    out: Path,
    name: str,
    ladder_models: Sequence[str] | None = None,
    params: dict[str, int] | None = None,
    depths: dict[str, int] | None = None,
    command: str = "",
) -> Path:
    """Write `<out>/<name>.md` and `<out>/<name>.png` from the records of `paths`; returns the markdown's path."""
    records = read_records(paths)
    if not records:
        raise SystemExit(f"no fidelity records in {', '.join(map(str, paths))}")
    ladder = build(records, params, depths)
    on_rule_split = any(key[0] == RULE_SPLIT for key in ladder.tables)
    sizes_all = {**PARAMS, **(params or {})}
    names = list(ladder_models or PARAMS)
    unknown = [m for m in names if m not in sizes_all]
    if unknown:
        raise SystemExit(f"no parameter count for {', '.join(unknown)}: give --params NAME=COUNT")
    sizes = {m: sizes_all[m] for m in names}
    out.mkdir(parents=True, exist_ok=True)
    plot(ladder, out / f"{name}.png")
    lines = [
        "# Size ladder: the presets as shipped, by model size (docs/DECISIONS.md, section 13)",
        "",
        f"Rendered by `{command or 'python -m lazybench ladder'}` from {len(records)} fidelity records alone. "
        f"Plot: `{name}.png`. Answers kept: whole greedy answers equal to the unpruned model's, Wilson 95% interval. "
        + (
            f"*Holds* ({RULE_SPLIT} split only): kept >= {MIN_KEPT} on >= {MIN_PROMPTS} prompts and accuracy on the "
            f"working tasks at most {MAX_ACCURACY_DROP} below the baseline's; *no*: Wilson upper bound below "
            f"{MIN_KEPT} (>= {EARLIER_MIN_PROMPTS} prompts); *no (lost ...)*: more answers lost than {MIN_PROMPTS} "
            f"prompts allow; *not yet (n<{MIN_PROMPTS})*: fewer prompts and no settled verdict. "
            if on_rule_split
            else ""
        )
        + "TTFT ratio: the unpruned model's time to first token over the preset's, paired by prompt within one run "
        "(– where no run timed both); a figure only where that run had the machine alone (the select runs were "
        "fidelity runs and partly shared it; see Sources).",
        "",
    ]
    for key in ladder.tables:
        lines += [*table_section(ladder, key), ""]
    if on_rule_split:
        lines += [*outcome_section(ladder, names, sizes), ""]
    else:
        lines += [
            f"No record is on the {RULE_SPLIT} split, where rule 13 decides: these are held-apart figures, and the "
            "rule's outcome is in docs/DECISIONS.md, section 13.",
            "",
        ]
    lines += [*matching_section(ladder), ""]
    lines += [*sources_section(records), ""]
    path = out / f"{name}.md"
    path.write_text("\n".join(lines))
    return path


def pairs(values: Sequence[str], what: str) -> dict[str, int]:
    found = {}
    for value in values:
        name, sep, number = value.rpartition("=")
        if not sep or not number.isdigit():
            raise SystemExit(f"{what} takes NAME=NUMBER, not {value!r}")
        found[name] = int(number)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m lazybench ladder", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+", help="frontier JSON-lines files (kind fidelity)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output folder")
    parser.add_argument("--name", default="ladder", help="<name>.md and <name>.png")
    parser.add_argument(
        "--ladder", nargs="+", metavar="MODEL", help=f"the ladder's models (default: {', '.join(PARAMS)})"
    )
    parser.add_argument(
        "--params", nargs="+", default=[], metavar="NAME=COUNT", help="parameter counts of other models"
    )
    parser.add_argument("--depth", nargs="+", default=[], metavar="NAME=LAYERS", help="depths of other models")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "lazybench", "ladder", *argv])
    path = render(
        args.results,
        args.out,
        args.name,
        args.ladder,
        pairs(args.params, "--params"),
        pairs(args.depth, "--depth"),
        command,
    )
    print(f"ladder: wrote {path} and {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
