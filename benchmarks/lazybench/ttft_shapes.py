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
from collections.abc import Sequence
from pathlib import Path

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

import lazyllm

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


def timed(model: LlamaForCausalLM, ids: torch.Tensor) -> float:
    if ids.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    model(ids, logits_to_keep=1, use_cache=True)
    if ids.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def decode_ms_per_token(model: LlamaForCausalLM, ids: torch.Tensor, tokens: int = 32) -> float:
    """(generate `tokens` - prefill) / (tokens - 1), in ms."""
    if ids.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    if ids.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start - timed(model, ids)) / (tokens - 1) * 1000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--shapes", nargs="+", default=["smollm2-135m"], choices=sorted(SHAPES))
    parser.add_argument("--lengths", nargs="+", type=int, default=[2048, 4096, 8192])
    parser.add_argument("--schedules", nargs="+", default=["default", "aggressive"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--decode-tokens", type=int, default=32, help="0 skips the decode measurement")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ttft_shapes.json"))
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    rows = []
    print(
        f"device {device_name}, {args.dtype}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{args.repeats} interleaved repeats after one warm-up; times in ms as median (min-max)\n"
    )
    print("| shape | tokens | schedule | prefill ms | speedup | prefill_token_fraction | decode ms/token |")
    print("|---|---|---|---|---|---|---|")
    for shape in args.shapes:
        model = build(shape, args.device, dtype)
        depth = model.config.num_hidden_layers
        configs = {"baseline": None} | {s: lazyllm.LazyConfig.parse(s, depth) for s in args.schedules}
        for length in args.lengths:
            ids = torch.randint(3, model.config.vocab_size, (1, length), device=args.device)
            times: dict[str, list[float]] = {name: [] for name in configs}
            fractions, decode = {}, {}
            with torch.inference_mode():
                for repeat in range(args.repeats + 1):
                    for name, config in configs.items():
                        lazyllm.unpatch(model) if config is None else lazyllm.patch(model, config)
                        elapsed = timed(model, ids)
                        if repeat:
                            times[name].append(elapsed * 1000)
                        fractions[name] = lazyllm.stats(model).prefill_token_fraction if config else 1.0
                for name, config in configs.items():
                    lazyllm.unpatch(model) if config is None else lazyllm.patch(model, config)
                    decode[name] = decode_ms_per_token(model, ids, args.decode_tokens) if args.decode_tokens else None
            lazyllm.unpatch(model)
            base = statistics.median(times["baseline"])
            for name in configs:
                median = statistics.median(times[name])
                row = dict(
                    shape=shape,
                    tokens=length,
                    schedule=name,
                    prefill_ms=times[name],
                    median_ms=median,
                    speedup=base / median,
                    prefill_token_fraction=fractions[name],
                    decode_ms_per_token=decode[name],
                )
                rows.append(row)
                dec = f"{decode[name]:.2f}" if decode[name] is not None else "-"
                print(
                    f"| {shape} | {length} | {name} | {median:.1f} ({min(times[name]):.1f}-{max(times[name]):.1f}) | "
                    f"{base / median:.2f}x | {fractions[name]:.3f} | {dec} |",
                    flush=True,
                )
        del model
        if args.device == "cuda":
            torch.cuda.empty_cache()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(
        device=device_name,
        dtype=args.dtype,
        torch=torch.__version__,
        transformers=transformers.__version__,
        repeats=args.repeats,
        date=time.strftime("%Y-%m-%d"),
    )
    args.out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
