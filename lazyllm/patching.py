"""`patch` / `unpatch`: install LazyLLM on a loaded model and take it off again, symmetrically.

`patch(model)` changes three attributes of the model instance (never its class, never its weights) and adds one
forward hook per pruning layer:
- the base model's `forward` (e.g. `model.model.forward`) becomes `lazyllm.forward.lazy_forward`;
- the causal-LM `forward` notes whether the caller needs logits of every position (then pruning steps aside);
- `generate` refuses, before any work, the generation modes a pruned cache cannot serve, and closes the stats;
- a hook on the query projection of each layer before a pruning layer keeps the last token's query.
`unpatch(model)` restores each attribute as it was and removes the hooks.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import Cache

from lazyllm.cache import LazyState, check_cache
from lazyllm.config import ConfigError, LazyConfig
from lazyllm.families import FamilyAdapter, adapter_for, attention_windows, check_attention_backend
from lazyllm.forward import lazy_forward, prompt_lengths
from lazyllm.stats import LazyStats

_MISSING = object()


class UnsupportedGenerationError(ValueError):
    """A `generate()` option a patched model cannot serve; raised before any work."""


class LazyRuntime:
    """Everything a patched model carries: schedule, adapter, per-cache state, last stats, installed patches."""

    def __init__(self, adapter: FamilyAdapter, config: LazyConfig) -> None:
        self.adapter = adapter
        self.config = config
        self.windows: list[int | None] = []  # per decoder layer: its sliding window, None for full attention
        self.states: weakref.WeakKeyDictionary[Cache, LazyState] = weakref.WeakKeyDictionary()
        self.stats = LazyStats()
        self.last_state: LazyState | None = None  # kept until generate() ends, for its self-check
        self.last_token_only = False  # set by the causal-LM forward when its caller needs the last logits only
        self.capturing = False  # the query hooks record only during a pruned forward
        self.captured: dict[int, torch.Tensor] = {}  # layer -> (B, w, ...) the last w tokens' queries before RoPE
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._replaced: list[tuple[object, str, object]] = []  # (owner, attribute, previous instance value)

    # -- install / uninstall -------------------------------------------------------------------------------
    def install(self, model: nn.Module) -> None:
        base = model.model
        self.windows = attention_windows(model.config)
        original_base = self._forward_of(base)
        self._replace(base, _forward_attribute(base), functools.partial(lazy_forward, self, base, original_base))
        self._replace(model, _forward_attribute(model), self._causal_forward(self._forward_of(model)))
        self._replace(model, "generate", self._generate(model, model.generate))
        self._install_hooks(model)

    def uninstall(self) -> None:
        self._remove_hooks()
        for owner, attribute, previous in reversed(self._replaced):
            if previous is _MISSING:
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, previous)
        self._replaced.clear()

    def reconfigure(self, model: nn.Module, config: LazyConfig) -> None:
        self.config = config
        self._remove_hooks()
        self._install_hooks(model)

    def _install_hooks(self, model: nn.Module) -> None:
        layers = model.model.layers
        scoring = {layer for cut in self.config.prune_layers for layer in self.config.scoring_layers(cut)}
        for layer_index in sorted(scoring):
            module = self.adapter.query_module(layers[layer_index])
            self._hooks.append(module.register_forward_hook(self._capture_query(layer_index)))

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def _replace(self, owner: object, attribute: str, value: object) -> None:
        self._replaced.append((owner, attribute, owner.__dict__.get(attribute, _MISSING)))
        setattr(owner, attribute, value)

    @staticmethod
    def _forward_of(module: nn.Module) -> Callable[..., Any]:
        return getattr(module, _forward_attribute(module))

    # -- what the installed pieces do ------------------------------------------------------------------------
    def _capture_query(self, layer_index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            if self.capturing:
                self.captured[layer_index] = self.adapter.last_queries(output, self.config.score_window).detach()

        return hook

    def _causal_forward(self, original: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(original)

        @functools.wraps(original)
        def forward(*args: Any, **kwargs: Any) -> Any:
            arguments = signature.bind_partial(*args, **kwargs).arguments
            keep = arguments.get("logits_to_keep", 0)
            self.last_token_only = arguments.get("labels") is None and isinstance(keep, int) and keep == 1
            try:
                return original(*args, **kwargs)
            finally:
                self.last_token_only = False

        return forward

    def _generate(self, model: nn.Module, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def generate(*args: Any, **kwargs: Any) -> Any:
            check_generate_options(model, kwargs)
            try:
                return original(*args, **kwargs)
            finally:
                self.finish_generate()

        return generate

    # -- bookkeeping used by the forward ---------------------------------------------------------------------
    def begin(self, cache: Cache, state: LazyState) -> None:
        """A pruned prefill starts on `cache`."""
        self.states[cache] = state
        self.stats = state.stats
        self.last_state = state

    def note_unpruned(self, reason: str, base: nn.Module, call: dict[str, Any]) -> None:
        """An unpruned call: a prefill starts a fresh record, a decoding step is counted in the current one."""
        cache = call["cache"]
        if cache is not None and cache.get_seq_length() > 0 and not self.stats.pruned:
            self.stats.decode_steps += 1
            self.stats.decode_token_layers += len(prompt_lengths(call)) * len(base.layers)
            return
        lengths = prompt_lengths(call)
        self.stats = LazyStats(
            pruned=False,
            fallback_reason=reason,
            schedule=self.config.describe(),
            num_layers=len(base.layers),
            prompt_tokens=lengths,
            kept_per_layer=[sum(lengths)] * len(base.layers),
        )
        self.last_state = None

    def finish_generate(self) -> None:
        if self.last_state is not None:
            self.stats.recomputed_token_layers = self.last_state.recomputed_token_layers()
        self.last_state = None


def _forward_attribute(module: nn.Module) -> str:
    """The attribute to replace: accelerate's hooks call `_old_forward` from their own `forward` wrapper."""
    return "_old_forward" if hasattr(module, "_hf_hook") and hasattr(module, "_old_forward") else "forward"


