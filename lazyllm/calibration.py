"""`lazyllm.calibrate`: the fastest schedule that keeps a model's answers on the user's own prompts, no labels.

    config = lazyllm.calibrate(model, tokenizer, prompts, min_agreement=0.8)    # or target="speed", speedup=2.5
    print(config.summary())
    lazyllm.patch(model, config)
    config.save("my-model.lazyllm.json", model)

The unpruned model's greedy answers to the prompts are the reference. Candidates are schedules of one cut (a share of
the prompt kept from a depth on, the default's shape) or two (a smaller share from halfway to the last layer) with
the library's token score (or the one of `scoring`), ordered by prefill token fraction. A candidate passes when the
95% Wilson lower bound of its agreement reaches `min_agreement`: many candidates are tried and the cheapest pass is
kept, so a point estimate would keep the one that was lucky on these prompts (docs/DECISIONS.md, section 6). A coarse
ladder is searched by bisection (the
cheaper a schedule, the fewer answers it keeps), then the cheaper neighbours of the best one; a candidate answers first
the prompts earlier candidates missed, and stops on the prompt where it can no longer reach the target. The
finalist's TTFT is measured against the unpruned model, side by side.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lazyllm.config import DEFAULT_MIN_PROMPT_TOKENS, ConfigError, LazyConfig
from lazyllm.families import adapter_for
from lazyllm.fidelity import answers_agree, prompts_needed, wilson_interval
from lazyllm.generation import Prompt, encode, greedy
from lazyllm.patching import patched, stats
from lazyllm.timing import interleaved, timed_prefill

COARSE_DEPTHS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # where the first cut may go (share of depth)
FINE_STEP = 0.05
# Shares of the prompt kept at each cut: one cut (the default's shape) or two (the second halfway to the last layer).
COARSE_KEEPS = ((0.5,), (0.5, 0.25))
FINE_KEEPS = (*COARSE_KEEPS, (0.6, 0.3), (0.4, 0.2))
TIMING_ROUNDS = 3


@dataclass
class Trial:
    """One candidate tried: its schedule, how many prompts it answered as the baseline did, and of how many."""

    config: LazyConfig
    agreed: int
    answered: int
    fraction: float
    stopped_early: bool

    @property
    def agreement(self) -> float:
        return self.agreed / self.answered if self.answered else 0.0


@dataclass(frozen=True)
class Calibration(LazyConfig):
    """A `LazyConfig` found by `calibrate`, usable wherever a config is, with the search's report."""

    report: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def summary(self) -> str:
        """Candidates tried (agreement, interval, prefill token fraction), the choice, its TTFT ratio, time spent."""
        r = self.report
        lines = [f"calibrated on {r['prompts']} prompts, target {r['target']}: {r['choice']}"]
        for trial in r["trials"]:
            low, high = trial["interval"]
            lines.append(
                f"  {trial['schedule']:<32} fraction {trial['fraction']:.3f}  agreement {trial['agreed']}/"
                f"{trial['answered']} [{low:.2f}-{high:.2f}]{' (stopped early)' if trial['stopped_early'] else ''}"
            )
        if r.get("ttft_ratio") is not None:
            lines.append(
                f"TTFT speedup of the choice: {r['ttft_ratio']:.2f}x (median of {TIMING_ROUNDS} interleaved runs)"
            )
        lines.append(f"time spent: {r['seconds']:.0f} s")
        return "\n".join(lines)


