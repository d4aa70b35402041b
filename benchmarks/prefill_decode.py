"""Prefill (TTFT) and decode ms/token of the presets against the unpruned model, on SmolLM2 and real text.

    python benchmarks/prefill_decode.py --lengths 2048 4096 8160 --schedules default aggressive --repeats 3

Interleaved rounds (baseline, schedule A, schedule B, baseline, ...) after one warm-up round; each call is a greedy
`generate()` of `--decode-tokens` tokens: TTFT is the time to the first token's logits, decode ms/token the rest
divided by the remaining tokens. Prints a markdown table (median [min-max]) and the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics

import torch
import transformers

import lazyllm
from lazyllm.bench.run import timing_prompt
from lazyllm.bench.timing import timed_generate
from lazyllm.models import load_smollm2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", nargs="+", type=int, default=[2048, 4096, 8160])
    parser.add_argument("--schedules", nargs="+", default=["default", "aggressive"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-tokens", type=int, default=16)
    args = parser.parse_args()

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
    for length in args.lengths:
        inputs, _ = timing_prompt(tokenizer, length, "cpu", False, 0)
        runs: dict[str, list] = {name: [] for name in ["baseline", *args.schedules]}
        fractions = {"baseline": 1.0}
        for round_ in range(1 + args.repeats):
            for name in runs:
                lazyllm.unpatch(model)
                if name != "baseline":
                    lazyllm.patch(model, configs[name])
                timing = timed_generate(model, inputs, args.decode_tokens, "cpu", force_length=True)
                if name != "baseline":
                    fractions[name] = lazyllm.stats(model).prefill_token_fraction
                if round_ > 0:
                    runs[name].append(timing)
        lazyllm.unpatch(model)
        base_ttft = [t.ttft_s for t in runs["baseline"]]
        for name, timings in runs.items():
            ttft = [t.ttft_s for t in timings]
            decode = [t.decode_ms_per_token for t in timings]
            ratio = statistics.median(b / s for b, s in zip(base_ttft, ttft))
            print(
                f"| {inputs['input_ids'].shape[1]} | {name} ({configs[name].describe() if name in configs else 'unpruned'}) "
                f"| {statistics.median(ttft):.3f} [{min(ttft):.3f}-{max(ttft):.3f}] | {ratio:.2f}x | {fractions[name]:.3f} "
                f"| {statistics.median(decode):.1f} [{min(decode):.1f}-{max(decode):.1f}] |",
                flush=True,
            )


if __name__ == "__main__":
    main()