def check_generate_options(model: nn.Module, kwargs: dict[str, Any]) -> None:
    """Raise `UnsupportedGenerationError` for generation modes that would misuse a pruned cache."""
    config = kwargs.get("generation_config") or model.generation_config

    def option(name: str) -> Any:
        return kwargs.get(name, getattr(config, name, None))

    problems = []
    if (option("num_beams") or 1) > 1:
        problems.append("beam search (num_beams > 1) reorders the cache; use greedy or sampling")
    if option("assistant_model") is not None or option("prompt_lookup_num_tokens") is not None:
        problems.append("assisted / prompt-lookup decoding verifies several tokens per step")
    if option("prefill_chunk_size") is not None:
        problems.append("prefill_chunk_size splits the prompt, but pruning needs the whole prompt at once")
    if option("cache_implementation") not in (None, "dynamic"):
        problems.append(f"cache_implementation={option('cache_implementation')!r}: only the default dynamic cache")
    if problems:
        raise UnsupportedGenerationError(
            "lazyllm cannot serve this generate() call: "
            + "; ".join(problems)
            + ". Or run it with lazyllm.unpatch(model)."
        )
    check_cache(kwargs.get("cache", kwargs.get("past_key_values")), model.config)
    check_attention_backend(model)


def patch(model: nn.Module, config: LazyConfig | None = None) -> nn.Module:
    """Make `model.generate()` (and forward calls that need only the last token's logits) prune the prompt.

    Args:
        model: a loaded causal LM of a supported family (see `lazyllm.families.FAMILIES`).
        config: the schedule; None means the `"default"` preset placed on the model's depth.
            Patching a patched model only changes its schedule.

    Returns:
        The same model, patched in place.
    """
    adapter = adapter_for(model)
    num_layers = model.config.num_hidden_layers
    if config is None:
        config = LazyConfig.preset("default", num_layers)
    if not isinstance(config, LazyConfig):
        raise ConfigError(f"config must be a lazyllm.LazyConfig, got {type(config).__name__}.")
    config.check_depth(num_layers)
    runtime: LazyRuntime | None = getattr(model, "_lazyllm", None)
    if runtime is not None:
        runtime.reconfigure(model, config)
        return model
    runtime = LazyRuntime(adapter, config)
    runtime.install(model)
    model._lazyllm = runtime
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Restore the model's original behaviour exactly (a model that is not patched is returned unchanged)."""
    runtime: LazyRuntime | None = model.__dict__.pop("_lazyllm", None)
    if runtime is not None:
        runtime.uninstall()
    return model


def is_patched(model: nn.Module) -> bool:
    return getattr(model, "_lazyllm", None) is not None


@contextmanager
def patched(model: nn.Module, config: LazyConfig | None = None) -> Iterator[nn.Module]:
    """Patch `model` for the `with` block; afterwards it is as before (unpatched, or patched with its old schedule)."""
    previous = model._lazyllm.config if is_patched(model) else None
    patch(model, config)
    try:
        yield model
    finally:
        if previous is None:
            unpatch(model)
        else:
            patch(model, previous)


def stats(model: nn.Module) -> LazyStats:
    """Figures of the model's last `generate()` (or last prefill and the decoding steps after it)."""
    if not is_patched(model):
        raise ValueError("this model is not patched: call lazyllm.patch(model) first.")
    return model._lazyllm.stats