def calibrate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    target: Literal["fidelity", "speed"] = "fidelity",
    min_agreement: float = 0.8,
    speedup: float | None = None,
    max_new_tokens: int = 32,
    min_prompt_tokens: int = DEFAULT_MIN_PROMPT_TOKENS,
    scoring: LazyConfig | str | None = None,
    progress: bool = True,
) -> Calibration:
    """The schedule for `model` that best meets `target` on `prompts`, judged against the unpruned model's answers.

    Args:
        prompts: the user's own long prompts: strings, chat messages (lists of {"role", "content"}) or token ids.
        target: "fidelity": the fastest schedule whose answers agree with the unpruned model's so often that the
            95% lower bound (Wilson) of its agreement is at least `min_agreement`: 16 prompts that all agree
            support 0.8, 35 support 0.9, 73 support 0.95. "speed": the most faithful schedule whose prefill
            computes at most 1 / `speedup` of the unpruned prefill's token-layers.
        max_new_tokens: length of the greedy answers compared (whole answers, not first tokens).
        min_prompt_tokens: the calibrated config's; every prompt must be at least this long.
        scoring: the token score every candidate uses: a config's (`score_window`, `score_pool`; its schedule is
            ignored), e.g. `LazyConfig(score_window=32, score_pool=7)`, or a preset's name for the score that preset
            carries (`"balanced"`, `"aggressive"`: `lazyllm.config.PRESET_SCORES`; `"default"`: the paper's);
            default: the library's (the paper's).

    Raises `ConfigError` (too few or too short prompts, a bad target, an unknown preset name) and
    `UnsupportedModelError`, before any work.
    """
    adapter_for(model)
    if isinstance(scoring, str):  # a preset's name: the token score that preset carries
        scoring = LazyConfig.preset(scoring, model.config.num_hidden_layers)
    options = dict(scoring.scoring_options() if scoring else {}, min_prompt_tokens=min_prompt_tokens)
    ids = [encode(tokenizer, prompt) for prompt in prompts]
    check_request(ids, target, min_agreement, speedup, min_prompt_tokens)
    start = time.perf_counter()
    search = Search(model, ids, max_new_tokens, options, target, min_agreement, speedup, progress)
    best = search.run()
    ratio = ttft_ratio(model, max(ids, key=lambda x: x.shape[1]), best.config) if best else None
    report = {
        "prompts": len(ids),
        "target": f"agreement lower bound >= {min_agreement}" if target == "fidelity" else f"speedup >= {speedup}",
        "choice": best.config.describe() if best else "none met the target: no pruning",
        "trials": [trial_record(t) for t in search.trials],
        "ttft_ratio": ratio,
        "seconds": time.perf_counter() - start,
    }
    config = best.config if best else LazyConfig(**options)
    return Calibration(**{f.name: getattr(config, f.name) for f in dataclasses.fields(LazyConfig)}, report=report)


def misses_allowed(n: int, min_agreement: float) -> int:
    """Most disagreements among `n` answers that keep the agreement's lower bound at `min_agreement` (-1: none)."""
    misses = -1
    while misses < n and wilson_interval(n - misses - 1, n)[0] >= min_agreement:
        misses += 1
    return misses


def check_request(
    ids: Sequence[torch.Tensor], target: str, min_agreement: float, speedup: float | None, min_prompt_tokens: int
) -> None:
    """Refuse, before any work, what the search cannot answer."""
    if target not in ("fidelity", "speed"):
        raise ConfigError(f"target must be 'fidelity' or 'speed', got {target!r}.")
    if target == "speed" and (speedup is None or speedup <= 1.0):
        raise ConfigError(f"target='speed' needs speedup > 1 (e.g. speedup=2.5), got {speedup!r}.")
    needed = prompts_needed(min_agreement)  # refuses a min_agreement outside (0, 1)
    if target == "fidelity" and len(ids) < needed:
        raise ConfigError(
            f"calibrate needs at least {needed} prompts to bound the agreement below by {min_agreement} (95% Wilson "
            f"lower bound when every answer agrees), got {len(ids)}: add prompts or lower min_agreement."
        )
    short = [i for i, x in enumerate(ids) if x.shape[1] < max(min_prompt_tokens, 1)]
    if short:
        raise ConfigError(
            f"prompts {short[:5]} are shorter than min_prompt_tokens={min_prompt_tokens}, so pruning would not run "
            "on them: calibrate on prompts as long as those you will prune, or lower min_prompt_tokens."
        )


def trial_record(trial: Trial) -> dict[str, Any]:
    return {
        "schedule": trial.config.describe(),
        "fraction": trial.fraction,
        "agreed": trial.agreed,
        "answered": trial.answered,
        "interval": wilson_interval(trial.agreed, trial.answered),
        "stopped_early": trial.stopped_early,
    }


def ladder(
    num_layers: int, keeps: Sequence[tuple[float, ...]], depths: Sequence[float], **options: object
) -> list[LazyConfig]:
    """Schedules cutting first at each depth with each tuple of shares (a second cut halfway to the last layer),
    ordered from the cheapest prefill to the dearest."""
    configs = {}
    for shares in keeps:
        for depth in depths:
            cuts = [(depth, shares[0]), *((depth + (1 - depth) / 2, share) for share in shares[1:])]
            config = LazyConfig.place(cuts, num_layers, **options)
            configs[config.describe()] = config
    return sorted(configs.values(), key=lambda c: c.prefill_fraction(num_layers))


