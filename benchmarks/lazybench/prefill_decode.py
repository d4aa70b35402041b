"""Answers: how much sooner is the first token, and how much slower each decoding step, under each preset (SmolLM2)?

    python -m lazybench.prefill_decode --lengths 2048 4096 8160 --schedules default aggressive --repeats 3

Interleaved rounds (baseline, schedule A, schedule B, baseline, ...) after one warm-up round; each call is a greedy
`generate()` of `--decode-tokens` tokens: TTFT is the time to the first token's logits, decode ms/token the rest
divided by the remaining tokens. Prints a markdown table (median [min-max]) and the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Callable, Sequence

import torch
import transformers

import lazyllm
from lazybench import timing
from lazybench.profiles import BASELINE, apply, describe
from lazybench.prompts import timing_prompt
from lazyllm.models import load_smollm2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lazybench prefill_decode",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--lengths", nargs="+", type=int, default=[2048, 4096, 8160])
    parser.add_argument("--schedules", nargs="+", default=["default", "aggressive"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-tokens", type=int, default=16)
    args = parser.parse_args(argv)

    model, tokenizer = load_smollm2(progress=False)
    layers = model.config.num_hidden_layers
    configs = {name: lazyllm.LazyConfig.parse(name, layers, min_prompt_tokens=0) for name in args.schedules}
    print(
        f"SmolLM2-135M-Instruct fp32, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
        f"{args.repeats} interleaved rounds after 1 warm-up, {args.decode_tokens} new tokens per call\n"
    )
    print(
        "| prompt tokens | schedule | TTFT s median [min-max] | speedup (median of paired ratios) | prefill token fraction | decode ms/token median [min-max] |"
    )
    print("|---|---|---|---|---|---|")
    fractions = {BASELINE: 1.0}  # of the last run of each schedule, at the length being measured
    for length in args.lengths:
        inputs, _ = timing_prompt(tokenizer, length, "cpu", False, 0)

        def runner(name: str, inputs: dict[str, torch.Tensor] = inputs) -> Callable[[], timing.GenerationTiming]:
            def run() -> timing.GenerationTiming:
                apply(model, configs.get(name))
                result = timing.timed_generate(model, inputs, args.decode_tokens, "cpu", force_length=True)
                if name != BASELINE:
                    fractions[name] = lazyllm.stats(model).prefill_token_fraction
                return result

            return run

        measured = timing.interleaved({name: runner(name) for name in [BASELINE, *args.schedules]}, args.repeats)
        apply(model, None)
        base_ttft = [t.ttft_s for t in measured[BASELINE]]
        for name, timings in measured.items():
            ttft = timing.summarize([t.ttft_s for t in timings])
            decode = timing.summarize([t.decode_ms_per_token for t in timings])
            speedup = timing.ratio_summary(base_ttft, [t.ttft_s for t in timings])
            print(
                f"| {inputs['input_ids'].shape[1]} | {name} ({describe(configs.get(name))}) "
                f"| {ttft['median']:.3f} [{ttft['min']:.3f}-{ttft['max']:.3f}] | {speedup['median']:.2f}x "
                f"| {fractions[name]:.3f} | {decode['median']:.1f} [{decode['min']:.1f}-{decode['max']:.1f}] |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
