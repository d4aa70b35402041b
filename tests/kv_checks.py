"""Checks of the KV cache itself, not of lazyllm's own counters: what a pruned call really left in each layer.

`recording(model)` keeps every (cache, state) pair a pruned prefill starts, whatever API made the call
(`generate()`, a pipeline, a manual loop); `check_kv` then asserts, per layer and row:
- the layer holds one KV entry per recorded position (`keys.shape[2]`), and no token twice;
- layer 0 holds every token seen so far;
- a layer inside a segment holds the same tokens as the layer before it; at a cut, the tokens of the layer before
  are exactly those the cut's layer holds plus those parked in its Aux Cache (with revival), or a superset of
  those the cut's layer holds (without revival): no token is lost, none appears from nowhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers.cache_utils import Cache

import lazyllm
from lazyllm.cache import PrunedCache, pruned
from lazyllm.patching import runtime_of
from lazyllm.stats import LazyStats


class Held:
    """What a pruned cache holds, read from its layers: positions per layer, Aux Cache per cut, the rows' state."""

    def __init__(self, cache: Cache) -> None:
        found = pruned(cache)
        assert found is not None, "not a pruned cache"
        self.cache, self.state, self.aux = cache, found.state, found.aux
        self.layers = found.layers

    @property
    def positions(self) -> list[torch.Tensor | None]:
        return [layer.slots.positions for layer in self.layers]


def held(cache: Cache) -> Held | None:
    """`Held` of a pruned cache, None for another cache."""
    return Held(cache) if pruned(cache) is not None else None


@contextmanager
def recording(model: nn.Module) -> Iterator[list[tuple[Cache, Held]]]:
    """Collect the (cache, what it holds) of every pruned cache that a call inside the block ran on (a prefill's, or
    a copy's); they stay alive while listed."""
    runtime = runtime_of(model)
    seen: list[tuple[Cache, Held]] = []
    record = runtime.record

    def spy(stats: LazyStats, found: PrunedCache | None) -> None:
        record(stats, found)
        if found is not None and all(found.cache is not known for known, _ in seen):
            seen.append((found.cache, Held(found.cache)))

    runtime.record = spy
    try:
        yield seen
    finally:
        del runtime.record  # the class's method again


def real(positions: torch.Tensor) -> set[int]:
    """The positions of one row, without empty slots (-1)."""
    return set(positions[positions >= 0].tolist())


def check_kv(cache: Cache, state: Held) -> list[int]:
    """Assert that `cache` holds what `state` says, with no token lost or computed twice; return the real
    (non-empty) entries of each layer, summed over rows."""
    config = state.state.config  # the cache's own schedule
    cuts = {layer: cut for cut, layer in enumerate(config.prune_layers)}
    counts = []
    for layer, positions in enumerate(state.positions):
        assert positions is not None, f"layer {layer} never ran"
        assert cache.layers[layer].keys.shape[2] == positions.shape[1], f"layer {layer}: KV entries != positions"
        for row in range(positions.shape[0]):
            held = positions[row][positions[row] >= 0]
            assert held.unique().numel() == held.numel(), f"layer {layer}, row {row}: a token computed twice"
            if layer == 0:
                assert real(held) == set(range(int(held.max()) + 1)), f"row {row}: layer 0 misses a token"
                continue
            before, here = real(state.positions[layer - 1][row]), real(held)
            if layer not in cuts:
                assert here == before, f"layer {layer}, row {row}: a segment's layers hold different tokens"
            elif config.revive:
                aux = state.aux[cuts[layer]].positions
                parked = real(aux[row]) if aux is not None else set()
                assert here | parked == before and not here & parked, f"cut at {layer}, row {row}: tokens lost"
            else:
                assert here <= before, f"cut at {layer}, row {row}: a token appears from nowhere"
        counts.append(int((positions >= 0).sum()))
    return counts


def pruned_stats(model: nn.Module) -> LazyStats:
    """The stats of the call just made, asserting that it ran the pruned path."""
    stats = lazyllm.stats(model)
    assert stats.pruned and stats.fallback_reason is None, stats.fallback_reason
    return stats


def checked_generate(model: nn.Module, *args: object, **kwargs: object) -> tuple[torch.Tensor, LazyStats, list[int]]:
    """`model.generate(...)` on a patched model, checked at the cache: returns (output, stats, entries per layer).

    Beyond `check_kv`, the counters must match the cache: every token-layer computed appended one KV entry."""
    with recording(model) as seen:
        output = model.generate(*args, **kwargs)
    stats = pruned_stats(model)
    assert len(seen) == 1, "one pruned prefill per generate()"
    counts = check_kv(*seen[0])
    assert sum(counts) == stats.total_token_layers
    assert stats.recomputed_token_layers == 0
    return output, stats, counts


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference, relative to the largest magnitude of `expected`."""
    return ((got.float() - expected.float()).abs().max() / expected.float().abs().max()).item()


def assert_keep_all_reproduces(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> None:
    """With the default preset's cuts at keep 1.0, through the pruned path: every logit of the prefill and of the
    greedy decoding steps (`new_tokens` in all), and the tokens, equal to the unpatched model's, bit for bit."""
    layers = lazyllm.LazyConfig.preset("default", model.config.num_hidden_layers).prune_layers
    keep_all = lazyllm.LazyConfig(prune_layers=layers, keep_ratios=(1.0,) * len(layers), min_prompt_tokens=0)
    options = dict(max_new_tokens=new_tokens, do_sample=False, return_dict_in_generate=True, output_logits=True)
    with torch.inference_mode():
        base = model.generate(ids, **options)
        with lazyllm.patched(model, keep_all):
            out = model.generate(ids, **options)
            assert lazyllm.stats(model).pruned
    for step, (mine, theirs) in enumerate(zip(out.logits, base.logits)):  # step 0: the prefill's next token
        assert torch.equal(mine, theirs), f"step {step}: {(mine - theirs).abs().max().item()}"
    assert torch.equal(out.sequences, base.sequences)
