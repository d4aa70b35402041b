"""One benchmark run, top to bottom: set up the machine and model, measure each section, append the records.

    1. speed (`speed.py`)  2.-3. accuracy and fidelity (`accuracy.py`)  4. kvpress (`rivals.py`)

Every record goes to `<out>/<profile>.jsonl` as it is ready (`records.py`); the report and the plots are rendered
from that file afterwards (`report.py`, `plots.py`), never from the run's memory. `cli.py` parses the options.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lazybench.accuracy import measure_accuracy
from lazybench.budget import Budget, Configs, CostModel, accuracy_plan, fit_plan
from lazybench.machine import load_average, machine_info, pick_threads
from lazybench.profiles import BASELINE, PROFILES, RIVAL_NOTES, Profile, build_configs, describe, token_fraction
from lazybench.prompts import load
from lazybench.records import RunLog
from lazybench.rivals import run_kvpress
from lazybench.speed import measure_speed
from lazybench.summary import mean
from lazyllm.config import LazyConfig


def set_threads(profile: Profile, threads: str) -> dict[str, float]:
    """Set torch's thread count (1 for the tiny model, else the number or the fastest probed); returns the probe."""
    if profile.tiny:
        torch.set_num_threads(1)  # tiny matrices: one thread is fastest and deterministic
        return {}
    if str(threads) == "auto":
        best, probe = pick_threads([1, torch.get_num_threads()])
        torch.set_num_threads(best)
        return probe
    torch.set_num_threads(int(threads))
    return {}


def with_lengths(profile: Profile, lengths: list[int] | None) -> Profile:
    """The profile measuring at `lengths` (speed and accuracy sections) instead of its own, when given."""
    if not lengths:
        return profile
    lengths = tuple(sorted(set(lengths)))
    return replace(
        profile,
        description=f"the {profile.name} profile's schedules and samples at {', '.join(map(str, lengths))} tokens",
        timing_lengths=lengths,
        accuracy_lengths=lengths,
        kvpress_lengths=tuple(x for x in profile.kvpress_lengths if x in lengths),
        accuracy_overrides={k: v for k, v in profile.accuracy_overrides.items() if k in lengths},
    )


def header(args: argparse.Namespace, profile: Profile, model: Any, name: str, probe: dict, configs: Configs) -> dict:
    """The run's first record: profile, command, seed, machine and versions, model and the schedules it runs."""
    layers = model.config.num_hidden_layers
    used = {BASELINE, *profile.timing_schedules, *profile.accuracy_schedules}
    return {
        "profile": asdict(profile) | {"accuracy_overrides": {str(k): v for k, v in profile.accuracy_overrides.items()}},
        "command": args.command,
        "seed": args.seed,
        "machine": machine_info(args.device) | {"thread_probe_s": probe},
        "model": {
            "name": name,
            "num_layers": layers,
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "attn_implementation": model.config._attn_implementation,
        },
        "schedules": {
            n: {"config": describe(c), "token_fraction": token_fraction(c, layers), "note": RIVAL_NOTES.get(n, "")}
            for n, c in configs.items()
            if n in used
        },
    }


def kvpress_budget(records: list[dict[str, Any]], profile: Profile, configs: Configs, layers: int) -> float:
    """The KV budget given to kvpress: the default schedule's measured prefill token fraction at the kvpress
    lengths (its analytic fraction when it was not measured there)."""
    rows = [r for r in records if r["schedule"] == "default" and r["length"] in profile.kvpress_lengths]
    return mean([r["prefill_token_fraction"] for r in rows]) if rows else token_fraction(configs["default"], layers)


def skip_kvpress(args: argparse.Namespace, profile: Profile, records: list[dict[str, Any]]) -> str | None:
    """Why kvpress does not run, or None when it does."""
    if args.no_kvpress:
        return "--no-kvpress"
    if profile.tiny:
        return "the smoke profile has no real model to give kvpress"
    if args.model != "smollm2":
        return f"kvpress is run with smollm2 only, not {args.model}"
    if not records:
        return "no accuracy samples (--skip-accuracy)"
    return None


def measure(args: argparse.Namespace) -> Path:
    """Run the profile of `args`, appending every record to `<out>/<profile>.jsonl`; returns that file."""
    started = time.perf_counter()
    profile = with_lengths(PROFILES[args.profile], args.lengths)
    probe = set_threads(profile, args.threads)
    model, tokenizer, name, model_dir = load(profile, args.device, args.model)
    layers = model.config.num_hidden_layers
    configs = build_configs(layers)
    if args.config:  # a saved config (e.g. from `lazyllm calibrate`) is measured beside the presets, as "config"
        configs["config"] = LazyConfig.load(args.config, model)
        profile = replace(
            profile,
            timing_schedules=(*profile.timing_schedules, "config"),
            accuracy_schedules=(*profile.accuracy_schedules, "config"),
        )
    log = RunLog(Path(args.out) / f"{profile.name}.jsonl", profile.name)
    log.add("run", header(args, profile, model, name, probe, configs))
    tqdm.write(f"bench[{profile.name}]: {name}, {layers} layers, {args.device}, threads {torch.get_num_threads()}")

    budget_s = profile.budget_s if args.budget_min is None else 60.0 * args.budget_min
    budget, costs = Budget(budget_s, started=started), CostModel(layers)
    if not args.skip_speed:
        log.add_all("speed", measure_speed(model, tokenizer, configs, profile, args.device, args.seed, costs, budget))
    plan, records, encoded = accuracy_plan(profile), [], {}
    if not args.skip_accuracy:
        plan = fit_plan(plan, profile, configs, costs, budget)
        records, encoded = measure_accuracy(model, tokenizer, configs, profile, plan, args.device, args.seed)
        log.add_all("accuracy", records)

    reason = skip_kvpress(args, profile, records)
    if reason:
        kvpress = {"status": "skipped", "reason": reason}
    else:
        budget_kv = kvpress_budget(records, profile, configs, layers)
        kvpress = run_kvpress(profile, encoded, records, tokenizer, budget_kv, args.device, model_dir)
        tqdm.write(f"kvpress: {kvpress['status']} {kvpress.get('error') or kvpress.get('reason') or ''}")
    log.add_all("kvpress_row", kvpress.pop("rows", []))
    log.add("kvpress", kvpress)
    log.add(
        "run_end",
        {
            "elapsed_s": time.perf_counter() - started,
            "load_after": load_average(),
            "budget": {"budget_s": budget.total_s, "trimmed": budget.trimmed, "accuracy_plan": plan},
        },
    )
    return log.path


if __name__ == "__main__":  # `python -m lazybench.run ...`, as before: the same as `python -m lazybench ...`
    from lazybench.cli import main

    raise SystemExit(main())
