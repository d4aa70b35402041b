"""Decode breakdown: whole generations of the unpruned model and of each (schedule, revival policy), step by step.

    python -m lazybench.decode --length 4096 --new-tokens 96 --schedules default balanced aggressive \\
        --policies paper revive_all_at1 --rounds 2 --out benchmarks/results/decode.jsonl

Every configuration runs one greedy `generate()` per round (interleaved: baseline, A, B, ..., baseline, A, ...,
after one warm-up round), always to `--new-tokens` tokens. A logits processor stamps the clock at every step, so
each decoding step's wall time is known; the table gives TTFT, ms/token of steps 1-16 and of the steps after, the
whole generation (and its speedup over the baseline at a few answer lengths), tokens revived and the share of
token-layers the whole generation computed. With `--breakdown`, one more run per configuration times the ranges
of the pruned forward (`lazyllm.spans`): layers (split by whether they compute revived tokens), scoring and
selection, revival (the Aux Cache), masks, bookkeeping; "other" is the rest of a step (embedding, LM head,
generate()). On CUDA each range is bracketed by synchronisations, so the breakdown run is slower than the timed
ones. With `--stream`, every generation streams through a `TextIteratorStreamer` that notes when each token
reaches it: a second table gives the first and second token's times, the stall between them (the revival at
`revive_all_at`), the p50 / p99 inter-token latency and the largest gap. Results are appended as JSON lines
(machine, versions, command) and printed as markdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessorList, TextIteratorStreamer

import lazyllm
import lazyllm.models
from lazybench.machine import machine_info
from lazybench.profiles import BASELINE, apply
from lazybench.tasks import build_samples, chat_prompt
from lazybench.timing import StepClock, synchronize, timed_generate
from lazyllm.generation import encode, greedy, model_inputs
from lazyllm.spans import recording

# Revival policies compared, by label (LazyConfig fields): the paper's (`revive_all_at=None`), static pruning and the
# library's default since the fourth rule (docs/DECISIONS.md). Records of the policies retired in 0.2 (beat_weakest,
# every8, held, held+beat_weakest) and of the stall rule's candidates (revive_steps4 / 16: the revival spread over the
# first steps, which failed that rule, DECISIONS section 12; code at commit 130236a) stay in benchmarks/results.
POLICIES: dict[str, dict[str, Any]] = {
    "paper": dict(revive_all_at=None),
    "static": dict(revive=False, revive_all_at=None),
    "revive_all_at1": dict(revive_all_at=1),
}
# Token scores (the rule for the presets' score, docs/DECISIONS.md section 11, times both). Each but "shipped" names
# every score field, so that it overrides the score a preset carries; "shipped" keeps it (the preset as shipped).
SCORES: dict[str, dict[str, Any]] = {
    "shipped": {},
    "paper": dict(score_window=1, score_pool=1),
    "window32+pool7": dict(score_window=32, score_pool=7),
}
EARLY_STEPS = 16  # "steps 1-16": the burst of revivals right after prefill
ANSWER_LENGTHS = (32, 128, 512)  # whole-generation speedups at these answer lengths (those the run reaches)


@dataclasses.dataclass
class Generation:
    """One timed generate(): TTFT, each decoding step's wall time, the whole call, lazyllm's stats and (with a
    stream) when each token reached the streamer, in seconds from the call."""

    ttft_s: float
    step_ms: list[float]  # decoding steps 1..N-1
    total_s: float
    stats: dict[str, Any] | None
    token_s: list[float] = dataclasses.field(default_factory=list)

    def whole_s(self, new_tokens: int) -> float:
        """Wall time of a generation of `new_tokens` tokens (TTFT plus its first `new_tokens - 1` steps)."""
        return self.ttft_s + sum(self.step_ms[: new_tokens - 1]) / 1000.0

    def inter_token_ms(self) -> list[float]:
        """The stream's gaps between consecutive tokens (the first is the stall after the first token)."""
        return [1000.0 * (b - a) for a, b in zip(self.token_s, self.token_s[1:])]


