"""Section 1 of a run: TTFT, decode ms/token (overall and per step), memory and work vs prompt length.

For each length (shortest first): one warm-up call per schedule, which also measures the prefill's peak memory and
reads the stats; then interleaved rounds (baseline, A, B, ..., baseline, A, B, ...); then the attention share of the
unpruned prefill. One record per (length, schedule) holds the raw per-round times and their summaries.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from lazybench import timing
from lazybench.budget import Budget, Configs, CostModel, trim_speed_schedules
from lazybench.profiles import BASELINE, Profile, apply, describe, last_stats, length_label
from lazybench.prompts import timing_prompt

Inputs = dict[str, torch.Tensor]


def warm_pass(model: torch.nn.Module, inputs: Inputs, config: Any, device: str) -> dict[str, Any]:
    """One unmeasured one-token call under `config`: its peak memory, stats, kept tokens per layer and cache sizes."""
    apply(model, config)
    with timing.peak_memory(device) as memory:
        timing.timed_generate(model, inputs, 1, device)
    stats = last_stats(model)
    tokens = int(inputs["input_ids"].shape[1])
    kept = stats["kept_per_layer"] if stats else [tokens] * model.config.num_hidden_layers
    dtype = next(model.parameters()).dtype
    return {
        "stats": stats,
        "kept_per_layer": kept,
        "memory_method": memory.method,
        "peak_memory_delta_bytes": memory.peak_delta_bytes,
        "kv_cache_bytes": timing.kv_cache_bytes(model.config, kept, dtype),
        "aux_cache_bytes": stats["aux_cache_bytes"] if stats else 0,
    }


def timed_rounds(
    model: torch.nn.Module,
    inputs: Inputs,
    configs: Configs,
    names: list[str],
    profile: Profile,
    device: str,
    bar: Any,
) -> dict[str, list[timing.GenerationTiming]]:
    """Interleaved `generate()` calls of `profile.decode_tokens` tokens, every schedule of `names` per round."""

    def runner(name: str) -> Callable[[], timing.GenerationTiming]:
        def run() -> timing.GenerationTiming:
            apply(model, configs[name])
            return timing.timed_generate(model, inputs, profile.decode_tokens, device, force_length=True)

        return run

    return timing.interleaved(
        {name: runner(name) for name in names},
        repeats=profile.repeats,
        warmup=profile.warmup,
        progress=lambda name, i: bar.update(1),
    )


def speed_record(
    name: str, runs: list[timing.GenerationTiming], base: list[timing.GenerationTiming], info: dict[str, Any]
) -> dict[str, Any]:
    """The record of one schedule at one length: raw per-round times, their summaries and the work done."""
    ttft = [m.ttft_s for m in runs]
    decode = [m.decode_ms_per_token for m in runs]
    stats = info.pop("stats")
    return {
        "schedule": name,
        "ttft_s": timing.summarize(ttft),
        "ttft_runs_s": ttft,
        "speedup": timing.ratio_summary([m.ttft_s for m in base], ttft),
        "time_ratio": timing.ratio_summary(ttft, [m.ttft_s for m in base]),
        "decode_ms_per_token": timing.summarize(decode),
        "decode_runs_ms": decode,
        "decode_step_runs_ms": [m.step_ms for m in runs],  # [round][step]
        "decode_speedup": timing.ratio_summary([m.decode_ms_per_token for m in base], decode),
        "prefill_token_fraction": stats["prefill_token_fraction"] if stats else 1.0,
        "pruned": bool(stats["pruned"]) if stats else False,
        "fallback_reason": stats["fallback_reason"] if stats else None,
        **info,
    }


def measure_length(
    model: torch.nn.Module, configs: Configs, names: list[str], inputs: Inputs, profile: Profile, device: str, bar: Any
) -> list[dict[str, Any]]:
    """The speed records of every schedule of `names` (baseline first) on one prompt."""
    tokens = int(inputs["input_ids"].shape[1])
    infos = {}
    for name in names:
        infos[name] = warm_pass(model, inputs, configs[name], device)
        bar.update(1)
    measured = timed_rounds(model, inputs, configs, names, profile, device, bar)
    apply(model, None)
    share = timing.attention_share(model, inputs, device)["share"]
    rows = []
    for name in names:
        row = speed_record(name, measured[name], measured[BASELINE], infos[name])
        row["config"] = describe(configs[name])
        row["attention_share"] = share
        row["compute_bound"] = timing.compute_bound(row["kept_per_layer"], tokens, share)
        rows.append(row)
    return rows


def teach_costs(costs: CostModel, configs: Configs, rows: list[dict[str, Any]], tokens: int) -> None:
    """Feed one length's measurements (baseline TTFT and decode, each schedule's decode slow-down) to the costs."""
    base = rows[0]
    costs.add(tokens, base["ttft_s"]["median"], base["attention_share"], base["decode_ms_per_token"]["median"])
    for row in rows[1:]:
        speedup = row["decode_speedup"]["median"]
        if speedup and speedup == speedup:
            costs.add_decode_ratio(configs[row["schedule"]], tokens, 1.0 / speedup)


def measure_speed(
    model: torch.nn.Module,
    tokenizer: Any,
    configs: Configs,
    profile: Profile,
    device: str,
    seed: int,
    costs: CostModel,
    budget: Budget,
) -> list[dict[str, Any]]:
    """Speed records for every (length, schedule) of the profile, trimmed to the budget as measurements come in."""
    rounds = 1 + profile.warmup + profile.repeats
    total = len(profile.timing_lengths) * (1 + len(profile.timing_schedules)) * rounds
    bar = tqdm(total=total, desc="speed", unit="run")
    # One unmeasured call first, so that one-off initialisation is charged to no schedule.
    warm_inputs, _ = timing_prompt(tokenizer, min(profile.timing_lengths), device, profile.tiny, seed)
    apply(model, None)
    timing.timed_generate(model, warm_inputs, 2, device)
    records: list[dict[str, Any]] = []
    for position, length in enumerate(profile.timing_lengths):
        names = trim_speed_schedules(position, profile, configs, costs, budget)
        bar.total -= (1 + len(profile.timing_schedules) - len(names)) * rounds
        inputs, source = timing_prompt(tokenizer, length, device, profile.tiny, seed)
        tokens = int(inputs["input_ids"].shape[1])
        rows = measure_length(model, configs, names, inputs, profile, device, bar)
        teach_costs(costs, configs, rows, tokens)
        common = {"length": length, "label": length_label(length), "prompt_source": source, "prompt_tokens": tokens}
        records.extend({**common, **row} for row in rows)
        summary = ", ".join(f"{r['schedule']} {r['speedup']['median']:.2f}x" for r in rows[1:])
        tqdm.write(
            f"speed {length_label(length)}: baseline TTFT {statistics.median(rows[0]['ttft_runs_s']):.3f}s, "
            f"a={rows[0]['attention_share']:.2f}; {summary}"
        )
    bar.close()
    return records
