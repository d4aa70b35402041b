"""`patch` / `unpatch`: install LazyLLM on a loaded model and take it off again, symmetrically.

`patch(model)` sets three attributes of the model's instances (never a class, never a weight) and adds hooks:
- the base model's `forward` (e.g. `model.model.forward`; `_old_forward` under accelerate's hooks) becomes
  `lazyllm.forward.lazy_forward`, which routes each call on `lazyllm.calls.decide`;
- the model's `generate` runs unpruned (with a warning), or refuses under `strict` before any work, the options a
  pruned cache cannot serve, and closes the stats;
- the model's `_lazyllm` holds its `LazyRuntime` (read through `runtime_of`): the schedule of the next prefills, the
  last stats;
- a forward pre-hook on the causal LM tells the base model's forward whether the caller needs the last position's
  logits only (otherwise pruning steps aside);
- a forward hook on the query module of every decoder layer keeps, for a pruned pass that scores a cut with that
  layer, the last `score_window` tokens' queries: the pass's own config says which layers and how many tokens, so
  a cache decodes with the config its prefill ran with, whatever the model was patched with since.
Patching a patched model changes only the schedule of the next prefills.
`unpatch(model)` restores each attribute as it was and removes the hooks.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, cast

import torch
from torch import nn
from transformers import PreTrainedModel

from lazyllm.cache import PrunedCache, recomputed_token_layers
from lazyllm.calls import LAST_TOKEN_ONLY, check_generate_options, generate_problems, running_unpruned
from lazyllm.compat import renamed_generate_kwargs
from lazyllm.config import PRESETS, ConfigError, LazyConfig, default_preset
from lazyllm.errors import NotPatchedError, warn_at_caller
from lazyllm.families import FamilyAdapter, adapter_for, attention_windows, base_model, model_config
from lazyllm.forward import lazy_forward
from lazyllm.pruned_pass import query_hook
from lazyllm.state import Slots
from lazyllm.stats import LazyStats

_MISSING = object()
_ATTRIBUTE = "_lazyllm"  # the model instance's attribute that holds its LazyRuntime (`runtime_of`)


class LazyRuntime:
    """What a patched model carries: its family, schedule and windows, the patches installed, the last stats.

    It holds no per-call state: each call's state lives in its cache (`lazyllm.state`), and the queries a pass
    scores with in that pass (`lazyllm.pruned_pass`), so threads generating on one model do not meet.
    """

    def __init__(self, adapter: FamilyAdapter, config: LazyConfig, source: str) -> None:
        self.adapter = adapter
        self.config = config
        self.schedule_source = source  # why the model has this schedule (`LazyStats.schedule_source`)
        self.windows: list[int | None] = []  # per decoder layer: its sliding window, None for full attention
        self.stats = LazyStats()
        self._tables: list[Slots] = []  # positions of the last pruned cache's layers, for generate's self-check
        self._warned: set[str] = set()  # fallback reasons already warned about
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._replaced: list[tuple[object, str, object]] = []  # (owner, attribute, previous instance value)

    # -- install / uninstall -------------------------------------------------------------------------------
    def install(self, model: nn.Module) -> None:
        base = base_model(model)
        self.windows = attention_windows(model_config(model))
        original_base = self._forward_of(base)
        self._replace(base, _forward_attribute(base), functools.partial(lazy_forward, self, base, original_base))
        self._replace(model, "generate", self._generate(model, cast(Callable[..., Any], model.generate)))
        self._install_hooks(model)

    def uninstall(self) -> None:
        self._remove_hooks()
        for owner, attribute, previous in reversed(self._replaced):
            if previous is _MISSING:
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, previous)
        self._replaced.clear()

    def reconfigure(self, config: LazyConfig, source: str) -> None:
        """The schedule of the next prefills (a pruned cache decodes with its own, `LazyState.config`), and why."""
        self.config, self.schedule_source = config, source

    def _install_hooks(self, model: nn.Module) -> None:
        """The causal LM's pre-hook (`last_token_only_hook`), and a hook on the query module of every decoder layer
        (`query_hook`): the queries a cut scores with, kept where the running pass's config asks for them."""
        self._hooks.append(model.register_forward_pre_hook(last_token_only_hook(model), with_kwargs=True))
        base = base_model(model)
        for layer, decoder_layer in enumerate(base.layers[: base.config.num_hidden_layers]):
            module = self.adapter.query_module(decoder_layer)
            self._hooks.append(module.register_forward_hook(query_hook(self.adapter, layer)))

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def _replace(self, owner: object, attribute: str, value: object) -> None:
        self._replaced.append((owner, attribute, owner.__dict__.get(attribute, _MISSING)))
        setattr(owner, attribute, value)

    @staticmethod
    def _forward_of(module: object) -> Callable[..., Any]:
        forward: Callable[..., Any] = getattr(module, _forward_attribute(module))
        return forward

    def _generate(self, model: nn.Module, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def generate(*args: Any, **kwargs: Any) -> Any:
            kwargs = renamed_generate_kwargs(kwargs)
            problems = generate_problems(model, kwargs)
            if self.config.strict:
                check_generate_options(model, kwargs, problems)
            for problem in problems:
                self.warn_once(problem)
            try:
                with running_unpruned("; ".join(problems)) if problems else nullcontext():
                    return original(*args, **kwargs)
            finally:
                self.finish_generate()

        return generate

    def warn_once(self, reason: str) -> None:
        """Warn that a call runs unpruned for `reason`, the first time only."""
        if reason not in self._warned:
            self._warned.add(reason)
            warn_at_caller(
                f"lazyllm: this call runs unpruned: {reason}. lazyllm.stats(model).fallback_reason says so after "
                "each call; LazyConfig(strict=True) raises instead."
            )

    # -- what the forward reports (`lazyllm.forward.Host`) ---------------------------------------------------
    def record(self, stats: LazyStats, pruned: PrunedCache | None) -> None:
        """The figures of a call: a pruned prefill or decoding step on the cache `pruned` (a copy of a pruned cache
        follows its own figures), or an unpruned prefill (None). `lazyllm.stats(model)` returns them, and
        `generate()`'s self-check reads that cache's positions."""
        self.stats = stats
        self._tables = [layer.slots for layer in pruned.layers] if pruned is not None else []

    def record_unpruned_step(self, rows: int, layers: int) -> None:
        """A decoding step of the unpruned forward, counted in the record of its unpruned prefill."""
        if not self.stats.pruned:
            self.stats.decode_steps += 1
            self.stats.decode_token_layers += rows * layers

    def finish_generate(self) -> None:
        if self._tables:
            self.stats.recomputed_token_layers = recomputed_token_layers(self._tables)
        self._tables = []


def last_token_only_hook(model: nn.Module) -> Callable[..., tuple[tuple[object, ...], dict[str, Any]] | None]:
    """A forward pre-hook of the causal LM that tells the base model's forward (keyword `LAST_TOKEN_ONLY`) whether
    the caller needs the last position's logits only: no `labels`, `logits_to_keep == 1` (what `generate()` asks)."""
    signature = inspect.signature(model.forward)

    def hook(
        module: nn.Module, args: tuple[object, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[object, ...], dict[str, Any]] | None:
        if torch.compiler.is_compiling():  # a traced call runs unpruned (`calls.COMPILED`)
            return None
        arguments = signature.bind_partial(*args, **kwargs).arguments
        keep = arguments.get("logits_to_keep", 0)
        last_only = arguments.get("labels") is None and isinstance(keep, int) and keep == 1
        return args, {**kwargs, LAST_TOKEN_ONLY: last_only}

    return hook


def _forward_attribute(module: object) -> str:
    """The attribute to replace: accelerate's hooks call `_old_forward` from their own `forward` wrapper."""
    return "_old_forward" if hasattr(module, "_hf_hook") and hasattr(module, "_old_forward") else "forward"


def patch(model: nn.Module, config: LazyConfig | str | None = None) -> nn.Module:
    """Make `model.generate()` (and forward calls that need only the last token's logits) prune the prompt.

    Args:
        model: a loaded causal LM of a supported family (see `lazyllm.families.FAMILIES`).
        config: the schedule: a `LazyConfig`, or a preset's name (`"default"`, `"balanced"`, `"aggressive"`:
            `lazyllm.PRESETS`; `"off"` prunes nothing) placed on the model's depth with the token score it carries,
            as `LazyConfig.preset(name, num_layers)`. None: the preset `lazyllm.config.default_preset` names for
            the model's parameter count (`lazyllm.stats(model).schedule_source` says which, and why).
            Patching a patched model only changes its schedule.

    Returns:
        The same model, patched in place.

    Raises:
        ConfigError: an unknown preset name (the message lists them), or a schedule deeper than the model.
        UnsupportedModelError: the model's family or attention backend is not supported.
    """
    adapter = adapter_for(model)
    num_layers: int = model_config(model).num_hidden_layers
    config, source = placed(model, config, num_layers)
    config.check_depth(num_layers)
    runtime = runtime_of(model)
    if runtime is not None:
        runtime.reconfigure(config, source)
        return model
    runtime = LazyRuntime(adapter, config, source)
    runtime.install(model)
    setattr(model, _ATTRIBUTE, runtime)
    return model


def placed(model: nn.Module, config: LazyConfig | str | None, num_layers: int) -> tuple[LazyConfig, str]:
    """The `LazyConfig` that `patch(model, config)` installs on a model of `num_layers` layers, and why (what
    `LazyStats.schedule_source` says)."""
    if config is None:
        # Transformers' count: shared weights once, a 4-bit bitsandbytes weight at its unpacked size. Every model
        # `adapter_for` admits is a PreTrainedModel.
        name, why = default_preset(cast(PreTrainedModel, model).num_parameters())
        return LazyConfig.preset(name, num_layers), f"preset {name!r}, {why}"
    if isinstance(config, str):
        return LazyConfig.preset(config, num_layers), f"preset {config!r}, asked for by name"
    if not isinstance(config, LazyConfig):
        raise ConfigError(
            f"config must be a lazyllm.LazyConfig or a preset's name ({', '.join(PRESETS)}), got {type(config).__name__}."
        )
    return config, "a LazyConfig given to lazyllm.patch"


def patch_with_source(model: nn.Module, config: LazyConfig, source: str) -> None:
    """`patch(model, config)`, with `source` as the reason `lazyllm.stats` gives for the schedule (a config built from
    a preset plus overrides, or one restored, is still that preset's)."""
    patch(model, config)
    runtime = runtime_of(model)
    assert runtime is not None
    runtime.reconfigure(config, source)


def unpatch(model: nn.Module) -> nn.Module:
    """Restore the model's original behaviour exactly (a model that is not patched is returned unchanged)."""
    runtime = runtime_of(model)
    if runtime is not None:
        delattr(model, _ATTRIBUTE)
        runtime.uninstall()
    return model


def runtime_of(model: nn.Module) -> LazyRuntime | None:
    """What a patched model carries (its schedule, hooks and last stats), None for a model that is not patched."""
    runtime = model.__dict__.get(_ATTRIBUTE)
    return runtime if isinstance(runtime, LazyRuntime) else None


def is_patched(model: nn.Module) -> bool:
    return runtime_of(model) is not None


@contextmanager
def patched(model: nn.Module, config: LazyConfig | str | None = None) -> Iterator[nn.Module]:
    """Patch `model` with `config` (as `patch` takes it: a `LazyConfig`, a preset's name or None) for the `with`
    block; afterwards it is as before (unpatched, or patched with its old schedule)."""
    runtime = runtime_of(model)
    previous = (runtime.config, runtime.schedule_source) if runtime is not None else None
    patch(model, config)
    try:
        yield model
    finally:
        if previous is None:
            unpatch(model)
        else:
            patch_with_source(model, *previous)


def stats(model: nn.Module) -> LazyStats:
    """Figures of the model's last `generate()` (or last prefill and the decoding steps after it); `NotPatchedError` for
    a model that is not patched."""
    runtime = runtime_of(model)
    if runtime is None:
        raise NotPatchedError("this model is not patched: call lazyllm.patch(model) first.")
    return runtime.stats
