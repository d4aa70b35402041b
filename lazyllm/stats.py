"""Figures of the last prefill and the decoding steps that followed it, as `lazyllm.stats(model)` returns them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class LazyStats:
    """What the last `generate()` (or the last prefill and its decoding steps) computed.

    Token-layers count one token computed in one decoder layer; the unpruned model computes
    `prompt_tokens x num_layers` of them in prefill. Counts are summed over the rows of a batch.
    """

    pruned: bool = False  # whether pruning ran (False: the unpruned forward ran, see fallback_reason)
    fallback_reason: str | None = None
    schedule: str = ""  # the schedule as "layer:keep,..."
    schedule_source: str = ""  # why the model has it: a preset asked for by name, a LazyConfig, or the default
    num_layers: int = 0
    prompt_tokens: list[int] = field(default_factory=list)  # real (unpadded) prompt tokens per row
    kept_per_layer: list[int] = field(default_factory=list)  # prefill: tokens computed in each layer
    decode_steps: int = 0
    turn_tokens: int = 0  # tokens added to the pruned cache by calls of several tokens (later turns of a chat)
    decode_token_layers: int = 0  # token-layers computed in decoding (new tokens and revived ones)
    revived_tokens: int = 0  # times a token was taken back from an Aux Cache in decoding
    revived_token_layers: int = 0  # token-layers those revivals computed
    revived_per_step: list[int] = field(default_factory=list)  # tokens revived in each decoding step
    aux_cache_tokens: int = 0  # tokens held in Aux Caches after the last call
    aux_cache_bytes: int = 0
    recomputed_token_layers: int | None = None  # self-check at the end of generate(): must be 0

    @property
    def prefill_token_layers(self) -> int:
        return sum(self.kept_per_layer)

    @property
    def prefill_token_fraction(self) -> float:
        """Token-layers computed in prefill / (prompt tokens x layers): 1.0 unpruned, lower is less work."""
        full = sum(self.prompt_tokens) * self.num_layers
        return self.prefill_token_layers / full if full else 1.0

    @property
    def total_token_layers(self) -> int:
        """Token-layers computed over the whole generation (prefill and decoding)."""
        return self.prefill_token_layers + self.decode_token_layers

    @property
    def prompt_token_fraction_total(self) -> float:
        """Share of the prompt's token-layers ever computed, revivals included (the paper's Table 2)."""
        full = sum(self.prompt_tokens) * self.num_layers
        return (self.prefill_token_layers + self.revived_token_layers) / full if full else 1.0

    @property
    def whole_generation_token_fraction(self) -> float:
        """Token-layers computed over the whole generation / what the unpruned model computes for it (prompt and
        every decoding step's new token in every layer): 1.0 unpruned, lower is less work."""
        rows = len(self.prompt_tokens)
        full = (sum(self.prompt_tokens) + rows * self.decode_steps + self.turn_tokens) * self.num_layers
        return self.total_token_layers / full if full else 1.0

    def as_dict(self) -> dict[str, Any]:
        """All fields and derived figures, JSON-ready."""
        return {
            **asdict(self),
            "prefill_token_layers": self.prefill_token_layers,
            "prefill_token_fraction": self.prefill_token_fraction,
            "total_token_layers": self.total_token_layers,
            "prompt_token_fraction_total": self.prompt_token_fraction_total,
            "whole_generation_token_fraction": self.whole_generation_token_fraction,
        }

    def summary(self) -> str:
        """A few human-readable lines."""
        state = "pruned" if self.pruned else f"not pruned ({self.fallback_reason})"
        lines = [
            f"prefill: {state}, schedule {self.schedule or 'off'}, prompt tokens {self.prompt_tokens}",
            f"schedule: {self.schedule_source}",
            f"prefill_token_fraction {self.prefill_token_fraction:.3f} "
            f"({self.prefill_token_layers} of {sum(self.prompt_tokens) * self.num_layers} token-layers)",
            f"decoding: {self.decode_steps} steps, {self.revived_tokens} tokens revived "
            f"({self.revived_token_layers} token-layers), Aux Cache {self.aux_cache_tokens} tokens "
            f"({self.aux_cache_bytes / 2**20:.1f} MiB)",
        ]
        if self.kept_per_layer and self.pruned:
            lines.append("kept per layer: " + " ".join(map(str, self.kept_per_layer)))
        return "\n".join(lines)
