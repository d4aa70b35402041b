"""The machine a run measures on: CPU, cores, load, versions, and the torch thread count that runs fastest there."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import lazyllm


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def load_warning() -> str | None:
    """A note for the report when the 1-minute load exceeds the cores by 25%, else None."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load <= (os.cpu_count() or 1) * 1.25:
        return None
    return (
        f"the machine was busy when the run started (1-min load {load:.1f} on {os.cpu_count()} cores): absolute "
        "times are inflated and noisy; ratios of interleaved runs are the robust figures."
    )


def machine_info(device: str) -> dict[str, Any]:
    """Date, CPU, cores, threads, platform and versions (python, torch, transformers, lazyllm), GPU name on CUDA."""
    import transformers

    info = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lazyllm": lazyllm.__version__,
        "device": device,
        "load_before": load_average(),
        "load_warning": load_warning(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def pick_threads(candidates: Sequence[int], trials: int = 3) -> tuple[int, dict[str, float]]:
    """The thread count that runs a small prefill-like workload (matmuls and elementwise ops) fastest, and the
    median seconds of each candidate. On a busy machine OpenMP with several threads can be many times slower."""
    a = torch.randn(256, 576)
    w = torch.randn(576, 1536)
    timings: dict[str, float] = {}
    previous = torch.get_num_threads()
    try:
        for threads in dict.fromkeys(candidates):
            torch.set_num_threads(threads)
            runs = []
            for _ in range(trials):
                start = time.perf_counter()
                with torch.inference_mode():
                    for _ in range(10):
                        h = a @ w
                        h = torch.nn.functional.silu(h) * h
                        (h * h).mean(-1)
                runs.append(time.perf_counter() - start)
            timings[str(threads)] = statistics.median(runs)
    finally:
        torch.set_num_threads(previous)
    best = min(timings, key=lambda k: timings[k])
    return int(best), timings
