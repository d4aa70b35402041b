"""Timing and memory helpers of the benchmark rig (`lazybench.speed`, `lazybench.accuracy`); the library's
`lazyllm.timing` (synchronize, interleaved) is re-exported here.

Definitions used throughout the reports:

- **TTFT** is the wall time from calling `model.generate(...)` until the logits of the first new token exist: a
  `LogitsProcessor` stamps the clock the first time `generate()` calls it, which is right after the prefill forward
  (`generate()` calls the model with `logits_to_keep=1, use_cache=True`). So TTFT is exactly what
  `generate(max_new_tokens=1)` costs, without the final argmax, and it includes `generate()`'s own set-up.
- **Decode ms/token** comes from the same call: `generate(max_new_tokens=N, min_new_tokens=N)` runs N - 1 decoding
  steps after the first token, so `(total - TTFT) / (N - 1)`.
- **Peak memory of prefill**: on CUDA, `torch.cuda.max_memory_allocated()` minus the memory allocated before the
  call. On CPU there is no allocator counter (and `tracemalloc` does not see torch's allocations): a thread samples
  the process RSS (psutil) every millisecond during the call and the report gives the peak RSS delta, which also
  counts allocator caching and is a coarse figure (glibc's free heap is handed back with `malloc_trim(0)` first, so
  that an earlier, larger call does not hide the peak). Next to it, the analytic KV-cache size (kept tokens x layers x
  2 x KV heads x head dim x bytes) is exact.
- **Attention share `a`** of a prefill: the time spent inside `scaled_dot_product_attention` (inclusive) over the
  wall time of the same prefill, measured with `torch.profiler` on the unpruned model. With `n_l` tokens computed in
  layer `l` of `L` and a prompt of `N` tokens, the work left is at best
  `(1 - a) * sum(n_l) / (L * N) + a * sum(n_l^2) / (L * N^2)` of the baseline: the *compute bound* printed next to
  the measured time ratio.

On CUDA every timed region is bracketed by `torch.cuda.synchronize()`.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from lazyllm.generation import greedy
from lazyllm.timing import interleaved, synchronize

__all__ = [
    "GenerationTiming",
    "StepClock",
    "attention_share",
    "compute_bound",
    "interleaved",
    "kv_cache_bytes",
    "peak_memory",
    "ratio_summary",
    "summarize",
    "synchronize",
    "timed_generate",
]

SDPA_OPS = ("aten::scaled_dot_product_attention",)


# ----------------------------------------------------------------------------------------------------------------
# Summaries
# ----------------------------------------------------------------------------------------------------------------
def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median and spread (min, max, quartiles) of repeated measurements."""
    data = sorted(float(v) for v in values)
    if not data:
        return {
            "n": 0,
            "median": float("nan"),
            "min": float("nan"),
            "max": float("nan"),
            "q1": float("nan"),
            "q3": float("nan"),
        }
    if len(data) >= 2:
        q1, _, q3 = statistics.quantiles(data, n=4, method="inclusive")
    else:
        q1 = q3 = data[0]
    return {"n": len(data), "median": statistics.median(data), "min": data[0], "max": data[-1], "q1": q1, "q3": q3}


def ratio_summary(numerators: Sequence[float], denominators: Sequence[float]) -> dict[str, float]:
    """Summary of per-round ratios `numerators[i] / denominators[i]` (paired, interleaved rounds)."""
    return summarize([n / d for n, d in zip(numerators, denominators) if d > 0])


# ----------------------------------------------------------------------------------------------------------------
# TTFT and decode speed from one generate() call
# ----------------------------------------------------------------------------------------------------------------
class StepClock(LogitsProcessor):
    """Stamps the clock each time generate() asks for the next token's scores: first right after the prefill, then
    after each decoding step."""

    def __init__(self, device: str | torch.device) -> None:
        self.device = device
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        synchronize(self.device)
        self.stamps.append(time.perf_counter())
        return scores


@dataclass
class GenerationTiming:
    ttft_s: float  # generate() call until the first token's logits
    total_s: float  # the whole generate() call
    new_tokens: int
    output: Any  # what generate() returned
    step_ms: list[float]  # wall time of each decoding step after the first token, in order

    @property
    def decode_ms_per_token(self) -> float:
        """Mean wall time of one decoding step after the first token (nan with a single new token)."""
        steps = self.new_tokens - 1
        return 1000.0 * (self.total_s - self.ttft_s) / steps if steps > 0 else float("nan")


