"""The pruning schedule: where tokens are dropped, how many are kept, and when pruning runs at all."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

Selection = Literal["attention", "random"]
Revival = Literal["paper", "beat_weakest"]
DecodeAttend = Literal["selected", "held"]

# Named schedules, written as (fraction of depth, keep ratio) so that one preset serves every depth.
# A keep ratio is the share of the *prompt* kept from that layer on (not of the tokens left by the
# previous cut), so ratios never compound by surprise. "default" is the fastest schedule of the measured sweep that
# kept the unpruned model's answers on SmolLM2 (README, "Choosing the default schedule"); "balanced" and
# "aggressive" are faster and measurably less faithful on that small model: use them where your own evaluation holds.
PRESETS: dict[str, tuple[tuple[float, float], ...]] = {
    "default": ((0.8, 0.5),),
    "balanced": ((0.6, 0.5), (0.8, 0.2)),
    "aggressive": ((0.25, 0.5), (0.5, 0.3), (0.75, 0.15)),
}

# Below this many prompt tokens a row is not pruned. Measured (README, "Short prompts"): on CPU pruning gains from
# 64 tokens up (SmolLM2, "balanced": 1.30x at 512), but on an H100 the gain at 2k tokens was only 1.07x (Llama-2-7B
# shape) to 1.45x (Llama-3-8B shape), with kernel launches and re-selection a fixed cost that shorter prompts do not
# repay (a 135M model gained nothing below 16k). GPUs are where users run: 2048, the shortest length where pruning
# paid off on every platform measured. Lower it for CPU inference.
DEFAULT_MIN_PROMPT_TOKENS = 2048


class ConfigError(ValueError):
    """A `LazyConfig` value that cannot work; the message says what to change."""


def _is_int_at_least(value: object, minimum: int) -> bool:
    """Whether `value` is an int (not a bool) of at least `minimum`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


# The fields that say how tokens are scored at a cut (as opposed to where the cuts are and how much they keep).
SCORING_FIELDS = ("score_window", "score_layers", "score_pool")


