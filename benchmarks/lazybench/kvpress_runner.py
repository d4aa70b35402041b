"""Run NVIDIA kvpress presses on the benchmark's samples, inside kvpress's own virtualenv.

kvpress pins `transformers<5.3`, so it cannot share lazyllm's environment (Transformers 5.23). `lazybench.rivals`
creates `benchmarks/.kvpress-venv`, writes the samples as token ids to a JSON file and calls::

    benchmarks/.kvpress-venv/bin/python benchmarks/lazybench/kvpress_runner.py request.json response.json

This file imports only the standard library, torch, transformers and kvpress (never `lazyllm`), so it runs in that
venv as a plain script.

Request JSON::

    {"model_dir": ".../SmolLM2-135M-Instruct", "device": "cpu", "threads": 2, "max_new_tokens": 16,
     "compression_ratio": 0.5, "presses": ["snapkv", "streamingllm"],
     "samples": [{"id": "niah_single/1k/0", "input_ids": [...]}, ...]}

For every sample it runs the unpressed model ("none") and each press. The press is active during the prefill of the
whole prompt (the question included, so SnapKV's observation window sees it, as LazyLLM's last token does): each
layer's KV cache is compressed right after that layer's attention. The first token therefore comes from the full,
uncompressed prefill; the following greedy tokens attend the compressed cache at their original positions (as
kvpress's own pipeline decodes). Response JSON: versions, and per (sample, press) the generated ids, first-token
top-5, KL(none || press) of the first token, prefill and total wall times, and the KV entries kept after prefill.
"""

from __future__ import annotations

import json
import sys
import time
import traceback


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: kvpress_runner.py REQUEST.json RESPONSE.json", file=sys.stderr)
        return 2
    request_path, response_path = argv
    with open(request_path, encoding="utf-8") as f:
        request = json.load(f)
    try:
        response = run(request)
    except Exception as error:  # reported verbatim by the rig
        response = {
            "status": "failed",
            "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc(),
        }
    with open(response_path, "w", encoding="utf-8") as f:
        json.dump(response, f)
    return 0 if response.get("status") == "ok" else 1


def load(request: dict) -> tuple:
    """The model of `request` (fp32, SDPA, local files only) on its device, and that device."""
    import torch
    from transformers import AutoModelForCausalLM

    if request.get("threads"):
        torch.set_num_threads(int(request["threads"]))
    device = torch.device(request.get("device", "cpu"))
    model = AutoModelForCausalLM.from_pretrained(
        request["model_dir"], dtype=torch.float32, attn_implementation="sdpa", local_files_only=True
    ).to(device)
    return model.eval(), device


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def generate(model, input_ids, press, max_new_tokens: int, device) -> dict:
    """Greedy decoding of `input_ids` [1, length] with `press` (None: unpressed) active during the prefill."""
    import contextlib

    import torch
    from transformers import DynamicCache

    eos = model.generation_config.eos_token_id
    stop = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    cache, length = DynamicCache(), input_ids.shape[1]
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        with press(model) if press is not None else contextlib.nullcontext():
            out = model(input_ids=input_ids, past_key_values=cache, logits_to_keep=1)
        first_logits = out.logits[0, -1].float()
        sync(device)
        prefill_s = time.perf_counter() - start
        kv_entries = sum(layer.keys.shape[-2] for layer in cache.layers)
        generated = [int(first_logits.argmax())]
        for position in range(length, length + max_new_tokens - 1):
            if generated[-1] in stop:
                break
            out = model(
                input_ids=torch.tensor([[generated[-1]]], device=device),
                past_key_values=cache,
                position_ids=torch.tensor([[position]], device=device),
                logits_to_keep=1,
            )
            generated.append(int(out.logits[0, -1].argmax()))
        sync(device)
    return {
        "generated_ids": generated,
        "first_logprobs": first_logits.log_softmax(-1),
        "prefill_s": prefill_s,
        "total_s": time.perf_counter() - start,
        "kv_fraction": kv_entries / (model.config.num_hidden_layers * length),
    }


def first_token_figures(reference, logprobs) -> dict:
    """Top-5 of the first token, KL(reference || this) and top-5 overlap with the reference [vocab log-probs]."""
    top = logprobs.topk(5).indices.tolist()
    return {
        "first_top5": top,
        "first_kl": float((reference.exp() * (reference - logprobs)).sum().clamp(min=0.0)),
        "first_top5_overlap": len(set(reference.topk(5).indices.tolist()) & set(top)) / 5,
    }


def run(request: dict) -> dict:
    import kvpress
    import torch
    import transformers
    from kvpress import SnapKVPress, StreamingLLMPress

    model, device = load(request)
    ratio = float(request["compression_ratio"])
    presses = {  # a fresh press per call
        "none": lambda: None,
        "snapkv": lambda: SnapKVPress(compression_ratio=ratio),
        "streamingllm": lambda: StreamingLLMPress(compression_ratio=ratio),
    }
    wanted = ["none", *[p for p in request.get("presses", ["snapkv", "streamingllm"]) if p in presses]]
    results = []
    for sample in request["samples"]:
        input_ids = torch.tensor([sample["input_ids"]], device=device)
        for name in wanted:
            result = generate(model, input_ids, presses[name](), int(request["max_new_tokens"]), device)
            logprobs = result.pop("first_logprobs")
            if name == "none":
                reference = logprobs
            figures = first_token_figures(reference, logprobs)
            compression = 0.0 if name == "none" else ratio
            results.append({"id": sample["id"], "press": name, "compression_ratio": compression, **figures, **result})
            print(f"kvpress_runner: {sample['id']} {name} {result['total_s']:.2f}s", file=sys.stderr, flush=True)
    versions = {
        "kvpress": getattr(kvpress, "__version__", _version("kvpress")),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }
    return {"status": "ok", "versions": versions, "results": results}


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