def timed_generate(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    max_new_tokens: int,
    device: str | torch.device,
    force_length: bool = False,
    **generate_kwargs: Any,
) -> GenerationTiming:
    """Greedy `generate()` with TTFT and total wall time.

    Args:
        force_length: also pass `min_new_tokens=max_new_tokens`, so that every call decodes the same number of
            steps (for decode ms/token); otherwise generation stops at end-of-sequence as usual.
    """
    clock = StepClock(device)
    processors = LogitsProcessorList([clock, *generate_kwargs.pop("logits_processor", [])])
    if force_length:
        generate_kwargs["min_new_tokens"] = max_new_tokens
    synchronize(device)
    start = time.perf_counter()
    output = greedy(
        model,
        inputs["input_ids"],
        inputs.get("attention_mask"),
        max_new_tokens,
        logits_processor=processors,
        **generate_kwargs,
    )
    synchronize(device)
    end = time.perf_counter()
    sequences = output.sequences if hasattr(output, "sequences") else output
    new_tokens = int(sequences.shape[1] - inputs["input_ids"].shape[1])
    first = clock.stamps[0] if clock.stamps else end
    steps = [1000.0 * (b - a) for a, b in zip(clock.stamps, clock.stamps[1:])]
    return GenerationTiming(first - start, end - start, new_tokens, output, steps)


# ----------------------------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class PeakMemory:
    """Peak memory of a region: bytes above what was in use when it started."""

    method: str  # "cuda_max_memory_allocated" or "cpu_rss_sampled"
    peak_delta_bytes: int = 0


@contextmanager
def peak_memory(device: str | torch.device, interval_s: float = 0.001) -> Iterator[PeakMemory]:
    """Measure the peak memory of the `with` block (see the module docstring for what each device reports)."""
    device = torch.device(device)
    if device.type == "cuda":
        result = PeakMemory("cuda_max_memory_allocated")
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            yield result
        finally:
            synchronize(device)
            result.peak_delta_bytes = int(torch.cuda.max_memory_allocated(device) - before)
        return

    import psutil

    release_free_heap()
    process = psutil.Process()
    result = PeakMemory("cpu_rss_sampled")
    before = process.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss = process.memory_info().rss
            if rss > peak[0]:
                peak[0] = rss
            done.wait(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        done.set()
        thread.join()
        peak[0] = max(peak[0], process.memory_info().rss)
        result.peak_delta_bytes = int(peak[0] - before)


def release_free_heap() -> bool:
    """Return freed heap memory to the OS (glibc `malloc_trim(0)`), so that an RSS delta sees a region's own peak.

    Without it, memory freed by an earlier, larger call stays in the process and later calls reuse it without
    raising RSS. Returns False where glibc is not there (the delta is then a lower bound).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False


def kv_cache_bytes(model_config: Any, kept_per_layer: Sequence[int], dtype: torch.dtype) -> int:
    """Analytic size of the KV cache that holds `kept_per_layer[l]` tokens in layer `l` (keys and values)."""
    heads = model_config.num_attention_heads
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // heads
    element = torch.empty((), dtype=dtype).element_size()
    return int(sum(kept_per_layer) * 2 * kv_heads * head_dim * element)


# ----------------------------------------------------------------------------------------------------------------
# Attention share and the compute bound
# ----------------------------------------------------------------------------------------------------------------
def attention_share(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], device: str | torch.device
) -> dict[str, float]:
    """Share of an (unpruned) prefill's wall time spent in SDPA, measured with `torch.profiler`.

    Returns `{"share", "attention_s", "wall_s"}`. The model must run SDPA attention (eager attention has no single
    op to attribute; the share is then reported as nan).
    """
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        with torch.inference_mode():
            model(**inputs, logits_to_keep=1, use_cache=True)
        synchronize(device)
        wall = time.perf_counter() - start
    attention_us = 0.0
    for event in prof.key_averages():
        if event.key in SDPA_OPS:
            if device.type == "cuda":
                attention_us += float(getattr(event, "device_time_total", getattr(event, "cuda_time_total", 0.0)))
            else:
                attention_us += float(event.cpu_time_total)
    attention_s = attention_us / 1e6
    share = min(attention_s / wall, 1.0) if wall > 0 and attention_s > 0 else float("nan")
    return {"share": share, "attention_s": attention_s, "wall_s": wall}


def compute_bound(kept_per_layer: Sequence[int], prompt_tokens: int, share: float) -> float:
    """Best-case prefill time ratio `(1-a) * sum(n_l)/(L*N) + a * sum(n_l^2)/(L*N^2)` for attention share `a`."""
    layers = len(kept_per_layer)
    if not layers or prompt_tokens <= 0:
        return float("nan")
    linear = sum(kept_per_layer) / (layers * prompt_tokens)
    quadratic = sum(n * n for n in kept_per_layer) / (layers * prompt_tokens**2)
    if share != share:  # nan: report the linear part alone
        return linear
    return (1.0 - share) * linear + share * quadratic