@dataclass(frozen=True)
class LazyConfig:
    """What LazyLLM prunes, validated on construction.

    Args:
        prune_layers: strictly increasing decoder-layer indices (>= 1) where pruning happens. At layer
            `prune_layers[i]` tokens are scored by the attention the last token paid them in the layer before.
        keep_ratios: one per pruning layer, in (0, 1], non-increasing: the share of the prompt's tokens that
            layers `prune_layers[i]` and on compute. 1.0 everywhere means "prune nothing" (exact baseline).
        min_prompt_tokens: rows whose prompt is shorter than this are not pruned (every token kept).
        revive: keep dropped tokens' hidden states (the Aux Cache) so that decoding steps can select them again.
            `False` gives static pruning: what prefill dropped stays dropped.
        selection: "attention" (LazyLLM) or "random" (the paper's random-drop baseline, for benchmarks).
        seed: seed of the random selection.

    Token scores (see `lazyllm.scoring`; the defaults are the paper's score, the last token's attention averaged
    over heads):
        score_window: in prefill, average the attention of the last `score_window` prompt tokens (each attends
            causally, so the window's own tokens score only from the queries after them) instead of the last
            token's alone. Decoding steps score with the new token alone (the paper): it is the token whose
            next token is being computed (a window sliding through decoding measured no better).
        score_layers: average the scores of this many layers before the cut (those since the previous cut at
            most), so that one layer whose attention is unfocused does not decide alone. 1 = the layer before.
        score_pool: max-pool the scores over this many neighbouring positions (odd) before choosing, so that a
            number, name or phrase whose first token scores high goes on whole. 1 = no pooling.
    Measured and dropped (README, "Token scores"): attention sinks, always keeping the last tokens, max over
    heads, an adaptive attention-mass budget: none kept more answers than the window and pooling alone.

    Decoding (with `revive`; the defaults are the paper's: every step re-selects the top share of the prompt with
    its new token, attends only those, and computes the chosen parked tokens from where they stopped). Each token is
    still computed at most once per layer whatever the options:
        revival: which parked tokens a re-selection brings back. "paper": every chosen one. "beat_weakest": only
            those scoring above the weakest token the layer would attend without them (the chosen tokens it holds);
            the others stay parked, and so unattended, this step.
        reselect_every: re-select every `k` decoding steps (the first step always does); the steps between attend
            what the last re-selection chose, plus the tokens generated since, and revive nothing. 1 = every step.
        decode_attend: what the layers after a cut attend in decoding. "selected" (the paper): the chosen tokens,
            masking the KV a layer holds of tokens not chosen this step. "held": every KV entry the layer holds
            (no mask on one query); the selection then only decides what is revived.
        revive_all_at: at this decoding step (1 = the first, the default) every parked token is revived, computed
            from where it stopped in one batch, and the rest of the generation runs unpruned: no selection, no
            masks, every token attended. The prefill's gain stays in the first token. Chosen as the default by a
            rule written beforehand (README, "Fourth rule"): it kept more of the unpruned model's 128-token answers
            than the paper's policy, and whole generations ran faster. None: never, the paper's policy (the other
            decoding options apply only then). With `revive=False` nothing is parked, so nothing is revived.
    """

    prune_layers: tuple[int, ...] = ()
    keep_ratios: tuple[float, ...] = ()
    min_prompt_tokens: int = DEFAULT_MIN_PROMPT_TOKENS
    revive: bool = True
    selection: Selection = "attention"
    seed: int = 0
    score_window: int = 1
    score_layers: int = 1
    score_pool: int = 1
    revival: Revival = "paper"
    reselect_every: int = 1
    decode_attend: DecodeAttend = "selected"
    revive_all_at: int | None = 1

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
        if not isinstance(self.revive, bool):
            raise ConfigError(f"revive must be True or False, got {self.revive!r}.")
        if self.selection not in ("attention", "random"):
            raise ConfigError(f"selection must be 'attention' or 'random', got {self.selection!r}.")
        self._check_scoring()
        self._check_decoding()

    def _check_scoring(self) -> None:
        for name in ("score_window", "score_layers", "score_pool"):
            value = getattr(self, name)
            if not _is_int_at_least(value, 1):
                raise ConfigError(f"{name} must be an integer >= 1 (1 = the paper's score), got {value!r}.")
        if self.score_pool % 2 == 0:
            raise ConfigError(f"score_pool must be odd (a window centred on each token), got {self.score_pool}.")

    def _check_decoding(self) -> None:
        if self.revival not in ("paper", "beat_weakest"):
            raise ConfigError(f"revival must be 'paper' or 'beat_weakest', got {self.revival!r}.")
        every = self.reselect_every
        if not _is_int_at_least(every, 1):
            raise ConfigError(f"reselect_every must be an integer >= 1 (1 = every step, the paper), got {every!r}.")
        if self.decode_attend not in ("selected", "held"):
            raise ConfigError(f"decode_attend must be 'selected' or 'held', got {self.decode_attend!r}.")
        step = self.revive_all_at
        if step is not None and not _is_int_at_least(step, 1):
            raise ConfigError(f"revive_all_at must be a decoding step >= 1 (or None: never), got {step!r}.")
        paper_only = dict(revival="paper", reselect_every=1, decode_attend="selected")
        changed = [name for name, value in paper_only.items() if getattr(self, name) != value]
        if step == 1 and changed:
            raise ConfigError(
                f"{', '.join(changed)} shape the decoding steps before revive_all_at, and revive_all_at=1 (the "
                "default) leaves none: pass revive_all_at=None (the paper's policy) or a later step."
            )

    @classmethod
    def preset(cls, name: str, num_layers: int, **overrides: object) -> LazyConfig:
        """The named schedule (`PRESETS`) placed on a model with `num_layers` decoder layers."""
        if name == "off":
            return cls(**overrides)  # type: ignore[arg-type]
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(['off', *PRESETS])}.")
        return cls.place(PRESETS[name], num_layers, **overrides)

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

    def scoring_layers(self, cut_layer: int) -> range:
        """The layers whose attention scores the tokens at `cut_layer`: up to `score_layers` of them, all after
        the previous cut (they hold the same tokens)."""
        index = self.prune_layers.index(cut_layer)
        start = self.prune_layers[index - 1] if index else 0
        return range(max(start, cut_layer - self.score_layers), cut_layer)

    def keep_counts(self, prompt_tokens: int) -> list[int]:
        """Tokens that each pruning layer keeps of a row with `prompt_tokens` tokens (all of them when it is short)."""
        if prompt_tokens < self.min_prompt_tokens:
            return [prompt_tokens] * len(self.keep_ratios)
        return [max(1, math.ceil(ratio * prompt_tokens)) for ratio in self.keep_ratios]

    def describe(self) -> str:
        """The schedule as 'layer:keep,...', the form `parse` reads."""
        return ",".join(f"{layer}:{ratio:g}" for layer, ratio in zip(self.prune_layers, self.keep_ratios)) or "off"

    def describe_scoring(self) -> str:
        """The token score as a short label: "paper" (last token, mean over heads), or "window32+pool7+..."."""
        labels = {"score_window": "window", "score_layers": "layers", "score_pool": "pool"}
        parts = [f"{labels[name]}{getattr(self, name)}" for name in SCORING_FIELDS if getattr(self, name) != 1]
        return "+".join(parts) or "paper"

    def scoring_options(self) -> dict[str, Any]:
        """The token-score fields, to carry a score over to another schedule."""
        return {name: getattr(self, name) for name in SCORING_FIELDS}

    def save(self, path: str | Path, model: Any = None) -> None:
        """Write the config as JSON, with the library version and (given `model`) the model's name and depth."""
        from lazyllm import __version__

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
    def load(cls, path: str | Path, model: Any = None) -> LazyConfig:
        """Read a config written by `save`; given `model`, refuse one saved for a model of another depth."""
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
            raise ConfigError(
                f"{path} is not a lazyllm config file (written by LazyConfig.save or `lazyllm calibrate`)."
            )
        known = {f.name for f in fields(LazyConfig)}
        unknown = sorted(set(data["config"]) - known)
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
        settings = dict(data["config"])
        settings["prune_layers"] = tuple(settings.get("prune_layers", ()))
        settings["keep_ratios"] = tuple(settings.get("keep_ratios", ()))
        config = LazyConfig(**settings)
        if depth is not None:
            config.check_depth(depth)
        return config
