"""The pruning schedule: where tokens are dropped, how many are kept, and when pruning runs at all."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lazyllm.errors import ConfigError as ConfigError
from lazyllm.scoring import pool_neighbours

# Named schedules, written as (fraction of depth, keep ratio) so that one preset serves every depth.
# A keep ratio is the share of the *prompt* kept from that layer on (not of the tokens left by the
# previous cut), so ratios never compound by surprise. "default" is the fastest schedule of the measured sweep that
# kept the unpruned model's answers on SmolLM2 (docs/DECISIONS.md, sections 2-3); "balanced" and "aggressive" are
# faster and measurably less faithful on that small model: use them where your own evaluation holds.
PRESETS: dict[str, tuple[tuple[float, float], ...]] = {
    "default": ((0.8, 0.5),),
    "balanced": ((0.6, 0.5), (0.8, 0.2)),
    "aggressive": ((0.25, 0.5), (0.5, 0.3), (0.75, 0.15)),
}
# The token score a preset carries where it is not the paper's: chosen by the rule of docs/DECISIONS.md, section 11.
PRESET_SCORES: dict[str, dict[str, int]] = {
    "balanced": {"score_window": 32, "score_pool": 7},
    "aggressive": {"score_window": 32, "score_pool": 7},
}

# The preset `lazyllm.patch(model)` places by the model's parameter count: (smallest count, preset) entries, largest
# count first; a model takes the first entry it reaches, else "default". Filled by the rule of docs/DECISIONS.md,
# section 13: the smallest model of the measured ladder on which a cheaper preset held (Qwen2.5-Coder-1.5B-Instruct,
# counted as published, its embedding tied to the output head).
DEFAULT_BY_SIZE: tuple[tuple[int, str], ...] = ((1_543_714_304, "balanced"),)


def default_preset(num_parameters: int) -> tuple[str, str]:
    """The preset `lazyllm.patch(model)` places on a model of `num_parameters` parameters, and why."""
    size = f"{num_parameters / 1e9:.2f}B parameters"
    for smallest, name in DEFAULT_BY_SIZE:
        if num_parameters >= smallest:
            return name, f"the default for models of at least {smallest / 1e9:.2f}B parameters (this one: {size})"
    smallest = min(count for count, _ in DEFAULT_BY_SIZE)
    return "default", f"the default for models under {smallest / 1e9:.2f}B parameters (this one: {size})"


def default_rule() -> str:
    """`default_preset` in words, for `lazyllm info`."""
    steps = [f"{name!r} from {smallest / 1e9:.2f}B parameters" for smallest, name in DEFAULT_BY_SIZE]
    return ", ".join(steps) + ", 'default' below"


# Below this many prompt tokens a row is not pruned: the shortest length at which pruning paid off on every platform
# measured (docs/DECISIONS.md, section 4). On CPU pruning pays from far shorter prompts: lower it there.
DEFAULT_MIN_PROMPT_TOKENS = 2048


def _is_int_at_least(value: object, minimum: int) -> bool:
    """Whether `value` is an int (not a bool) of at least `minimum`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


# The fields that say how tokens are scored at a cut (as opposed to where the cuts are and how much they keep).
SCORING_FIELDS = ("score_window", "score_pool")

# Fields that a saved config may hold but LazyConfig no longer has: the value that loads as today's behaviour (None:
# any value does) and what replaced the option (docs/DECISIONS.md, section 8). A file that sets another value is
# refused, naming both.
RETIRED_FIELDS: dict[str, tuple[object, str]] = {
    "revival": (
        "paper",
        "replaced by revive_all_at and revive: revive_all_at=None is the paper's token-by-token revival, "
        "revive=False static pruning",
    ),
    "reselect_every": (1, "replaced by revive_all_at=None, where every decoding step re-selects its tokens"),
    "decode_attend": ("selected", "replaced by revive_all_at=None, where decoding steps attend the tokens they select"),
    "selection": ("attention", "replaced by LazyConfig.rank_tokens: subclass LazyConfig and override it"),
    "score_layers": (1, "replaced by score_window and score_pool; a cut is scored in the layer before it"),
    "seed": (None, "replaced by LazyConfig.rank_tokens: a random ranking is an override of your own"),
}


