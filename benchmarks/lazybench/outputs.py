"""Outputs are the contract: record the patched SmolLM2's greedy answers and stats on long prompts, check them later.

    python -m lazybench.outputs record FILE.jsonl        # answers and stats of every (config, prompt) case
    python -m lazybench.outputs check FILE.jsonl [--only N]   # the same cases now: identical, or a list of changes

Cases: 5 RULER-style tasks x 2 depths x 2k and 4k tokens (seed 5, a split used for nothing else) plus two left-padded
batches of two rows, each under the presets `default`, `balanced`, `aggressive`, the paper's decoding policy
(`revive_all_at=None`) at `default` and `aggressive`, and `balanced` with the window32+pool7 score; 24 greedy new
tokens, `min_prompt_tokens=1024` so that every case prunes. Records hold the answer ids, the stats and a hash of the
prompt ids (never the prompt's text: the data stays in its wheel). Used for the 0.2 redesign: `benchmarks/results/
outputs-before.jsonl` was recorded on the code before it (commit 5f4d2a6; the first five configs, 110 cases: the
sixth was stopped for time); `benchmarks/tests/test_outputs.py` checks a few of its cases in the suite.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

import lazyllm
from lazybench.sample import chat_prompt
from lazybench.tasks import TASKS, build_samples
from lazyllm.models import load_smollm2

CONFIGS: dict[str, dict[str, Any]] = {
    "default": dict(preset="default"),
    "balanced": dict(preset="balanced"),
    "aggressive": dict(preset="aggressive"),
    "default+paper_policy": dict(preset="default", revive_all_at=None),
    "aggressive+paper_policy": dict(preset="aggressive", revive_all_at=None),
    "balanced+window32+pool7": dict(preset="balanced", score_window=32, score_pool=7),
}
LENGTHS, SEED, NEW_TOKENS = (2048, 4096), 5, 24
BATCHES = ((0, 10), (5, 15))  # prompt indices of the two padded batches (a 2k and a 4k prompt of one task)


def digest(ids: torch.Tensor) -> str:
    return hashlib.sha256(json.dumps(ids.tolist()).encode()).hexdigest()[:16]


def config_of(spec: dict[str, Any], num_layers: int) -> lazyllm.LazyConfig:
    """The case's config: the preset's cuts with the paper's token score (what the presets were when the cases were
    recorded) unless the spec names another."""
    options = dict(spec)
    cuts = lazyllm.PRESETS[options.pop("preset")]
    return lazyllm.LazyConfig.place(cuts, num_layers, min_prompt_tokens=1024, **options)


def cases(tokenizer: Any) -> Iterator[tuple[dict[str, Any], torch.Tensor, torch.Tensor]]:
    """(where, input ids, attention mask) of every case, in recording order."""
    singles = []
    for length in LENGTHS:
        for task in TASKS:
            for index, sample in enumerate(build_samples(task, tokenizer, length, depths=(0.3, 0.7), seed=SEED)):
                text = chat_prompt(tokenizer, sample, answer_prefix=True)
                ids = tokenizer(text, return_tensors="pt").input_ids
                singles.append((dict(task=task, length=length, index=index, seed=SEED), ids))
    for where, ids in singles:
        yield where, ids, torch.ones_like(ids)
    for a, b in BATCHES:
        rows = [singles[a][1], singles[b][1]]
        width = max(x.shape[1] for x in rows)
        pad = tokenizer.pad_token_id
        ids = torch.cat([torch.cat([torch.full((1, width - x.shape[1]), pad), x], 1) for x in rows])
        mask = torch.cat([(torch.arange(width) >= width - x.shape[1]).long()[None] for x in rows])
        yield dict(batch=[singles[a][0], singles[b][0]]), ids, mask


def answer(
    model: Any, name: str, where: dict[str, Any], ids: torch.Tensor, mask: torch.Tensor, pad: int
) -> dict[str, Any]:
    """One case's record: the answer ids and the stats of the patched model."""
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=pad)
    stats = lazyllm.stats(model)
    if not stats.pruned:
        raise RuntimeError(f"{name} {where}: not pruned ({stats.fallback_reason})")
    return dict(
        config=name,
        spec=CONFIGS[name],
        prompt=where,
        prompt_sha=digest(ids),
        prompt_tokens=ids.shape[1],
        answer_ids=out[:, ids.shape[1] :].tolist(),
        stats=stats.as_dict(),
    )


def run(only: set[tuple[str, str]] | None = None) -> Iterator[dict[str, Any]]:
    """Records of every case (or of the (config, prompt) keys in `only`), one config at a time."""
    torch.set_num_threads(2)
    model, tokenizer = load_smollm2(progress=False)
    every = list(cases(tokenizer))
    for name, spec in CONFIGS.items():
        with lazyllm.patched(model, config_of(spec, model.config.num_hidden_layers)):
            for where, ids, mask in every:
                if only is None or (name, json.dumps(where, sort_keys=True)) in only:
                    yield answer(model, name, where, ids, mask, tokenizer.pad_token_id)


def key(record: dict[str, Any]) -> tuple[str, str]:
    return record["config"], json.dumps(record["prompt"], sort_keys=True)


def differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two records of one case (stats fields added since `before` are not compared)."""
    changed = [field for field in ("prompt_sha", "answer_ids") if before[field] != now[field]]
    changed += [f"stats.{k}" for k, value in before["stats"].items() if now["stats"].get(k, value) != value]
    return changed


def check(path: Path, limit: int | None = None, keys: set[tuple[str, str]] | None = None) -> list[str]:
    """The cases of `path` (the first `limit` of them, or those of `keys`) run now; one line per case that changed."""
    recorded = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][:limit]
    expected = {key(r): r for r in recorded if keys is None or key(r) in keys}
    problems = []
    for now in run(set(expected)):
        changed = differences(expected.pop(key(now)), now)
        if changed:
            problems.append(f"{now['config']} {now['prompt']}: {', '.join(changed)}")
    problems += [f"{name} {where}: not run" for name, where in expected]
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lazybench.outputs", description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("record", "check"))
    parser.add_argument("file", type=Path)
    parser.add_argument("--only", type=int, default=None, metavar="N", help="check: the first N records only")
    args = parser.parse_args(argv)
    if args.mode == "record":
        with args.file.open("a") as out:
            for record in run():
                out.write(json.dumps(record) + "\n")
                out.flush()
        return 0
    problems = check(args.file, args.only)
    print("\n".join(problems) or f"identical: every case of {args.file} answers as recorded")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
