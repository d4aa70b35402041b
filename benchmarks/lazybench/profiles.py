"""What a benchmark run measures: the profiles (lengths, schedules, samples, budget) and the schedules and rivals.

Every schedule is written as (fraction of depth, keep ratio) pairs like `lazyllm.PRESETS`, so that it fits any
depth; `build_configs` places them all on a model. The rivals run at the budget (prefill token fraction) of the
`default` preset. Every schedule of the rig prunes at every prompt length (`min_prompt_tokens=0`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

import lazyllm
from lazyllm.config import PRESETS, LazyConfig

BASELINE = "baseline"
PRESET_NAMES = tuple(PRESETS)  # default, balanced, aggressive
# Schedules of the sweep besides the presets.
HANDPICKED: dict[str, tuple[tuple[float, float], ...]] = {
    "paper-30/60/90": ((0.3, 0.5), (0.6, 0.25), (0.9, 0.1)),  # the paper's figure layout: first third unpruned
    "single-50%": ((0.5, 0.25),),  # one cut at half depth
    "single-25%": ((0.25, 0.4),),  # one cut at a quarter depth
    "early-15/30/50%": ((0.15, 0.4), (0.3, 0.2), (0.5, 0.1)),  # the speed end of the sweep: half the depth prunes
}
ALL_SCHEDULES = (*PRESET_NAMES, *HANDPICKED)  # in order of priority
RIVALS = ("random-drop", "static-15%", "no-revival")  # all at the budget of the "default" preset
RIVAL_NOTES = {
    "random-drop": "default's cuts, tokens chosen uniformly at random, no revival (paper's random drop)",
    "static-15%": "one cut at ~15% depth from that layer's attention, no revival, keep matched to default's budget",
    "no-revival": "default schedule without the Aux Cache (dropped tokens never come back in decoding)",
}
LENGTH_8K = 8192 - 32  # SmolLM2 has 8192 positions: leave room for the generated tokens
ALL_LENGTHS: dict[str, Any] = {"min_prompt_tokens": 0}  # the rig measures pruning itself at every length


@dataclass(frozen=True)
class RandomDrop(LazyConfig):
    """The paper's random token-drop baseline: the cuts of a LazyConfig, tokens chosen uniformly at random.

    Each ranking draws from a generator seeded with `seed` afresh, so that a run is reproducible.
    """

    seed: int = 0

    def rank_tokens(self, scores: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator(device=scores.device).manual_seed(self.seed)
        return torch.rand(scores.shape, generator=generator, device=scores.device)


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    tiny: bool  # tiny random-weight Llama and fake prompts (no model, no data wheel)
    timing_lengths: tuple[int, ...]
    timing_schedules: tuple[str, ...]  # baseline is always included, first; dropped from the end when over budget
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
    timing_core: tuple[str, ...] = PRESET_NAMES  # never dropped from the speed sweep
    accuracy_core: tuple[str, ...] = (*PRESET_NAMES, *RIVALS)  # never dropped from the accuracy sweep
    accuracy_overrides: dict[int, tuple[tuple[float, ...], tuple[str, ...]]] = field(default_factory=dict)
    """Per accuracy length: (depths, schedules) replacing the defaults there (fewer samples at 8k)."""


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
    ),
    "quick": Profile(
        name="quick",
        description="SmolLM2-135M, TTFT at 1k/4k for the presets, accuracy at 1k (2 samples per task)",
        tiny=False,
        timing_lengths=(1024, 4096),
        timing_schedules=PRESET_NAMES,
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
    ),
    "full": Profile(
        name="full",
        description="SmolLM2-135M, TTFT 512..8k for every schedule and rival, accuracy 1k..8k",
        tiny=False,
        timing_lengths=(512, 1024, 2048, 4096, LENGTH_8K),
        timing_schedules=(
            *PRESET_NAMES,
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
            LENGTH_8K: ((0.5,), (*PRESET_NAMES, *RIVALS)),
        },
        budget_s=3000.0,
    ),
}


def length_label(tokens: int) -> str:
    """'512', '1k', '2k', '4k', '8k' (8160 tokens is '8k')."""
    return str(tokens) if tokens < 1000 else f"{round(tokens / 1024)}k"


def token_fraction(config: LazyConfig | None, num_layers: int) -> float:
    """Analytic prefill token fraction of a long prompt under `config` (1.0 for the unpruned baseline)."""
    return 1.0 if config is None else config.prefill_fraction(num_layers)


def build_configs(num_layers: int) -> dict[str, LazyConfig | None]:
    """Every schedule and rival by name (pruning at every prompt length); `None` is the unpatched baseline."""
    configs: dict[str, LazyConfig | None] = {BASELINE: None}
    for name in PRESET_NAMES:
        configs[name] = LazyConfig.preset(name, num_layers, **ALL_LENGTHS)
    for name, schedule in HANDPICKED.items():
        configs[name] = LazyConfig.place(schedule, num_layers, **ALL_LENGTHS)
    default = configs["default"]
    assert default is not None
    cuts = dict(prune_layers=default.prune_layers, keep_ratios=default.keep_ratios, revive=False, **ALL_LENGTHS)
    configs["random-drop"] = RandomDrop(**cuts)
    static_layer = min(max(round(0.15 * num_layers), 1), num_layers - 1)
    # One cut at `static_layer` with the same prefill budget: static_layer + (L - static_layer) * k = f * L.
    budget = token_fraction(default, num_layers) * num_layers
    keep = min(max((budget - static_layer) / (num_layers - static_layer), 0.01), 1.0)
    configs["static-15%"] = LazyConfig(
        prune_layers=(static_layer,), keep_ratios=(round(keep, 4),), revive=False, **ALL_LENGTHS
    )
    configs["no-revival"] = LazyConfig(**cuts)
    return configs


def describe(config: LazyConfig | None) -> str:
    """'layer:keep,...' plus what differs from LazyLLM (random selection, no revival); 'unpruned' for None."""
    if config is None:
        return "unpruned"
    extra = []
    if isinstance(config, RandomDrop):
        extra.append("random")
    if not config.revive:
        extra.append("no revival")
    return config.describe() + (f" ({', '.join(extra)})" if extra else "")


def apply(model: torch.nn.Module, config: LazyConfig | None) -> None:
    """Patch `model` with `config`, or leave it unpatched for the baseline."""
    if config is None:
        lazyllm.unpatch(model)
    else:
        lazyllm.patch(model, config)


def last_stats(model: torch.nn.Module) -> dict[str, Any] | None:
    """The stats of the model's last call as a dict, None when it is unpatched."""
    return lazyllm.stats(model).as_dict() if lazyllm.is_patched(model) else None
