"""Answers: how much sooner is the first token on real model shapes (random weights: timing depends on shapes only)?

    python -m lazybench.ttft_shapes --device cuda --shapes llama2-7b --lengths 2048 4096 8192 --repeats 5

Prints a markdown table (median and min-max of interleaved runs after a warm-up) and writes JSON next to it.
Quality is not measured here (weights are random): see `python -m lazybench` for accuracy and fidelity.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

import lazyllm
from lazybench.profiles import apply
from lazyllm.config import LazyConfig
from lazyllm.generation import greedy
from lazyllm.timing import interleaved, synchronize, timed_prefill

SHAPES = {
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
    ),
    "llama2-7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
    ),
    "llama3-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
    ),
}


def build(shape: str, device: str, dtype: torch.dtype) -> LlamaForCausalLM:
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=32768, attn_implementation="sdpa")
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval()


def decode_ms_per_token(model: LlamaForCausalLM, ids: torch.Tensor, tokens: int = 32) -> float:
    """(generate `tokens` - prefill) / (tokens - 1), in ms."""
    synchronize(ids.device)
    start = time.perf_counter()
    greedy(model, ids, max_new_tokens=tokens, min_new_tokens=tokens)
    synchronize(ids.device)
    elapsed = time.perf_counter() - start
    return (elapsed - timed_prefill(model, {"input_ids": ids}, ids.device)) / (tokens - 1) * 1000


def measure(
    model: LlamaForCausalLM, configs: dict[str, LazyConfig | None], length: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """One row per schedule on a random prompt of `length` tokens: interleaved prefill times (ms), speedup, prefill
    token fraction and decode ms/token."""
    ids = torch.randint(3, model.config.vocab_size, (1, length), device=args.device)
    fractions: dict[str, float] = {}

    def runner(name: str) -> Callable[[], float]:
        def run() -> float:
            apply(model, configs[name])
            elapsed = timed_prefill(model, {"input_ids": ids}, ids.device)
            fractions[name] = lazyllm.stats(model).prefill_token_fraction if configs[name] else 1.0
            return elapsed * 1000

        return run

    times = interleaved({name: runner(name) for name in configs}, args.repeats)
    decode: dict[str, float | None] = {}
    for name, config in configs.items():
        apply(model, config)
        decode[name] = decode_ms_per_token(model, ids, args.decode_tokens) if args.decode_tokens else None
    apply(model, None)
    base = statistics.median(times["baseline"])
    return [
        dict(
            tokens=length,
            schedule=name,
            prefill_ms=times[name],
            median_ms=statistics.median(times[name]),
            speedup=base / statistics.median(times[name]),
            prefill_token_fraction=fractions[name],
            decode_ms_per_token=decode[name],
        )
        for name in configs
    ]


def row_line(shape: str, row: dict[str, Any]) -> str:
    times, decode = row["prefill_ms"], row["decode_ms_per_token"]
    return (
        f"| {shape} | {row['tokens']} | {row['schedule']} | {row['median_ms']:.1f} ({min(times):.1f}-{max(times):.1f}) "
        f"| {row['speedup']:.2f}x | {row['prefill_token_fraction']:.3f} | {'-' if decode is None else f'{decode:.2f}'} |"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lazybench ttft_shapes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--shapes", nargs="+", default=["smollm2-135m"], choices=sorted(SHAPES))
    parser.add_argument("--lengths", nargs="+", type=int, default=[2048, 4096, 8192])
    parser.add_argument("--schedules", nargs="+", default=["default", "aggressive"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--decode-tokens", type=int, default=32, help="0 skips the decode measurement")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ttft_shapes.json"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    rows = []
    print(
        f"device {device_name}, {args.dtype}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{args.repeats} interleaved repeats after one warm-up; times in ms as median (min-max)\n"
    )
    print("| shape | tokens | schedule | prefill ms | speedup | prefill_token_fraction | decode ms/token |")
    print("|---|---|---|---|---|---|---|")
    for shape in args.shapes:
        model = build(shape, args.device, getattr(torch, args.dtype))
        depth = model.config.num_hidden_layers
        configs = {"baseline": None} | {s: LazyConfig.parse(s, depth) for s in args.schedules}
        for length in args.lengths:
            with torch.inference_mode():
                for row in measure(model, configs, length, args):
                    rows.append(dict(shape=shape, **row))
                    print(row_line(shape, row), flush=True)
        del model
        if args.device == "cuda":
            torch.cuda.empty_cache()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(device=device_name, dtype=args.dtype, torch=torch.__version__, transformers=transformers.__version__)
    meta |= dict(repeats=args.repeats, date=time.strftime("%Y-%m-%d"))
    args.out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
