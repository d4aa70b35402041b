"""Writes RULER-style long prompts as JSON lines for `lazyllm calibrate --prompts` (chat-templated, answer prefix).

    python -m lazybench.calibration_prompts --model smollm2 --length 2048 --n 16 --seed 2 --out /tmp/calibration.jsonl

Each prompt is `--length` tokens of `--model`'s tokenizer, in its chat template: write them with the model you
calibrate. Seed 2 keeps these prompts apart from the frontier's selection (seed 1) and report (seed 0) prompts;
`--seed 1` writes the selection split's prompts.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from lazybench.frontier import prompts
from lazybench.tasks import TASKS, chat_prompt
from lazyllm.models import load_model, model_names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lazybench calibration_prompts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    names = ", ".join(model_names())
    parser.add_argument("--model", default="smollm2", help=f"whose tokenizer and chat template: {names}, or a path")
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--n", type=int, default=16, help="prompts in all, spread over the tasks")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    _, tokenizer = load_model(args.model)  # the weights load too: a one-off, for the tokenizer
    per_task = -(-args.n // len(TASKS))
    samples = [sample for _, sample in prompts(tokenizer, TASKS, args.length, per_task, args.seed)][: args.n]
    lines = [json.dumps({"prompt": chat_prompt(tokenizer, sample, answer_prefix=True)}) for sample in samples]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} prompts to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
