"""Keeping a run inside its wall-time budget: a cost model fed by what the run measured so far, and the trimming.

Before each speed length, optional schedules are dropped (from the end of the profile's list, never the core ones);
before the accuracy section, samples (depths far from the middle first, longest lengths first), then optional
schedules. Whatever is dropped is noted, and the report lists it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from lazybench.profiles import BASELINE, Profile, length_label
from lazybench.tasks import TASKS
from lazyllm.config import LazyConfig

Configs = dict[str, LazyConfig | None]
Plan = list[tuple[int, tuple[float, ...], tuple[str, ...]]]  # (length, depths, schedules besides the baseline)


class CostModel:
    """Wall-time estimates from what the run measured so far.

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
        """The share of the unpruned TTFT that `config` costs: its compute bound `(1-a)·f + a·f2` (f the prefill
        token fraction, f2 that of the squared keep ratios: the attention part), plus 10% overhead."""
        if config is None or tokens < config.min_prompt_tokens:
            return 1.0
        squares = LazyConfig(config.prune_layers, tuple(r * r for r in config.keep_ratios))
        share = self.share(tokens)
        bound = (1 - share) * config.prefill_fraction(self.num_layers) + share * squares.prefill_fraction(
            self.num_layers
        )
        return min(1.1 * bound + 0.02, 1.1)

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


def trim_speed_schedules(
    position: int, profile: Profile, configs: Configs, costs: CostModel, budget: Budget
) -> list[str]:
    """The schedules (baseline first) to time at the `position`-th speed length, leaving the later ones room."""
    names = [BASELINE, *profile.timing_schedules]
    if not costs.ready:
        return names
    rounds = 1 + profile.warmup + profile.repeats

    def projected(names: list[str], length: int) -> float:
        per_round = sum(costs.generation(configs[n], length, profile.decode_tokens) for n in names)
        return rounds * per_round + 2 * costs.ttft(length)

    length = profile.timing_lengths[position]
    later = profile.timing_lengths[position + 1 :]
    reserve = sum(projected([BASELINE, *profile.timing_core], x) for x in later)
    left = budget.remaining(profile.speed_share)
    kept = list(names)
    while projected(kept, length) > left - reserve:
        optional = [n for n in kept if n != BASELINE and n not in profile.timing_core]
        if not optional:
            break
        kept.remove(optional[-1])
    if len(kept) < len(names):
        dropped = ", ".join(n for n in names if n not in kept)
        budget.note(
            f"speed @{length_label(length)}: dropped {dropped} "
            f"(projected {projected(names, length):.0f} s, speed budget left {left:.0f} s)"
        )
    return kept


def accuracy_plan(profile: Profile) -> Plan:
    """The profile's accuracy samples before any trimming: (length, depths, schedules) per length."""
    plan = []
    for length in profile.accuracy_lengths:
        depths, schedules = profile.accuracy_overrides.get(length, (profile.depths, profile.accuracy_schedules))
        plan.append((length, tuple(depths), tuple(schedules)))
    return plan


def plan_cost(plan: Plan, profile: Profile, configs: Configs, costs: CostModel) -> float:
    """Projected seconds of the accuracy section and kvpress for `plan`."""
    total = 0.0
    samples_per_depth = len(TASKS) * profile.n_per_depth
    presses = 1 + len(profile.kvpress_presses)
    for length, depths, schedules in plan:
        samples = len(depths) * samples_per_depth
        per_sample = sum(costs.generation(configs[n], length, profile.max_new_tokens) for n in (BASELINE, *schedules))
        total += samples * per_sample
        if length in profile.kvpress_lengths:
            total += samples * presses * 1.05 * costs.generation(None, length, profile.max_new_tokens)
    if any(length in profile.kvpress_lengths for length, _, _ in plan):
        total += 60.0  # the kvpress venv's start-up and model load
    return total


def _drop_one(plan: Plan, core: tuple[str, ...]) -> str | None:
    """Shrink `plan` in place by one step; returns what was dropped, None when nothing optional is left.

    The longest length that still has more than one depth loses the depth farthest from the middle; when every
    length has one depth, the longest length with an optional schedule loses its last one."""
    multi = [i for i, (_, depths, _) in enumerate(plan) if len(depths) > 1]
    if multi:
        i = max(multi, key=lambda i: plan[i][0])
        length, depths, schedules = plan[i]
        drop = max(depths, key=lambda d: abs(d - 0.5))
        plan[i] = (length, tuple(d for d in depths if d != drop), schedules)
        return f"{length_label(length)}: depth {drop} dropped"
    optional = [i for i, (_, _, schedules) in enumerate(plan) if any(s not in core for s in schedules)]
    if not optional:
        return None
    i = max(optional, key=lambda i: plan[i][0])
    length, depths, schedules = plan[i]
    name = [s for s in schedules if s not in core][-1]
    plan[i] = (length, depths, tuple(s for s in schedules if s != name))
    return f"{length_label(length)}: {name} dropped"


def fit_plan(plan: Plan, profile: Profile, configs: Configs, costs: CostModel, budget: Budget) -> Plan:
    """`plan`, trimmed (`_drop_one`) until its projected cost fits what is left of the budget."""
    if not costs.ready or budget.total_s <= 0:
        return plan
    remaining = budget.remaining()
    plan = list(plan)

    def cost() -> float:
        return plan_cost(plan, profile, configs, costs)

    before, changed = cost(), []
    while cost() > remaining and (dropped := _drop_one(plan, profile.accuracy_core)):
        changed.append(dropped)
    if changed:
        budget.note(
            f"accuracy: projected {before:.0f} s but {max(remaining, 0):.0f} s left: "
            + "; ".join(changed)
            + f" (now projected {cost():.0f} s)"
        )
    else:
        tqdm.write(f"budget: accuracy + kvpress projected {before:.0f} s ({remaining:.0f} s left)")
    return plan
