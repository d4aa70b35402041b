"""Answers: which of many schedules keep SmolLM2's first answer token (argmax, KL, top-5) on RULER-style prompts?

    python -m lazybench.schedule_sweep --length 1024 --out benchmarks/results/schedule_sweep_1k.md

For every schedule: share of samples whose first answer token (after RULER's answer prefix, so it is the retrieved
value itself) equals the baseline's argmax, KL(baseline || pruned) and top-5 overlap of that token's distribution,
and the prefill token fraction. 4 tasks x 3 depths x 2 samples = 24 prompts. Quality only: no timing here.

Kept to reproduce `benchmarks/results/schedule_sweep_1k.md`, the v0.1 sweep: first-token agreement turned out blind
to lost needles (docs/DECISIONS.md), so nothing is chosen by it; the rig's reports judge whole answers only.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

import lazyllm
from lazybench.tasks import TASKS, build_samples, chat_prompt
from lazyllm.models import load_smollm2

SCHEDULES = (
    "6:0.5;9:0.5;12:0.5;15:0.5;18:0.5;21:0.5;24:0.5;15:0.3;18:0.3;21:0.3;24:0.2;"
    "8:0.5,15:0.3,22:0.15;9:0.7,18:0.5,27:0.3;18:0.5,24:0.2;15:0.5,21:0.3;12:0.7,18:0.5,24:0.3"
)


def first_token_figures(reference: torch.Tensor, logits: torch.Tensor) -> dict[str, float]:
    """KL(reference || this) of the first-token distributions [vocab], top-5 overlap and argmax agreement."""
    p = reference.double().log_softmax(-1)
    q = logits.double().log_softmax(-1)
    kl = float((p.exp() * (p - q)).sum().clamp(min=0.0))
    top_p = set(p.topk(5).indices.tolist())
    top_q = set(q.topk(5).indices.tolist())
    return {
        "first_kl": kl,
        "first_top5_overlap": len(top_p & top_q) / 5,
        "first_token_agree": bool(int(p.argmax()) == int(q.argmax())),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lazybench schedule_sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--length", type=int, default=1024, help="prompt length in tokens")
    parser.add_argument("--schedules", default=SCHEDULES, help="';'-separated schedules ('layer:keep,...' or presets)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/schedule_sweep_1k.md"))
    args = parser.parse_args(argv)

    model, tokenizer = load_smollm2(progress=False)
    samples = [
        sample
        for task in TASKS
        for sample in build_samples(task, tokenizer, args.length, depths=(0.2, 0.5, 0.8), n_per_depth=2, seed=1)
    ]
    prompts = [tokenizer(chat_prompt(tokenizer, s, answer_prefix=True), return_tensors="pt").input_ids for s in samples]
    with torch.inference_mode():
        baseline = [model(ids, logits_to_keep=1).logits[0, -1] for ids in prompts]

    rows = []
    for schedule in args.schedules.split(";"):
        config = lazyllm.LazyConfig.parse(schedule, model.config.num_hidden_layers, min_prompt_tokens=0)
        agree, kl, top5, fraction = [], [], [], []
        with lazyllm.patched(model, config), torch.inference_mode():
            for ids, reference in zip(prompts, baseline):
                figures = first_token_figures(reference, model(ids, logits_to_keep=1).logits[0, -1])
                fraction.append(lazyllm.stats(model).prefill_token_fraction)
                agree.append(float(figures["first_token_agree"]))
                kl.append(figures["first_kl"])
                top5.append(5 * figures["first_top5_overlap"])  # tokens shared by the two top-5 lists
        n = len(prompts)
        row = f"| `{config.describe()}` | {sum(fraction) / n:.3f} | {sum(agree):.0f}/{n} | {sum(kl) / n:.3f} | {max(kl):.3f} | {sum(top5) / n:.2f} |"
        print(row, flush=True)
        rows.append(row)

    header = [
        f"# First-token fidelity sweep, SmolLM2-135M-Instruct fp32, {len(prompts)} RULER-style prompts of ~{args.length} tokens",
        "",
        f"Command: `python -m lazybench.schedule_sweep --length {args.length}`; torch {torch.__version__}, CPU.",
        "",
        "| schedule | prefill token fraction | first-token agreement | KL mean | KL max | top-5 overlap |",
        "|---|---|---|---|---|---|",
    ]
    args.out.write_text("\n".join(header + rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