class TokenTimes(TextIteratorStreamer):
    """A `TextIteratorStreamer` (what a streaming app reads) that also notes when each new token reaches it, in
    seconds from `start`; the text it yields holds words back until they end, so its chunks are not per token."""

    def __init__(self, tokenizer: Any, start: float) -> None:
        super().__init__(tokenizer, skip_prompt=True)
        self.start, self.arrivals, self.prompt_seen = start, [], False

    def put(self, value: torch.Tensor) -> None:
        if self.prompt_seen:  # generate() first puts the prompt
            self.arrivals.extend([time.perf_counter() - self.start] * int(value.numel()))
        self.prompt_seen = True
        super().put(value)


def timed_generation(
    model: Any, inputs: dict[str, torch.Tensor], new_tokens: int, device: str, tokenizer: Any = None
) -> Generation:
    """One greedy generation of exactly `new_tokens` tokens, timed step by step, with lazyllm's stats; given the
    `tokenizer`, streamed through `TokenTimes`."""
    stream = TokenTimes(tokenizer, time.perf_counter()) if tokenizer is not None else None
    timed = timed_generate(model, inputs, new_tokens, device, force_length=True, streamer=stream)
    stats = lazyllm.stats(model).as_dict() if lazyllm.is_patched(model) else None
    arrivals = stream.arrivals if stream is not None else []
    return Generation(timed.ttft_s, timed.step_ms, timed.total_s, stats, arrivals)


