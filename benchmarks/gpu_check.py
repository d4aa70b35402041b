"""One GPU check in at most 8 minutes: CUDA tests, TTFT and whole generations of 7B-class shapes, peak memory.

    python benchmarks/gpu_check.py --out benchmarks/results/gpu     # on one CUDA GPU (or set $OUT instead of --out)
    python benchmarks/gpu_check.py --smoke --out /tmp/gpu-smoke      # the same code path on CPU, tiny shapes, < 1 min

What it does, in order, within `--budget-s` seconds (default 420; the CUDA tests count too):

1. `python -m pytest -q tests/test_cuda.py` as a subprocess: its pass / fail counts (not run with --smoke);
2. for each shape (random weights of Llama-2-7B, Llama-3-8B and Qwen2.5-7B; bf16, sdpa; built directly on the GPU,
   one model at a time, freed after): TTFT = the wall time of `model(ids, use_cache=True, logits_to_keep=1)` under
   inference mode, bracketed by `torch.cuda.synchronize`, of baseline (unpatched) / default / balanced / aggressive
   (`LazyConfig.preset(name, layers, min_prompt_tokens=0)`, applied with `lazyllm.patched`), interleaved (baseline,
   default, balanced, aggressive, baseline, ...) for `--rounds` rounds after one warm-up round, at 4k, 8k, 16k and 32k
   tokens; and a whole greedy generation of 4k + 128 tokens (`min_new_tokens=128`), baseline vs default, then the
   two other presets if time allows;
3. peak memory (`torch.cuda.max_memory_allocated`, reset before every measurement).

Each shape gets an equal share of the time left when it starts; its cells run in the order 4k TTFT, generation
(baseline, default), 8k, 16k, 32k TTFT, generation (presets), and a cell whose projected time passes the share is
skipped (so the largest lengths go first) and recorded as skipped; so is a cell that runs out of GPU memory.

Results as data first: one JSON line per measurement appended to `<out>/gpu-check.jsonl` as it goes (a timeout still
leaves data), then `<out>/gpu-check.md` rendered from the records alone (`lazybench.gpu_report.render`).
Exit status: 0, or 1 when CUDA tests failed, or 2 without a CUDA GPU (and without --smoke).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PretrainedConfig, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM

import lazyllm
from lazybench.gpu_report import render
from lazybench.machine import machine_info
from lazyllm.generation import greedy
from lazyllm.timing import interleaved, synchronize

REPO = Path(__file__).resolve().parents[1]
SCHEDULES = ("baseline", "default", "balanced", "aggressive")
NEEDS_GPU = (
    "gpu_check needs a CUDA GPU (torch.cuda.is_available() is False here). Run it on a machine with one, "
    "or pass --smoke for the CPU dry run on tiny shapes."
)
# name: (family, layers, hidden, heads, KV heads, intermediate, vocab, rope_theta)
SHAPES: dict[str, tuple[str, int, int, int, int, int, int, float]] = {
    "llama2-7b": ("llama", 32, 4096, 32, 32, 11008, 32000, 10000.0),
    "llama3-8b": ("llama", 32, 4096, 32, 8, 14336, 128256, 500000.0),
    "qwen2.5-7b": ("qwen2", 28, 3584, 28, 4, 18944, 152064, 1000000.0),
}
FAMILIES: dict[str, tuple[Callable[..., PretrainedConfig], Callable[..., PreTrainedModel]]] = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
}
# --smoke: every shape keeps its family and head grouping (its KV heads here) at a size a CPU runs in milliseconds.
TINY_KV_HEADS = {"llama2-7b": 4, "llama3-8b": 2, "qwen2.5-7b": 1}


@dataclass
class Settings:
    """What one run measures, and where."""

    device: str
    dtype: str
    shapes: list[str]
    lengths: list[int]  # TTFT prompt lengths, ascending
    gen_tokens: int  # prompt tokens of the whole generation
    new_tokens: int
    rounds: int
    budget_s: float
    run_tests: bool
    smoke: bool
    warmup: int = 1
    attn: str = "sdpa"


@dataclass
class Cell:
    """One interleaved measurement: `kind` ("ttft" or "generation") of `schedules` on a `tokens`-token prompt.
    `reference`: a schedule measured for the ratios but not recorded (the baseline of the presets' generation)."""

    kind: str
    tokens: int
    schedules: tuple[str, ...]
    reference: tuple[str, ...] = ()
    name: str = ""


class Log:
    """Appends records to `<out>/gpu-check.jsonl` (each tagged with kind, run id, machine and smoke) and re-renders
    `<out>/gpu-check.md` from all of this run's records after each one."""

    def __init__(self, out: Path, machine: dict[str, Any], smoke: bool) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.jsonl, self.md = out / "gpu-check.jsonl", out / "gpu-check.md"
        self.run = time.strftime("%Y%m%dT%H%M%S") + ("-smoke" if smoke else "-gpu")
        self.machine, self.smoke = machine, smoke
        self.records: list[dict[str, Any]] = []

    def emit(self, kind: str, record: dict[str, Any]) -> dict[str, Any]:
        full = {"kind": kind, "run": self.run, **record, "smoke": self.smoke, "machine": self.machine}
        with self.jsonl.open("a") as handle:
            handle.write(json.dumps(full, allow_nan=False, default=str) + "\n")
        self.records.append(full)
        self.md.write_text(render(self.records))
        return full


def build(name: str, settings: Settings) -> PreTrainedModel:
    """A random-weight model of the shape, built directly on the device in the run's dtype (no CPU copy)."""
    family, layers, hidden, heads, kv_heads, intermediate, vocab, rope_theta = SHAPES[name]
    if settings.smoke:
        layers, hidden, heads, kv_heads, intermediate, vocab = 4, 64, 4, TINY_KV_HEADS[name], 128, 512
    config_class, model_class = FAMILIES[family]
    config = config_class(
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        vocab_size=vocab,
        rope_theta=rope_theta,
        max_position_embeddings=max(*settings.lengths, settings.gen_tokens) + settings.new_tokens + 64,
        attn_implementation=settings.attn,
    )
    previous = torch.get_default_dtype()
    torch.manual_seed(0)
    try:
        torch.set_default_dtype(getattr(torch, settings.dtype))
        with torch.device(settings.device):
            model = model_class(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def free_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def measure(
    model: PreTrainedModel, cell: Cell, call: Callable[[], Any], settings: Settings
) -> dict[str, dict[str, Any]]:
    """Interleaved rounds of `call()` under each schedule of the cell (after `settings.warmup` warm-up rounds):
    per schedule the seconds of each measured round, the largest peak memory and `lazyllm.stats` figures."""
    layers, cuda = model.config.num_hidden_layers, settings.device.startswith("cuda")
    results: dict[str, dict[str, Any]] = {s: {"peaks": []} for s in cell.schedules}

    def runner(schedule: str) -> Callable[[], float]:
        config = None if schedule == "baseline" else lazyllm.LazyConfig.preset(schedule, layers, min_prompt_tokens=0)

        def run() -> float:
            if cuda:
                torch.cuda.reset_peak_memory_stats(settings.device)
            with lazyllm.patched(model, config) if config else contextlib.nullcontext():
                synchronize(settings.device)
                start = time.perf_counter()
                call()
                synchronize(settings.device)
                elapsed = time.perf_counter() - start
                stats = lazyllm.stats(model) if config else None
            results[schedule]["peaks"].append(torch.cuda.max_memory_allocated(settings.device) if cuda else None)
            results[schedule]["prefill_token_fraction"] = stats.prefill_token_fraction if stats else 1.0
            if cell.kind == "generation":
                results[schedule]["whole_generation_token_fraction"] = (
                    stats.whole_generation_token_fraction if stats else 1.0
                )
            return elapsed

        return run

    times = interleaved({s: runner(s) for s in cell.schedules}, settings.rounds, warmup=settings.warmup)
    for schedule, seconds in times.items():
        results[schedule]["seconds"] = seconds
    return results


def cell_records(model_name: str, cell: Cell, results: dict[str, dict[str, Any]], settings: Settings) -> list[dict]:
    """One record per schedule of the cell (not its reference ones): seconds per round, median, speedup and
    per-round ratios against the baseline, peak bytes, token fractions."""
    base = results["baseline"]["seconds"]
    records = []
    for schedule in cell.schedules:
        if schedule in cell.reference:
            continue
        r = results[schedule]
        peaks = [p for p in r["peaks"] if p is not None]
        record = dict(
            model=model_name,
            tokens=cell.tokens,
            schedule=schedule,
            cell=cell.name,
            seconds=r["seconds"],
            median_s=statistics.median(r["seconds"]),
            speedup=statistics.median(base) / statistics.median(r["seconds"]),
            ratios=[b / s for b, s in zip(base, r["seconds"])],
            peak_bytes=max(peaks) if peaks else None,
            prefill_token_fraction=r["prefill_token_fraction"],
            rounds=settings.rounds,
            warmup=settings.warmup,
        )
        if cell.kind == "generation":
            record.update(
                new_tokens=settings.new_tokens, whole_generation_token_fraction=r.get("whole_generation_token_fraction")
            )
        records.append(record)
    return records


def run_cell(model: PreTrainedModel, cell: Cell, settings: Settings) -> dict[str, dict[str, Any]]:
    """Measure one cell on a fresh random prompt of `cell.tokens` tokens."""
    torch.manual_seed(cell.tokens)
    ids = torch.randint(3, model.config.vocab_size, (1, cell.tokens), device=settings.device)

    def prefill() -> None:
        with torch.inference_mode():
            model(ids, use_cache=True, logits_to_keep=1)

    def generation() -> None:
        greedy(model, ids, max_new_tokens=settings.new_tokens, min_new_tokens=settings.new_tokens)

    return measure(model, cell, prefill if cell.kind == "ttft" else generation, settings)


def plan(settings: Settings) -> list[Cell]:
    """A shape's cells in order: the shortest TTFT, the generation (baseline, default), the longer TTFTs ascending,
    then the generation of the other presets (with the baseline again, for its ratios)."""
    ttft = [Cell("ttft", n, SCHEDULES, name=f"ttft {n}") for n in settings.lengths]
    core = Cell("generation", settings.gen_tokens, ("baseline", "default"), name="generation")
    presets = Cell("generation", settings.gen_tokens, ("baseline", *SCHEDULES[2:]), ("baseline",), "generation presets")
    return [ttft[0], core, *ttft[1:], presets]


def estimate(cell: Cell, done: list[tuple[Cell, float]]) -> float:
    """Projected seconds of a cell from the shape's cells measured so far (0 when nothing comparable ran): a TTFT
    cell scales the last one's wall time by (tokens ratio)^1.5, a generation cell the last generation's by the
    schedules ratio."""
    for previous, wall in reversed(done):
        if previous.kind == cell.kind == "ttft":
            return wall * (cell.tokens / previous.tokens) ** 1.5
        if previous.kind == cell.kind == "generation":
            return wall * len(cell.schedules) / len(previous.schedules)
    return 0.0


def check_shape(name: str, settings: Settings, log: Log, deadline: float) -> None:
    """Every cell of one shape that fits before `deadline` (time.monotonic()); the model is built at the first cell
    that runs and freed at the end. Skipped cells (budget, out of memory) are recorded as such."""
    model: PreTrainedModel | None = None
    done: list[tuple[Cell, float]] = []
    for cell in plan(settings):
        projected = time.monotonic() + estimate(cell, done)
        if projected > deadline:
            detail = f"projected to end {projected - deadline:.0f} s past this shape's share of the budget"
            log.emit("skipped", dict(model=name, cell=cell.name, tokens=cell.tokens, reason="budget", detail=detail))
            continue
        start, results, detail = time.monotonic(), None, ""
        try:
            model = model if model is not None else build(name, settings)
            results = run_cell(model, cell, settings)
        except torch.cuda.OutOfMemoryError as error:
            detail = (str(error).splitlines() or [""])[0][:200]
        if results is None:  # out of memory: the exception and its frames are gone, their tensors can be freed
            free_memory(settings.device)
            log.emit(
                "skipped", dict(model=name, cell=cell.name, tokens=cell.tokens, reason="out of memory", detail=detail)
            )
            continue
        done.append((cell, time.monotonic() - start))
        for record in cell_records(name, cell, results, settings):
            log.emit(cell.kind, record)
        print(f"{name} {cell.name}: {time.monotonic() - start:.1f} s", flush=True)
    del model
    free_memory(settings.device)


def parse_counts(output: str) -> dict[str, int]:
    """passed / failed / skipped / errors from pytest's last summary line ('3 passed, 1 skipped in 2.0s')."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    summaries = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|skipped|errors?)\b", line)]
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)\b", summaries[-1] if summaries else ""):
        counts["errors" if word.startswith("error") else word] += int(number)
    return counts


def run_tests(timeout_s: float) -> dict[str, Any]:
    """`python -m pytest -q tests/test_cuda.py` in the repository, as a subprocess: counts, exit code, seconds."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    start = time.monotonic()
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
        output, returncode, note = done.stdout + done.stderr, done.returncode, ""
    except subprocess.TimeoutExpired as error:
        partial = error.stdout or ""
        output, returncode = partial.decode(errors="replace") if isinstance(partial, bytes) else partial, None
        note = f"timed out after {timeout_s:.0f} s"
    return dict(
        ran=True,
        command=" ".join(command[2:]),
        returncode=returncode,
        seconds=time.monotonic() - start,
        note=note,
        **parse_counts(output),
        tail=output[-2000:],
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/gpu_check.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: $OUT, else benchmarks/results/gpu)"
    )
    parser.add_argument("--budget-s", type=float, default=420.0, help="wall-time budget, tests included")
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds per cell (default 3; smoke 1)")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--lengths", nargs="+", type=int, default=None, help="TTFT lengths (default 4k..32k)")
    parser.add_argument("--no-tests", action="store_true", help="do not run tests/test_cuda.py")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, lengths 64/128, 1 round, 4 new tokens")
    return parser.parse_args(argv)


