"""Run NVIDIA kvpress presses on the benchmark's samples, inside kvpress's own virtualenv.

kvpress pins `transformers<5.3`, so it cannot share lazyllm's environment (Transformers 5.23). `lazyllm.bench.rivals`
creates `benchmarks/.kvpress-venv`, writes the samples as token ids to a JSON file and calls::

    benchmarks/.kvpress-venv/bin/python lazyllm/bench/kvpress_runner.py request.json response.json

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


def run(request: dict) -> dict:
    import kvpress
    import torch
    import transformers
    from kvpress import SnapKVPress, StreamingLLMPress
    from transformers import AutoModelForCausalLM, DynamicCache

    if request.get("threads"):
        torch.set_num_threads(int(request["threads"]))
    device = torch.device(request.get("device", "cpu"))
    model = AutoModelForCausalLM.from_pretrained(
        request["model_dir"], dtype=torch.float32, attn_implementation="sdpa", local_files_only=True
    ).to(device)
    model.eval()
    ratio = float(request["compression_ratio"])
    presses = {
        "snapkv": lambda: SnapKVPress(compression_ratio=ratio),
        "streamingllm": lambda: StreamingLLMPress(compression_ratio=ratio),
    }
    wanted = ["none", *[p for p in request.get("presses", ["snapkv", "streamingllm"]) if p in presses]]
    eos = model.generation_config.eos_token_id
    stop = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    max_new_tokens = int(request["max_new_tokens"])
    num_layers = model.config.num_hidden_layers

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def generate(input_ids: torch.Tensor, press_name: str) -> dict:
        cache = DynamicCache()
        length = input_ids.shape[1]
        sync()
        start = time.perf_counter()
        with torch.inference_mode():
            if press_name == "none":
                out = model(input_ids=input_ids, past_key_values=cache, logits_to_keep=1)
            else:
                with presses[press_name]()(model):
                    out = model(input_ids=input_ids, past_key_values=cache, logits_to_keep=1)
            first_logits = out.logits[0, -1].float()
            sync()
            prefill_s = time.perf_counter() - start
            kv_entries = sum(cache.layers[i].keys.shape[-2] for i in range(len(cache.layers)))
            generated = [int(first_logits.argmax())]
            position = length
            for _ in range(max_new_tokens - 1):
                if generated[-1] in stop:
                    break
                out = model(
                    input_ids=torch.tensor([[generated[-1]]], device=device),
                    past_key_values=cache,
                    position_ids=torch.tensor([[position]], device=device),
                    logits_to_keep=1,
                )
                position += 1
                generated.append(int(out.logits[0, -1].argmax()))
            sync()
        total_s = time.perf_counter() - start
        return {
            "generated_ids": generated,
            "first_logprobs": first_logits.log_softmax(-1),
            "prefill_s": prefill_s,
            "total_s": total_s,
            "kv_fraction": kv_entries / (num_layers * length),
        }

    results = []
    for sample in request["samples"]:
        input_ids = torch.tensor([sample["input_ids"]], device=device)
        reference = None
        for press_name in wanted:
            result = generate(input_ids, press_name)
            logprobs = result.pop("first_logprobs")
            if press_name == "none":
                reference = logprobs
            kl = float((reference.exp() * (reference - logprobs)).sum().clamp(min=0.0))
            top_ref = set(reference.topk(5).indices.tolist())
            top = logprobs.topk(5).indices.tolist()
            results.append(
                {
                    "id": sample["id"],
                    "press": press_name,
                    "compression_ratio": 0.0 if press_name == "none" else ratio,
                    "first_top5": top,
                    "first_kl": kl,
                    "first_top5_overlap": len(top_ref & set(top)) / 5,
                    **result,
                }
            )
            print(f"kvpress_runner: {sample['id']} {press_name} {result['total_s']:.2f}s", file=sys.stderr, flush=True)
    return {
        "status": "ok",
        "versions": {
            "kvpress": getattr(kvpress, "__version__", _version("kvpress")),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },
        "results": results,
    }


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