class RangeTimer:
    """The recorder of `lazyllm.spans`: total wall time per range, counted only while `active`."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.active = False
        self.totals: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if not self.active:
            yield
            return
        synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.totals[name] += time.perf_counter() - start


def breakdown(model: Any, inputs: dict[str, torch.Tensor], new_tokens: int, device: str) -> dict[str, float]:
    """ms per decoding step in each range of the forward, and "other" (the rest of the step), from one run."""
    timer = RangeTimer(device)

    def start_counting(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        timer.active = True  # the first call comes right after prefill: only decoding steps are counted
        return scores

    clock = StepClock(device)
    with recording(timer):
        greedy(
            model,
            inputs["input_ids"],
            inputs.get("attention_mask"),
            new_tokens,
            min_new_tokens=new_tokens,
            logits_processor=LogitsProcessorList([clock, start_counting]),
        )
    steps = new_tokens - 1
    per_step = {name: 1000.0 * total / steps for name, total in sorted(timer.totals.items())}
    step_ms = 1000.0 * (clock.stamps[-1] - clock.stamps[0]) / steps
    per_step["other"] = step_ms - sum(per_step.values())
    per_step["step"] = step_ms
    return per_step


def configurations(
    schedules: Sequence[str], policies: Sequence[str], num_layers: int, scores: Sequence[str] = ("paper",)
) -> dict[str, Any]:
    """name -> LazyConfig (None for the baseline): every schedule with every policy and token score, pruning
    prompts of any length."""
    for label, known in (*((p, POLICIES) for p in policies), *((t, SCORES) for t in scores)):
        if label not in known:
            raise SystemExit(f"unknown label {label!r}: choose from {', '.join(known)}")
    configs: dict[str, Any] = {BASELINE: None}
    for schedule, policy, score in itertools.product(schedules, policies, scores):
        name = "+".join(part for part in (schedule, policy, score) if part != "paper")
        options = dict(min_prompt_tokens=0, **POLICIES[policy], **SCORES[score])
        configs[name] = lazyllm.LazyConfig.parse(schedule, num_layers, **options)
    return configs


def prompt_inputs(tokenizer: Any, length: int, device: str) -> dict[str, torch.Tensor]:
    """A RULER needle-in-a-haystack prompt (Paul Graham essays) of about `length` tokens."""
    sample = build_samples("niah_single", tokenizer, length, depths=(0.5,), seed=0)[0]
    return model_inputs(encode(tokenizer, chat_prompt(tokenizer, sample, answer_prefix=True)), device)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summary(runs: list[Generation], base: list[Generation], new_tokens: int) -> dict[str, Any]:
    """Medians over rounds; speedups are medians of the per-round ratios to the baseline of the same round."""
    early = [median(r.step_ms[:EARLY_STEPS]) for r in runs]
    late = [median(r.step_ms[EARLY_STEPS:]) for r in runs]
    row: dict[str, Any] = {
        "ttft_speedup": median([b.ttft_s / r.ttft_s for b, r in zip(base, runs)]),
        "ttft_s": median([r.ttft_s for r in runs]),
        "early_ms_per_token": median(early),
        "late_ms_per_token": median(late),
        "whole_s": median([r.whole_s(new_tokens) for r in runs]),
        "whole_speedup": {
            n: median([b.whole_s(n) / r.whole_s(n) for b, r in zip(base, runs)])
            for n in (*ANSWER_LENGTHS, new_tokens)
            if n <= new_tokens
        },
    }
    if all(r.token_s for r in runs):
        row["stream"] = stream_summary(runs)
    stats = runs[-1].stats
    row["revived_tokens"] = stats["revived_tokens"] if stats else 0
    row["whole_generation_token_fraction"] = stats["whole_generation_token_fraction"] if stats else 1.0
    return row


def stream_summary(runs: list[Generation]) -> dict[str, float]:
    """What a stream saw, medians over rounds: first and second token (s from the call), the stall between them and
    the p50 / p99 and the largest gap between tokens (ms)."""

    def quantile(gaps: list[float], share: int) -> float:
        return statistics.quantiles(gaps, n=100, method="inclusive")[share - 1]

    return {
        "first_s": median([r.token_s[0] for r in runs]),
        "second_s": median([r.token_s[1] for r in runs]),
        "stall_ms": median([r.inter_token_ms()[0] for r in runs]),
        "itl_p50_ms": median([quantile(r.inter_token_ms(), 50) for r in runs]),
        "itl_p99_ms": median([quantile(r.inter_token_ms(), 99) for r in runs]),
        "largest_gap_ms": median([max(r.inter_token_ms()) for r in runs]),
    }


def stream_table(rows: dict[str, dict[str, Any]]) -> str:
    head = (
        "| schedule | first token (s) | second token (s) | stall: gap 1-2 (ms) | ITL p50 (ms) | ITL p99 (ms) "
        "| largest gap (ms) |"
    )
    lines = [head, "|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        if "stream" in row:
            got = row["stream"]
            lines.append(
                f"| {name} | {got['first_s']:.2f} | {got['second_s']:.2f} | {got['stall_ms']:.0f} "
                f"| {got['itl_p50_ms']:.1f} | {got['itl_p99_ms']:.1f} | {got['largest_gap_ms']:.0f} |"
            )
    return "\n".join(lines)


def table(rows: dict[str, dict[str, Any]], new_tokens: int) -> str:
    lengths = [n for n in (*ANSWER_LENGTHS, new_tokens) if n <= new_tokens]
    lengths = sorted(set(lengths))
    head = (
        f"| schedule | TTFT | ms/token, steps 1-{EARLY_STEPS} | ms/token, steps {EARLY_STEPS + 1}+ | "
        + " | ".join(f"whole, {n} tokens" for n in lengths)
        + " | tokens revived | whole-generation token fraction |"
    )
    lines = [head, "|" + "---|" * (6 + len(lengths))]
    for name, row in rows.items():
        speedups = " | ".join(f"{row['whole_speedup'][n]:.2f}x" for n in lengths)
        lines.append(
            f"| {name} | {row['ttft_speedup']:.2f}x ({row['ttft_s']:.2f} s) | {row['early_ms_per_token']:.1f} "
            f"| {row['late_ms_per_token']:.1f} | {speedups} | {row['revived_tokens']:,} "
            f"| {row['whole_generation_token_fraction']:.3f} |"
        )
    return "\n".join(lines)


def breakdown_table(parts: dict[str, dict[str, float]]) -> str:
    names = sorted({name for part in parts.values() for name in part} - {"other", "step"})
    columns = [*names, "other", "step"]
    lines = ["| schedule | " + " | ".join(columns) + " |", "|" + "---|" * (1 + len(columns))]
    for name, part in parts.items():
        lines.append(f"| {name} | " + " | ".join(f"{part.get(c, 0.0):.1f}" for c in columns) + " |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lazybench decode", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="a name or path lazyllm.models.load_model accepts")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        help="the model's dtype, patched and unpatched alike (default: float32 on CPU, bfloat16 on CUDA)",
    )
    parser.add_argument("--length", type=int, default=4096, help="prompt tokens (about)")
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--schedules", nargs="+", default=["default", "balanced", "aggressive"])
    parser.add_argument("--policies", nargs="+", default=["paper"], help=", ".join(POLICIES))
    parser.add_argument("--scores", nargs="+", default=["paper"], help=", ".join(SCORES))
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds after one warm-up round")
    parser.add_argument("--breakdown", action="store_true", help="one more run per configuration, ranges timed")
    parser.add_argument(
        "--stream",
        action="store_true",
        help="stream every generation (TextIteratorStreamer): time to the first and second token, p50 / p99 ITL",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/decode.jsonl"))
    args = parser.parse_args(argv)
    if args.new_tokens <= EARLY_STEPS + 1 or args.rounds < 1:
        parser.error(f"--new-tokens must exceed {EARLY_STEPS + 1} and --rounds be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    model, tokenizer = lazyllm.models.load_model(args.model, dtype=getattr(torch, dtype))
    model.to(args.device)
    configs = configurations(args.schedules, args.policies, model.config.num_hidden_layers, args.scores)
    inputs = prompt_inputs(tokenizer, args.length, args.device)
    where = dict(
        kind="decode",
        model=args.model,
        device=args.device,
        dtype=dtype,
        prompt_tokens=int(inputs["input_ids"].shape[1]),
        new_tokens=args.new_tokens,
        machine=machine_info(args.device),
        command=" ".join(["python -m lazybench.decode", *(argv if argv is not None else sys.argv[1:])]),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[Generation]] = {name: [] for name in configs}
    for round_index in range(1 + args.rounds):
        for name, config in configs.items():
            apply(model, config)
            result = timed_generation(model, inputs, args.new_tokens, args.device, tokenizer if args.stream else None)
            print(f"round {round_index} {name}: {result.total_s:.1f} s", file=sys.stderr, flush=True)
            if round_index == 0:
                continue  # warm-up
            runs[name].append(result)
            record = dict(where, name=name, round=round_index, config=config and dataclasses.asdict(config))
            with args.out.open("a") as handle:
                handle.write(json.dumps(dict(record, **dataclasses.asdict(result))) + "\n")
    rows = {name: summary(runs[name], runs[BASELINE], args.new_tokens) for name in configs}
    print(f"\n{where['model']} on {args.device}, {where['prompt_tokens']} prompt tokens, {args.new_tokens} new tokens,")
    print(f"greedy, {args.rounds} interleaved rounds (medians), {json.dumps(where['machine'])}\n")
    print(table(rows, args.new_tokens))
    if args.stream:
        print("\nAs a stream sees it (times from the generate() call; ITL = gap between consecutive tokens)\n")
        print(stream_table(rows))
    if args.breakdown:
        parts = {}
        for name, config in configs.items():
            apply(model, config)
            parts[name] = breakdown(model, inputs, args.new_tokens, args.device)
            with args.out.open("a") as handle:
                handle.write(json.dumps(dict(where, name=name, breakdown_ms_per_step=parts[name])) + "\n")
        print("\nms per decoding step by range (one run each, ranges timed)\n")
        print(breakdown_table(parts))
    apply(model, None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