class Search:
    """Bisection over a coarse ladder of schedules, then their neighbours, with early stopping per candidate."""

    def __init__(
        self,
        model: PreTrainedModel,
        ids: Sequence[torch.Tensor],
        max_new_tokens: int,
        options: dict[str, Any],
        target: str,
        min_agreement: float,
        speedup: float | None,
        progress: bool,
    ) -> None:
        self.model, self.ids, self.max_new_tokens = model, ids, max_new_tokens
        self.target, self.min_agreement, self.speedup = target, min_agreement, speedup
        self.options = options  # LazyConfig fields every candidate shares
        self.num_layers = model.config.num_hidden_layers
        self.trials: list[Trial] = []
        self.misses = [0] * len(ids)  # per prompt: how many candidates answered it otherwise than the baseline
        self.bar = tqdm(desc="lazyllm calibrate", unit="answer", disable=not progress, leave=False)
        self.references = [self.answer(x, None) for x in ids]

    def run(self) -> Trial | None:
        coarse = ladder(self.num_layers, COARSE_KEEPS, COARSE_DEPTHS, **self.options)
        best = self.search(coarse)
        if best is None:
            return None
        depth = best.config.prune_layers[0] / self.num_layers
        near = [depth - FINE_STEP, depth, depth + FINE_STEP]
        fine = ladder(self.num_layers, FINE_KEEPS, near, **self.options)
        if self.target == "fidelity":  # only a cheaper schedule can beat one that passes
            fine = [c for c in fine if c.prefill_fraction(self.num_layers) < best.fraction]
        return self.search(fine, best)

    def search(self, candidates: list[LazyConfig], best: Trial | None = None) -> Trial | None:
        """Fidelity: the cheapest passing candidate by bisection. Speed: the most faithful one fast enough."""
        if self.target == "speed":
            assert self.speedup is not None  # check_request: a speed target has one
            fast = [c for c in candidates if c.prefill_fraction(self.num_layers) <= 1 / self.speedup]
            for config in fast:
                trial = self.trial(config, beat=best)
                if best is None or trial.agreement > best.agreement:
                    best = trial
            return best
        low, high = 0, len(candidates) - 1
        while low <= high:
            middle = (low + high) // 2
            trial = self.trial(candidates[middle])
            if self.passes(trial):
                best = trial if best is None or trial.fraction < best.fraction else best
                high = middle - 1
            else:
                low = middle + 1
        return best

    def passes(self, trial: Trial) -> bool:
        return not trial.stopped_early and wilson_interval(trial.agreed, trial.answered)[0] >= self.min_agreement

    def trial(self, config: LazyConfig, beat: Trial | None = None) -> Trial:
        """Answer the prompts with `config` until it cannot reach the target (or beat `beat`) any more."""
        seen = next((t for t in self.trials if t.config == config), None)
        if seen is not None:
            return seen
        n = len(self.ids)
        if self.target == "speed":  # to win, it must agree more often than the best so far
            allowed = n - (beat.agreed + 1) if beat else n
        else:
            allowed = misses_allowed(n, self.min_agreement)
        agreed = answered = 0
        hardest_first = sorted(range(n), key=lambda i: -self.misses[i])  # a failing candidate fails there soonest
        for i in hardest_first:
            same = answers_agree(self.answer(self.ids[i], config), self.references[i])
            agreed, answered, self.misses[i] = agreed + same, answered + 1, self.misses[i] + (not same)
            if answered - agreed > allowed:
                break
        trial = Trial(config, agreed, answered, config.prefill_fraction(self.num_layers), answered < len(self.ids))
        self.trials.append(trial)
        return trial

    def answer(self, ids: torch.Tensor, config: LazyConfig | None) -> str:
        """The greedy answer's token ids as text (unpruned when `config` is None)."""
        ids = ids.to(self.model.device)
        if config is None:
            out = greedy(self.model, ids, max_new_tokens=self.max_new_tokens)
        else:
            with patched(self.model, config):
                out = greedy(self.model, ids, max_new_tokens=self.max_new_tokens)
                if not stats(self.model).pruned:
                    raise ConfigError(f"pruning did not run: {stats(self.model).fallback_reason}")
        self.bar.update(1)
        return " ".join(map(str, out[0, ids.shape[1] :].tolist()))


def ttft_ratio(model: PreTrainedModel, ids: torch.Tensor, config: LazyConfig) -> float:
    """Median over interleaved rounds of unpruned / pruned prefill wall time on one prompt (after a warm-up)."""
    inputs = {"input_ids": ids.to(model.device)}

    def pruned() -> float:
        with patched(model, config):
            return timed_prefill(model, inputs, model.device)

    times = interleaved({"base": lambda: timed_prefill(model, inputs, model.device), "pruned": pruned}, TIMING_ROUNDS)
    return statistics.median(base / lazy for base, lazy in zip(times["base"], times["pruned"]))