def settings_of(args: argparse.Namespace) -> Settings:
    """The run's settings: the GPU defaults, or the smoke run's tiny CPU ones; explicit options win."""
    if args.smoke:
        base = Settings("cpu", "float32", args.shapes, [64, 128], 64, 4, 1, args.budget_s, False, True)
    else:
        base = Settings(
            "cuda",
            "bfloat16",
            args.shapes,
            [4096, 8192, 16384, 32768],
            4096,
            128,
            3,
            args.budget_s,
            not args.no_tests,
            False,
        )
    if args.lengths:
        base.lengths = sorted(args.lengths)
    if args.rounds:
        base.rounds = args.rounds
    return base


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; 0 when done, 1 when CUDA tests failed, 2 without a CUDA GPU (and without --smoke)."""
    args = parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print(f"error: {NEEDS_GPU}", file=sys.stderr)
        return 2
    settings = settings_of(args)
    start = time.monotonic()
    end = start + settings.budget_s
    out = args.out or Path(os.environ.get("OUT") or REPO / "benchmarks" / "results" / "gpu")
    machine = {**machine_info(settings.device), "cuda": torch.version.cuda}
    log = Log(out, machine, settings.smoke)
    log.emit("gpu_check", {"settings": asdict(settings), "argv": list(sys.argv[1:] if argv is None else argv)})
    tests = log.emit(
        "tests",
        run_tests(min(180.0, settings.budget_s / 3))
        if settings.run_tests
        else dict(ran=False, note="--smoke" if settings.smoke else "--no-tests"),
    )
    for index, name in enumerate(settings.shapes):
        now = time.monotonic()
        check_shape(name, settings, log, now + (end - now) / (len(settings.shapes) - index))
    skipped = sum(r["kind"] == "skipped" for r in log.records)
    log.emit("gpu_check_end", {"elapsed_s": time.monotonic() - start, "skipped": skipped})
    print(f"gpu_check: wrote {log.jsonl} and {log.md} ({skipped} cell(s) skipped)")
    failed = tests.get("ran") and (tests.get("failed") or tests.get("errors") or tests.get("returncode") not in (0, 5))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
