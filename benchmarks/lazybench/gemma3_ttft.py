"""TTFT and answer agreement of the presets on Gemma 3 270M (base model, completion-style needle prompts).

For each length, each needle prompt runs the baseline and every preset in turn (interleaved, so a busy host slows
all alike); TTFT is the time from the call to the first generated token, and `cpu_s` the process CPU time spent by
then (on a shared host it tracks the work done better than the wall clock). One JSON line per run.

    python -m lazybench.gemma3_ttft --lengths 4096 8192 --out benchmarks/results/gemma3-ttft.jsonl
    python -m lazybench.gemma3_ttft --render benchmarks/results/gemma3-ttft.jsonl   # the markdown table
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence

import torch

import lazyllm
from lazybench.tasks import build_samples, score
from lazyllm.fidelity import answers_agree, wilson_interval
from lazyllm.generation import encode, greedy
from lazyllm.models import load_model

CONFIGS = ("baseline", "default", "balanced", "aggressive")


class FirstToken:
    """A `generate()` streamer noting when the first generated token arrives (its first `put` is the prompt)."""

    def __init__(self) -> None:
        self.puts, self.at, self.cpu_at = 0, None, None

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1
        if self.puts == 2:
            self.at, self.cpu_at = time.perf_counter(), time.process_time()

    def end(self) -> None:
        pass


def run(model, tokenizer, ids: torch.Tensor, name: str, new_tokens: int) -> tuple[float, float, str]:
    streamer = FirstToken()
    schedule = None if name == "baseline" else lazyllm.LazyConfig.preset(name, model.config.num_hidden_layers)
    start, cpu_start = time.perf_counter(), time.process_time()
    if schedule is None:
        out = greedy(model, ids, max_new_tokens=new_tokens, streamer=streamer)
    else:
        with lazyllm.patched(model, schedule):
            out = greedy(model, ids, max_new_tokens=new_tokens, streamer=streamer)
    answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    return streamer.at - start, streamer.cpu_at - cpu_start, answer


def render(path: str) -> str:
    """Markdown table: per length and config, TTFT median [min-max], the median of the ratios to the baseline on the
    same prompt (and of CPU time), agreement with the baseline's whole answer [Wilson 95%] and accuracy."""
    records = [json.loads(line) for line in open(path) if line.strip()]
    runs = defaultdict(dict)  # (length, config) -> sample -> record
    for record in records:
        runs[record["length"], record["config"]][record["sample"]] = record
    lines = [
        "| prompt tokens | config | n | TTFT s median [min-max] | speedup (median of paired ratios) | CPU-time ratio "
        "| agreement [95% CI] | accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for length in sorted({length for length, _ in runs}):
        base = runs[length, "baseline"]
        for name in CONFIGS:
            mine = {s: r for s, r in runs.get((length, name), {}).items() if s in base}
            if not mine:
                continue
            ttft = [r["ttft_s"] for r in mine.values()]
            ratio = statistics.median(base[s]["ttft_s"] / r["ttft_s"] for s, r in mine.items())
            cpu = statistics.median(base[s]["cpu_s"] / r["cpu_s"] for s, r in mine.items())
            agreed = sum(r["same_as_baseline"] for r in mine.values())
            low, high = wilson_interval(agreed, len(mine))
            accuracy = statistics.mean(r["score"] for r in mine.values())
            tokens = statistics.median(r["prompt_tokens"] for r in mine.values())
            lines.append(
                f"| {tokens:.0f} | {name} | {len(mine)} | {statistics.median(ttft):.1f} [{min(ttft):.1f}-{max(ttft):.1f}] "
                f"| {ratio:.2f}x | {cpu:.2f}x | {agreed}/{len(mine)} [{low:.2f}-{high:.2f}] | {accuracy:.2f} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lazybench gemma3_ttft", description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--task", default="niah_single")
    parser.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    parser.add_argument("--new-tokens", type=int, default=12)
    parser.add_argument("--out")
    parser.add_argument("--render", metavar="RESULTS.jsonl", help="print the table of earlier records, measure nothing")
    args = parser.parse_args(argv)
    if args.render:
        print(render(args.render))
        return 0
    if not args.out:
        parser.error("--out is required to measure")
    torch.manual_seed(0)
    model, tokenizer = load_model("gemma3", dtype=torch.float32)
    with open(args.out, "a") as out:
        for length in args.lengths:
            for index, sample in enumerate(build_samples(args.task, tokenizer, length, depths=args.depths)):
                text = sample.prompt + (sample.answer_prefix or "")  # completion style: no chat template
                ids = encode(tokenizer, text)
                baseline_answer = None
                for name in CONFIGS:
                    ttft, cpu, answer = run(model, tokenizer, ids, name, args.new_tokens)
                    baseline_answer = answer if name == "baseline" else baseline_answer
                    record = dict(
                        model="gemma3-270m",
                        task=args.task,
                        length=length,
                        prompt_tokens=ids.shape[1],
                        sample=index,
                        config=name,
                        ttft_s=round(ttft, 3),
                        cpu_s=round(cpu, 3),
                        answer=answer,
                        score=score(answer, sample),
                        same_as_baseline=answers_agree(answer, baseline_answer),
                        threads=torch.get_num_threads(),
                    )
                    print(json.dumps(record), flush=True)
                    out.write(json.dumps(record) + "\n")
                    out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
