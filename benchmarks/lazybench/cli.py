"""`python -m lazybench` (or the `lazybench` script): run a profile, render a report, or run one of the rig's tools.

    python -m lazybench --profile quick                   # ~10 min on 2 CPU cores: speed, accuracy, fidelity, kvpress
    python -m lazybench --profile full                    # well under an hour on 2 CPU cores
    python -m lazybench --profile smoke --no-kvpress      # < 60 s, tiny random model (the test suite runs it)
    python -m lazybench report RESULTS.jsonl... [--out DIR]   # the markdown report and plots from records alone
    python -m lazybench frontier ... / python -m lazybench choose RESULTS.jsonl   # the token scores' fidelity frontier
    python -m lazybench ladder RECORDS.jsonl... [--out DIR]   # the size ladder (DECISIONS 13) over several models
    python -m lazybench decode ...                        # whole generations step by step; the other tools:
    python -m lazybench prefill_decode|gemma3_ttft|ttft_shapes|schedule_sweep|calibration_prompts|dropin --help

A run appends its records to `<out>/<profile>.jsonl` and then renders `<out>/<profile>.md` and its plots from that
whole file (so earlier runs appended there are in the report too).
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from lazybench.profiles import PROFILES

# Subcommands: each is the module of that name, whose `main(argv)` runs it (also `python -m lazybench.<name>`).
SUBCOMMANDS = (
    "report",
    "frontier",
    "choose",
    "ladder",
    "decode",
    "conversation",
    "prefill_decode",
    "gemma3_ttft",
    "ttft_shapes",
    "schedule_sweep",
    "calibration_prompts",
    "dropin",
)


def subcommand(name: str) -> Callable[[Sequence[str]], int]:
    """The `main` of a subcommand's module (imported only when it runs)."""
    return importlib.import_module(f"lazybench.{name}").main


def build_parser() -> argparse.ArgumentParser:
    """The options of a profile run (what to run, on what, where); `add_run_options` adds how."""
    parser = argparse.ArgumentParser(
        prog="python -m lazybench",
        description=(
            "LazyLLM benchmark rig: TTFT / decode speed vs prompt length, accuracy and fidelity on RULER-style tasks, "
            "rivals (random drop, static pruning, no revival) at matching budget, whole-generation speedup (paper's "
            "Table 2), and kvpress SnapKV / StreamingLLM at the same KV budget. Appends JSON-lines records to "
            "<out>/<profile>.jsonl and renders <out>/<profile>.md and its plots from them. Other commands: "
            f"{', '.join(SUBCOMMANDS)} (`python -m lazybench COMMAND --help`)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="quick",
        help="smoke: tiny random model, < 60 s (tests); quick: SmolLM2, < 10 min on 2 cores; full: well under 1 h",
    )
    parser.add_argument(
        "--model",
        choices=("smollm2", "gemma3"),
        default="smollm2",
        help="the real model the quick and full profiles run (gemma3: the base model answers completion-style "
        "prompts; kvpress runs with smollm2 only)",
    )
    parser.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=None,
        metavar="TOKENS",
        help="prompt lengths of the speed and accuracy sections instead of the profile's (e.g. 4096 8192 16384 "
        "with --model gemma3)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs")
    add_run_options(parser)
    return parser


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="benchmarks/results", help="output directory")
    parser.add_argument("--no-kvpress", action="store_true", help="skip the kvpress comparison (and its virtualenv)")
    parser.add_argument(
        "--threads",
        default="auto",
        help="torch intra-op threads: a number, or 'auto' = time a small workload with 1 thread and with all cores "
        "and keep the faster (on a busy machine OpenMP with several threads can be many times slower); "
        "the smoke profile always uses 1",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of prompts and samples")
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="also measure this saved config (LazyConfig.save / `lazyllm calibrate --out`), as schedule 'config'",
    )
    parser.add_argument(
        "--budget-min",
        type=float,
        default=None,
        help="wall-time budget in minutes (default: the profile's, quick 10, full 50; 0 = unlimited). When the "
        "measured speed projects past it, optional schedules and samples are dropped, and the report says which",
    )
    parser.add_argument(
        "--render",
        metavar="RESULTS.jsonl",
        type=Path,
        default=None,
        help="measure nothing: the same as `python -m lazybench report RESULTS.jsonl` (report next to the file)",
    )
    parser.add_argument("--skip-speed", action="store_true", help="skip section 1 (for debugging)")
    parser.add_argument("--skip-accuracy", action="store_true", help="skip sections 2-4 (for debugging)")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads != "auto" and not (args.threads.isdigit() and int(args.threads) > 0):
        parser.error(f"--threads must be a positive number or 'auto', not {args.threads!r}")
    if args.lengths and min(args.lengths) < 64:
        parser.error(f"--lengths must be prompt lengths of at least 64 tokens, not {args.lengths}")
    if args.budget_min is not None and args.budget_min < 0:
        parser.error("--budget-min must be >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    args.command = shlex.join(["python", "-m", "lazybench", *argv])
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return int(subcommand(argv[0])(argv[1:]) or 0)
    args = parse_args(argv)
    from lazybench import report

    if args.render:
        return report.main([str(args.render)])
    from lazybench.run import measure

    previous_threads = torch.get_num_threads()
    try:
        results = measure(args)
    finally:
        torch.set_num_threads(previous_threads)
    path = report.render([results], results.parent, results.stem)
    print(f"bench[{args.profile}]: records in {results}, report in {path}")
    return 0
