"""Timing a prefill fairly: the wall time of one prefill, and rounds of several contenders interleaved.

Used by `calibrate` (the chosen schedule's TTFT ratio), `lazyllm demo` and the benchmark rig. On CUDA every timed
region is bracketed by `torch.cuda.synchronize()`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

T = TypeVar("T")


def synchronize(device: str | torch.device) -> None:
    """Wait for queued kernels on CUDA; a no-op on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed_prefill(model: nn.Module, inputs: dict[str, torch.Tensor], device: str | torch.device) -> float:
    """Wall time of `model(**inputs, logits_to_keep=1, use_cache=True)` under inference mode: the prefill as
    `generate()` runs it, so its time is the time to the first token's logits."""
    synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        model(**inputs, logits_to_keep=1, use_cache=True)
    synchronize(device)
    return time.perf_counter() - start


def interleaved(
    runs: dict[str, Callable[[], T]],
    repeats: int,
    warmup: int = 1,
    progress: Callable[[str, int], object] | None = None,
) -> dict[str, list[T]]:
    """Call every function of `runs` in turn (A, B, C, A, B, C, ...) `warmup + repeats` times.

    Interleaving spreads slow drifts of the machine (thermal, other processes) over every contender alike instead
    of charging them to whichever ran last. Warm-up rounds are run and dropped. Returns name -> the measured
    results, in round order.
    """
    measured: dict[str, list[T]] = {name: [] for name in runs}
    for round_index in range(warmup + repeats):
        for name, run in runs.items():
            value = run()
            if round_index >= warmup:
                measured[name].append(value)
            if progress is not None:
                progress(name, round_index)
    return measured
