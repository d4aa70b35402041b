"""Whole-answer agreement of schedules with the unpruned model on SmolLM2 and RULER-style prompts.

    python benchmarks/answer_agreement.py --length 2048 --schedules "18:0.5,24:0.2;21:0.5;24:0.5"

Greedy answers of `--new-tokens` tokens (4 tasks x 2 depths); prints, per schedule, how many answers are identical
to the baseline's and the RULER accuracy of both. Stricter than first-token agreement, which cannot see a needle lost
after a leading space token.
"""

from __future__ import annotations

import argparse

import torch

import lazyllm
from lazyllm.bench.tasks import TASKS, build_samples, chat_prompt, score
from lazyllm.models import load_smollm2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--schedules", default="18:0.5,24:0.2;21:0.5;24:0.5;24:0.5,27:0.2;21:0.5,27:0.2")
    parser.add_argument("--new-tokens", type=int, default=10)
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()

    model, tokenizer = load_smollm2(progress=False)
    samples = [
        s for task in TASKS for s in build_samples(task, tokenizer, args.length, depths=(0.25, 0.75), seed=args.seed)
    ]
    prompts = [tokenizer(chat_prompt(tokenizer, s, answer_prefix=True), return_tensors="pt").input_ids for s in samples]

    def answers() -> list[str]:
        with torch.inference_mode():
            outputs = [model.generate(ids, max_new_tokens=args.new_tokens, do_sample=False) for ids in prompts]
        return [tokenizer.decode(o[0, ids.shape[1] :], skip_special_tokens=True) for o, ids in zip(outputs, prompts)]

    def accuracy(predictions: list[str]) -> float:
        return sum(score(p, s) for p, s in zip(predictions, samples)) / len(samples)

    baseline = answers()
    print(f"{args.length} tokens, {len(samples)} prompts: baseline accuracy {accuracy(baseline):.2f}")
    for schedule in args.schedules.split(";"):
        config = lazyllm.LazyConfig.parse(schedule, model.config.num_hidden_layers, min_prompt_tokens=0)
        with lazyllm.patched(model, config):
            pruned = answers()
        same = sum(a == b for a, b in zip(pruned, baseline))
        print(f"{schedule:24s} identical answers {same}/{len(samples)}  accuracy {accuracy(pruned):.2f}", flush=True)


if __name__ == "__main__":
    main()