@dataclass(frozen=True)
class LazyConfig:
    """What LazyLLM prunes, validated on construction (paper: arXiv 2407.14057, Sec. 3).

    Args:
        prune_layers: strictly increasing decoder-layer indices (>= 1) where pruning happens. At layer
            `prune_layers[i]` tokens are scored by the attention the last token paid them in the layer before.
        keep_ratios: one per pruning layer, in (0, 1], non-increasing: the share of the prompt's tokens that
            layers `prune_layers[i]` and on compute. 1.0 everywhere means "prune nothing" (exact baseline).
        min_prompt_tokens: rows whose prompt is shorter than this are not pruned (every token kept).
        revive: keep dropped tokens' hidden states (the Aux Cache) so that decoding can compute them later, from
            the layer where they stopped. `False` gives static pruning: what prefill dropped stays dropped.
        revive_all_at: the decoding step (1 = the first) at which every parked token is revived in one batch;
            from then on decoding runs unpruned (no selection, no masks). None: the paper's policy, where every
            step re-selects the top share of the prompt with its new token, attends only those and revives the
            chosen parked ones. Each token is computed at most once per layer either way.
        score_window: in prefill, score with the mean attention of the last `score_window` prompt tokens (each
            attends causally) instead of the last token's alone; decoding steps score with the new token.
        score_pool: max-pool the scores over this many neighbouring positions (odd) before choosing, so that a
            number or a name whose first token scores high goes on whole. 1 = no pooling.
        strict: raise (`UnsupportedGenerationError`, `UnsupportedCacheError`, `UnsupportedCallError`) before any
            work for a call that pruning cannot serve, instead of running it unpruned with a warning.

    With the defaults the token score is the paper's (the last token's attention, mean over heads). Subclasses
    may override `rank_tokens`, the one extension point of the score.
    """

    prune_layers: tuple[int, ...] = ()
    keep_ratios: tuple[float, ...] = ()
    min_prompt_tokens: int = DEFAULT_MIN_PROMPT_TOKENS
    revive: bool = True
    revive_all_at: int | None = 1
    score_window: int = 1
    score_pool: int = 1
    strict: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "prune_layers", tuple(self.prune_layers))
        object.__setattr__(self, "keep_ratios", tuple(float(r) for r in self.keep_ratios))
        layers, ratios = self.prune_layers, self.keep_ratios
        if len(layers) != len(ratios):
            raise ConfigError(
                f"prune_layers has {len(layers)} entries but keep_ratios has {len(ratios)}: give one keep ratio per pruning layer."
            )
        if any(not isinstance(layer, int) or isinstance(layer, bool) for layer in layers):
            raise ConfigError(f"prune_layers must be integers, got {layers}.")
        if any(layer < 1 for layer in layers):
            raise ConfigError(
                f"prune_layers must be >= 1 (layer 0 has no earlier layer to score tokens with), got {layers}."
            )
        if any(b <= a for a, b in zip(layers, layers[1:])):
            raise ConfigError(f"prune_layers must be strictly increasing, got {layers}.")
        if any(not (0.0 < r <= 1.0) or math.isnan(r) for r in ratios):
            raise ConfigError(f"keep_ratios must lie in (0, 1], got {ratios}.")
        if any(b > a for a, b in zip(ratios, ratios[1:])):
            raise ConfigError(
                f"keep_ratios must not increase with depth (a later layer cannot see tokens an earlier one dropped), got {ratios}."
            )
        if not _is_int_at_least(self.min_prompt_tokens, 0):
            raise ConfigError(f"min_prompt_tokens must be an integer >= 0, got {self.min_prompt_tokens!r}.")
        for name in ("revive", "strict"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        step = self.revive_all_at
        if step is not None and not _is_int_at_least(step, 1):
            raise ConfigError(f"revive_all_at must be a decoding step >= 1 (or None: never), got {step!r}.")
        self._check_scoring()

    def _check_scoring(self) -> None:
        for name in SCORING_FIELDS:
            value = getattr(self, name)
            if not _is_int_at_least(value, 1):
                raise ConfigError(f"{name} must be an integer >= 1 (1 = the paper's score), got {value!r}.")
        if self.score_pool % 2 == 0:
            raise ConfigError(f"score_pool must be odd (a window centred on each token), got {self.score_pool}.")

    @classmethod
    def preset(cls, name: str, num_layers: int, **overrides: object) -> LazyConfig:
        """The named schedule (`PRESETS`) placed on a model with `num_layers` decoder layers, with the token score
        the preset carries (`PRESET_SCORES`; `overrides` win)."""
        if name == "off":
            return cls(**overrides)  # type: ignore[arg-type]
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(['off', *PRESETS])}.")
        return cls.place(PRESETS[name], num_layers, **{**PRESET_SCORES.get(name, {}), **overrides})

    @classmethod
    def place(cls, cuts: Sequence[tuple[float, float]], num_layers: int, **overrides: object) -> LazyConfig:
        """A schedule written as (fraction of depth, keep ratio) pairs, placed on a model with `num_layers` layers."""
        if num_layers < 2:
            raise ConfigError(f"a model needs at least 2 layers to be pruned, this one has {num_layers}.")
        placed: dict[int, float] = {}
        for fraction, ratio in cuts:
            layer = min(max(round(fraction * num_layers), 1), num_layers - 1)
            placed[layer] = min(ratio, placed.get(layer, 1.0))  # shallow models: merged cuts keep the smaller ratio
        layers = tuple(sorted(placed))
        return cls(prune_layers=layers, keep_ratios=tuple(placed[layer] for layer in layers), **overrides)  # type: ignore[arg-type]

    @classmethod
    def parse(cls, schedule: str, num_layers: int, **overrides: object) -> LazyConfig:
        """A schedule written as a preset name ("default") or as "layer:keep,..." ("8:0.5,16:0.3,24:0.1")."""
        text = schedule.strip()
        if text in PRESETS or text == "off":
            return cls.preset(text, num_layers, **overrides)
        layers, ratios = [], []
        for item in text.split(","):
            layer, sep, ratio = item.partition(":")
            try:
                if not sep:
                    raise ValueError
                layers.append(int(layer))
                ratios.append(float(ratio))
            except ValueError:
                raise ConfigError(
                    f"bad schedule {schedule!r}: write a preset ({', '.join(['off', *PRESETS])}) or 'layer:keep,...' "
                    "such as '8:0.5,16:0.3,24:0.1'."
                ) from None
        config = cls(prune_layers=tuple(layers), keep_ratios=tuple(ratios), **overrides)  # type: ignore[arg-type]
        config.check_depth(num_layers)
        return config

    def check_depth(self, num_layers: int) -> None:
        """Raise `ConfigError` when a pruning layer does not exist in a model of `num_layers` layers."""
        if self.prune_layers and self.prune_layers[-1] >= num_layers:
            raise ConfigError(
                f"prune_layers {self.prune_layers} reach past the model's {num_layers} layers: use indices below {num_layers}."
            )

    def keep_counts(self, prompt_tokens: int) -> list[int]:
        """Tokens that each pruning layer keeps of a row with `prompt_tokens` tokens (all of them when it is short)."""
        if prompt_tokens < self.min_prompt_tokens:
            return [prompt_tokens] * len(self.keep_ratios)
        return [max(1, math.ceil(ratio * prompt_tokens)) for ratio in self.keep_ratios]

    def prefill_fraction(self, num_layers: int) -> float:
        """The prefill token fraction this schedule computes on a long prompt (keep counts not rounded): the
        share of the unpruned prefill's `prompt tokens x num_layers` token-layers."""
        bounds = [*self.prune_layers, num_layers]
        kept = float(self.prune_layers[0] if self.prune_layers else num_layers)
        for ratio, (start, end) in zip(self.keep_ratios, zip(bounds, bounds[1:])):
            kept += ratio * (end - start)
        return kept / num_layers

    def rank_tokens(self, scores: torch.Tensor) -> torch.Tensor:
        """The scores a cut chooses its top share by, from `scores (B, width)`: the attention each position got
        (0 where the scoring layer holds no entry). The default max-pools over `score_pool` neighbours; a subclass
        may rank otherwise (the benchmark rig's random-drop baseline does). Must return `(B, width)`."""
        return pool_neighbours(scores, self.score_pool)

    def describe(self) -> str:
        """The schedule as 'layer:keep,...', the form `parse` reads."""
        return ",".join(f"{layer}:{ratio:g}" for layer, ratio in zip(self.prune_layers, self.keep_ratios)) or "off"

    def describe_scoring(self) -> str:
        """The token score as a short label: "paper" (last token, mean over heads), or "window32+pool7+..."."""
        labels = {"score_window": "window", "score_pool": "pool"}
        parts = [f"{labels[name]}{getattr(self, name)}" for name in SCORING_FIELDS if getattr(self, name) != 1]
        return "+".join(parts) or "paper"

    def scoring_options(self) -> dict[str, Any]:
        """The token-score fields, to carry a score over to another schedule."""
        return {name: getattr(self, name) for name in SCORING_FIELDS}

    def save(self, path: str | Path, model: nn.Module | None = None) -> None:
        """Write the config as JSON, with the library version and (given `model`) the model's name and depth."""
        from lazyllm.version import __version__

        settings = {f.name: getattr(self, f.name) for f in fields(LazyConfig)}
        config = getattr(model, "config", None)
        data = {
            "lazyllm": __version__,
            "model": getattr(config, "name_or_path", None) or None,
            "num_layers": getattr(config, "num_hidden_layers", None),
            "config": settings,
        }
        Path(path).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> LazyConfig:
        """Read a config written by `save`; given `model`, refuse one saved for a model of another depth."""
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
            raise ConfigError(
                f"{path} is not a lazyllm config file (written by LazyConfig.save or `lazyllm calibrate`)."
            )
        settings = _without_retired(dict(data["config"]), path)
        unknown = sorted(set(settings) - {f.name for f in fields(LazyConfig)})
        if unknown:
            raise ConfigError(
                f"{path} sets {unknown}, which this lazyllm does not know (saved by lazyllm {data.get('lazyllm')}): "
                "upgrade lazyllm."
            )
        depth = getattr(getattr(model, "config", None), "num_hidden_layers", None)
        if depth is not None and data.get("num_layers") not in (None, depth):
            raise ConfigError(
                f"{path} was calibrated for {data.get('model') or 'a model'} with {data['num_layers']} layers; this "
                f"model has {depth}: calibrate it with lazyllm.calibrate (or `lazyllm calibrate`)."
            )
        settings["prune_layers"] = tuple(settings.get("prune_layers", ()))
        settings["keep_ratios"] = tuple(settings.get("keep_ratios", ()))
        config = LazyConfig(**settings)
        if depth is not None:
            config.check_depth(depth)
        return config


def _without_retired(settings: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """`settings` less the fields lazyllm 0.2 retired, refusing a file whose retired values changed behaviour."""
    changed = [
        f"{name}={settings[name]!r} (only the old default {name}={neutral!r} still loads; {replacement})"
        for name, (neutral, replacement) in RETIRED_FIELDS.items()
        if name in settings and neutral is not None and settings[name] != neutral
    ]
    if changed:
        raise ConfigError(
            f"{path} sets options retired in lazyllm 0.2: {', '.join(changed)}. Delete them from the file to load "
            "it with today's behaviour, or load it with lazyllm 0.1."
        )
    return {name: value for name, value in settings.items() if name not in RETIRED_FIELDS}
